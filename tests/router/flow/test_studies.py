"""Study completion: idle timeout, exactly-once callback, episodes, restarts, concurrency."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hiprouter import audit
from hiprouter import db as dbmod
from hiprouter.config import Settings
from hiprouter.router.flow.studies import note_instance, sweep_complete_studies
from hiprouter.schema import AuditEvent, Study


def _settings(url: str, complete_after_s: float = 30.0) -> Settings:
    return Settings.model_validate({"database": {"url": url},
                                    "studies": {"complete_after_s": complete_after_s}})


def _factory(url: str):  # type: ignore[no-untyped-def]
    dbmod.upgrade(url)
    return dbmod.session_factory(dbmod.make_engine(url))


def _receive(factory, study_uid: str, seconds_ago: float) -> None:  # type: ignore[no-untyped-def]
    with dbmod.write_transaction(factory) as session:
        note_instance(session, study_uid, "MODALITY",
                      dbmod.utcnow() - timedelta(seconds=seconds_ago))


def _marker(session: Session, study: Study) -> None:
    """A completion callback that leaves a row, to prove it ran in the transaction."""
    audit.record(session, audit.APPLICATION_ACTIVITY, "E", audit.SUCCESS,
                 event_type=audit.ROUTING, objects={"study_uid": study.study_uid,
                                                    "episode": study.episode})


def _markers(factory) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
    with factory() as session:
        return sorted((e.objects["study_uid"], e.objects["episode"])
                      for e in session.scalars(select(AuditEvent)))


def test_idle_studies_complete_once_with_callback_and_survive_restart(sqlite_url: str) -> None:
    factory = _factory(sqlite_url)
    settings = _settings(sqlite_url)
    _receive(factory, "1.2.3.1", seconds_ago=60)
    _receive(factory, "1.2.3.1", seconds_ago=45)
    _receive(factory, "1.2.3.2", seconds_ago=5)  # still receiving
    assert sweep_complete_studies(factory, settings, _marker) == 1
    assert sweep_complete_studies(factory, settings, _marker) == 0
    # a "restart": a new engine on the same file completes nothing twice
    again = _factory(sqlite_url)
    assert sweep_complete_studies(again, settings, _marker) == 0
    assert _markers(factory) == [("1.2.3.1", 1)]
    with factory() as session:
        studies = {s.study_uid: s for s in session.scalars(select(Study))}
    assert studies["1.2.3.1"].state == "complete"
    assert studies["1.2.3.1"].instance_count == 2 and studies["1.2.3.1"].completed_at
    assert studies["1.2.3.2"].state == "receiving"


def test_instances_after_completion_start_a_new_episode(sqlite_url: str) -> None:
    factory = _factory(sqlite_url)
    settings = _settings(sqlite_url)
    _receive(factory, "1.2.3.9", seconds_ago=60)
    assert sweep_complete_studies(factory, settings, _marker) == 1
    with dbmod.write_transaction(factory) as session:
        session.scalars(select(Study)).one().state = "routed"
    _receive(factory, "1.2.3.9", seconds_ago=40)
    with factory() as session:
        study = session.scalars(select(Study)).one()
        assert (study.state, study.episode, study.completed_at) == ("receiving", 2, None)
        assert study.instance_count == 2
    assert sweep_complete_studies(factory, settings, _marker) == 1
    assert _markers(factory) == [("1.2.3.9", 1), ("1.2.3.9", 2)]


def test_failing_callback_rolls_back_and_is_retried(sqlite_url: str) -> None:
    factory = _factory(sqlite_url)
    settings = _settings(sqlite_url)
    _receive(factory, "1.2.3.5", seconds_ago=60)

    def broken(session: Session, study: Study) -> None:
        _marker(session, study)
        raise RuntimeError("routing database hiccup")

    assert sweep_complete_studies(factory, settings, broken) == 0
    assert _markers(factory) == []
    with factory() as session:
        assert session.scalars(select(Study)).one().state == "receiving"
    assert sweep_complete_studies(factory, settings, _marker) == 1


@pytest.mark.postgres
def test_concurrent_sweeps_on_postgresql_complete_each_study_once(pg_url: str) -> None:
    factory = _factory(pg_url)
    settings = _settings(pg_url)
    for i in range(40):
        _receive(factory, f"1.2.4.{i}", seconds_ago=60)
    results: list[int] = []

    def sweep() -> None:
        results.append(sweep_complete_studies(dbmod.session_factory(
            dbmod.make_engine(pg_url)), settings, _marker))

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 40
    with factory() as session:
        assert session.scalar(select(func.count(AuditEvent.id))) == 40
        assert set(session.scalars(select(Study.state))) == {"complete"}
