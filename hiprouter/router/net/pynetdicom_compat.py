"""Every pynetdicom internal that hiprouter copies, patches or relies on, in one module.

hiprouter changes two things in pynetdicom's acceptor: how its loops wait (`reactor.py`:
pynetdicom 3 polls with 1 ms sleeps, which costs latency on every C-STORE) and how the DUL
reads a PDU (`pdu_guard.py`: pynetdicom reads whatever PDU length a peer declares). Both
need pynetdicom internals; those are here and nowhere else, so an upgrade is reviewed in
one place. pynetdicom is pinned to exactly `PYNETDICOM_VERSION` in pyproject.toml, and
tests/router/net/test_pynetdicom_compat.py fails when the source of any upstream function
in `UPSTREAM_SHA256` changes. To upgrade: read each reported function's new source against
what is done with it here, adapt, then update the hashes and the pin together.

What is taken from pynetdicom 3.0.4, and why:

Copied (a modified copy of the whole function):
  `DULServiceProvider.run_reactor` -> `HookedDUL.run_reactor`: the idle
    `time.sleep(self._run_loop_delay)` becomes the method `idle_wait()`, so `reactor.py`
    can wait in `select` instead.
  `Association._run_reactor` -> `run_association_reactor`: the `time.sleep(0.001)` before
    each look at the DIMSE message queue becomes `wait(assoc)`. (Unlike 3.0.4 it logs
    "Association Aborted" without the " (A-P-ABORT)" suffix.)
Replaced (a subclass supplies its own implementation):
  `DULServiceProvider._read_pdu_data` -> `pdu_guard.GuardedDUL._read_pdu_data`, which must
    end as upstream does: one event on `event_queue` (Evt17 closed, Evt19 invalid, or the
    PDU's own event) and the decoded PDU on `_recv_pdu` (`HookedDUL.deliver_pdu`).
Extended (the override calls upstream, then adds):
  `DULServiceProvider.send_pdu`, `DULServiceProvider.kill_dul` -> `HookedDUL`: then
    `wake()`, so an idle wait ends at once.
  `DULServiceProvider.idle_timer_expired` -> `pdu_guard.GuardedDUL`: also True when the
    connection gate preempted the association (the acceptor loop then aborts it).
  `RequestHandler.handle` -> `pdu_guard`: takes a connection slot first.
  `RequestHandler._create_association` -> `AcceptorRequestHandler`: `prepare_socket`
    before, `adapt_association` after (swap in the guarded DUL and the waiting loop).
Relied on (attributes and behaviour used from outside):
  `DULServiceProvider.__init__`: `event_queue`, `to_user_queue`, `_recv_pdu`,
    `_idle_timer`, `artim_timer`, `_run_loop_delay`, `_kill_thread`, `state_machine`; its
    thread runs `self.run_reactor`.
  `DULServiceProvider._decode_pdu`: decodes and triggers EVT_DATA_RECV / EVT_PDU_RECV.
  `DULServiceProvider._is_transport_event`: calls `_read_pdu_data` when the socket is ready.
  `AssociationSocket.ready`: when a socket counts as readable (`connected_socket`).
  `Association.__init__`, `Association.run_reactor`: `dul` is a plain attribute and the
    thread calls `self._run_reactor()`, so both can be replaced per association.
  `Association.acse_timeout` / `network_timeout` setters: they set the DUL's timers, so
    `replace_dul` applies them again to the new DUL.
  `DIMSEServiceProvider.get_msg`: reads `msg_queue`, the queue `wait_for_dimse_message`
    waits on (a `queue.Queue`; its `not_empty` condition and `_qsize` are used).
  `RequestHandler._create_association`: deep-copies `server.contexts` for every
    association; `pdu_guard.SharedContexts` makes that copy shallow (negotiation
    only reads the acceptor's contexts).
  `ACSE._negotiate_as_acceptor`: rejects when more acceptor threads than
    `AE.maximum_associations` run (connections that never sent a request included), so
    the SCP sets that high and `gate.py` admits associations instead.
Bypassed for the lean C-STORE path (`fast_store.py`, `pdu_guard.GuardedDUL`), which
serves a C-STORE-RQ in the DUL thread instead of handing its P-DATA-TF PDUs on:
  `fsm.DT_2`: in Sta6 a P-DATA-TF PDU only goes to `DIMSEServiceProvider.receive_primitive`
    (no state change), so a PDU not delivered changes nothing else (`store_ready`).
  `ACSE._negotiate_as_acceptor`: `is_established` is set after the EVT_ACCEPTED
    handlers ran (the SCP's association row exists then).
  `DIMSEServiceProvider.__init__`, `.receive_primitive`: `message` is None between
    messages and complete messages wait on `msg_queue`; the lean path starts only then.
  `Association._serve_request`, `StorageServiceClass.SCP`: what the lean path does instead
    (the handler's status in a C-STORE-RSP with the request's message ID and UIDs; 0xC211
    when the handler raises).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import queue
import time
import types
from collections.abc import Callable
from typing import Any

from pynetdicom.association import LOGGER as ASSOC_LOGGER
from pynetdicom.dul import LOGGER as DUL_LOGGER
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import A_P_ABORT
from pynetdicom.transport import RequestHandler

PYNETDICOM_VERSION = "3.0.4"
"""The pynetdicom release the code below was checked against (pinned in pyproject.toml)."""

UPSTREAM_SHA256: dict[str, str] = {
    "pynetdicom.dul.DULServiceProvider.run_reactor":
        "e3a10eb3a0931e4854af33b9496e92d9679522aca26b0e04da8967559b9e2803",
    "pynetdicom.association.Association._run_reactor":
        "f28838c5559e462a563750cfc9f3790027f4bb7e2223baf42c9f5d682c359dee",
    "pynetdicom.dul.DULServiceProvider._read_pdu_data":
        "19f2d4e38c13c83586365d93dd5cd96a0c7c665cb37251054b3e1f246e9f431b",
    "pynetdicom.dul.DULServiceProvider.send_pdu":
        "7cbce5da8594124e9e70c790a68df640d21df11af4220783e752bc607de8dde6",
    "pynetdicom.dul.DULServiceProvider.kill_dul":
        "5ceccf8dd01c2072c377d18bb1be284941a345bd40f03bd1e03a864ab0817842",
    "pynetdicom.transport.RequestHandler.handle":
        "034823fb4df3a87467bd0d45193f0d457fcf59c87fda8e97b2edfb89426f76dd",
    "pynetdicom.transport.RequestHandler._create_association":
        "05c8d12b79863cdbdb901ce37187b7030a0434c5cd89d219ed0bedbda679a61e",
    "pynetdicom.dul.DULServiceProvider.__init__":
        "c82dafa9438ddf70685917cb15d2bfbc814aa0ad5233ffb0ae650faedc7570f0",
    "pynetdicom.dul.DULServiceProvider._decode_pdu":
        "fc71dd1bf853e1ce79d29b11731a26a4f6ee9eb697026ad611f8fc91f8aa69c9",
    "pynetdicom.dul.DULServiceProvider._is_transport_event":
        "8725ed03bb8fbdefef249d5d9888c120e6277d7b6aa2c4f537e23027186e1253",
    "pynetdicom.transport.AssociationSocket.ready.fget":
        "3eb58e3d39dc076df7a04c804ca183ffd3f4d1b34361039e9e6f11de3d45579c",
    "pynetdicom.association.Association.__init__":
        "eb07516b8009ad8fa338201dea39578380fbf9f2c59fa5e368e20250eb97c4ea",
    "pynetdicom.association.Association.run_reactor":
        "ed8bbbe3b3d6ddaee3e8673ba25b2ab2a4c45f25bc1d8ae7b48ebafd09499e6d",
    "pynetdicom.association.Association.acse_timeout.fset":
        "f357778b5c4db7b243e90b1c25ade6cbba771ca585690d37ccd9d5925de95499",
    "pynetdicom.association.Association.network_timeout.fset":
        "d1e01042128ea4a2a70ea77f42a6633ede75289b31802f76b0deaf3e1b2c1d5e",
    "pynetdicom.dimse.DIMSEServiceProvider.get_msg":
        "890e3e04283f5aeb756236f1a4dd35d3a10bbdd52f3efa3f3950c01f47bd2b34",
    "pynetdicom.dul.DULServiceProvider.idle_timer_expired":
        "0150c19fda68f6e95f435aa00dd69a286a3a1dd870ee1acd9948c6738a449357",
    "pynetdicom.acse.ACSE._negotiate_as_acceptor":
        "fffd360957c42a8ed89284cf1b1b734527c9be60253950777a0330c0f2be692e",
    "pynetdicom.fsm.DT_2":
        "9ec543394e0b49eb8be2448fc3f9950361b0047db7cf3742844f377bd225ba73",
    "pynetdicom.dimse.DIMSEServiceProvider.__init__":
        "bbecd186810e77006d189aff29c42e76d226cd6b34cbb12066c56300a8280ef4",
    "pynetdicom.dimse.DIMSEServiceProvider.receive_primitive":
        "5f99c86b14a15cefa87d914cda3591ec4d636d4c53a982e945ec9c1828c6e43f",
    "pynetdicom.association.Association._serve_request":
        "2f24c1759cdf6c8c433094f2a8dd8144f76f5547f03daed7b94e0f78bc12f877",
    "pynetdicom.service_class.StorageServiceClass.SCP":
        "63afca7fc6c6e7ee6e6eb303dd6aa72c1e69dbfcb94dd91c9e90ea6d900a4c40",
}
"""sha256 of `inspect.getsource()` of each upstream function above, as of
`PYNETDICOM_VERSION`."""

EVT_TRANSPORT_CLOSED = "Evt17"
"""DUL state machine event: the transport connection closed (PS3.8 9.2)."""
EVT_INVALID_PDU = "Evt19"
"""DUL state machine event: an invalid or unrecognised PDU was received."""


def upstream_object(name: str) -> Any:
    """The upstream function called `name` ("pynetdicom.module.Class.attr[.fget]")."""
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attr in parts[split:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"cannot import {name}")


def upstream_sha256(name: str) -> str:
    """sha256 of the installed pynetdicom's source of `name`."""
    source = inspect.getsource(upstream_object(name))
    return hashlib.sha256(source.encode()).hexdigest()


