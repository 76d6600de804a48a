"""Raw-socket DICOM upper layer for hostile-peer tests: connections that never speak,
associations that never do anything, built byte by byte (no pynetdicom on this side)."""

from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Callable

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def associate_rq(calling: str, called: str = "HIPROUTER") -> bytes:
    """An A-ASSOCIATE-RQ PDU proposing Verification with Implicit VR Little Endian."""
    pc = (struct.pack(">BBBB", 1, 0, 0, 0) + _item(0x30, VERIFICATION.encode())
          + _item(0x40, IMPLICIT_LE.encode()))
    user = _item(0x51, struct.pack(">L", 16384))
    body = (struct.pack(">HH", 1, 0) + called.encode().ljust(16) + calling.encode().ljust(16)
            + b"\x00" * 32 + _item(0x10, APPLICATION_CONTEXT.encode()) + _item(0x20, pc)
            + _item(0x50, user))
    return struct.pack(">BBL", 0x01, 0, len(body)) + body


def read_pdu_type(sock: socket.socket, timeout: float = 30.0) -> int | None:
    """The type of the next PDU the server sends (its body is read and dropped); None
    when the server closed the connection instead."""
    sock.settimeout(timeout)
    try:
        header = _read_exactly(sock, 6)
        if header is None:
            return None
        pdu_type, _, length = struct.unpack(">BBL", header)
        if _read_exactly(sock, length) is None:
            return None
        return int(pdu_type)
    except (ConnectionError, OSError):
        return None


def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A TCP connection to the server on loopback from `source` (any 127.x address)."""
    return socket.create_connection(("127.0.0.1", port), timeout=30,
                                    source_address=(source, 0))


def associate(port: int, calling: str, called: str = "HIPROUTER",
              source: str = "127.0.0.1") -> tuple[socket.socket, int | None]:
    """Connect and send an A-ASSOCIATE-RQ; returns the socket and the answer's PDU type
    (0x02 accept, 0x03 reject, 0x07 abort, None closed)."""
    sock = connect(port, source)
    sock.sendall(associate_rq(calling, called))
    return sock, read_pdu_type(sock)


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the server has closed (or aborted) the connection; never blocks."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    if not readable:
        return False
    try:
        sock.setblocking(False)
        while True:  # an A-ABORT (or A-RELEASE-RQ) may come before the close
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def wait_until(predicate: Callable[[], bool], timeout: float = 60.0,
               what: str = "condition") -> None:
    """Poll `predicate` until it holds; fail with `what` after `timeout` seconds (a safety
    net for a hung server, not a measurement)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout:.0f} s for {what}")
        time.sleep(0.05)
