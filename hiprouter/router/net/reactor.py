"""Event-driven waits for pynetdicom's acceptor loops (receive latency per instance).

pynetdicom 3 polls: the DUL thread sleeps 1 ms whenever it had nothing to do, and the
association thread sleeps 1 ms before every look at its DIMSE message queue. On one
association every C-STORE crosses both loops (request in, response out), so each image
waits for up to three of those sleeps, and on a busy machine each sleep costs a
scheduler time slice. Here the DUL waits in `select` on its socket and on a wake-up pipe
that `send_pdu` writes to, and the association waits on its message queue's condition.
Both still wake at least every `MAX_WAIT_S` to check timers, releases and aborts.

The two loops below follow pynetdicom 3.0's `DULServiceProvider.run_reactor` and
`Association._run_reactor` line by line except for those waits (pynetdicom is pinned <4).
"""

from __future__ import annotations

import os
import queue
import select
import time
from typing import Any

from pynetdicom.association import LOGGER as ASSOC_LOGGER
from pynetdicom.dul import LOGGER as DUL_LOGGER
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ

MAX_WAIT_S = 0.005
"""Longest idle wait of either loop (timers, kill flags and releases are seen this late)."""


class WakeableDUL(DULServiceProvider):
    """A DUL provider that sleeps in `select` until data or a primitive to send arrives."""

    def __init__(self, assoc: Any) -> None:
        super().__init__(assoc)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except OSError:  # pipe full (already awake) or closed (thread ended)
            pass

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        self.wake()

    def kill_dul(self) -> None:
        super().kill_dul()
        self.wake()

    def _idle_wait(self) -> None:
        sock = getattr(self.socket, "socket", None)
        if not getattr(self.socket, "_is_connected", False):
            sock = None  # as AssociationSocket.ready: nothing to read from
        if sock is not None and hasattr(sock, "pending") and sock.pending():
            return  # TLS: decrypted bytes select() cannot see
        waiting = [self._wake_r] if sock is None else [sock, self._wake_r]
        try:
            readable, _, _ = select.select(waiting, [], [], MAX_WAIT_S)
        except (OSError, ValueError):  # socket closed under us
            time.sleep(self._run_loop_delay)
            return
        if self._wake_r in readable:
            try:
                os.read(self._wake_r, 4096)
            except OSError:
                pass

    def run_reactor(self) -> None:
        """pynetdicom's DUL loop with `_idle_wait` instead of `time.sleep`."""
        try:
            self._run_reactor()
        finally:
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _run_reactor(self) -> None:
        self._idle_timer.start()
        sleep = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                sleep = True
            if sleep:
                self._idle_wait()
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


def _wait_for_message(msg_queue: queue.Queue[Any]) -> None:
    with msg_queue.not_empty:
        if not msg_queue._qsize():
            msg_queue.not_empty.wait(MAX_WAIT_S)


def run_association_reactor(self: Any) -> None:
    """pynetdicom's acceptor loop waiting on the DIMSE queue instead of `sleep(0.001)`.

    Bound to an `Association` instance as its `_run_reactor`.
    """
    from pynetdicom import evt

    self._is_paused = False
    while not self._kill:
        _wait_for_message(self.dimse.msg_queue)
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
