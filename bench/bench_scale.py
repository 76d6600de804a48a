"""Scale-out benchmark: studies per minute with 1, then 2 `hiprouter worker` processes.

Starts a throw-away PostgreSQL on loopback (tests/pgserver.py), a local Storage SCP that
timestamps each SR (bench_e2e.TimedPACS) and, per configuration, a fresh database, one
`hiprouter serve` receiver with `queue.workers: 0` (it receives, completes studies, routes
and dispatches; it runs no jobs) and W `hiprouter worker --no-dispatch` processes, each
with `--inference-threads` = its share of the cores. After a warm-up (every worker has
loaded the model and finished a job) it sends a burst of N synthetic 2-view studies with
DCMTK storescu (TCP_NODELAY=1, one association per study, back to back) and waits for
every SR. Prints per configuration: studies/min (N / (last SR - first send)), p50/p95 of
last C-STORE ack -> SR at the PACS (includes `studies.complete_after_s`), the load average
before and after, CPU seconds per study of the receiver and of the workers, and how many
cores the whole machine kept busy meanwhile (other processes included); then the ratio of
the throughputs.

    nice .venv/bin/python bench/bench_scale.py --studies 24
    nice .venv/bin/python bench/bench_scale.py --studies 24 --threads 1  # 1 core each
    nice .venv/bin/python bench/bench_scale.py --studies 24 --drain      # workers alone
    nice .venv/bin/python bench/bench_scale.py --studies 24 --model demo --workers 1 2 4
    .venv/bin/python bench/bench_scale.py --studies 20 --model demo --pipelines all --drain
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_e2e import (  # noqa: E402
    ALL_PIPELINES,
    HARDWARE_CYCLE,
    TimedPACS,
    b4_model_dir,
)
from bench.benchwait import run as run_limited  # noqa: E402
from bench.benchwait import wait_for  # noqa: E402
from hiprouter.demo import free_port  # noqa: E402
from hiprouter.synth.study import make_study  # noqa: E402
from tests.pgserver import create_database, pg_bin, postgres_server  # noqa: E402

COMPLETE_AFTER_S = 1.0


def write_studies(root: Path, count: int, seed: int,
                  all_pipelines: bool = False) -> list[list[Path]]:
    """`count` synthetic AP pelvis + cross-table lateral studies, one folder each (with
    `all_pipelines`: a THA on one hip and fixation on the other in turn, as bench_e2e)."""
    out = []
    for i in range(count):
        s = make_study(seed, i, views=("ap_pelvis", "cross_table_lateral"), side="R",
                       hardware=HARDWARE_CYCLE[i % len(HARDWARE_CYCLE)]
                       if all_pipelines else None)
        folder = root / s.study_uid  # folder name = Study Instance UID
        folder.mkdir(parents=True)
        for j, img in enumerate(s.images):
            img.dataset.save_as(folder / f"{j}.dcm", enforce_file_format=True)
        out.append(sorted(folder.iterdir()))
    return out


def hiprouter(args: list[str], cfg: Path, log: Path, work: Path) -> subprocess.Popen[bytes]:
    """Start `hiprouter --config cfg ARGS` from this checkout, output to `log`."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", "from hiprouter.cli import main; main()",
             "--config", str(cfg), *args],
            stdout=out, stderr=subprocess.STDOUT, cwd=work,
            env={**os.environ, "PYTHONPATH": path, "HIPROUTER_CACHE": str(work.parent / "cache")},
        )


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its children so far."""
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system + t.children_user + t.children_system)


def jobs_done_by(log: Path) -> int:
    """'job done' lines in a worker's JSON log."""
    if not log.exists():
        return 0
    return sum(1 for line in log.read_text(errors="replace").splitlines()
               if '"job done"' in line)


def pending_jobs(url: str) -> int:
    """Jobs waiting in the queue."""
    from sqlalchemy import func, select

    from hiprouter import db
    from hiprouter.schema import Job

    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(Job)
                                   .where(Job.state == "pending")) or 0)
    finally:
        engine.dispose()