def changed_upstream() -> list[str]:
    """The upstream functions whose source differs from the one this module was checked
    against."""
    return [name for name, digest in UPSTREAM_SHA256.items()
            if upstream_sha256(name) != digest]


class HookedDUL(DULServiceProvider):
    """pynetdicom's DUL service provider with its reactor loop copied so that the idle
    wait is a method (`idle_wait`), a `wake()` after each primitive to send, and helpers
    for a subclass that reads PDUs itself (`_read_pdu_data`)."""

    def wake(self) -> None:
        """End a running `idle_wait` now (upstream has nothing to wake)."""

    def idle_wait(self) -> None:
        """Wait before the next loop when the last one found nothing to do."""
        time.sleep(self._run_loop_delay)

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        self.wake()

    def kill_dul(self) -> None:
        super().kill_dul()
        self.wake()

    def run_reactor(self) -> None:
        """`DULServiceProvider.run_reactor` with `idle_wait()` instead of `time.sleep`."""
        self._idle_timer.start()
        sleep = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                sleep = True
            if sleep:
                self.idle_wait()
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                DUL_LOGGER.error("Exception in DUL.run(), aborting association")
                DUL_LOGGER.exception(exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                sleep = True
                continue
            self.state_machine.do_action(event)
            sleep = False

    # -- for subclasses that read PDUs themselves ----------------------------------------

    def raw_socket(self) -> Any | None:
        """The connection's socket, None when there is none."""
        return self.socket.socket if self.socket is not None else None

    def connected_socket(self) -> Any | None:
        """The socket to wait on for data, None when `AssociationSocket.ready` would not
        look at it (no socket, or not connected)."""
        sock = getattr(self.socket, "socket", None)
        if not getattr(self.socket, "_is_connected", False):
            return None
        return sock

    def queue_event(self, event: str) -> None:
        """Put a state machine event (e.g. `EVT_TRANSPORT_CLOSED`) on the event queue."""
        self.event_queue.put(event)

    def deliver_pdu(self, pdu_bytes: bytes | bytearray) -> None:
        """Decode a whole PDU and hand it to the state machine, as `_read_pdu_data` does;
        an undecodable PDU is `EVT_INVALID_PDU`."""
        try:
            pdu, event = self._decode_pdu(pdu_bytes)  # type: ignore[arg-type]
        except Exception:
            self.event_queue.put(EVT_INVALID_PDU)
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def store_ready(self, wait_s: float = 2.0) -> bool:
        """True when a P-DATA-TF PDU may be served without pynetdicom: the state machine
        is in Sta6 (data transfer) on an established association, and the DIMSE provider
        holds no partly received message and no unserved one.

        In Sta6 the A-ASSOCIATE-AC is out, but the association thread may still be
        running the EVT_ACCEPTED handlers (the peer's first request can arrive
        meanwhile); `is_established` is set after them, so this waits for it up to
        `wait_s`.
        """
        if self.state_machine.current_state != "Sta6":
            return False
        assoc = self.assoc
        deadline = time.monotonic() + wait_s
        while not assoc.is_established:
            if assoc.is_aborted or assoc.is_released or self._kill_thread or \
                    time.monotonic() > deadline:
                return False
            time.sleep(0.0002)
        dimse = assoc.dimse
        return dimse.message is None and dimse.msg_queue.qsize() == 0

    def abandon(self, provider_reason: int) -> None:
        """Tell the association (via an A-P-ABORT) that it is over, and stop this DUL."""
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        primitive = A_P_ABORT()
        primitive.provider_reason = provider_reason
        self.to_user_queue.put(primitive)
        self.kill_dul()

    def abort_and_close(self, reason_diagnostic: int) -> None:
        """Send an A-ABORT (source: service provider) if the peer is still there, then
        close the connection."""
        abort = A_ABORT_RQ()
        abort.source = 0x02
        abort.reason_diagnostic = reason_diagnostic
        try:
            self.socket.send(abort.encode())
        except Exception:  # the peer may be gone already
            pass
        self.socket.close()


def wait_for_dimse_message(assoc: Any, timeout_s: float) -> None:
    """Wait until the association's DIMSE message queue is not empty, at most `timeout_s`."""
    msg_queue = assoc.dimse.msg_queue
    with msg_queue.not_empty:
        if not msg_queue._qsize():
            msg_queue.not_empty.wait(timeout_s)


def run_association_reactor(self: Any, wait: Callable[[Any], None]) -> None:
    """`Association._run_reactor` (the acceptor loop) with `wait(assoc)` instead of
    `time.sleep(0.001)` before each look at the DIMSE message queue."""
    from pynetdicom import evt

    self._is_paused = False
    while not self._kill:
        wait(self)
        self._is_paused = True
        self._reactor_checkpoint.wait()
        self._is_paused = False

        context_id, msg = self.dimse.get_msg(block=False)
        if msg:
            self._serve_request(msg, context_id)

        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            ASSOC_LOGGER.info("Association Released")
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return

        if self.acse.is_aborted():
            ASSOC_LOGGER.info("Association Aborted")
            self.dul.receive_pdu(wait=False)
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return

        if not self.dul.is_alive():
            self.kill()
            return

        if self.dul.idle_timer_expired():
            ASSOC_LOGGER.error("Network timeout reached")
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()
            self.kill()
            return


class AcceptorRequestHandler(RequestHandler):
    """pynetdicom's request handler with a hook before and after it creates the acceptor
    association of a new connection."""

    def prepare_socket(self, sock: Any) -> None:
        """Called with the accepted socket before the association is created."""

    def adapt_association(self, assoc: Any) -> None:
        """Called with the new association before it starts."""

    def _create_association(self) -> Any:
        self.prepare_socket(self.request)
        assoc = super()._create_association()
        self.adapt_association(assoc)
        return assoc


def replace_dul(assoc: Any, dul: DULServiceProvider) -> None:
    """Give a new, not yet started association `dul` instead of the DUL it was created
    with (same socket, and the events already queued, e.g. Evt5 connection indication)."""
    dul.socket = assoc.dul.socket
    dul.event_queue = assoc.dul.event_queue
    assoc.dul = dul
    # The timeout setters configure the DUL's timers: apply them to the new one.
    assoc.acse_timeout = assoc.acse_timeout
    assoc.network_timeout = assoc.network_timeout


def replace_reactor(assoc: Any, loop: Callable[[Any], None]) -> None:
    """Run `loop(assoc)` as the association's established-association loop."""
    assoc._run_reactor = types.MethodType(loop, assoc)


def call_after_run(assoc: Any, after: Callable[[], None]) -> None:
    """Call `after()` when the association's thread ends, however it ends."""
    run = assoc.run

    def run_then() -> None:
        try:
            run()
        finally:
            after()

    assoc.run = run_then
