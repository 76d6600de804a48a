"""The durable write path: the spool's overlapped fsyncs and when a C-STORE is answered.

The receiver fsyncs in spool threads while it parses and hashes, so these tests check the
order of what reaches the disk against the acknowledgement: for every instance the file's
fsync, its rename, the folder's fsync and the database commit all come before the
success status, and a failing fsync answers 0xA700 and leaves nothing behind.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pynetdicom import AE
from sqlalchemy import event, select

from hiprouter import db as dbmod
from hiprouter.config import Settings, resolve_ref
from hiprouter.router.net.receive import OUT_OF_RESOURCES, SUCCESS, StorageSCP
from hiprouter.router.net.spool import TMP_SUFFIX, Spool
from hiprouter.schema import Instance
from tests.conftest import free_port
from tests.router.conftest import CR_IMAGE_STORAGE, make_cr_files

SLOW_FSYNC_S = 0.03


def _spool_entries(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_pending_file_becomes_durable_with_its_bytes_and_hash(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    data = os.urandom(300_000)
    pending = spool.begin(data)
    assert pending.tmp.exists() and not pending.final.exists()
    with pytest.raises(RuntimeError):
        pending.wait_durable()  # not renamed yet
    pending.rename()
    spooled = pending.wait_durable()
    assert spooled.path.read_bytes() == data
    assert spooled.sha256 == hashlib.sha256(data).hexdigest() and spooled.size == len(data)
    assert _spool_entries(spool.root) == [spooled.path]
    assert not spooled.path.name.endswith(TMP_SUFFIX)
    spool.close()


@pytest.mark.parametrize("stage", ["written", "renamed", "durable"])
def test_discarded_pending_file_leaves_nothing(tmp_path: Path, stage: str) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    pending = spool.begin(b"x" * 10_000)
    if stage != "written":
        pending.rename()
    if stage == "durable":
        pending.wait_durable()
    pending.discard()
    assert _spool_entries(spool.root) == []
    spool.close()


class DiskLog:
    """Records fsyncs (by path), renames, database commits and acknowledgements in order.

    Every fsync is slowed down by `SLOW_FSYNC_S`, as on a busy disk, so that work which
    does not wait for it shows up in the wrong order instead of winning the race.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_fsync_under: Path | None = None
                 ) -> None:
        self.entries: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        real_fsync, real_rename = os.fsync, os.rename

        def fsync(fd: int) -> None:
            path = os.readlink(f"/proc/self/fd/{fd}")
            if fail_fsync_under is not None and path.startswith(str(fail_fsync_under)):
                raise OSError(errno.EIO, "simulated disk error")
            time.sleep(SLOW_FSYNC_S)
            real_fsync(fd)
            self.add("fsync", path)

        def rename(src: Any, dst: Any) -> None:
            real_rename(src, dst)
            self.add("rename", f"{src}->{dst}")

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "rename", rename)

    def add(self, kind: str, what: str) -> None:
        with self._lock:
            self.entries.append((kind, what))

    def index(self, kind: str, what: str, after: int = -1) -> int:
        for i, entry in enumerate(self.entries):
            if i > after and entry == (kind, what):
                return i
        raise AssertionError(f"no {kind} {what} after entry {after}: {self.entries}")

    def first(self, kind: str, after: int) -> int:
        for i, (entry_kind, _) in enumerate(self.entries):
            if i > after and entry_kind == kind:
                return i
        raise AssertionError(f"no {kind} after entry {after}: {self.entries}")

    def assert_durable_before_ack(self, finals: list[tuple[str, Path]]) -> None:
        """For each (SOP Instance UID, spool file) in sending order: the file's fsync, its
        rename, the folder's fsync and a commit all precede its acknowledgement."""
        previous_ack = -1
        for uid, final in finals:
            renamed = next(i for i, (kind, what) in enumerate(self.entries)
                           if kind == "rename" and what.endswith(f"->{final}"))
            tmp = self.entries[renamed][1].split("->")[0]
            file_synced = self.index("fsync", tmp, after=previous_ack)
            folder_synced = self.index("fsync", str(final.parent), after=renamed)
            committed = self.first("commit", after=folder_synced)
            acked = self.index("ack", uid)
            assert previous_ack < file_synced < renamed < folder_synced < committed < acked
            previous_ack = acked


@pytest.fixture
def scp_factory(sqlite_url: str, tmp_path: Path) -> Iterator[Any]:
    """Starts an in-process StorageSCP on a free port; stops it at teardown."""
    started: list[tuple[StorageSCP, Spool]] = []

    def start(disk_log: DiskLog | None = None) -> StorageSCP:
        dbmod.upgrade(sqlite_url)
        settings = Settings.model_validate({
            "node": {"ae_title": "HIPROUTER", "host": "127.0.0.1", "port": free_port()},
            "database": {"url": sqlite_url},
            "storage": {"spool_dir": str(tmp_path / "spool"), "min_free_mb": 10},
        })
        engine = dbmod.make_engine(sqlite_url)
        if disk_log is not None:
            event.listen(engine, "commit", lambda _conn: disk_log.add("commit", ""))
        spool = Spool(settings.storage.spool_dir)
        spool.prepare()
        scp = StorageSCP(settings, dbmod.session_factory(engine), spool)
        scp.start()
        started.append((scp, spool))
        return scp

    yield start
    for scp, spool in started:
        scp.stop()
        spool.close()


def _send(port: int, files: list[Path], disk_log: DiskLog | None = None) -> list[int]:
    """C-STORE each file on one association; returns the statuses in order."""
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CR_IMAGE_STORAGE)
    assoc = ae.associate("127.0.0.1", port, ae_title="HIPROUTER")
    assert assoc.is_established
    statuses = []
    try:
        for path in files:
            ds = dcmread(path)
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status))
            if disk_log is not None:
                disk_log.add("ack", str(ds.SOPInstanceUID))
    finally:
        assoc.release()
    return statuses


def test_success_is_sent_after_fsync_rename_folder_fsync_and_commit(
    scp_factory: Any, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk_log = DiskLog(monkeypatch)
    scp = scp_factory(disk_log)
    files = make_cr_files(tmp_path / "in", 6, size=64)
    assert _send(scp.port, files, disk_log) == [SUCCESS] * len(files)
    engine = dbmod.make_engine(sqlite_url)
    with engine.connect() as conn:
        rows = {r.sop_instance_uid: r.spool_path for r in conn.execute(select(Instance))}
    engine.dispose()
    uids = [str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in files]
    disk_log.assert_durable_before_ack(
        [(uid, resolve_ref(rows[uid], tmp_path / "spool")) for uid in uids])


def test_failing_fsync_answers_a700_and_leaves_no_file_or_row(
    scp_factory: Any, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool_root = tmp_path / "spool"
    scp = scp_factory()  # prepares the spool with working fsyncs
    DiskLog(monkeypatch, fail_fsync_under=spool_root)
    files = make_cr_files(tmp_path / "in", 3, size=64)
    assert _send(scp.port, files) == [OUT_OF_RESOURCES] * 3
    monkeypatch.undo()
    assert [p for p in spool_root.rglob("*") if p.is_file()] == []
    engine = dbmod.make_engine(sqlite_url)
    with engine.connect() as conn:
        assert conn.execute(select(Instance)).first() is None
    engine.dispose()
    # the node goes on serving once the disk recovers
    assert _send(scp.port, make_cr_files(tmp_path / "again", 2, size=64, seed=1)) == [
        SUCCESS, SUCCESS]