def run(workers: int, threads: int, model_dirs: list[Path], burst: list[list[Path]],
        warmup: list[list[Path]], work: Path, server: str, drain: bool = False,
        pipelines: list[str] | None = None) -> dict[str, Any]:
    """One configuration: receiver + `workers` worker processes; returns the figures.

    `drain`: the workers are stopped (SIGSTOP) while the burst is received and routed,
    then resumed; the clock and the latencies start at the resume (worker throughput
    without the receiver competing for the cores)."""
    work.mkdir(parents=True)
    pacs = TimedPACS(work / "pacs").start()
    port = free_port()
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    url = create_database(server, "bench_")
    config = {
        "node": {"ae_title": "HIPROUTER", "host": "127.0.0.1", "port": port},
        "database": {"url": url},
        "storage": {"spool_dir": str(work / "spool"), "output_dir": str(work / "out"),
                    "min_free_mb": 100},
        "studies": {"complete_after_s": COMPLETE_AFTER_S, "sweep_interval_s": 0.2},
        "queue": {"workers": 0, "poll_interval_s": 0.1},
        "destinations": {"pacs": {"ae_title": pacs.ae_title, "host": "127.0.0.1",
                                  "port": pacs.port}},
        "rule_mode": base["rule_mode"],
        "rules": [{**rule, "pipelines": pipelines or ["hardware"]} for rule in base["rules"]],
        "pipelines": {"hardware": {"kind": "hardware", "models": [str(p) for p in model_dirs],
                                   "runtime": "onnx"},
                      **{name: {"kind": name} for name in pipelines or []
                         if name != "hardware"}},
        "logging": {"level": "INFO", "json_logs": True},
    }
    cfg = work / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    procs = [hiprouter(["serve"], cfg, work / "serve.log", work)]
    logs = [work / f"worker-{i}.log" for i in range(workers)]
    env = {**os.environ, "TCP_NODELAY": "1"}

    def alive() -> str | None:
        for p, name in zip(procs, ["serve", *(f"worker {i}" for i in range(workers))],
                           strict=False):
            if p.poll() is not None:
                return f"{name} exited ({p.returncode})"
        return None

    def send(files: list[Path]) -> None:
        run_limited(["storescu", "-aec", "HIPROUTER", "127.0.0.1", str(port),
                     *map(str, files)], 300, "a study to be stored", env=env, check=True,
                    capture_output=True)

    try:
        def echo_ok() -> bool:
            return run_limited(["echoscu", "-aec", "HIPROUTER", "127.0.0.1", str(port)], 30,
                               "a C-ECHO answer", env=env, capture_output=True).returncode == 0

        wait_for(echo_ok, 120, "hiprouter serve to answer C-ECHO", 0.3, alive)
        # serve has migrated the database: the workers may start now
        procs += [hiprouter(["worker", "--count", "1", "--no-dispatch",
                             "--inference-threads", str(threads)], cfg, log, work)
                  for log in logs]
        # Warm-up: one study per worker at a time until every worker finished a job
        # (model loaded, ONNX session built); these studies are not counted.
        pending = list(warmup)
        while min(jobs_done_by(log) for log in logs) == 0:
            if not pending:
                raise RuntimeError("warm-up studies ran out before every worker ran a job")
            batch, pending = pending[:workers], pending[workers:]
            for files in batch:
                send(files)
            wait_for(lambda b=batch: all(f[0].parent.name in pacs.sr_at for f in b), 900,
                     "the warm-up studies' SRs at the PACS", 0.2, alive)
        acked: dict[str, float] = {}
        if drain:
            for p in procs[1:]:
                p.send_signal(signal.SIGSTOP)
            clock = time.monotonic()
            for files in burst:
                send(files)
            sent_s = time.monotonic() - clock
            wait_for(lambda: pending_jobs(url) == len(burst), 600,
                     "the burst to be routed", 0.2, alive)
        load_before = os.getloadavg()
        cpu_before = [cpu_s(p.pid) for p in procs]
        machine_before = psutil.cpu_times()
        started = time.monotonic()
        if drain:
            for p in procs[1:]:
                p.send_signal(signal.SIGCONT)
            acked = {files[0].parent.name: started for files in burst}
        else:
            for files in burst:
                send(files)
                acked[files[0].parent.name] = time.monotonic()
            sent_s = time.monotonic() - started
        wait_for(lambda: all(uid in pacs.sr_at for uid in acked), 3600,
                 f"the SRs of {len(burst)} studies at the PACS", 0.2, alive)
        load_after = os.getloadavg()
        cpu_used = [cpu_s(p.pid) - b for p, b in zip(procs, cpu_before, strict=True)]
        machine, elapsed = psutil.cpu_times(), time.monotonic() - started
        busy = sum(getattr(machine, f) - getattr(machine_before, f)
                   for f in ("user", "nice", "system", "irq", "softirq"))
        total = max(pacs.sr_at[uid] for uid in acked) - started
        lat = np.array([pacs.sr_at[uid] - acked[uid] for uid in acked])
        per_worker = [jobs_done_by(log) for log in logs]
    finally:
        for p in reversed(procs):
            if drain and p.poll() is None:
                p.send_signal(signal.SIGCONT)
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        pacs.stop()
    return {"workers": workers, "threads_per_worker": threads, "studies": len(burst),
            "mode": "drain" if drain else "burst",
            "send_s": round(sent_s, 2), "total_s": round(total, 2),
            "studies_per_min": round(len(burst) / total * 60.0, 2),
            "p50_s": round(float(np.percentile(lat, 50)), 2),
            "p95_s": round(float(np.percentile(lat, 95)), 2),
            "jobs_per_worker_incl_warmup": per_worker,
            "cpu_s_per_study_serve": round(cpu_used[0] / len(burst), 3),
            "cpu_s_per_study_workers": round(sum(cpu_used[1:]) / len(burst), 3),
            "machine_cores_busy": round(busy / elapsed, 2),
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in load_after]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", type=int, default=24, help="studies in the burst")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                    help="worker process counts to measure, in order")
    ap.add_argument("--model", default="b4", choices=["b4", "demo"],
                    help="b4: efficientnet_b4 @ 380 px, random weights; demo: the shipped "
                         "hardware demo model")
    ap.add_argument("--pipelines", default="hardware", choices=["hardware", "all"],
                    help="hardware alone, or every kind with shipped demo weights in each "
                         "job (with --model demo: the shipped hardware demo among them)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1,
                    help="cores shared by the workers: each gets cores // workers threads")
    ap.add_argument("--threads", type=int, default=None,
                    help="inference threads of every worker, whatever the count "
                         "(default: cores // workers)")
    ap.add_argument("--drain", action="store_true",
                    help="receive and route the burst with the workers stopped, then time "
                         "the workers alone (latencies from their resume)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = ap.parse_args()
    for tool in ("storescu", "echoscu"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install dcmtk")
    bindir = pg_bin()
    if bindir is None:
        sys.exit("PostgreSQL server binaries not found (Debian package postgresql)")
    root = Path(tempfile.mkdtemp(prefix="hiprouter-bench-scale-"))
    results = []
    try:
        model_dirs = [b4_model_dir(root)] if args.model == "b4" else []
        every = args.pipelines == "all"
        pipelines = ALL_PIPELINES if every else None
        burst = write_studies(root / "burst", args.studies, 4343, every)
        print(f"{'drain' if args.drain else 'burst'} of {args.studies} studies x 2 images; "
              f"model={args.model}; pipelines={args.pipelines}; "
              f"complete_after_s={COMPLETE_AFTER_S}; cores={args.cores}; "
              f"started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)
        with postgres_server(bindir) as server:
            for n, workers in enumerate(args.workers):
                warmup = write_studies(root / f"warmup-{n}", 4 * workers, 5000 + n, every)
                threads = args.threads or max(args.cores // workers, 1)
                r = run(workers, threads, model_dirs, burst, warmup, root / f"run-{n}", server,
                        args.drain, pipelines)
                results.append(r)
                print(f"{workers} worker(s) x {threads} thread(s): "
                      f"{r['studies_per_min']:.1f} studies/min ({r['studies']} in "
                      f"{r['total_s']:.1f} s, burst sent in {r['send_s']:.1f} s); "
                      f"{'workers resumed' if args.drain else 'last ack'} -> SR p50 "
                      f"{r['p50_s']:.2f} s, p95 {r['p95_s']:.2f} s; load average "
                      f"{r['load_before'][0]:.2f} -> {r['load_after'][0]:.2f}; CPU s per "
                      f"study: serve {r['cpu_s_per_study_serve']:.2f}, workers "
                      f"{r['cpu_s_per_study_workers']:.2f}; cores busy (whole machine) "
                      f"{r['machine_cores_busy']:.2f} of {os.cpu_count()}", flush=True)
        base = results[0]["studies_per_min"]
        for r in results[1:]:
            print(f"ratio {r['workers']} vs {results[0]['workers']} worker(s): "
                  f"{r['studies_per_min'] / base:.2f}x")
        print(json.dumps(results))
    finally:
        if args.keep:
            print(f"work folder kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
