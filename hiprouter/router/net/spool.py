"""The durable spool: every received instance becomes one file, written crash-safely.

A file is written to a temporary name in its final folder, flushed with fsync, renamed
atomically, and the folder is fsynced so the rename itself survives a crash. The file's
fsync runs in a spool thread so the receiving thread can parse and hash meanwhile. Names are
generated (uuid4), never derived from received values, so no UID can traverse paths.
Files are created 0600 in folders of 0700 (`hiprouter.fileperms`), whatever the umask.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from hiprouter import fileperms
from hiprouter.config import path_ref

TMP_SUFFIX = ".tmp"
DCM_SUFFIX = ".dcm"
QUARANTINE_DIR = "quarantine"


FSYNC_THREADS = 8
"""Threads that run file fsyncs, so a receiving thread works on while the disk flushes."""


@dataclass(frozen=True)
class SpooledFile:
    """A file that is durably on disk: where, how big, its sha256, and how the database
    refers to it (`spool:<relative path>`, the same on every host that mounts the spool)."""

    path: Path
    size: int
    sha256: str
    ref: str


class PendingFile:
    """A spool file on its way to disk: temporary, then renamed, then durable.

    The file's fsync and the hash run in spool threads (both release the GIL) while the
    caller parses: `Spool.begin` starts them, `rename` waits for them and renames,
    `wait_durable` fsyncs the folder. Only then may the instance be recorded and acknowledged. The
    folder fsync runs in the caller's thread: nothing is left to overlap it with, and
    each handoff to another thread costs a GIL round trip.
    """

    def __init__(self, spool: Spool, data: bytes | memoryview, tmp: Path, final: Path) -> None:
        self.spool = spool
        self.tmp = tmp
        self.final = final
        self.size = len(data)
        self._data = data
        self._sha256: str | None = None
        self._file_sync: Future[None] | None = None
        self._hashing: Future[str] | None = None
        self._renamed = False
        self._durable = False

    def start_fsync(self, fd: int) -> None:
        """Flush and close `fd` (the temporary file) in a spool thread if fsync is on.

        Then the sha256 is computed in another spool thread meanwhile: measured, that beat
        hashing in the receiving thread by a third on a loaded machine. Without fsync the
        receiving thread hashes (a handoff would cost more than it saves).
        """
        if not self.spool.fsync:
            os.close(fd)
            return
        data = self._data

        def sync_and_close() -> None:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        try:
            self._file_sync = self.spool._submit(sync_and_close)
        except BaseException:
            os.close(fd)
            raise
        self._hashing = self.spool._submit(lambda: hashlib.sha256(data).hexdigest())

    @property
    def sha256(self) -> str:
        """Hex sha256 of the data (hashlib releases the GIL while it hashes)."""
        if self._sha256 is None:
            self._sha256 = (self._hashing.result() if self._hashing is not None
                            else hashlib.sha256(self._data).hexdigest())
        return self._sha256

    def rename(self) -> None:
        """Hash, wait for the file's fsync, and rename the file to its final name."""
        self.sha256  # noqa: B018 - the hash is needed anyway; get it before the rename
        if self._file_sync is not None:
            self._file_sync.result()
        os.rename(self.tmp, self.final)
        self._renamed = True

    def wait_durable(self) -> SpooledFile:
        """Make the rename durable (folder fsync); returns the durable file."""
        if not self._renamed:
            raise RuntimeError("rename() first")
        if not self._durable:
            _fsync_dir(self.final.parent, self.spool.fsync)
            self._durable = True
        self._data = b""
        return SpooledFile(self.final, self.size, self.sha256, self.spool.ref(self.final))

    def discard(self) -> None:
        """Remove the file, wherever it got to (never raises for a missing file)."""
        if self._file_sync is not None:
            try:
                self._file_sync.result()
            except OSError:
                pass
        self.tmp.unlink(missing_ok=True)
        if self._renamed:
            self.spool.remove(self.final)


class Spool:
    """A folder of durably written DICOM files, fanned out by the first hex digits."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def close(self) -> None:
        """Stop the fsync threads (after the last write finished)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def prepare(self) -> None:
        """Create the spool and its 256 fan-out folders (once, at start-up), all with the
        service's folder mode (`hiprouter.fileperms`), also when they exist already."""
        fileperms.make_dirs(self.root)
        fileperms.tighten(self.root)
        for sub in (*(f"{i:02x}" for i in range(256)), QUARANTINE_DIR):
            folder = self.root / sub
            fileperms.make_dirs(folder)
            fileperms.tighten(folder)
        _fsync_dir(self.root, self.fsync)

    def write(self, data: bytes | memoryview, *, quarantine: bool = False) -> SpooledFile:
        """Write `data` durably to a new file and return where it went.

        On any error the temporary file is removed and the error re-raised, so nothing
        half-written stays behind.
        """
        pending = self.begin(data, quarantine=quarantine)
        try:
            pending.rename()
            return pending.wait_durable()
        except BaseException:
            pending.discard()
            raise

    def begin(self, data: bytes | memoryview, *, quarantine: bool = False) -> PendingFile:
        """Write `data` to a temporary file and start its fsync in the background.

        The caller may do other work (parse, hash, prepare the database row) while the
        disk flushes, then calls `rename()` and `wait_durable()`, or `discard()`.
        """
        name = uuid.uuid4().hex
        folder = self.root / (QUARANTINE_DIR if quarantine else name[:2])
        pending = PendingFile(self, data, folder / f".{name}{TMP_SUFFIX}",
                              folder / f"{name}{DCM_SUFFIX}")
        fd = os.open(pending.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                     fileperms.file_mode())
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        except BaseException:
            os.close(fd)
            pending.tmp.unlink(missing_ok=True)
            raise
        try:
            pending.start_fsync(fd)
        except BaseException:
            pending.discard()
            raise
        return pending

    def _submit(self, func: Callable[[], None]) -> Future[None]:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(FSYNC_THREADS, thread_name_prefix="spool-fsync")
            return self._pool.submit(func)

    def ref(self, path: Path) -> str:
        """The database's reference to a file of this spool (`spool:<relative path>`)."""
        return path_ref(path, self.root)

    def remove(self, path: Path) -> None:
        """Remove a spooled file (used when the database step fails after the write)."""
        Path(path).unlink(missing_ok=True)
        _fsync_dir(Path(path).parent, self.fsync)

    def free_mb(self) -> float:
        """Free space on the spool's file system in MiB."""
        return shutil.disk_usage(self.root).free / (1024 * 1024)

    def files(self) -> Iterator[Path]:
        """Every spooled file (not temporaries, not quarantine)."""
        for i in range(256):
            folder = self.root / f"{i:02x}"
            if not folder.is_dir():
                continue
            for entry in os.scandir(folder):
                if entry.name.endswith(DCM_SUFFIX) and not entry.name.startswith("."):
                    yield Path(entry.path)

    def remove_stale_temporaries(self, older_than_s: float = 600.0) -> int:
        """Delete temporary files left by a crash; returns how many were removed."""
        cutoff = time.time() - older_than_s
        removed = 0
        for tmp in self.root.glob(f"*/.*{TMP_SUFFIX}"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


def _fsync_dir(folder: Path, enabled: bool) -> None:
    if not enabled:
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
