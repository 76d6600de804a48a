"""Receive throughput: hiprouter (durable: fsync + database) vs DCMTK storescp (no fsync).

Sends the same N 512x512 16-bit CR files with DCMTK storescu (TCP_NODELAY=1) to both
receivers in the same run and prints images/s for each and the ratio.

    .venv/bin/python bench/bench_receive.py --n 300 --repeat 3

`--variants` picks the hiprouter configurations measured in each run (default both:
`fast` = node.fast_store on, the lean C-STORE path; `pynetdicom` = node.fast_store off);
each gets its own ratio against the storescp figure of the same run.

Also prints the disk's durability floor: how many files of the same size per second one
thread can write the way the spool must (write, fsync, rename, folder fsync), which bounds
a single association's durable rate whatever the receiver's CPU cost.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.benchwait import communicate, wait_for  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.router.conftest import make_cr_files  # noqa: E402

ENV = {**os.environ, "TCP_NODELAY": "1"}


def wait_port(port: int, timeout: float = 60.0) -> None:
    import socket

    def listening() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_for(listening, timeout, f"a server to listen on port {port}", 0.05)


def send(port: int, called: str, files: list[Path], senders: int = 1) -> float:
    """Seconds `senders` parallel storescu processes need to send `files` (split evenly)."""
    start = time.perf_counter()
    procs = [
        subprocess.Popen(["storescu", "-aec", called, "127.0.0.1", str(port),
                          *map(str, files[i::senders])], env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for i in range(senders)
    ]
    errors = [communicate(p, 1800, f"storescu to send {len(files)} files")[1] for p in procs]
    elapsed = time.perf_counter() - start
    for proc, err in zip(procs, errors, strict=True):
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode(errors='replace')[-2000:]}")
    return elapsed


def start_storescp(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    out = work / "storescp"
    out.mkdir()
    proc = subprocess.Popen(["storescp", "-aet", "STORESCP", "-od", str(out), str(port)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


VARIANTS = {"fast": {"fast_store": True}, "pynetdicom": {"fast_store": False}}


def start_hiprouter(work: Path, args: argparse.Namespace, variant: str
                    ) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    root = work / f"hiprouter-{variant}"
    root.mkdir()
    config = {
        "node": {"ae_title": "HIPROUTER", "host": "127.0.0.1", "port": port,
                 "max_pdu_size": args.max_pdu, **VARIANTS[variant]},
        "database": {"url": args.database or f"sqlite:///{root / 'hiprouter.db'}"},
        "storage": {"spool_dir": str(root / "spool"), "min_free_mb": 100,
                    "fsync": not args.no_fsync},
        "studies": {"complete_after_s": 3600},
        "logging": {"level": "WARNING", "json_logs": True},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(  # this checkout's code, whatever hiprouter is installed
        [sys.executable, "-c", "from hiprouter.cli import main; main()", "--config",
         str(root / "config.yaml"), "serve"], stdout=subprocess.DEVNULL,
        stderr=open(root / "log", "wb"), env={**os.environ, "PYTHONPATH": path},
    )
    wait_port(port)
    return proc, port


def durability_floor(folder: Path, size: int, count: int = 200) -> float:
    """Files/s for write + fsync + rename + folder fsync, one after another."""
    folder.mkdir()
    data = os.urandom(size)
    start = time.perf_counter()
    for i in range(count):
        tmp, final = folder / f".{i}.tmp", folder / f"{i}.dcm"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp, final)
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(dir_fd)
        os.close(dir_fd)
    return count / (time.perf_counter() - start)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its threads."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def spread(values: list[float], digits: int = 1) -> str:
    return (f"min {min(values):.{digits}f} median {statistics.median(values):.{digits}f} "
            f"max {max(values):.{digits}f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="files per run (>= 200)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per receiver")
    parser.add_argument("--max-pdu", type=int, default=4 * 1024 * 1024,
                        help="hiprouter node.max_pdu_size")
    parser.add_argument("--no-fsync", action="store_true", help="storage.fsync: false")
    parser.add_argument("--database", help="database URL (default: SQLite in a temp dir)")
    parser.add_argument("--senders", type=int, default=1,
                        help="parallel storescu processes (associations), files split evenly")
    parser.add_argument("--variants", default="fast,pynetdicom",
                        help=f"comma-separated hiprouter configurations: {', '.join(VARIANTS)}")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    if not variants or any(v not in VARIANTS for v in variants):
        sys.exit(f"--variants: choose from {', '.join(VARIANTS)}")
    if not shutil.which("storescu") or not shutil.which("storescp"):
        sys.exit("needs DCMTK (apt-get install dcmtk)")
    work = Path(tempfile.mkdtemp(prefix="hiprouter-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        files = make_cr_files(work / "files", args.n)
        size_mb = sum(f.stat().st_size for f in files) / 2**20
        print(f"{args.n} files, {size_mb:.0f} MiB, 512x512 16-bit CR, {args.senders} storescu "
              f"in parallel, TCP_NODELAY=1, load average {os.getloadavg()}")
        scp, scp_port = start_storescp(work)
        receivers = [("storescp", scp, scp_port, "STORESCP")]
        procs.append(scp)
        for variant in variants:
            hip, hip_port = start_hiprouter(work, args, variant)
            procs.append(hip)
            receivers.append((variant, hip, hip_port, "HIPROUTER"))
        rates: dict[str, list[float]] = {name: [] for name, *_ in receivers}
        ratios: dict[str, list[float]] = {v: [] for v in variants}
        cpu_ms: dict[str, list[float]] = {name: [] for name, *_ in receivers}
        for run in range(args.repeat):
            # Each hiprouter run sends new SOP Instance UIDs: a resend would be duplicates.
            batch = files if run == 0 else make_cr_files(work / f"files{run}", args.n,
                                                         seed=run)
            for name, proc, port, called in receivers:
                before = cpu_seconds(proc.pid)
                rates[name].append(args.n / send(port, called, batch, args.senders))
                cpu_ms[name].append((cpu_seconds(proc.pid) - before) * 1000 / args.n)
            floor = durability_floor(work / f"floor{run}", files[0].stat().st_size)
            rates.setdefault("floor", []).append(floor)
            line = (f"run {run + 1}: storescp {rates['storescp'][-1]:7.1f}/s "
                    f"({cpu_ms['storescp'][-1]:.2f} ms CPU/image)")
            for variant in variants:
                ratios[variant].append(rates[variant][-1] / rates["storescp"][-1])
                line += (f"   {variant} {rates[variant][-1]:7.1f}/s ratio "
                         f"{ratios[variant][-1]:.2f} ({cpu_ms[variant][-1]:.2f} ms CPU/image)")
            print(f"{line}   disk floor {floor:6.1f} files/s   load {os.getloadavg()[0]:.1f}")
        durable = "no fsync" if args.no_fsync else "fsync file+dir+db"
        print(f"images/s DCMTK storescp: {spread(rates['storescp'])}; CPU ms/image "
              f"{spread(cpu_ms['storescp'], 2)}")
        for variant in variants:
            print(f"hiprouter {variant} ({durable}): images/s {spread(rates[variant])}; "
                  f"ratio per run {spread(ratios[variant], 2)}; CPU ms/image "
                  f"{spread(cpu_ms[variant], 2)}")
        print(f"disk floor files/s: {spread(rates['floor'])}; load average {os.getloadavg()}")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
