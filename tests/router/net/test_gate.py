"""The connection gate's decisions and the refusal rate limit, on real socket pairs."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from hiprouter.router.net.gate import Conn, Gate, GateLimits
from hiprouter.router.net.throttle import Throttle

LIMITS = GateLimits(max_associations=6, reserved=2, per_host=4, max_pending=3,
                    pending_per_host=2, preempt_idle_s=30.0)


@pytest.fixture()
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made: list[tuple[socket.socket, socket.socket]] = []
    yield made
    for a, b in made:
        a.close()
        b.close()


def _open(gate: Gate, host: str, pairs: list[tuple[socket.socket, socket.socket]]) -> Conn:
    server, client = socket.socketpair()
    client.settimeout(5)
    pairs.append((server, client))
    return gate.open(server, host)


def _closed(conn: Conn, pairs: list[tuple[socket.socket, socket.socket]]) -> bool:
    client = next(c for s, c in pairs if s is conn.sock)
    return client.recv(1) == b""


def test_oldest_pending_connection_of_a_host_makes_room(pairs: list) -> None:  # type: ignore[type-arg]
    events: list[tuple[str, str, str]] = []
    gate = Gate(LIMITS, set(), on_event=lambda *e: events.append(e))
    first, second = _open(gate, "10.0.0.1", pairs), _open(gate, "10.0.0.1", pairs)
    third = _open(gate, "10.0.0.1", pairs)
    assert first.closing and not second.closing and not third.closing
    assert _closed(first, pairs)
    assert events[0][:2] == ("evicted", "10.0.0.1") and "max_pending_per_host" in events[0][2]
    assert gate.counts()["pending"] == 2


def test_pending_budget_takes_from_the_busiest_host_and_spares_trusted_hosts(
    pairs: list,  # type: ignore[type-arg]
) -> None:
    gate = Gate(LIMITS, {"10.0.0.9"})
    a1, a2 = _open(gate, "10.0.0.1", pairs), _open(gate, "10.0.0.1", pairs)
    b1 = _open(gate, "10.0.0.2", pairs)
    trusted = [_open(gate, "10.0.0.9", pairs) for _ in range(2)]
    assert not any(c.closing for c in (a1, a2, b1, *trusted))  # trusted ones not counted
    _open(gate, "10.0.0.3", pairs)  # over max_pending: the host with the most loses one
    assert a1.closing and not a2.closing and not b1.closing
    assert not any(c.closing for c in trusted)


def test_associations_per_host_reserved_places_and_fair_share() -> None:
    gate = Gate(LIMITS, set())
    scanner = [Conn("10.0.0.1", None) for _ in range(4)]
    for c in scanner:
        assert gate.request(c, "SCANNER", allowed=True) is None
    # the host is at its cap; the same caller is refused (nobody is idle long enough)
    again = Conn("10.0.0.1", None)
    assert "max_associations_per_host" in (gate.request(again, "SCANNER", allowed=True) or "")
    # another caller on that host displaces one of SCANNER's (fair share)
    legit = Conn("10.0.0.1", None)
    assert gate.request(legit, "LEGIT", allowed=True) is None
    assert sum(c.preempted for c in scanner) == 1
    # ... but never one that is serving a request
    for c in scanner:
        c.busy = 1
    other = Conn("10.0.0.1", None)
    assert gate.request(other, "OTHER", allowed=True) is not None
    # 4 of 6 places are taken: the last 2 are reserved for allow-listed callers
    refused = gate.request(Conn("10.0.0.2", None), "ANY", allowed=False) or ""
    assert "reserved_associations" in refused
    assert gate.request(Conn("10.0.0.2", None), "PACS", allowed=True) is None


def test_a_caller_not_allow_listed_cannot_displace_allow_listed_ones() -> None:
    gate = Gate(GateLimits(max_associations=4, reserved=0, per_host=4, max_pending=4,
                           pending_per_host=4, preempt_idle_s=0.0), set())
    for _ in range(4):
        assert gate.request(Conn("10.0.0.1", None), "PACS", allowed=True) is None
    assert gate.request(Conn("10.0.0.2", None), "X", allowed=False) is not None
    assert gate.request(Conn("10.0.0.2", None), "Y", allowed=True) is None


def test_idle_association_is_displaced_by_the_same_caller() -> None:
    gate = Gate(GateLimits(max_associations=4, reserved=0, per_host=2, max_pending=4,
                           pending_per_host=4, preempt_idle_s=0.0), set())
    old = [Conn("10.0.0.1", None) for _ in range(2)]
    for c in old:
        assert gate.request(c, "ECHOSCU", allowed=False) is None
    assert gate.request(Conn("10.0.0.1", None), "ECHOSCU", allowed=False) is None
    assert sum(c.preempted for c in old) == 1


def test_throttle_lets_a_few_through_and_counts_the_rest() -> None:
    now = [0.0]
    throttle = Throttle(window_s=60, per_key=2, burst=3, clock=lambda: now[0])
    assert [throttle.admit("a") for _ in range(4)] == [0, 0, None, None]
    assert throttle.admit("b") == 0
    assert throttle.admit("c") is None  # the overall burst is spent
    now[0] = 61.0
    assert throttle.admit("a") == 2  # a new window: reports what was held back
    assert throttle.drain(force=True) == {"c": 1}
    assert throttle.drain(force=True) == {}
