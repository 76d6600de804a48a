"""The durable spool: every received instance becomes one file, written crash-safely.

A file is written to a temporary name in its final folder, flushed with fsync, renamed
atomically, and the folder is fsynced so the rename itself survives a crash. Names are
generated (uuid4), never derived from received values, so no UID can traverse paths.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TMP_SUFFIX = ".tmp"
DCM_SUFFIX = ".dcm"
QUARANTINE_DIR = "quarantine"


@dataclass(frozen=True)
class SpooledFile:
    """A file that is durably on disk: where, how big, and its sha256."""

    path: Path
    size: int
    sha256: str


class Spool:
    """A folder of durably written DICOM files, fanned out by the first hex digits."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync

    def prepare(self) -> None:
        """Create the spool and its 256 fan-out folders (once, at start-up)."""
        for sub in (*(f"{i:02x}" for i in range(256)), QUARANTINE_DIR):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        _fsync_dir(self.root, self.fsync)

    def write(self, data: bytes | memoryview, *, quarantine: bool = False) -> SpooledFile:
        """Write `data` durably to a new file and return where it went.

        On any error the temporary file is removed and the error re-raised, so nothing
        half-written stays behind.
        """
        name = uuid.uuid4().hex
        folder = self.root / (QUARANTINE_DIR if quarantine else name[:2])
        final = folder / f"{name}{DCM_SUFFIX}"
        tmp = folder / f".{name}{TMP_SUFFIX}"
        digest = hashlib.sha256(data).hexdigest()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
            _fsync_dir(folder, self.fsync)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return SpooledFile(final, len(data), digest)

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
