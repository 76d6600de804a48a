"""Bounds on what a peer may make us allocate, enforced before pynetdicom reads a PDU.

pynetdicom's DUL reads whatever PDU length the peer declares (up to 4 GiB), so a raw
socket declaring a 200 MiB A-ASSOCIATE-RQ makes it buffer everything that follows.
`GuardedDUL` reads the 6-byte PDU header itself, aborts the association when the declared
length exceeds the limit for that PDU type, and bounds the size of one C-STORE data set
(data beyond the limit is dropped while reading; the store is then answered 0xA700).

It also runs the pre-association timer: a connection has `request_timeout_s` from the
TCP accept to deliver a whole A-ASSOCIATE-RQ (TLS handshake included), separate from the
ARTIM/ACSE timeouts of real associations, and the connection gate (`gate.py`) decides
which connections and associations stay when peers flood the port.

It also reads each PDU with `recv_into` a buffer of the declared size instead of
pynetdicom's 4 KiB `recv` loop, which matters for multi-megabyte P-DATA PDUs.

With `Limits.fast_store` set (node.fast_store) it serves a plain C-STORE-RQ itself: the
command set is parsed here, the data set's fragments are read straight into a
`fast_store.StoreBuffer`, the SCP's C-STORE handler is called in this thread and the
response is sent from here (see `fast_store.py`); the same limits apply.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from hiprouter.logs import get_logger
from hiprouter.router.net import pynetdicom_compat as compat
from hiprouter.router.net.fast_store import (
    HANDLER_FAILED,
    FastStore,
    FastStoreEvent,
    StoreBuffer,
    StoreCommand,
    file_meta,
    parse_command,
    store_response_pdu,
)
from hiprouter.router.net.gate import Conn, Gate
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
MIN_PEER_PDU = 1024
"""The lean C-STORE path answers in one PDU: only for peers that accept one this long."""
SKIP_CHUNK = 64 * 1024

log = get_logger(__name__)

# Called with (association, reason) when a PDU is refused; must not raise.
ViolationHook = Callable[[Any, str], None]
SilentHook = Callable[[str, str], None]


@dataclass
class Limits:
    """What one association may send us."""

    max_pdu: int
    max_dataset: int
    read_timeout_s: float = 60.0
    """Longest time reading one PDU may take (a peer trickling bytes is cut off)."""
    request_timeout_s: float = 5.0
    """Longest time from the TCP accept until a whole A-ASSOCIATE-RQ has been read (TLS
    handshake included); then the connection is closed."""
    on_violation: ViolationHook | None = None
    on_silent: SilentHook | None = None
    """Called with (peer host, reason) when a connection is closed for sending no
    A-ASSOCIATE-RQ in time; must not raise."""
    fast_store: FastStore | None = None
    """Serve plain C-STORE-RQs without pynetdicom's DIMSE machinery (node.fast_store)."""


