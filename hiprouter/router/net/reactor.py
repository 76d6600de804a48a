"""Event-driven waits for pynetdicom's acceptor loops (receive latency per instance).

pynetdicom 3 polls: the DUL thread sleeps 1 ms whenever it had nothing to do, and the
association thread sleeps 1 ms before every look at its DIMSE message queue. On one
association every C-STORE crosses both loops (request in, response out), so each image
waits for up to three of those sleeps, and on a busy machine each sleep costs a
scheduler time slice. Here the DUL waits in `select` on its socket and on a wake-up pipe
that `send_pdu` writes to, and the association waits on its message queue's condition.
Both still wake at least every `MAX_WAIT_S` to check timers, releases and aborts.

The loops themselves are pynetdicom's, copied into `pynetdicom_compat` with the other
internals they touch; this module supplies only the waits.
"""

from __future__ import annotations

import os
import select
from typing import Any

from hiprouter.router.net import pynetdicom_compat as compat

MAX_WAIT_S = 0.005
"""Longest idle wait of either loop (timers, kill flags and releases are seen this late)."""


class WakeableDUL(compat.HookedDUL):
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

    def idle_wait(self) -> None:
        sock = self.connected_socket()
        if sock is not None and hasattr(sock, "pending") and sock.pending():
            return  # TLS: decrypted bytes select() cannot see
        waiting = [self._wake_r] if sock is None else [sock, self._wake_r]
        try:
            readable, _, _ = select.select(waiting, [], [], MAX_WAIT_S)
        except (OSError, ValueError):  # socket closed under us
            super().idle_wait()
            return
        if self._wake_r in readable:
            try:
                os.read(self._wake_r, 4096)
            except OSError:
                pass

    def run_reactor(self) -> None:
        """pynetdicom's DUL loop with `idle_wait` above; closes the wake-up pipe after."""
        try:
            super().run_reactor()
        finally:
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass


def _wait_for_message(assoc: Any) -> None:
    compat.wait_for_dimse_message(assoc, MAX_WAIT_S)


def run_association_reactor(assoc: Any) -> None:
    """pynetdicom's acceptor loop waiting on the DIMSE queue instead of `sleep(0.001)`.

    Installed on an `Association` with `pynetdicom_compat.replace_reactor`.
    """
    compat.run_association_reactor(assoc, _wait_for_message)
