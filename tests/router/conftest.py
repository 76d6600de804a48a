"""Helpers for receiver tests: a real `hiprouter serve` subprocess, DCMTK peers, test files.

Other test folders reuse these: `router_process` (a factory fixture returning started
`RouterProcess` objects), `make_cr_files`, `storescu`, `dataset_bytes`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy.orm import Session, sessionmaker

from hiprouter import db as dbmod
from tests.conftest import free_port, require_tool

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
TEST_PATIENT_NAME = "HIPTEST^SECRETNAME"
TEST_PATIENT_ID = "PID-7731-SECRET"
STARTED_LINE = "hiprouter started"


def make_cr_files(
    folder: Path,
    count: int,
    *,
    study_uid: str | None = None,
    size: int = 512,
    patient_name: str = TEST_PATIENT_NAME,
    patient_id: str = TEST_PATIENT_ID,
    seed: int = 0,
) -> list[Path]:
    """Write `count` 16-bit CR images (size x size) of one study and series."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CR_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.Modality = "CR"
        ds.BodyPartExamined = "HIP"
        ds.InstanceNumber = i + 1
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = rng.integers(0, 4096, (size, size), dtype=np.uint16).tobytes()
        path = folder / f"cr{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def dataset_bytes(path: Path) -> bytes:
    """The bytes of a DICOM file after its preamble and file meta group.

    A deflated data set is inflated: each tool deflates with its own settings.
    """
    import zlib

    from pydicom.filereader import _read_file_meta_info as read_meta
    from pydicom.filereader import read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    with open(path, "rb") as fh:
        read_preamble(fh, force=False)
        meta = read_meta(fh)
        data = fh.read()
    if meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        data = zlib.decompress(data, -zlib.MAX_WBITS)
    return data


def sop_instance_uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
               .SOPInstanceUID)


def storescu(
    port: int, files: list[Path], *, called: str = "HIPROUTER", calling: str = "STORESCU",
    extra: list[str] | None = None, timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Send `files` with DCMTK storescu (verbose, so acknowledgements can be parsed)."""
    exe = require_tool("storescu")
    env = {**os.environ, "TCP_NODELAY": "1"}
    cmd = [exe, "-v", "-aet", calling, "-aec", called, *(extra or []), "127.0.0.1", str(port),
           *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def echoscu(port: int, *, called: str = "HIPROUTER", calling: str = "ECHOSCU"
            ) -> subprocess.CompletedProcess[str]:
    exe = require_tool("echoscu")
    env = {**os.environ, "TCP_NODELAY": "1"}
    return subprocess.run([exe, "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
                          capture_output=True, text=True, env=env, timeout=60)


class RouterProcess:
    """`hiprouter serve` in a subprocess with its own config, spool, database and log."""

    def __init__(self, root: Path, overrides: dict[str, Any] | None = None,
                 database_url: str | None = None, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.env = dict(env or {})
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config: dict[str, Any] = {
            "node": {"ae_title": "HIPROUTER", "host": "127.0.0.1", "port": self.port},
            "database": {"url": database_url or f"sqlite:///{root / 'hiprouter.db'}"},
            "storage": {"spool_dir": str(root / "spool"), "output_dir": str(root / "out"),
                        "min_free_mb": 50},
            "studies": {"complete_after_s": 1.0, "sweep_interval_s": 0.2},
            "logging": {"level": "INFO", "json_logs": True},
        }
        for section, values in (overrides or {}).items():
            if isinstance(values, dict):
                config.setdefault(section, {}).update(values)
            else:
                config[section] = values
        self.config = config
        self.config_path = root / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.log_path = root / "hiprouter.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.umask: int | None = None
        """The umask the server is started with (None: this process's)."""
        self._engine: Any = None

    @property
    def database_url(self) -> str:
        return str(self.config["database"]["url"])

    @property
    def spool_dir(self) -> Path:
        return Path(self.config["storage"]["spool_dir"])

    def start(self, timeout: float = 60.0) -> RouterProcess:
        """Start the server and wait until it logs that it is listening."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # the child keeps its own descriptor
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from hiprouter.cli import main; main()",
             "--config", str(self.config_path), "serve"],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            umask=-1 if self.umask is None else self.umask,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if STARTED_LINE in self.log_text()[offset:]:
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"hiprouter serve exited:\n{self.log_text()}")
            time.sleep(0.05)
        raise RuntimeError(f"hiprouter serve did not start:\n{self.log_text()}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait (graceful shutdown)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        """SIGKILL, no shutdown at all."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") \
            if self.log_path.exists() else ""

    def session_factory(self) -> sessionmaker[Session]:
        """Sessions on the router's database (for assertions)."""
        if self._engine is None:
            self._engine = dbmod.make_engine(self.database_url)
        return dbmod.session_factory(self._engine)

    def close(self) -> None:
        self.stop()
        if self._engine is not None:
            self._engine.dispose()


@pytest.fixture()
def router_process(tmp_path: Path) -> Iterator[Callable[..., RouterProcess]]:
    """Factory: `router_process(overrides=None, database_url=None, start=True, env=None)`."""
    made: list[RouterProcess] = []

    def make(overrides: dict[str, Any] | None = None, database_url: str | None = None,
             start: bool = True, name: str = "router",
             env: dict[str, str] | None = None) -> RouterProcess:
        router = RouterProcess(tmp_path / f"{name}{len(made)}", overrides, database_url, env)
        made.append(router)
        return router.start() if start else router

    yield make
    for router in made:
        router.close()