class GuardedDUL(WakeableDUL):
    """A DUL service provider that checks declared PDU lengths before reading."""

    limits: Limits

    def __init__(self, assoc: Any, limits: Limits, conn: Conn | None = None) -> None:
        super().__init__(assoc)
        self.limits = limits
        self.conn = conn
        self._dataset_bytes = 0
        self._command_bytes = 0
        self.dataset_too_large = False
        """Set when the current (or last) C-STORE data set exceeded the limit."""
        self._request_read = False
        accepted = conn.accepted_at if conn is not None else time.monotonic()
        self._request_deadline = accepted + limits.request_timeout_s
        # the lean C-STORE path: the request whose data set is being read, its buffer,
        # the storage contexts {id: (abstract syntax, transfer syntax)} once established
        self._storing: StoreCommand | None = None
        self._store_syntax = ""
        self._store_buffer: StoreBuffer | None = None
        self._store_contexts: dict[int, tuple[str, str]] | None = None
        self._serving = False
        self._pdv_header = bytearray(6)

    # -- the pre-association timer and preemption ----------------------------------------

    def idle_wait(self) -> None:
        super().idle_wait()
        if not self._request_read and time.monotonic() > self._request_deadline:
            self._request_timed_out()

    def _request_timed_out(self) -> None:
        """No whole A-ASSOCIATE-RQ within `request_timeout_s`: close the connection."""
        if self._kill_thread:
            return
        hook = self.limits.on_silent
        if hook is not None:
            hook(self.conn.host if self.conn is not None else "", _silent(self.limits))
        self.socket.close()
        self.abandon(0x00)

    def idle_timer_expired(self) -> bool:
        """Also True when the gate preempted this association: the association thread
        then aborts it as it would after the network timeout."""
        if self.conn is not None and self.conn.preempted:
            return True
        if self._serving:  # a C-STORE served in this thread is not idleness
            return False
        return bool(super().idle_timer_expired())

    def send_pdu(self, primitive: Any) -> None:
        if self.conn is not None:
            self.conn.touch()
        super().send_pdu(primitive)

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
        timeout_s = self.limits.read_timeout_s
        if not self._request_read:
            timeout_s = min(timeout_s, self._request_deadline - time.monotonic())
            if timeout_s <= 0:
                self._request_timed_out()
                return
        header = bytearray(6)
        try:
            complete = _recv_into(sock, memoryview(header), timeout_s)
        except TimeoutError:
            self._read_timed_out()
            return
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
        if pdu_type == P_DATA_TF and self._storing is not None:
            if self.conn is not None:
                self.conn.in_message = True
            self._read_store_pdu(sock, length)
            return
        pdu_bytes = bytearray(6 + length)
        pdu_bytes[:6] = header
        if not self._request_read:
            timeout_s = self._request_deadline - time.monotonic()
        try:
            complete = _recv_into(sock, memoryview(pdu_bytes)[6:], timeout_s)
        except TimeoutError:
            self._read_timed_out()
            return
        except OSError:
            complete = False
        if not complete:
            self._connection_lost()
            return
        if self.conn is not None:
            self.conn.touch()
        if pdu_type == P_DATA_TF:
            if self.conn is not None:
                self.conn.in_message = True  # until the SCP has served the request
            if self.limits.fast_store is not None and \
                    self._start_store(memoryview(pdu_bytes)[6:]):
                return
            bounded = self._bound_pdata(memoryview(pdu_bytes)[6:])
            if bounded is None:
                return
            if bounded is not True:
                pdu_bytes = header + bounded
        elif pdu_type == 0x01 and not self._request_read:
            self._request_read = True
            try:  # from now on a read may take the network timeout
                sock.settimeout(self.limits.read_timeout_s)
            except OSError:
                pass
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

    # -- the lean C-STORE path -----------------------------------------------------------

    def _storage_contexts(self) -> dict[int, tuple[str, str]]:
        """Accepted contexts we serve C-STOREs on as SCP, by ID; none when the peer's
        maximum PDU length cannot take our response in one PDU."""
        if self._store_contexts is None:
            fast = self.limits.fast_store
            assoc = self.assoc
            peer_max = int(assoc.requestor.maximum_length or 0)
            self._store_contexts = {} if fast is None or 0 < peer_max < MIN_PEER_PDU else {
                int(cx.context_id): (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                for cx in assoc.accepted_contexts
                if cx.as_scp and str(cx.abstract_syntax) in fast.storage_classes}
        return self._store_contexts

    def _start_store(self, view: memoryview) -> bool:
        """Take a P-DATA-TF PDU that holds a whole C-STORE-RQ command set (and maybe
        data-set fragments) on the lean path; False leaves it to pynetdicom."""
        if self._command_bytes or len(view) < 6:
            return False
        item_len, context_id, control = _PDV_HEADER.unpack_from(view, 0)
        if control != 0x03 or item_len < 2 or 4 + item_len > len(view):
            return False
        if not self.store_ready():
            return False
        context = self._storage_contexts().get(context_id)
        if context is None:
            return False
        command = parse_command(view[6:4 + item_len], context_id)
        if command is None or command.sop_class_uid != context[0]:
            return False
        rest = view[4 + item_len:]
        offset = 0  # any further fragments must be this request's data set
        while offset < len(rest):
            if offset + 6 > len(rest):
                return False
            length, cx, flags = _PDV_HEADER.unpack_from(rest, offset)
            if cx != context_id or flags & 0x01 or length < 2 or \
                    offset + 4 + length > len(rest):
                return False
            offset += 4 + length
        if self._store_buffer is None:
            self._store_buffer = StoreBuffer()
        self._store_buffer.begin(file_meta(command.sop_class_uid, command.sop_instance_uid,
                                           context[1]))
        self._storing, self._store_syntax = command, context[1]
        self.dataset_too_large = False
        offset, last = 0, False
        while offset < len(rest):
            length, _, flags = _PDV_HEADER.unpack_from(rest, offset)
            if last:
                self._store_violation("data after the last fragment of a C-STORE data set")
                return True
            self._add_data(rest[offset + 6:offset + 4 + length])
            offset += 4 + length
            last = bool(flags & 0x02)
        if last:
            self._finish_store()
        return True

    def _add_data(self, data: memoryview) -> None:
        buffer = self._store_buffer
        assert buffer is not None
        if self.dataset_too_large or buffer.data_size + len(data) > self.limits.max_dataset:
            self.dataset_too_large = True
            return
        buffer.append(data)

    def _read_store_pdu(self, sock: Any, length: int) -> None:
        """Read a P-DATA-TF PDU of the data set being received on the lean path: each
        fragment with `recv_into` straight into the store buffer."""
        command, buffer = self._storing, self._store_buffer
        assert command is not None and buffer is not None
        header = memoryview(self._pdv_header)
        timeout_s = self.limits.read_timeout_s
        remaining, last = length, False
        try:
            while remaining:
                if remaining < 6 or last:
                    self._store_violation("malformed P-DATA-TF PDU during a C-STORE")
                    return
                if not _recv_into(sock, header, timeout_s):
                    self._store_lost()
                    return
                item_len, context_id, control = _PDV_HEADER.unpack(header)
                if item_len < 2 or 4 + item_len > remaining:
                    self._store_violation("malformed P-DATA-TF PDU during a C-STORE")
                    return
                if context_id != command.context_id or control & 0x01:
                    self._store_violation("unexpected fragment during a C-STORE data set")
                    return
                size = item_len - 2
                remaining -= 4 + item_len
                if self.dataset_too_large or \
                        buffer.data_size + size > self.limits.max_dataset:
                    self.dataset_too_large = True
                    complete = _skip(sock, size, timeout_s)
                else:
                    complete = _recv_into(sock, buffer.reserve(size), timeout_s)
                    buffer.commit(size)
                if not complete:
                    self._store_lost()
                    return
                last = bool(control & 0x02)
        except OSError:  # TimeoutError included: a peer trickling bytes
            self._store_lost()
            return
        if self.conn is not None:
            self.conn.touch()
        if last:
            self._finish_store()

    def _finish_store(self) -> None:
        """The whole data set is here: call the C-STORE handler, send its status."""
        command, buffer, fast = self._storing, self._store_buffer, self.limits.fast_store
        assert command is not None and buffer is not None and fast is not None
        self._storing = None
        self._serving = True
        try:
            status = int(fast.handler(FastStoreEvent(self.assoc, command, self._store_syntax,
                                                     buffer)))
        except Exception as exc:
            log.error("C-STORE handler failed", sop_instance_uid=command.sop_instance_uid,
                      error=str(exc))
            status = HANDLER_FAILED
        finally:
            self._serving = False
            buffer.release()
        sock = self.raw_socket()
        try:
            if sock is None:
                raise OSError("no socket")
            sock.sendall(store_response_pdu(command, status))
        except OSError:
            self.queue_event(EVT_TRANSPORT_CLOSED)
            return
        if self.conn is not None:
            self.conn.touch()

    def _store_lost(self) -> None:
        """The connection failed while a data set was read: nothing is stored."""
        self._storing = None
        if self._store_buffer is not None:
            self._store_buffer.release()
        if self.conn is not None:
            self.conn.in_message = False
        self._connection_lost()

    def _store_violation(self, reason: str) -> None:
        self._storing = None
        if self._store_buffer is not None:
            self._store_buffer.release()
        self._refuse(reason)

    def _read_timed_out(self) -> None:
        """A read did not complete in time: before the request that is the
        pre-association timer, after it a peer trickling bytes."""
        if not self._request_read:
            self._request_timed_out()
            return
        self._connection_lost()

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


def _skip(sock: socket.socket, length: int, timeout_s: float) -> bool:
    """Read and drop `length` bytes (a data set beyond the size limit)."""
    scratch = memoryview(bytearray(min(length, SKIP_CHUNK)))
    while length:
        size = min(length, len(scratch))
        if not _recv_into(sock, scratch[:size], timeout_s):
            return False
        length -= size
    return True


def _silent(limits: Limits) -> str:
    return (f"no A-ASSOCIATE-RQ within {limits.request_timeout_s:g} s of connecting "
            "(node.request_timeout_s); connection closed")


def _wait_for_first_bytes(sock: Any, conn: Conn, limits: Limits) -> bool:
    """Wait until the peer sent something (or closed), within the pre-association timer.

    Until then a connection costs one thread waiting here, not a pynetdicom association
    (whose set-up copies every supported presentation context). False when the
    connection is to be dropped: the gate closed it, or the timer ran out (reported).
    """
    deadline = conn.accepted_at + limits.request_timeout_s
    while conn.closing is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if limits.on_silent is not None:
                limits.on_silent(conn.host, _silent(limits))
            return False
        try:
            readable, _, _ = select.select([sock], [], [], min(remaining, 1.0))
        except (OSError, ValueError):
            return False
        if readable:
            return conn.closing is None
    return False


class SharedContexts(list):  # type: ignore[type-arg]
    """The server's supported presentation contexts, handed to each association as they
    are instead of deep-copied (pynetdicom's `_create_association` deep-copies them for
    every connection: 170 contexts x 45 transfer syntaxes cost ~70 ms of CPU per
    association here). Negotiation only reads them and builds new result contexts."""

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return list(self)


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with a listen backlog for bursts of connections
    (socketserver's default of 5 made a burst of connects wait for SYN retransmits)."""

    request_queue_size = 512


def guarded_request_handler(limits: Limits, timeout_s: float | None,
                            gate: Gate) -> type[RequestHandler]:
    """A pynetdicom request handler whose connections are admitted by `gate` and whose
    associations use `GuardedDUL` and the event-driven loop of
    `hiprouter.router.net.reactor`."""

    class GuardedRequestHandler(compat.AcceptorRequestHandler):
        conn: Conn

        def handle(self) -> None:
            self.conn = gate.open(self.request, str(self.client_address[0]))
            try:
                if not _wait_for_first_bytes(self.request, self.conn, limits):
                    gate.close(self.conn)
                    self.server.shutdown_request(self.request)
                    return
                super().handle()
            except BaseException:
                gate.close(self.conn)
                raise

        def prepare_socket(self, sock: Any) -> None:
            if isinstance(sock, socket.socket):
                # until the request is read, no single read may outlast the
                # pre-association timer
                sock.settimeout(limits.request_timeout_s if timeout_s is None
                                else min(timeout_s, limits.request_timeout_s))
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass

        def adapt_association(self, assoc: Any) -> None:
            conn = self.conn
            assoc.hiprouter_conn = conn
            compat.replace_dul(assoc, GuardedDUL(assoc, limits, conn))
            compat.call_after_run(assoc, lambda: gate.close(conn))
            compat.replace_reactor(assoc, run_association_reactor)

    return GuardedRequestHandler
