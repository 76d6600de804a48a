"""Wall time of one analysis job in process, step by step, against its forward passes.

The job `serve` runs per study (pipelines/job.py): read the study's files, decode once,
every pipeline in cascade order, the report (SR, one SC per radiograph, SEG, KOS) and its
files, on synthetic two-view studies (AP pelvis + cross-table lateral) that carry a THA on
one hip and fixation on the other in turn (so the cascades run), with the shipped demo
weights and config.yaml's report settings. The network's forward passes (ONNX Runtime or
torch sessions) are timed in the same run: "forward passes" is what the pure models cost
inside the job, the rest is the pipeline's own work. No network, no database, no queue:
what `bench_e2e.py` measures on top of this is receiving, queueing, the database and
sending.

    .venv/bin/python bench/bench_job.py [--studies 8] [--pipelines all|hardware] [--json out.json]

Other processes on the machine change the figures; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydicom import dcmread
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import hiprouter.report.build as report_build  # noqa: E402
from bench.bench_e2e import ALL_PIPELINES, HARDWARE_CYCLE  # noqa: E402
from hiprouter.config import load_settings  # noqa: E402
from hiprouter.inference import onfh, runtime  # noqa: E402
from hiprouter.pipelines.registry import PipelineSet  # noqa: E402
from hiprouter.pipelines.runner import analyse_study  # noqa: E402
from hiprouter.synth.study import make_study  # noqa: E402

REPORT_PARTS = ("build_sr", "build_sc", "build_seg", "build_kos")


class Clock:
    """Accumulates the wall time of wrapped functions per name."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = defaultdict(float)

    def wrap(self, owner: Any, attr: str, name: str) -> None:
        fn: Callable[..., Any] = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.ms[name] += (time.perf_counter() - started) * 1000.0

        setattr(owner, attr, timed)


def settings_for(pipelines: list[str], work: Path) -> Any:
    """config.yaml's rules and report settings with `pipelines` in the hip rule."""
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    config = {
        "database": {"url": f"sqlite:///{work / 'unused.db'}"},
        "storage": {"spool_dir": str(work / "spool"), "output_dir": str(work / "out")},
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104}},
        "rule_mode": base["rule_mode"],
        "rules": [{**rule, "pipelines": pipelines} for rule in base["rules"]],
        "pipelines": {name: {"kind": name} for name in pipelines},
        "report": base.get("report", {}),
    }
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_settings(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", type=int, default=8)
    ap.add_argument("--pipelines", default="all", choices=["all", "hardware"])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    pipelines = ALL_PIPELINES if args.pipelines == "all" else ["hardware"]
    work = Path(tempfile.mkdtemp(prefix="hiprouter-bench-job-"))
    settings = settings_for(pipelines, work)
    pipeline_set = PipelineSet(settings)
    triage = {n: settings.pipelines[n].triage for n in pipelines}

    clock = Clock()
    clock.wrap(runtime.OnnxRunner, "run", "forward")
    clock.wrap(runtime.TorchRunner, "run", "forward")
    clock.wrap(onfh.OnnxNet, "run", "forward")
    for part in REPORT_PARTS:
        clock.wrap(report_build, part, part)

    studies = [make_study(4242, i, views=("ap_pelvis", "cross_table_lateral"), side="R",
                          hardware=HARDWARE_CYCLE[i % len(HARDWARE_CYCLE)]
                          if args.pipelines == "all" else None)
               for i in range(args.studies + 2)]
    files = []
    for study in studies:  # as the spool holds them
        folder = work / "studies" / study.study_uid
        folder.mkdir(parents=True)
        files.append([folder / f"{j}.dcm" for j in range(len(study.images))])
        for img, path in zip(study.images, files[-1], strict=True):
            img.dataset.save_as(path, enforce_file_format=True)
    steps: dict[str, list[float]] = defaultdict(list)
    for n, (study, paths) in enumerate(tqdm(list(zip(studies, files, strict=True)),
                                            desc="jobs", unit="study")):
        clock.ms.clear()
        started = time.perf_counter()
        datasets = [dcmread(p) for p in paths]
        t0 = time.perf_counter()
        findings, decoded = analyse_study(pipeline_set, pipelines, study.study_uid, datasets)
        t1 = time.perf_counter()
        bundle = report_build.build_report(
            findings.reported(), datasets,
            {u: img.decoded.display_uint8() for u, img in decoded.items()},
            settings.report, triage, settings.sr_templates_dir)
        t2 = time.perf_counter()
        report_build.write_bundle(bundle, Path(tempfile.mkdtemp(dir=work)))
        t3 = time.perf_counter()
        if n < 2:  # warm-up: sessions, caches
            continue
        steps["job"].append((t3 - started) * 1000)
        steps["read"].append((t0 - started) * 1000)
        steps["analyse"].append((t1 - t0) * 1000)
        steps["  decode"].append(findings.decode_ms)
        for r in findings.results:
            steps[f"  run:{r.pipeline}"].append(r.elapsed_ms)
        steps["  forward passes (pure models)"].append(clock.ms["forward"])
        steps["build"].append((t2 - t1) * 1000)
        for part in REPORT_PARTS:
            steps[f"  {part}"].append(clock.ms[part])
        steps["write"].append((t3 - t2) * 1000)

    medians = {k: statistics.median(v) for k, v in steps.items()}
    load = os.getloadavg()
    print(f"{args.studies} two-view studies, pipelines={','.join(pipelines)}, "
          f"cpu cores={os.cpu_count()}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for name, value in medians.items():
        print(f"  {name:34s} {value:7.1f} ms (median per job)")
    job, pure = medians["job"], medians["  forward passes (pure models)"]
    print(f"forward passes are {100 * pure / job:.0f} % of the job; "
          f"the pipeline's own work {job - pure:.0f} ms")
    if args.json:
        args.json.write_text(json.dumps({"medians_ms": medians, "load": load}, indent=2))


if __name__ == "__main__":
    main()
