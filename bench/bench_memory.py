"""Memory of the analysis side: RSS after each model is loaded and after studies are run.

Each configuration runs in a fresh Python process (the way `hiprouter serve` holds its
pipelines): RSS after the imports, after each pipeline is loaded (its increment is that
model's share), after the first study (ONNX Runtime sessions, arenas) and after N more
(steady state; the peak is sampled in a thread every 20 ms).

    .venv/bin/python bench/bench_memory.py                 # every kind with demo weights
    .venv/bin/python bench/bench_memory.py --studies 20 --pipelines hardware fracture
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ALL = ["hardware", "screening", "fracture", "prosthesis_failure", "fixation_device", "onfh"]
HARDWARE_CYCLE = [{"R": "tha", "L": "no_hardware"}, {"R": "no_hardware", "L": "dynamic_hip_screw"},
                  {"R": "no_hardware", "L": "no_hardware"}, {"R": "cannulated_screws", "L": "tha"}]


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def write_studies(folder: Path, n: int) -> list[list[Path]]:
    """Synthetic studies as files (the measured process only reads them, as serve does)."""
    from hiprouter.synth.study import make_study

    out = []
    for i in range(n):
        s = make_study(4242, i, views=("ap_pelvis", "cross_table_lateral"), side="R",
                       hardware=HARDWARE_CYCLE[i % 4])
        paths = []
        for j, img in enumerate(s.images):
            path = folder / f"{i}-{j}.dcm"
            img.dataset.save_as(path, enforce_file_format=True)
            paths.append(path)
        out.append(paths)
    return out


def child(pipelines: list[str], studies: int, folder: Path) -> dict[str, float]:
    """Run inside the measured process: load, run, report RSS figures (MiB)."""
    out: dict[str, float] = {"start": rss_mb()}
    from pydicom import dcmread

    from hiprouter.config import Settings
    from hiprouter.pipelines.registry import PipelineSet
    from hiprouter.pipelines.runner import analyse_study
    from hiprouter.report.build import build_report

    out["imports"] = rss_mb()
    settings = Settings.model_validate({"pipelines": {n: {"kind": n} for n in pipelines}})
    pset = PipelineSet(settings)
    for name in pipelines:
        before = rss_mb()
        pset.get(name)
        out[f"load {name}"] = rss_mb() - before
    out["loaded"] = rss_mb()
    peak = [out["loaded"]]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cases = sorted({p.name.split("-")[0] for p in folder.glob("*.dcm")}, key=int)
    for i in range(studies + 1):
        case = cases[i % len(cases)]
        datasets = [dcmread(p) for p in sorted(folder.glob(f"{case}-*.dcm"))]
        found, decoded = analyse_study(pset, pipelines, str(datasets[0].StudyInstanceUID),
                                       datasets)
        build_report(found.reported(), datasets,
                     {u: img.decoded.display_uint8() for u, img in decoded.items()},
                     settings.report, {}, settings.sr_templates_dir)
        if i == 0:
            out["first study"] = rss_mb()
    out["steady"] = rss_mb()
    done.set()
    sampler.join()
    out["peak"] = peak[0]
    out["torch imported"] = float("torch" in sys.modules)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pipelines", nargs="+", default=ALL, choices=ALL)
    ap.add_argument("--studies", type=int, default=12)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.pipelines, args.studies, args.folder)))
        return
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="hiprouter-bench-memory-"))
    write_studies(folder, 8)
    # the cascades need hardware beside them: each model's share is its "loading" figure
    configs = [["hardware"], args.pipelines] if args.pipelines != ["hardware"] else [["hardware"]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    print(f"RSS in MiB; {args.studies} studies (AP + lateral, 1300-1700 px) after the first; "
          f"cpu cores={os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    for pipes in configs:
        started = time.monotonic()
        res = subprocess.run([sys.executable, __file__, "--child", "--studies",
                              str(args.studies), "--folder", str(folder), "--pipelines", *pipes],
                             capture_output=True, text=True, env=env, check=False)
        if res.returncode != 0:
            print(f"{'+'.join(pipes)}: failed\n{res.stderr[-2000:]}")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        loads = ", ".join(f"{k[5:]} +{v:.0f}" for k, v in r.items() if k.startswith("load "))
        print(f"{'+'.join(pipes)}: imports {r['imports']:.0f}; loading {loads}; "
              f"after 1st study {r['first study']:.0f}; steady {r['steady']:.0f}; "
              f"peak {r['peak']:.0f}; torch {'imported' if r['torch imported'] else 'not imported'}"
              f" ({time.monotonic() - started:.0f} s)")
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
