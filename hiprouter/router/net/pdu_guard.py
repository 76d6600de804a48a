"""Bounds on what a peer may make us allocate, enforced before pynetdicom reads a PDU.

pynetdicom's DUL reads whatever PDU length the peer declares (up to 4 GiB), so a raw
socket declaring a 200 MiB A-ASSOCIATE-RQ makes it buffer everything that follows.
`GuardedDUL` reads the 6-byte PDU header itself, aborts the association when the declared
length exceeds the limit for that PDU type, and bounds the size of one C-STORE data set
(data beyond the limit is dropped while reading; the store is then answered 0xA700).

It also reads each PDU with `recv_into` a buffer of the declared size instead of
pynetdicom's 4 KiB `recv` loop, which matters for multi-megabyte P-DATA PDUs.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pynetdicom.transport import RequestHandler

from hiprouter.router.net import pynetdicom_compat as compat
from hiprouter.router.net.pynetdicom_compat import EVT_INVALID_PDU, EVT_TRANSPORT_CLOSED
from hiprouter.router.net.reactor import WakeableDUL, run_association_reactor

# Longest A-ASSOCIATE-RQ/AC/RJ we read: 128 presentation contexts with many transfer
# syntaxes each stay far below this.
MAX_ASSOCIATE_PDU = 1024 * 1024
# A-RELEASE and A-ABORT PDUs are 4 bytes long; anything beyond this is hostile.
MAX_SMALL_PDU = 64 * 1024
# A DIMSE command set is a few hundred bytes; bound what we accumulate for one.
MAX_COMMAND_SET = 64 * 1024
P_DATA_TF = 0x04
_HEADER = struct.Struct(">BBL")
_PDV_HEADER = struct.Struct(">LBB")

# Called with (association, reason) when a PDU is refused; must not raise.
ViolationHook = Callable[[Any, str], None]


@dataclass
class Limits:
    """What one association may send us."""

    max_pdu: int
    max_dataset: int
    max_connections: int
    """Open connections (associated or not) beyond which new ones are closed at once."""
    read_timeout_s: float = 60.0
    """Longest time reading one PDU may take (a peer trickling bytes is cut off)."""
    on_violation: ViolationHook | None = None
    open_connections: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take_slot(self) -> bool:
        """Count one more open connection, unless `max_connections` are open."""
        with self._lock:
            if self.open_connections >= self.max_connections:
                return False
            self.open_connections += 1
            return True

    def free_slot(self) -> None:
        with self._lock:
            self.open_connections -= 1


class GuardedDUL(WakeableDUL):
    """A DUL service provider that checks declared PDU lengths before reading."""

    limits: Limits

    def __init__(self, assoc: Any, limits: Limits) -> None:
        super().__init__(assoc)
        self.limits = limits
        self._dataset_bytes = 0
        self._command_bytes = 0
        self.dataset_too_large = False
        """Set when the current (or last) C-STORE data set exceeded the limit."""
        self._request_read = False

    def _limit_for(self, pdu_type: int) -> int:
        if pdu_type in (0x01, 0x02, 0x03):
            return MAX_ASSOCIATE_PDU
        if pdu_type == P_DATA_TF:
            return self.limits.max_pdu
        return MAX_SMALL_PDU

    def _read_pdu_data(self) -> None:
        """Replaces pynetdicom's (see pynetdicom_compat): bounded, one `recv_into`."""
        sock = self.raw_socket()
        if sock is None:
            self.queue_event(EVT_TRANSPORT_CLOSED)
            return
        header = bytearray(6)
        try:
            complete = _recv_into(sock, memoryview(header), self.limits.read_timeout_s)
        except OSError:
            complete = False
        if not complete:
            self._connection_lost()
            return
        pdu_type, _, length = _HEADER.unpack(header)
        if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
            self.queue_event(EVT_INVALID_PDU)
            return
        limit = self._limit_for(pdu_type)
        if length > limit:
            self._refuse(f"PDU type 0x{pdu_type:02X} declares {length} bytes (limit {limit})")
            return
        pdu_bytes = bytearray(6 + length)
        pdu_bytes[:6] = header
        try:
            complete = _recv_into(sock, memoryview(pdu_bytes)[6:], self.limits.read_timeout_s)
        except OSError:
            complete = False
        if not complete:
            self._connection_lost()
            return
        if pdu_type == P_DATA_TF:
            bounded = self._bound_pdata(memoryview(pdu_bytes)[6:])
            if bounded is None:
                return
            if bounded is not True:
                pdu_bytes = header + bounded
        elif pdu_type == 0x01:
            self._request_read = True
        self.deliver_pdu(pdu_bytes)

    def _bound_pdata(self, view: memoryview) -> bytes | bool | None:
        """Count data-set bytes per message; drop fragments beyond the limit.

        Returns True to keep the PDU as read, replacement bytes for the PDU body, or None
        when the association was aborted.
        """
        items: list[tuple[int, int, memoryview]] = []
        offset, dropped = 0, False
        while offset + 6 <= len(view):
            item_len, context_id, control = _PDV_HEADER.unpack_from(view, offset)
            if item_len < 2 or offset + 4 + item_len > len(view):
                self.queue_event(EVT_INVALID_PDU)
                return None
            data = view[offset + 6 : offset + 4 + item_len]
            offset += 4 + item_len
            if control & 0x01:  # command fragment
                self._command_bytes += len(data)
                if self._command_bytes > MAX_COMMAND_SET:
                    self._refuse(f"DIMSE command set longer than {MAX_COMMAND_SET} bytes")
                    return None
                if control & 0x02:
                    self._command_bytes = 0
                    self._dataset_bytes = 0
            else:
                self._dataset_bytes += len(data)
                if self._dataset_bytes > self.limits.max_dataset:
                    if not self.dataset_too_large:
                        self.dataset_too_large = True
                    data, dropped = view[0:0], True
            items.append((context_id, control, data))
        if not dropped:
            return True
        out = bytearray()
        for context_id, control, data in items:
            out += _PDV_HEADER.pack(len(data) + 2, context_id, control)
            out += data
        return bytes(out)

    def _connection_lost(self) -> None:
        """Evt17; before an A-ASSOCIATE-RQ arrived also wake the waiting acceptor thread.

        pynetdicom's acceptor otherwise waits the whole ACSE timeout for a request that
        can no longer come, holding a connection slot.
        """
        self.queue_event(EVT_TRANSPORT_CLOSED)
        if not self._request_read:
            self.abandon(0x00)

    def _refuse(self, reason: str) -> None:
        """Abort the association without reading the offending PDU."""
        hook = self.limits.on_violation
        if hook is not None:
            hook(self.assoc, reason)
        self.abort_and_close(0x06)  # invalid PDU parameter value
        self.abandon(0x06)


