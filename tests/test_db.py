"""Migrations create the schema on a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from hiprouter import audit, db
from hiprouter.schema import AuditEvent

TABLES = {"associations", "studies", "instances", "jobs", "sends", "send_attempts",
          "inferences", "outputs", "audit_events"}


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


def test_write_transaction_serialises_on_sqlite(sqlite_url: str) -> None:
    db.upgrade(sqlite_url)
    factory = db.session_factory(db.make_engine(sqlite_url))
    with db.write_transaction(factory) as s:
        audit.record(s, audit.APPLICATION_ACTIVITY, "E", 0)
    with factory() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(AuditEvent)) == 1
