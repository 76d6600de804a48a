"""Hostile peers against `hiprouter serve` (default limits, an allow-list): connection and
association floods and malformed PDUs, with an allow-listed peer's C-ECHO (DCMTK echoscu)
timed throughout. Figures, not a test: the tests (tests/router/net/test_flood.py) assert
outcomes only.

    .venv/bin/python bench/flood_probe.py
    .venv/bin/python bench/flood_probe.py --flood 500 --hold-s 30
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.benchwait import wait_for  # noqa: E402
from tests.router.conftest import RouterProcess  # noqa: E402
from tests.router.rawdul import associate, associate_rq, closed_by_peer, connect  # noqa: E402

ENV = {**os.environ, "TCP_NODELAY": "1"}
CHECKOUT = {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH"))
                                          if p)}
"""The server runs this checkout's code, whatever hiprouter the interpreter has installed."""


class Echoer:
    """C-ECHO from the allow-listed peer every `every_s` while running; keeps the results."""

    def __init__(self, port: int, every_s: float = 0.5) -> None:
        self.port, self.every_s = port, every_s
        self.results: list[tuple[bool, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def once(self) -> tuple[bool, float]:
        t = time.monotonic()
        try:
            ok = subprocess.run(["echoscu", "-to", "10", "-ta", "10", "-td", "10", "-aet",
                                 "LEGIT", "-aec", "HIPROUTER", "127.0.0.1", str(self.port)],
                                env=ENV, capture_output=True, timeout=60).returncode == 0
        except subprocess.TimeoutExpired:
            ok = False
        return ok, time.monotonic() - t

    def _run(self) -> None:
        while not self._stop.is_set():
            self.results.append(self.once())
            self._stop.wait(self.every_s)

    def __enter__(self) -> Echoer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)

    def summary(self) -> str:
        ok = [t for good, t in self.results if good]
        worst = max((t for _, t in self.results), default=0.0)
        med = statistics.median(ok) if ok else float("nan")
        return (f"C-ECHO from the allow-listed peer: {len(ok)}/{len(self.results)} answered, "
                f"median {med * 1000:.0f} ms, slowest {worst * 1000:.0f} ms")


def idle_connections(port: int, n: int, hold_s: float) -> str:
    socks: list[socket.socket] = []
    t = time.monotonic()
    with Echoer(port) as echo:
        for _ in range(n):
            try:
                socks.append(connect(port))
            except OSError:
                pass
        connected = time.monotonic() - t
        time.sleep(hold_s)
        still_open = sum(not closed_by_peer(s) for s in socks)
    for s in socks:
        s.close()
    return (f"{n} idle TCP connections: {len(socks)} connected in {connected:.2f} s; "
            f"{still_open} still open after {hold_s:g} s; {echo.summary()}")


def idle_associations(port: int, n: int, hold_s: float, source: str) -> str:
    socks: list[socket.socket] = []
    answers: dict[str, int] = {}
    names = {0x02: "accepted", 0x03: "rejected", 0x07: "aborted", None: "closed"}
    t = time.monotonic()
    with Echoer(port) as echo:
        for _ in range(n):
            try:
                sock, answer = associate(port, "SCANNER", source=source)
            except OSError:
                answers["connect failed"] = answers.get("connect failed", 0) + 1
                continue
            socks.append(sock)
            key = names.get(answer, str(answer))
            answers[key] = answers.get(key, 0) + 1
        took = time.monotonic() - t
        time.sleep(hold_s)
        still_open = sum(not closed_by_peer(s) for s in socks)
    for s in socks:
        s.close()
    return (f"{n} idle associations of an allow-listed broken device from {source}: "
            f"{answers} in {took:.1f} s; {still_open} still open after {hold_s:g} s; "
            f"{echo.summary()}")


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body)) + body


MALFORMED: dict[str, bytes] = {
    "unknown PDU type 0x08": _pdu(0x08, b"\0" * 16),
    "A-ASSOCIATE-RQ of length 0": _pdu(0x01, b""),
    "A-ASSOCIATE-RQ truncated": associate_rq("LEGIT")[:40],
    "A-ASSOCIATE-RQ protocol version 0": _pdu(0x01, b"\0\0" + associate_rq("LEGIT")[8:]),
    "A-ASSOCIATE-RQ item length beyond PDU": associate_rq("LEGIT")[:-8] + b"\x51\x00\xff\xff"
                                             + b"\0" * 4,
    "A-ASSOCIATE-AC to the acceptor": _pdu(0x02, associate_rq("LEGIT")[6:]),
    "A-ASSOCIATE-RJ to the acceptor": _pdu(0x03, b"\0\x01\x01\x01"),
    "P-DATA before association": _pdu(0x04, struct.pack(">LBB", 6, 1, 3) + b"\0" * 4),
    "A-RELEASE-RQ before association": _pdu(0x05, b"\0" * 4),
    "A-ABORT before association": _pdu(0x07, b"\0" * 4),
    "declared 4 GiB A-ASSOCIATE-RQ": struct.pack(">BBL", 0x01, 0, 0xFFFFFFFF),
    "non-ASCII calling AE": associate_rq("LEGIT").replace(b"LEGIT", b"\xff\xfe\xfd\xfc\xfb"),
    "random bytes": os.urandom(4096),
}


def malformed(port: int) -> list[str]:
    lines = []
    for name, data in MALFORMED.items():
        with connect(port) as sock:
            try:
                sock.sendall(data)
            except OSError:
                pass
            t = time.monotonic()
            try:
                wait_for(lambda s=sock: closed_by_peer(s), 30, "the server to close")
                outcome = f"closed after {time.monotonic() - t:.2f} s"
            except TimeoutError:
                outcome = "STILL OPEN after 30 s"
        ok, took = Echoer(port).once()
        lines.append(f"  {name}: {outcome}; then C-ECHO {'ok' if ok else 'FAILED'} "
                     f"({took * 1000:.0f} ms)")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flood", type=int, default=200)
    ap.add_argument("--hold-s", type=float, default=20.0)
    args = ap.parse_args()
    if shutil.which("echoscu") is None:
        sys.exit("echoscu not found: apt-get install dcmtk")
    root = Path(tempfile.mkdtemp(prefix="hiprouter-flood-"))
    router = RouterProcess(root / "router", {"node": {
        "allowed_calling": [{"ae_title": "LEGIT"}, {"ae_title": "SCANNER"}]}},
        env=CHECKOUT)
    try:
        router.start()
        print(f"hiprouter serve on 127.0.0.1:{router.port}, default limits, cpu cores "
              f"{os.cpu_count()}", flush=True)
        print(idle_connections(router.port, args.flood, args.hold_s), flush=True)
        print(idle_associations(router.port, args.flood, args.hold_s, "127.0.0.2"), flush=True)
        print(idle_associations(router.port, args.flood, args.hold_s, "127.0.0.1"), flush=True)
        print("malformed PDUs:", flush=True)
        for line in malformed(router.port):
            print(line, flush=True)
        with router.session_factory()() as s:
            from sqlalchemy import func, select

            from hiprouter.schema import AuditEvent

            alerts = s.scalar(select(func.count()).select_from(AuditEvent).where(
                AuditEvent.event_id_code.in_(("110113", "110114"))))
        print(f"audit events for all of the above (security alerts, rejections): {alerts}")
    finally:
        router.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