def _recv_into(sock: socket.socket, view: memoryview, timeout_s: float) -> bool:
    """Fill `view` from the socket; False if the peer closed the connection first.

    Raises TimeoutError when the whole read takes longer than `timeout_s`.
    """
    length = len(view)
    got = 0
    deadline = time.monotonic() + timeout_s
    while got < length:
        if time.monotonic() > deadline:
            raise TimeoutError(f"reading a {length}-byte PDU took longer than {timeout_s} s")
        n = sock.recv_into(view[got:], length - got)
        if n == 0:
            return False
        got += n
    return True


def guarded_request_handler(limits: Limits, timeout_s: float | None) -> type[RequestHandler]:
    """A pynetdicom request handler whose associations use `GuardedDUL` and the
    event-driven association loop of `hiprouter.router.net.reactor`."""

    class GuardedRequestHandler(compat.AcceptorRequestHandler):
        def handle(self) -> None:
            if not limits.take_slot():
                if limits.on_violation is not None:
                    limits.on_violation(None, f"more than {limits.max_connections} open "
                                              f"connections; closed {self.client_address[0]}")
                try:
                    self.request.close()
                except OSError:
                    pass
                return
            try:
                super().handle()
            except BaseException:
                limits.free_slot()
                raise

        def prepare_socket(self, sock: Any) -> None:
            if isinstance(sock, socket.socket):
                sock.settimeout(timeout_s)
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass

        def adapt_association(self, assoc: Any) -> None:
            compat.replace_dul(assoc, GuardedDUL(assoc, limits))
            compat.call_after_run(assoc, limits.free_slot)
            compat.replace_reactor(assoc, run_association_reactor)

    return GuardedRequestHandler
