"""Migrations create the schema on a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from hiprouter import audit, db
from hiprouter.schema import AuditEvent

TABLES = {"associations", "studies", "instances", "jobs", "sends", "send_attempts",
          "findings", "outputs", "audit_events"}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_upgrade_creates_schema_and_audit_roundtrip(backend: str, request) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    db.upgrade(url)
    engine = db.make_engine(url)
    assert TABLES <= set(sa.inspect(engine).get_table_names())
    assert db.current_revision(engine) is not None
    factory = db.session_factory(engine)
    audit.record_now(factory, audit.INSTANCES_TRANSFERRED, "C", audit.SUCCESS,
                     participants=[audit.participant("source", "MODALITY", "127.0.0.1")],
                     objects={"study_uid": "1.2.3"})
    with factory() as s:
        ev = s.scalars(sa.select(AuditEvent)).one()
    assert (ev.event_id_code, ev.action, ev.outcome) == ("110104", "C", 0)
    assert ev.participants[0]["ae_title"] == "MODALITY"
    with pytest.raises(ValueError):
        audit.record_now(factory, audit.INSTANCES_TRANSFERRED, "X", 0)


def test_upgrade_is_idempotent(sqlite_url: str) -> None:
    db.upgrade(sqlite_url)
    db.upgrade(sqlite_url)
    assert db.current_revision(db.make_engine(sqlite_url)) == "0007"


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_findings_migration_keeps_inference_rows_and_downgrades(backend: str, request) -> None:
    """0003 -> 0004 moves the per-hip classifier rows into `findings`; 0004 -> 0003 back."""
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    db.upgrade(url, "0003")
    engine = db.make_engine(url)
    now = db.utcnow()
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO jobs (id, study_uid, pipeline, rule, send_to, state, attempts, "
            "next_run_at, created_at, updated_at, episode, replay) VALUES (7, '1.2.3', "
            "'hardware', 'hip', '[]', 'done', 1, :t, :t, :t, 2, :f)"), {"t": now, "f": False})
        conn.execute(sa.text(
            "INSERT INTO inferences (job_id, study_uid, pipeline, laterality, source_sop_uids, "
            "model_name, model_version, predicted_class, probability, probabilities, "
            "latency_ms, created_at) VALUES (7, '1.2.3', 'hardware', 'R', '[\"1.2.3.4\"]', "
            "'hw-demo', '0.1', 'tha', 0.9, '{\"tha\": 0.9}', 5.0, :t)"), {"t": now})
    db.upgrade(url)
    inspector = sa.inspect(engine)
    assert "inferences" not in inspector.get_table_names()
    assert "pipelines" in {c["name"] for c in inspector.get_columns("jobs")}
    with engine.connect() as conn:
        row = conn.execute(sa.text(
            "SELECT job_id, episode, kind, laterality, status, predicted_class, probability, "
            "model_name FROM findings")).one()
    assert tuple(row) == (7, 2, "hardware", "R", "assessed", "tha", 0.9, "hw-demo")
    from alembic import command

    command.downgrade(db.alembic_config(url), "0003")
    engine.dispose()
    engine = db.make_engine(url)
    assert "findings" not in sa.inspect(engine).get_table_names()
    with engine.connect() as conn:
        back = conn.execute(sa.text(
            "SELECT job_id, laterality, predicted_class, probability FROM inferences")).one()
    assert tuple(back) == (7, "R", "tha", 0.9)
    engine.dispose()


def test_write_transaction_serialises_on_sqlite(sqlite_url: str) -> None:
    """Read-then-write in write transactions from many threads loses no update: each one
    holds the write lock from its start (a plain BEGIN would read a stale count, or fail
    with "database is locked" when upgrading to a write)."""
    import threading

    from hiprouter.schema import Study

    db.upgrade(sqlite_url)
    engine = db.make_engine(sqlite_url)
    factory = db.session_factory(engine)
    now = db.utcnow()
    with factory() as s, s.begin():
        s.add(Study(study_uid="1.2.3", state="receiving", first_received_at=now,
                    last_received_at=now, instance_count=0))
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def bump() -> None:
        try:
            start.wait()
            for _ in range(10):
                with db.write_transaction(factory) as s:
                    study = s.scalars(sa.select(Study)).one()
                    study.instance_count = study.instance_count + 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    with factory() as s:
        assert s.scalars(sa.select(Study.instance_count)).one() == 80
    engine.dispose()
