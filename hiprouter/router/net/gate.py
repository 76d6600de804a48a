"""Admission control: which connections and associations the SCP keeps when peers flood it.

A connection is *pending* from the TCP accept until its A-ASSOCIATE-RQ has been read and
passed the allow-list, then *associated* until its thread ends. The two phases have
separate budgets, so connections that never speak cannot take the places of associations:

- Pending connections have `request_timeout_s` to send a whole A-ASSOCIATE-RQ (including
  the TLS handshake); the DUL closes them after that (`pdu_guard`).
- At most `max_pending_per_host` pending connections per peer address and
  `max_pending` in all (connections from hosts bound in `allowed_calling` are not counted
  in the latter). A new connection beyond either bound is not refused: the *oldest*
  pending connection of that host (or of the host with the most pending connections) is
  closed instead. A legitimate peer sends its request at once after connecting, so the
  newest connection is the one that deserves its chance; a peer that holds connections
  open without speaking only ever loses its own oldest ones.
- At most `max_associations` associations, of which `reserved` only for callers that
  matched the allow-list (none when the allow-list is open), and at most `per_host` from
  one peer address. When a request finds no free place (of its host when the host is at
  its cap, else of all), an association is aborted to make room: one that has been idle
  (no PDU either way, no request being served) for `preempt_idle_s` or longer, or one of a
  caller (address and calling AE title) holding at least two more associations than the
  requester's caller, between two requests (fair share: one device that opens every place
  and idles in them cannot lock out another, even from the same address); the caller
  holding the most first, then the longest idle. An allow-listed caller may take the place
  of anyone, others only that of callers that are not allow-listed. Without such a
  candidate the request is rejected (transient, local limit exceeded) and the peer retries.
  Nothing acknowledged is lost by an abort: an instance is acknowledged only once stored.

Established associations are also closed after `node.network_timeout_s` without a PDU
(pynetdicom's idle timer); preemption only makes room sooner when every place is taken.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

PENDING, ASSOCIATED, CLOSED = "pending", "associated", "closed"

# Called with (kind, peer host, description) when the gate closes or refuses a peer;
# must not raise. Kinds: "evicted", "preempted".
GateHook = Callable[[str, str, str], None]


@dataclass(frozen=True)
class GateLimits:
    """The budgets of `Gate` (from `node.*` in the configuration)."""

    max_associations: int
    reserved: int
    per_host: int
    max_pending: int
    pending_per_host: int
    preempt_idle_s: float


_ids = itertools.count(1)


@dataclass(eq=False)
class Conn:
    """One accepted TCP connection and what the gate knows about it."""

    host: str
    sock: Any
    trusted_host: bool = False
    """The host is bound to an entry of `allowed_calling`."""
    id: int = field(default_factory=lambda: next(_ids))
    accepted_at: float = field(default_factory=time.monotonic)
    last_activity: float = field(default_factory=time.monotonic)
    phase: str = PENDING
    calling_ae: str = ""
    allowed: bool = False
    """The A-ASSOCIATE-RQ matched the (configured) allow-list."""
    busy: int = 0
    """DIMSE requests being served right now."""
    in_message: bool = False
    """P-DATA of a request arrived that has not been served yet."""
    closing: str | None = None
    """Why the gate closes this connection (set once)."""
    preempted: bool = False
    """Set for an associated connection the gate wants aborted; its association thread
    sees it through `GuardedDUL.idle_timer_expired` and sends the A-ABORT itself."""

    def touch(self) -> None:
        """A PDU went either way."""
        self.last_activity = time.monotonic()

    def idle_s(self, now: float) -> float:
        return 0.0 if self.busy else now - self.last_activity

    @property
    def engaged(self) -> bool:
        """Receiving or serving a request right now."""
        return bool(self.busy) or self.in_message

    @property
    def caller(self) -> tuple[str, str]:
        return (self.host, self.calling_ae)

    def close_socket(self) -> None:
        """Shut the connection down from any thread: its DUL then sees the peer gone.

        `socket.socket.shutdown` (not an `SSLSocket`'s own) leaves the TLS object to the
        thread that uses it.
        """
        try:
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
        except (OSError, TypeError):
            pass


class Gate:
    """Counts connections per phase and host and decides who stays (thread-safe)."""

    def __init__(self, limits: GateLimits, trusted_hosts: set[str],
                 on_event: GateHook | None = None) -> None:
        self.limits = limits
        self.trusted_hosts = set(trusted_hosts)
        self.on_event = on_event
        self._lock = threading.Lock()
        self._pending: dict[int, Conn] = {}
        self._associated: dict[int, Conn] = {}

    # -- connections ---------------------------------------------------------------------

    def open(self, sock: Any, host: str) -> Conn:
        """Register a new connection; closes the pending connections it displaces."""
        conn = Conn(host=host, sock=sock, trusted_host=host in self.trusted_hosts)
        lim = self.limits
        evicted: list[tuple[Conn, str]] = []
        with self._lock:
            same_host = [c for c in self._pending.values() if c.host == host]
            if len(same_host) >= lim.pending_per_host:
                victim = min(same_host, key=lambda c: c.accepted_at)
                evicted.append((victim, f"{len(same_host)} connections from {host} without "
                                        f"an A-ASSOCIATE-RQ (node.max_pending_per_host)"))
            elif not conn.trusted_host:
                counted = [c for c in self._pending.values() if not c.trusted_host]
                if len(counted) >= lim.max_pending:
                    per_host = Counter(c.host for c in counted)
                    victim = min(counted, key=lambda c: (-per_host[c.host], c.accepted_at))
                    evicted.append((victim, f"{len(counted)} connections without an "
                                            "A-ASSOCIATE-RQ (node.max_pending_connections)"))
            for victim, reason in evicted:
                self._pending.pop(victim.id, None)
                victim.closing = reason
            self._pending[conn.id] = conn
        for victim, reason in evicted:
            victim.close_socket()
            self._notify("evicted", victim.host, f"closed the oldest idle connection from "
                                                 f"{victim.host}: {reason}")
        return conn

    def close(self, conn: Conn) -> None:
        """The connection's thread ended (or it was never started)."""
        with self._lock:
            self._pending.pop(conn.id, None)
            self._associated.pop(conn.id, None)
            conn.phase = CLOSED

    def close_pending(self) -> None:
        """Close every pending connection (the server stops)."""
        with self._lock:
            pending = list(self._pending.values())
            self._pending.clear()
        for conn in pending:
            conn.closing = "the server stops"
            conn.close_socket()

    # -- associations --------------------------------------------------------------------

    def request(self, conn: Conn, calling_ae: str, allowed: bool) -> str | None:
        """An A-ASSOCIATE-RQ that passed the allow-list: None to accept it, else why it is
        rejected (a local limit). `allowed`: it matched a configured allow-list entry."""
        lim = self.limits
        now = time.monotonic()
        preempt: list[Conn] = []
        with self._lock:
            if conn.closing is not None or conn.phase == CLOSED:
                return f"connection closed: {conn.closing or 'gone'}"
            self._pending.pop(conn.id, None)
            conn.calling_ae, conn.allowed = calling_ae, allowed
            current = [c for c in self._associated.values() if not c.preempted]
            same_host = [c for c in current if c.host == conn.host]
            if len(same_host) >= lim.per_host:
                victim = self._victim(conn, same_host, current, now)
                if victim is None:
                    return (f"{len(same_host)} associations from {conn.host} are open "
                            f"(node.max_associations_per_host)")
                preempt.append(victim)
                current.remove(victim)
            limit = lim.max_associations if allowed else lim.max_associations - lim.reserved
            if len(current) >= limit:
                victim = self._victim(conn, current, current, now)
                if victim is None:
                    what = ("node.max_associations" if allowed else
                            "node.max_associations less node.reserved_associations")
                    return f"{len(current)} associations are open ({what})"
                preempt.append(victim)
            for victim in preempt:
                victim.preempted = True
                victim.closing = (f"idle for {victim.idle_s(now):.1f} s while "
                                  f"{calling_ae or '?'}@{conn.host} needed its place")
            conn.phase = ASSOCIATED
            conn.touch()
            self._associated[conn.id] = conn
        for victim in preempt:
            self._notify("preempted", victim.host,
                         f"aborted association of {victim.calling_ae or '?'}@{victim.host}: "
                         f"{victim.closing}")
        return None

    def _victim(self, conn: Conn, candidates: list[Conn], current: list[Conn],
                now: float) -> Conn | None:
        """The association `conn` may displace: one idle for `preempt_idle_s`, or one of
        a caller holding at least two more associations than `conn`'s caller (fair share)
        that is not receiving or serving a request; preferring the caller holding the
        most, then the longest idle. Only an allow-listed caller displaces allow-listed
        ones."""
        held = Counter(c.caller for c in current)
        mine = held[conn.caller]
        usable = [c for c in candidates if (conn.allowed or not c.allowed) and not c.busy
                  and (c.idle_s(now) >= self.limits.preempt_idle_s
                       or (held[c.caller] >= mine + 2 and not c.engaged))]
        if not usable:
            return None
        return max(usable, key=lambda c: (held[c.caller], c.idle_s(now)))

    # -- introspection -------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"pending": len(self._pending), "associated": len(self._associated)}

    def _notify(self, kind: str, host: str, description: str) -> None:
        if self.on_event is not None:
            self.on_event(kind, host, description)
