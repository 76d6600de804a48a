"""Floods against a real `hiprouter serve`: an allow-listed peer keeps being served while
raw sockets hold connections and associations (outcomes only, no timings)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select

from hiprouter.schema import Association, AuditEvent
from tests.router.conftest import RouterProcess, echoscu, make_cr_files, storescu
from tests.router.rawdul import associate, closed_by_peer, wait_until

Factory = Callable[..., RouterProcess]
FLOOD = 200
ALLOW = {"allowed_calling": [{"ae_title": "LEGIT"}, {"ae_title": "SCANNER"}]}


def _alerts(router: RouterProcess) -> list[AuditEvent]:
    with router.session_factory()() as session:
        return list(session.scalars(select(AuditEvent).where(
            AuditEvent.event_id_code.in_(("110113", "110114"))).order_by(AuditEvent.id)))


def _rejected_rows(router: RouterProcess) -> int:
    with router.session_factory()() as session:
        return int(session.scalar(select(func.count()).select_from(Association).where(
            Association.outcome == "rejected")) or 0)


def _echo_ok(router: RouterProcess) -> None:
    done = echoscu(router.port, calling="LEGIT")
    assert done.returncode == 0, done.stdout + done.stderr


def test_idle_connections_do_not_lock_out_an_allow_listed_peer(
    router_process: Factory, tmp_path: Path
) -> None:
    router = router_process({"node": {**ALLOW, "request_timeout_s": 3}})
    idle = []
    try:
        for _ in range(FLOOD):  # connect, never send an A-ASSOCIATE-RQ
            idle.append(socket.create_connection(("127.0.0.1", router.port), timeout=30))
            if len(idle) % 50 == 0:
                _echo_ok(router)
        for _ in range(3):
            _echo_ok(router)
        files = make_cr_files(tmp_path / "during", 2, size=64)
        sent = storescu(router.port, files, calling="LEGIT")
        assert sent.returncode == 0, sent.stdout + sent.stderr
        # pending connections beyond the per-host budget were closed as new ones came,
        # the rest by the pre-association timer
        wait_until(lambda: all(closed_by_peer(s) for s in idle), 60,
                   "the server to close every silent connection")
    finally:
        for s in idle:
            s.close()
    _echo_ok(router)
    alerts = _alerts(router)
    text = " ".join(a.outcome_description or "" for a in alerts)
    assert "without an A-ASSOCIATE-RQ" in text and "no A-ASSOCIATE-RQ within 3 s" in text
    # rate-limited: 200 refused connections are not 200 audit events
    assert len(alerts) <= 10, [a.outcome_description for a in alerts]
    router.stop()  # the held-back refusals are summarised at the latest on stop
    summary = [a for a in _alerts(router) if "not audited one by one" in
               (a.outcome_description or "")]
    assert summary, [a.outcome_description for a in _alerts(router)]


def _flood_associations(router: RouterProcess, source: str, held: list[socket.socket]
                        ) -> list[int | None]:
    """FLOOD associations of an allow-listed but broken device that never does anything,
    with a C-ECHO of the allow-listed peer every 50."""
    answers = []
    for i in range(FLOOD):
        sock, answer = associate(router.port, "SCANNER", source=source)
        held.append(sock)
        answers.append(answer)
        if i % 50 == 49:
            _echo_ok(router)
    return answers


def test_idle_associations_from_another_host_do_not_lock_out_an_allow_listed_peer(
    router_process: Factory,
) -> None:
    router = router_process({"node": {**ALLOW, "max_associations": 16,
                                      "max_associations_per_host": 8}})
    held: list[socket.socket] = []
    try:
        answers = _flood_associations(router, "127.0.0.2", held)
        assert answers.count(0x02) >= 8, answers
        for _ in range(3):
            _echo_ok(router)
        # never more than the per-host cap open at once from the flooding host
        wait_until(lambda: sum(not closed_by_peer(s) for s in held) <= 8, 60,
                   "the flooding host to hold at most 8 associations")
        # a caller that is not allow-listed is rejected at once
        for _ in range(20):
            sock, answer = associate(router.port, "INTRUDER", source="127.0.0.3")
            held.append(sock)
            assert answer in (0x03, None)
        _echo_ok(router)
    finally:
        for s in held:
            s.close()
    # 200+ refusals, but the audit trail and the associations table are not flooded
    assert len(_alerts(router)) <= 25
    assert _rejected_rows(router) <= 25
    texts = " ".join(a.outcome_description or "" for a in _alerts(router))
    assert "INTRUDER" in texts
    assert "too many associations" in texts or "aborted association of SCANNER" in texts


def test_idle_associations_from_the_same_host_do_not_lock_out_another_caller(
    router_process: Factory,
) -> None:
    # the flooding device and the allow-listed peer share an address: the peer gets a
    # place by fair share (the device holds all of the host's places)
    router = router_process({"node": {**ALLOW, "max_associations": 16,
                                      "max_associations_per_host": 8}})
    held: list[socket.socket] = []
    try:
        _flood_associations(router, "127.0.0.1", held)
        for _ in range(3):
            _echo_ok(router)
        wait_until(lambda: sum(not closed_by_peer(s) for s in held) <= 8, 60,
                   "the host to hold at most 8 associations")
    finally:
        for s in held:
            s.close()


def test_idle_associations_of_the_same_caller_are_preempted_for_a_new_one(
    router_process: Factory,
) -> None:
    # one caller, one address: only idleness tells the broken associations from a new
    # one; preempt_idle_s 0 so that the outcome does not depend on this test's speed
    # (the default, 1 s, spares associations that were active within the last second)
    router = router_process({"node": {"max_associations_per_host": 4, "preempt_idle_s": 0}})
    held = []
    try:
        for _ in range(4):
            sock, answer = associate(router.port, "ECHOSCU")
            held.append(sock)
            assert answer == 0x02
        done = echoscu(router.port)
        assert done.returncode == 0, done.stdout + done.stderr
        wait_until(lambda: any(closed_by_peer(s) for s in held), 60,
                   "one idle association to be aborted")
    finally:
        for s in held:
            s.close()


def test_idle_association_is_closed_after_the_network_timeout(
    router_process: Factory,
) -> None:
    router = router_process({"node": {"network_timeout_s": 2}})
    sock, answer = associate(router.port, "IDLER")
    try:
        assert answer == 0x02
        wait_until(lambda: closed_by_peer(sock), 60,
                   "the server to close an idle association")
    finally:
        sock.close()
    _echo_ok(router)


def test_silent_connection_is_closed_by_the_pre_association_timer(
    router_process: Factory,
) -> None:
    # the ACSE timeout stays long: the pre-association timer is separate from it
    router = router_process({"node": {"request_timeout_s": 1, "acse_timeout_s": 600}})
    with socket.create_connection(("127.0.0.1", router.port), timeout=30) as sock:
        wait_until(lambda: closed_by_peer(sock), 60, "the server to close a silent connection")
    wait_until(lambda: any("no A-ASSOCIATE-RQ within 1 s" in (a.outcome_description or "")
                           for a in _alerts(router)), 30, "the audit event")
    _echo_ok(router)
