"""Dispatch and queue throughput on this machine.

1. Dispatch: N queued CR images (512 x 512, 16-bit) sent by the dispatcher to DCMTK
   storescp (TCP_NODELAY=1), with 1 and with `--concurrency` associations; prints
   images/s and MB/s from the first claim to the last recorded `sent`.
2. Queue: N no-op jobs claimed, completed and recorded by worker threads (SQLite file, or
   PostgreSQL with `--pg URL`); prints jobs/s (the cost of claim + lease + complete).
3. Reports (`--reports K`, 0 to skip): the output objects (SR, SCs, SEG, KOS) of K
   synthetic two-view studies with every demo pipeline, sent by the dispatcher to DCMTK
   storescp (prefers Explicit VR, as the router writes them) and to a pynetdicom PACS in
   another process (prefers Implicit VR, as `bench_e2e.py`'s PACS), and by DCMTK storescu
   to the same two peers; prints milliseconds per study of each.

    .venv/bin/python bench/bench_dispatch.py [--images 300] [--jobs 300] [--reports 6] [--pg URL]

Other processes on the machine change the figures; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy import func, select  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench.benchwait import wait_for  # noqa: E402
from hiprouter import db  # noqa: E402
from hiprouter.config import Settings  # noqa: E402
from hiprouter.router.flow import queue  # noqa: E402
from hiprouter.router.flow.dispatch import Dispatcher  # noqa: E402
from hiprouter.router.flow.worker import enqueue_sends  # noqa: E402
from hiprouter.schema import Instance, Job, Send  # noqa: E402
from tests.router.conftest import make_cr_files  # noqa: E402
from tests.router.dicomkit import add_study  # noqa: E402
from tests.router.pacs import StoreSCP  # noqa: E402


def settings(root: Path, url: str, port: int, concurrency: int) -> Settings:
    return Settings.model_validate({
        "database": {"url": url},
        "storage": {"spool_dir": str(root / "spool"), "output_dir": str(root / "out")},
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": port,
                                  "max_concurrent": concurrency}},
        "queue": {"poll_interval_s": 0.05, "send_batch": 50},
    })


def bench_dispatch(root: Path, files: list[Path], concurrency: int,
                   pacs: Any = None, label: str = "") -> float:
    """Seconds from the dispatcher's start to the last file recorded sent (to storescp, or
    to `pacs`: anything with a `port` and `stop()`)."""
    name = label or f"concurrency{concurrency}"
    own = pacs is None
    pacs = pacs or StoreSCP(root / f"pacs-{name}").start()
    url = f"sqlite:///{root / f'dispatch-{name}.db'}"
    cfg = settings(root, url, pacs.port, concurrency)
    db.upgrade(url)
    engine = db.make_engine(url)
    factory = db.session_factory(engine)
    uid = add_study(factory, files, state="routed")
    with factory() as s, s.begin():
        job = queue.enqueue(s, study_uid=uid, pipeline="forward", rule="bench",
                            send_to=["pacs"])
        enqueue_sends(s, job, [Path(p) for p in s.scalars(select(Instance.spool_path))])
    stop = threading.Event()
    dispatcher = Dispatcher(cfg, factory, stop)
    start = time.perf_counter()
    dispatcher.start()
    try:
        def all_sent() -> bool:
            with factory() as s:
                return s.scalar(select(func.count()).select_from(Send)
                                .where(Send.state == "sent")) == len(files)

        wait_for(all_sent, 600, f"{len(files)} sends to storescp to be acknowledged",
                 interval_s=0.02)
        elapsed = time.perf_counter() - start
    finally:
        stop.set()
        dispatcher.join(30)
        if own:
            pacs.stop()
        engine.dispose()
    if label:
        return elapsed
    mb = sum(f.stat().st_size for f in files) / 1e6
    print(f"dispatch  concurrency={concurrency}: {len(files)} images in {elapsed:.2f} s = "
          f"{len(files) / elapsed:.0f} images/s, {mb / elapsed:.1f} MB/s")
    return elapsed


class PynetdicomPACS:
    """hiprouter.demo.LocalPACS (pynetdicom: picks Implicit VR first) in its own process."""

    def __init__(self, folder: Path) -> None:
        code = ("import sys, time; from pathlib import Path; from hiprouter.demo import LocalPACS;"
                "p = LocalPACS(Path(sys.argv[1])).start(); print(p.port, flush=True);"
                "time.sleep(1e9)")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(folder)],
                                     stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONPATH": str(REPO)})
        self.port = int(self.proc.stdout.readline())  # type: ignore[union-attr]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def report_files(root: Path, studies: int) -> list[list[Path]]:
    """The written report objects of `studies` synthetic studies, every demo pipeline."""
    from bench.bench_e2e import ALL_PIPELINES, HARDWARE_CYCLE
    from bench.bench_job import settings_for
    from hiprouter.pipelines.registry import PipelineSet
    from hiprouter.pipelines.runner import analyse_study
    from hiprouter.report.build import build_report, write_bundle
    from hiprouter.synth.study import make_study

    cfg = settings_for(ALL_PIPELINES, root)
    pipeline_set = PipelineSet(cfg)
    out = []
    for i in tqdm(range(studies), desc="reports", unit="study"):
        study = make_study(4343, i, views=("ap_pelvis", "cross_table_lateral"), side="R",
                           hardware=HARDWARE_CYCLE[i % len(HARDWARE_CYCLE)])
        datasets = [img.dataset for img in study.images]
        findings, decoded = analyse_study(pipeline_set, ALL_PIPELINES, study.study_uid,
                                          datasets)
        bundle = build_report(findings.reported(), datasets,
                              {u: img.decoded.display_uint8() for u, img in decoded.items()},
                              cfg.report, {n: cfg.pipelines[n].triage for n in ALL_PIPELINES},
                              cfg.sr_templates_dir)
        out.append(write_bundle(bundle, root / "reports" / str(i)))
    return out


def bench_reports(root: Path, studies: int) -> None:
    """Report objects to storescp and to a pynetdicom PACS: the dispatcher and storescu."""
    per_study = report_files(root, studies)
    files = [f for fs in per_study for f in fs]
    mb = sum(f.stat().st_size for f in files) / 1e6
    print(f"reports   {studies} studies, {len(files)} objects ({len(files) / studies:.1f} per "
          f"study), {mb:.1f} MB")
    for peer in ("storescp", "pynetdicom"):
        folder = root / f"reports-{peer}"
        pacs = StoreSCP(folder).start() if peer == "storescp" else PynetdicomPACS(folder)
        try:
            hip = bench_dispatch(root, files, 1, pacs, f"reports-{peer}")
            clock = time.perf_counter()  # one association, as the dispatcher's batch
            done = subprocess.run(["storescu", "-R", "-aec", "PACS", "127.0.0.1", str(pacs.port),
                                   *map(str, files)], capture_output=True,
                                  env={**os.environ, "TCP_NODELAY": "1"})
            dcmtk = time.perf_counter() - clock
            if done.returncode:
                raise SystemExit(f"storescu failed: {done.stderr.decode()[-400:]}")
        finally:
            pacs.stop()
        prefers = "Explicit" if peer == "storescp" else "Implicit"
        print(f"reports   to {peer} (prefers {prefers} VR): dispatcher "
              f"{1000 * hip / studies:.0f} ms/study, DCMTK storescu "
              f"{1000 * dcmtk / studies:.0f} ms/study (ratio {dcmtk / hip:.2f})")


def bench_queue(url: str, jobs: int, threads: int) -> None:
    db.upgrade(url)
    engine = db.make_engine(url)
    factory = db.session_factory(engine)
    retry = Settings().queue.retry
    with factory() as s, s.begin():
        for i in range(jobs):
            queue.enqueue(s, study_uid=f"1.2.3.{i}", pipeline="forward", rule="bench",
                          send_to=[])
    done = [0] * threads

    def work(n: int) -> None:
        owner = f"bench:{os.getpid()}:{n}"
        while (job := queue.claim(factory, owner, 60, retry)) is not None:
            with db.write_transaction(factory) as s:
                queue.complete(s, job.id, owner)
            done[n] += 1

    start = time.perf_counter()
    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    elapsed = time.perf_counter() - start
    with factory() as s:
        finished = s.scalar(select(func.count()).select_from(Job).where(Job.state == "done"))
    engine.dispose()
    backend = url.split(":", 1)[0]
    print(f"queue     {backend} threads={threads}: {finished} jobs in {elapsed:.2f} s = "
          f"{finished / elapsed:.0f} jobs/s (claim + complete)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--reports", type=int, default=6,
                        help="studies whose report objects are sent (0: skip)")
    parser.add_argument("--pg", help="PostgreSQL URL of an empty database for the queue test")
    args = parser.parse_args()
    os.environ.setdefault("TCP_NODELAY", "1")
    print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    root = Path(tempfile.mkdtemp(prefix="hiprouter-bench-"))
    try:
        files = make_cr_files(root / "study", args.images)
        for concurrency in sorted({1, args.concurrency}):
            bench_dispatch(root, files, concurrency)
        bench_queue(f"sqlite:///{root / 'queue.db'}", args.jobs, 2)
        if args.reports:
            bench_reports(root, args.reports)
        if args.pg:
            bench_queue(args.pg, args.jobs, 4)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
