"""A test pipeline kind `marked` for worker processes (loaded with `plugins:`).

It appends "<job id> <pid>" to `<output_dir>/../runs.log` when it starts and when it
finishes, waits `HIPROUTER_TEST_PIPE_S` seconds in between, and then forwards the
original images, so tests can see which process ran which job and how often.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from hiprouter.config import Settings
from hiprouter.router.pipelines import JobContext, Pipeline, register_pipeline


def marked(settings: Settings, name: str) -> Pipeline:
    log = settings.storage.output_dir.parent / "runs.log"
    delay = float(os.environ.get("HIPROUTER_TEST_PIPE_S", "0"))

    def run(ctx: JobContext) -> list[Path]:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"start {ctx.job.id} {os.getpid()}\n")
        time.sleep(delay)
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"end {ctx.job.id} {os.getpid()}\n")
        return [Path(i.spool_path) for i in ctx.instances]

    return run


register_pipeline("marked", marked)
