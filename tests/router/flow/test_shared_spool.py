"""A spool and output folder on shared storage, mounted at a different path on each host.

Real processes on a real PostgreSQL server: `hiprouter serve` ("host A") receives a study
with storescu and routes it, `hiprouter worker` ("host B", another path to the same files)
runs the job, and `serve` on host A sends B's report to the PACS. Each process runs while
the other host's path does not exist, so only references relative to `storage.spool_dir` /
`storage.output_dir` can work (docs/scaling.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from hiprouter import db
from hiprouter.schema import Instance, Job, Output, Send
from tests.conftest import free_port
from tests.router.conftest import storescu
from tests.router.dicomkit import make_study
from tests.router.pacs import StoreSCP
from tests.toy import NO_ANATOMY_CHECK

REPO = Path(__file__).resolve().parents[3]


def _config(tmp_path: Path, host: str, mount: Path, url: str, port: int,
            pacs_port: int) -> Path:
    cfg = {
        "node": {"ae_title": "HIPROUTER", "host": "127.0.0.1", "port": port},
        "database": {"url": url},
        "storage": {"spool_dir": str(mount / "spool"), "output_dir": str(mount / "out"),
                    "min_free_mb": 10},
        "studies": {"complete_after_s": 0.5, "sweep_interval_s": 0.2},
        "queue": {"workers": 0, "poll_interval_s": 0.1},
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}},
        "rules": [{"name": "hip", "match": {"tag": "BodyPartExamined", "in": ["HIP"]},
                   "pipelines": ["marked"], "send_to": ["pacs"]}],
        "pipelines": {"marked": {"kind": "marked"}},
        "plugins": ["tests.router.testpipes"],
        "report": {"secondary_captures": False},
        "inference": NO_ANATOMY_CHECK,
        "logging": {"level": "INFO", "json_logs": True},
    }
    path = tmp_path / f"config-{host}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _start(config: Path, log: Path, *args: str, ready: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from hiprouter.cli import main; main()", "--config",
             str(config), *args], stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    _until(lambda: ready in log.read_text(errors="replace"), 60, f"{args[0]} to start",
           proc, log)
    return proc


def _until(predicate: Callable[[], bool], timeout_s: float, what: str,
           proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"exited waiting for {what}: {log.read_text()[-3000:] if log else ''}")
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(60)


@pytest.mark.postgres
def test_worker_on_another_mount_path_runs_jobs_received_elsewhere(
    pg_url: str, tmp_path: Path
) -> None:
    db.upgrade(pg_url)
    engine = db.make_engine(pg_url)
    factory = db.session_factory(engine)
    export = tmp_path / "nfs-export"  # the shared storage itself
    export.mkdir()
    host_a, host_b = tmp_path / "host-a-mnt", tmp_path / "host-b-mnt"
    pacs = StoreSCP(tmp_path / "pacs").start()
    port = free_port()
    cfg_a = _config(tmp_path, "a", host_a, pg_url, port, pacs.port)
    cfg_b = _config(tmp_path, "b", host_b, pg_url, free_port(), pacs.port)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # host A receives and routes; only host A's path exists
        host_a.symlink_to(export)
        serve = _start(cfg_a, tmp_path / "a1.log", "serve", ready="hiprouter started")
        procs.append(serve)
        files = make_study(tmp_path / "in", 1, 2, BodyPartExamined="HIP")
        assert storescu(port, files).returncode == 0
        _until(lambda: _job_states(factory) == ["pending"], 60, "the study to be routed",
               serve, tmp_path / "a1.log")
        assert _stop(procs.pop()) == 0
        with factory() as s:
            refs = s.scalars(select(Instance.spool_path)).all()
        assert len(refs) == 2 and all(r.startswith("spool:") for r in refs), refs

        # host B runs the job: another mount path, host A's is gone
        host_a.rename(tmp_path / "host-a-unmounted")
        host_b.symlink_to(export)
        worker = _start(cfg_b, tmp_path / "b.log", "worker", "--no-dispatch",
                        ready="worker process ready")
        procs.append(worker)
        _until(lambda: _job_states(factory) == ["done"], 120, "host B to run the job",
               worker, tmp_path / "b.log")
        assert _stop(procs.pop()) == 0
        with factory() as s:
            outputs = s.scalars(select(Output.path)).all()
            sends = s.scalars(select(Send.path)).all()
        assert len(outputs) == 2 and all(o.startswith("output:") for o in outputs), outputs
        assert sorted(sends) == sorted(outputs)
        assert "start" in (export / "runs.log").read_text()  # the pipeline ran on B

        # host A sends what host B wrote; host B's path is gone
        host_b.unlink()
        (tmp_path / "host-a-unmounted").rename(host_a)
        serve = _start(cfg_a, tmp_path / "a2.log", "serve", ready="hiprouter started")
        procs.append(serve)
        received = pacs.wait_for(2, timeout=60)
        _until(lambda: _send_states(factory) == ["sent", "sent"], 60, "the sends to finish",
               serve, tmp_path / "a2.log")
        assert _stop(procs.pop()) == 0
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
        pacs.stop()
        engine.dispose()
    assert len(received) == 2 and set(received.values()) == {1}  # SR and KOS, once each


def _job_states(factory: sessionmaker[Session]) -> list[str]:
    with factory() as s:
        return list(s.scalars(select(Job.state)).all())


def _send_states(factory: sessionmaker[Session]) -> list[str]:
    with factory() as s:
        return list(s.scalars(select(Send.state)).all())


def test_shared_spool_start_up_leaves_young_files_of_other_receivers(
    sqlite_url: str, tmp_path: Path
) -> None:
    """With `storage.shared_spool` a starting receiver neither records a file another
    receiver has just renamed (its row is being committed) nor removes its temporaries;
    old leftovers are still recovered. References are relative to the spool."""
    from hiprouter.router.net.receive import record_unrecorded_files
    from hiprouter.router.net.spool import Spool

    db.upgrade(sqlite_url)
    engine = db.make_engine(sqlite_url)
    spool = Spool(tmp_path / "spool", fsync=False)
    spool.prepare()
    (src,) = make_study(tmp_path / "in", 1, 1)
    written = spool.write(src.read_bytes())
    tmp = written.path.with_name(".other.tmp")
    tmp.write_bytes(b"half")
    try:
        assert spool.remove_stale_temporaries(older_than_s=600) == 0 and tmp.exists()
        assert record_unrecorded_files(engine, spool, min_age_s=600) == 0
        old = time.time() - 3600
        os.utime(written.path, (old, old))
        assert record_unrecorded_files(engine, spool, min_age_s=600) == 1
        with engine.connect() as conn:
            assert conn.execute(select(Instance.spool_path)).scalars().all() == [written.ref]
        assert written.ref == "spool:" + written.path.relative_to(spool.root).as_posix()
    finally:
        spool.close()
        engine.dispose()


def test_file_references_are_relative_to_their_folder(tmp_path: Path) -> None:
    from hiprouter.config import StorageConfig

    a = StorageConfig(spool_dir=tmp_path / "a" / "spool", output_dir=tmp_path / "a" / "out")
    b = StorageConfig(spool_dir=Path("/mnt/b/spool"), output_dir=Path("/mnt/b/out"))
    spooled, report = a.spool_dir / "ab" / "x.dcm", a.output_dir / "7-c0ffee" / "sr.dcm"
    assert a.ref(spooled) == "spool:ab/x.dcm" and a.ref(report) == "output:7-c0ffee/sr.dcm"
    assert b.resolve(a.ref(spooled)) == Path("/mnt/b/spool/ab/x.dcm")
    assert b.resolve(a.ref(report)) == Path("/mnt/b/out/7-c0ffee/sr.dcm")
    elsewhere = tmp_path / "models" / "m.onnx"
    assert a.ref(elsewhere) == str(elsewhere) and b.resolve(str(elsewhere)) == elsewhere
    assert a.ref(a.spool_dir / ".." / "out" / "x.dcm") == "output:x.dcm"  # normalised
    for bad in ("spool:../etc/passwd", "output:/etc/passwd"):
        with pytest.raises(ValueError):
            b.resolve(bad)
