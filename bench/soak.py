"""Soak: thousands of instances through `hiprouter serve` with inference and dispatch to a
DCMTK storescp, watching the server's memory, file descriptors and threads.

Synthetic hip studies (a small pool rendered once, sent again and again with fresh Study,
Series and SOP Instance UIDs) go in with storescu, one association per study, keeping at
most `--window` studies in flight (sent, triage KOS not yet at the PACS). Every
`--sample-s` seconds the server process's RSS (and that of its children: the pixel
decoding process), open file descriptors and threads are recorded. At the end it prints
the growth after warm-up (the first `--warmup` fraction of studies: models loaded, caches
filled) and the throughput per quarter of the run, and writes the samples as CSV.

    .venv/bin/python bench/soak.py                               # 5000 instances, 500 studies
    .venv/bin/python bench/soak.py --instances 1000 --studies 100 # shorter

Goal (issue 15): RSS growth < 5 % after warm-up, no growth of descriptors or threads, no
slowdown between the first and the last quarter.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.benchwait import GaveUp, run, wait_for  # noqa: E402
from hiprouter.demo import free_port  # noqa: E402
from hiprouter.synth.study import make_study  # noqa: E402

ENV = {**os.environ, "TCP_NODELAY": "1"}
KOS_PREFIX = "KO."


@dataclass
class Sample:
    t: float
    rss_mb: float
    children_rss_mb: float
    fds: int
    threads: int
    studies_sent: int
    studies_done: int


@dataclass
class Pacs:
    """storescp writing to a folder; a poller counts each study's KOS and deletes files."""

    folder: Path
    port: int = field(default_factory=free_port)
    done_at: dict[str, float] = field(default_factory=dict)
    received: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Pacs:
        self.folder.mkdir(parents=True)
        self.proc = subprocess.Popen(["storescp", "-aet", "PACS", "-od", str(self.folder),
                                      str(self.port)], env=ENV,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def poll(self) -> None:
        from pydicom import dcmread

        for entry in os.scandir(self.folder):
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                if entry.name.startswith(KOS_PREFIX):
                    uid = str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)
                    self.done_at.setdefault(uid, time.monotonic())
                path.unlink()
                self.received += 1
            except Exception:
                continue  # still being written; next poll

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)


def study_pool(root: Path, size: int, per_study: int) -> list[list[Path]]:
    """`size` rendered studies, each as `per_study` files (views repeated as needed)."""
    pool = []
    for i in range(size):
        s = make_study(9001, i, size=(600, 750))
        folder = root / "pool" / str(i)
        folder.mkdir(parents=True)
        files = []
        for k in range(per_study):
            p = folder / f"{k}.dcm"
            s.images[k % len(s.images)].dataset.save_as(p, enforce_file_format=True)
            files.append(p)
        pool.append(files)
    return pool


def fresh_copy(files: list[Path], folder: Path) -> tuple[str, list[Path]]:
    """The study with new Study, Series (one per source series) and SOP Instance UIDs."""
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True)
    study_uid = generate_uid()
    series: dict[str, str] = {}
    out = []
    for k, src in enumerate(files):
        ds = dcmread(src)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series.setdefault(str(ds.SeriesInstanceUID), generate_uid())
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        p = folder / f"{k}.dcm"
        ds.save_as(p, enforce_file_format=True)
        out.append(p)
    return study_uid, out


