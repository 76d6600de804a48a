"""A test pipeline kind `marked` for worker processes (loaded with `plugins:`).

It appends "<job id> <pid>" to `<output_dir>/../runs.log` when it starts and when it
finishes (the study UID stands for the job), waits `HIPROUTER_TEST_PIPE_S` seconds in
between, and reports one finding per hip crop, so tests can see which process ran which
study and how often, and a report (SR and KOS) reaches the PACS. With
`HIPROUTER_TEST_PIPE_PROCESSES=N` a job, once started, waits until jobs have started in N
different processes (so a test of several worker processes sees each of them work).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np

from hiprouter.findings import (
    Classification,
    Finding,
    FindingClass,
    ModelInfo,
    PipelineResult,
    Region,
    Vocabulary,
)
from hiprouter.inference.study import StudyInput
from hiprouter.pipelines.base import PipelineKind, Target
from hiprouter.pipelines.registry import register_kind

MODEL = ModelInfo("marked", "1", "none", "2.25.77", synthetic_demo=False)


@register_kind
class MarkedKind(PipelineKind):
    """Marks every hip, logging when it starts and ends."""

    kind = "marked"

    def vocabulary(self) -> Vocabulary:
        return Vocabulary((FindingClass.private("marked", "Marked", "TST1"),))

    def model_info(self) -> ModelInfo:
        return MODEL

    def modalities(self) -> Sequence[str]:
        return ("CR", "DX", "OT", "MR", "CT")

    def run(self, study: StudyInput, targets: Sequence[Target] | None) -> PipelineResult:
        log = self.context.settings.storage.output_dir.parent / "runs.log"
        delay = float(os.environ.get("HIPROUTER_TEST_PIPE_S", "0"))
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"start {study.study_uid} {os.getpid()}\n")
        time.sleep(delay)
        _wait_for_processes(log, int(os.environ.get("HIPROUTER_TEST_PIPE_PROCESSES", "0")))
        result = self.empty_result()
        for uid, crop in study.crops():
            top, left, bottom, right = crop.box
            result.findings.append(Finding(
                self.name, crop.laterality, [uid], MODEL,
                Classification("marked", 1.0, {"marked": 1.0}),
                regions=[Region(uid, "POINT", np.array([[(left + right) / 2,
                                                         (top + bottom) / 2]]))]))
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"end {study.study_uid} {os.getpid()}\n")
        return result


def _wait_for_processes(log: object, processes: int, timeout_s: float = 120.0) -> None:
    """Wait until `processes` different pids have logged a start (a polled condition)."""
    if processes <= 1:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with open(log, encoding="utf-8") as fh:  # type: ignore[call-overload]
            pids = {line.split()[2] for line in fh if line.startswith("start ")}
        if len(pids) >= processes:
            return
        time.sleep(0.05)
    raise RuntimeError(f"jobs started in fewer than {processes} processes")
