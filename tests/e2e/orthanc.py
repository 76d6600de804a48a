"""A real Orthanc PACS on loopback for end-to-end tests (Debian package `orthanc`)."""

from __future__ import annotations

import glob
import json
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import free_port


@dataclass
class Orthanc:
    """A running Orthanc with its DICOM port and REST API."""

    ae_title: str
    dicom_port: int
    http_port: int
    workdir: Path
    proc: subprocess.Popen[bytes]

    def get(self, path: str) -> Any:
        """GET a REST resource and decode its JSON."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
            return json.loads(r.read())

    def get_bytes(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
            return bytes(r.read())

    @property
    def dicomweb_root(self) -> str:
        """Base URL of the DICOMweb API (only when started with dicomweb=True)."""
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def upload(self, data: bytes) -> Any:
        """Store one DICOM Part 10 file through the REST API (POST /instances)."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}/instances",
                                     data=data, method="POST",
                                     headers={"Content-Type": "application/dicom"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def study_id(self, study_uid: str) -> str | None:
        """Orthanc's identifier of a study, by Study Instance UID (None when absent)."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}/tools/lookup",
                                     data=study_uid.encode(), method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            found = json.loads(r.read())
        ids = [item["ID"] for item in found if item.get("Type") == "Study"]
        return ids[0] if ids else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# Where Debian's orthanc-dicomweb package puts the plugin (`dpkg -L orthanc-dicomweb`).
DICOMWEB_PLUGIN_GLOBS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so*",
    "/usr/lib/*/orthanc/plugins/libOrthancDicomWeb.so*",
)


def dicomweb_plugin() -> Path | None:
    """Path of Orthanc's DICOMweb plugin (Debian package orthanc-dicomweb), or None."""
    for pattern in DICOMWEB_PLUGIN_GLOBS:
        for path in sorted(glob.glob(pattern)):
            if Path(path).is_file():
                return Path(path)
    return None


def start_orthanc(workdir: Path, ae_title: str = "ORTHANC", *,
                  dicomweb: bool = False,
                  modalities: dict[str, tuple[str, str, int]] | None = None,
                  extra: dict[str, Any] | None = None) -> Orthanc:
    """Start Orthanc with a private storage folder; waits until its REST API answers.

    dicomweb=True loads the DICOMweb plugin (QIDO-RS, WADO-RS, STOW-RS under
    http://127.0.0.1:<http_port>/dicom-web/); FileNotFoundError when it is not installed.
    `modalities`: name -> (AE title, host, port) of peers Orthanc knows (DicomModalities):
    they may query it (C-FIND) and be C-MOVE destinations.
    `extra` adds or replaces configuration keys.
    """
    exe = shutil.which("Orthanc")
    if exe is None:
        raise FileNotFoundError("Orthanc not installed (Debian package orthanc)")
    plugins: list[str] = []
    if dicomweb:
        plugin = dicomweb_plugin()
        if plugin is None:
            raise FileNotFoundError(
                "Orthanc DICOMweb plugin not installed (Debian package orthanc-dicomweb)")
        plugins.append(str(plugin))
    workdir.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "hiprouter-test-pacs",
        "StorageDirectory": str(workdir / "db"),
        "IndexDirectory": str(workdir / "db"),
        "HttpPort": http_port,
        "HttpBindAddress": "127.0.0.1",
        "DicomPort": dicom_port,
        "DicomAet": ae_title,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": True,
        "UnknownSopClassAccepted": False,
        "Plugins": plugins,
        "DicomModalities": {k: list(v) for k, v in (modalities or {}).items()},
    }
    if dicomweb:
        config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
    config.update(extra or {})
    cfg = workdir / "orthanc.json"
    cfg.write_text(json.dumps(config))
    log = open(workdir / "orthanc.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([exe, str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    server = Orthanc(ae_title, dicom_port, http_port, workdir, proc)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited: {(workdir / 'orthanc.log').read_text()[-2000:]}")
        try:
            server.get("/system")
            return server
        except OSError:
            time.sleep(0.2)
    server.stop()
    raise TimeoutError("Orthanc did not start within 30 s")
