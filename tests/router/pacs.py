"""A real PACS for dispatch tests: DCMTK storescp, started and stopped like a peer would be."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from tests.conftest import free_port, require_tool


class StoreSCP:
    """`storescp` writing every received object to its own uniquely named file."""

    def __init__(self, folder: Path, port: int | None = None, ae_title: str = "PACS",
                 extra: list[str] | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.ae_title = ae_title
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self, timeout: float = 20.0) -> StoreSCP:
        exe = require_tool("storescp")
        log = open(self.folder.parent / f"storescp-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [exe, "-aet", self.ae_title, "+uf", "-od", str(self.folder), *self.extra,
             str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TCP_NODELAY": "1"},
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"storescp exited with {self.proc.returncode}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError("storescp did not start listening")

    def stop(self) -> None:
        """SIGTERM, as an administrator stopping the PACS would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def received(self, skip_unfinished: bool = False) -> Counter[str]:
        """How many times each SOP Instance UID arrived.

        storescp writes each object straight to its final name, so a poll can meet a file
        still being written; ``skip_unfinished`` leaves such a file for the next poll instead
        of failing on it.
        """
        uids: Counter[str] = Counter()
        for f in self.folder.iterdir():
            if f.is_file() and not f.name.startswith("."):
                try:
                    uids[str(dcmread(f, stop_before_pixels=True).SOPInstanceUID)] += 1
                except (InvalidDicomError, EOFError, AttributeError, OSError):
                    if not skip_unfinished:
                        raise
        return uids

    def wait_for(self, count: int, timeout: float = 60.0) -> Counter[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.received(skip_unfinished=True)
            if sum(got.values()) >= count:
                return got
            time.sleep(0.1)
        return self.received()