def serve(work: Path, pacs: Pacs, workers: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    config = {
        "node": {"ae_title": "HIPROUTER", "host": "127.0.0.1", "port": port,
                 "allowed_calling": [{"ae_title": "SOAK", "host": "127.0.0.1"}]},
        "database": {"url": f"sqlite:///{work / 'hiprouter.db'}"},
        "storage": {"spool_dir": str(work / "spool"), "output_dir": str(work / "out"),
                    "min_free_mb": 500},
        "studies": {"complete_after_s": 2.0, "sweep_interval_s": 0.5},
        "queue": {"workers": workers, "poll_interval_s": 0.2},
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1",
                                  "port": pacs.port}},
        "rule_mode": base["rule_mode"],
        "rules": base["rules"],
        "pipelines": base["pipelines"],
        "logging": {"level": "WARNING", "json_logs": True},
    }
    cfg = work / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    log = open(work / "serve.log", "wb")  # noqa: SIM115
    # this checkout's code, whatever hiprouter the interpreter has installed
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.Popen([sys.executable, "-c", "from hiprouter.cli import main; main()",
                             "--config", str(cfg), "serve"], stdout=log,
                            stderr=subprocess.STDOUT, cwd=work,
                            env={**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": path})
    return proc, port


def sample(proc: psutil.Process, sent: int, done: int, t0: float) -> Sample:
    with proc.oneshot():
        rss = proc.memory_info().rss
        fds = proc.num_fds()
        threads = proc.num_threads()
    children = sum(c.memory_info().rss for c in proc.children(recursive=True)
                   if c.is_running())
    return Sample(round(time.monotonic() - t0, 1), rss / 2**20, children / 2**20, fds,
                  threads, sent, done)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", type=int, default=5000)
    ap.add_argument("--studies", type=int, default=500)
    ap.add_argument("--pool", type=int, default=6, help="distinct rendered studies")
    ap.add_argument("--window", type=int, default=4, help="studies in flight at most")
    ap.add_argument("--workers", type=int, default=1, help="queue.workers")
    ap.add_argument("--sample-s", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=0.1,
                    help="fraction of the studies before the growth baseline")
    ap.add_argument("--timeout-s", type=float, default=6 * 3600, help="whole run")
    ap.add_argument("--csv", type=Path, default=None, help="samples (default: next to the "
                    "work folder, printed)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    for tool in ("storescu", "storescp", "echoscu"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install dcmtk")
    per_study = max(1, round(args.instances / args.studies))
    root = Path(tempfile.mkdtemp(prefix="hiprouter-soak-"))
    csv_path = args.csv or root.with_name(root.name + ".csv")
    print(f"soak: {args.studies} studies x {per_study} instances, window {args.window}, "
          f"workers {args.workers}, cpu cores {os.cpu_count()}, work {root}", flush=True)
    pool = study_pool(root, args.pool, per_study)
    pacs = Pacs(root / "pacs").start()
    (root / "router").mkdir()
    proc, port = serve(root / "router", pacs, args.workers)
    samples: list[Sample] = []
    sent_at: dict[str, float] = {}
    stop = threading.Event()
    t0 = time.monotonic()

    def serve_alive() -> str | None:
        if proc.poll() is None:
            return None
        return f"hiprouter serve exited ({proc.returncode}); see {root / 'router/serve.log'}"

    def sampler() -> None:
        ps = psutil.Process(proc.pid)
        while not stop.wait(args.sample_s):
            try:
                samples.append(sample(ps, len(sent_at), len(pacs.done_at), t0))
            except psutil.Error:
                return

    try:
        wait_for(lambda: run(["echoscu", "-aet", "SOAK", "-aec", "HIPROUTER", "127.0.0.1",
                              str(port)], 30, "C-ECHO", env=ENV,
                             capture_output=True).returncode == 0,
                 120, "hiprouter serve to answer C-ECHO", 0.5, serve_alive)
        threading.Thread(target=sampler, daemon=True).start()
        deadline = time.monotonic() + args.timeout_s
        for i in range(args.studies):
            def room() -> bool:
                pacs.poll()
                return len(sent_at) - len([u for u in sent_at if u in pacs.done_at]) \
                    < args.window

            wait_for(room, max(1.0, deadline - time.monotonic()),
                     f"room in the window of {args.window} studies in flight (study {i})",
                     0.2, serve_alive)
            uid, files = fresh_copy(pool[i % len(pool)], root / "send" / str(i))
            run(["storescu", "-aet", "SOAK", "-aec", "HIPROUTER", "127.0.0.1", str(port),
                 *map(str, files)], 600, f"study {i} to be stored", env=ENV, check=True,
                capture_output=True)
            sent_at[uid] = time.monotonic()
            shutil.rmtree(root / "send" / str(i))

        def all_done() -> bool:
            pacs.poll()
            return all(u in pacs.done_at for u in sent_at)

        wait_for(all_done, max(1.0, deadline - time.monotonic()),
                 f"the triage KOS of all {args.studies} studies at storescp", 0.5,
                 serve_alive)
        samples.append(sample(psutil.Process(proc.pid), len(sent_at), len(pacs.done_at), t0))
    except GaveUp as exc:
        print(f"soak stopped: {exc}", flush=True)
    finally:
        stop.set()
        proc.terminate()
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
        pacs.stop()
    report(samples, sent_at, pacs, args, csv_path, time.monotonic() - t0, proc.returncode)
    if args.keep:
        print(f"work folder kept: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


def report(samples: list[Sample], sent_at: dict[str, float], pacs: Pacs,
           args: argparse.Namespace, csv_path: Path, wall_s: float, code: int | None) -> None:
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["t_s", "rss_mib", "children_rss_mib", "fds", "threads", "studies_sent",
                    "studies_done"])
        for s in samples:
            w.writerow([s.t, f"{s.rss_mb:.1f}", f"{s.children_rss_mb:.1f}", s.fds, s.threads,
                        s.studies_sent, s.studies_done])
    done = sorted(t for u, t in pacs.done_at.items() if u in sent_at)
    print(f"\n{len(done)} of {len(sent_at)} studies done ({pacs.received} objects at "
          f"storescp) in {wall_s / 60:.1f} min; serve exit code {code}; samples: {csv_path}")
    if len(samples) < 3:
        print("too few samples for growth figures")
        return
    warm = [s for s in samples if s.studies_done >= args.warmup * args.studies] or samples
    base, last = warm[0], samples[-1]
    peak = max(s.rss_mb for s in warm)

    def growth(a: float, b: float) -> str:
        return f"{a:.0f} -> {b:.0f} ({(b - a) / a * 100:+.1f} %)" if a else f"{a} -> {b}"

    print(f"after warm-up (t={base.t:.0f} s, {base.studies_done} studies done) to the end "
          f"(t={last.t:.0f} s):")
    print(f"  RSS MiB          {growth(base.rss_mb, last.rss_mb)}; peak {peak:.0f}")
    print(f"  children RSS MiB {growth(base.children_rss_mb, last.children_rss_mb)}")
    print(f"  open fds         {base.fds} -> {last.fds} (max {max(s.fds for s in warm)})")
    print(f"  threads          {base.threads} -> {last.threads} "
          f"(max {max(s.threads for s in warm)})")
    if len(done) >= 8:
        q = len(done) // 4
        rates = []
        for k in range(4):
            part = done[k * q:(k + 1) * q + 1]
            span = part[-1] - part[0]
            rates.append(60.0 * (len(part) - 1) / span if span > 0 else float("nan"))
        print("  studies/min per quarter: " + ", ".join(f"{r:.1f}" for r in rates)
              + f" (last/first {rates[-1] / rates[0]:.2f})")


if __name__ == "__main__":
    main()
