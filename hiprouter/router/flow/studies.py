"""Study bookkeeping: which studies are still receiving, and when a study is complete.

A study is complete after `studies.complete_after_s` seconds without a new instance. The
state lives in the `studies` table, so a restart neither forgets a study nor completes it
twice: the sweep flips `receiving -> complete` and runs the completion callback in the
same transaction. A study that receives instances after completion starts a new episode.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, case, select
from sqlalchemy.orm import Session, sessionmaker

from hiprouter.config import Settings
from hiprouter.db import dialect_insert, utcnow, write_transaction
from hiprouter.logs import get_logger
from hiprouter.schema import Study

log = get_logger(__name__)

RECEIVING = "receiving"
COMPLETE = "complete"

CompletionCallback = Callable[[Session, Study], None]


def note_instance(
    session: Session | Connection, study_uid: str, calling_ae: str | None, at: datetime
) -> None:
    """Count one new instance for `study_uid` in the caller's transaction.

    Creates the study in state `receiving`, or moves a completed (routed, done, ...)
    study back to `receiving` with `episode + 1` so it is routed again later.
    """
    bind = session if isinstance(session, Connection) else session.get_bind()
    session.execute(_upsert_statement(bind.dialect.name),
                    {"study_uid": study_uid, "calling_ae": calling_ae, "at": at})


@functools.cache
def _upsert_statement(dialect: str) -> Any:
    """The study upsert, built once per dialect with bound parameters.

    Built per call it cost more than executing it (statement construction and cache-key
    generation run for every received instance).
    """
    insert = dialect_insert(dialect)
    at = bindparam("at")
    stmt = insert(Study).values(
        study_uid=bindparam("study_uid"), state=RECEIVING, first_received_at=at,
        last_received_at=at, instance_count=1, calling_ae=bindparam("calling_ae"), episode=1,
    )
    reopened = Study.state != RECEIVING
    return stmt.on_conflict_do_update(
        index_elements=["study_uid"],
        set_={
            "instance_count": Study.instance_count + 1,
            "last_received_at": stmt.excluded.last_received_at,
            "episode": case((reopened, Study.episode + 1), else_=Study.episode),
            "completed_at": case((reopened, None), else_=Study.completed_at),
            "state": RECEIVING,
        },
    )


def sweep_complete_studies(
    factory: sessionmaker[Session],
    settings: Settings,
    on_complete: CompletionCallback | None = None,
) -> int:
    """Mark idle `receiving` studies `complete`; returns how many were completed.

    Each study is completed in its own write transaction, with `on_complete(session,
    study)` called inside it, so routing jobs are created exactly once. On PostgreSQL
    rows are claimed with FOR UPDATE SKIP LOCKED, so several processes may sweep. A
    study whose callback raises stays `receiving` and is tried again next sweep.
    """
    cutoff = utcnow() - timedelta(seconds=settings.studies.complete_after_s)
    with factory() as session:
        candidates = session.scalars(
            select(Study.id)
            .where(Study.state == RECEIVING, Study.last_received_at < cutoff)
            .order_by(Study.last_received_at)
        ).all()
    completed = 0
    for study_id in candidates:
        try:
            if _complete_one(factory, study_id, cutoff, on_complete):
                completed += 1
        except Exception as exc:
            log.error("study completion failed", study_id=study_id, error=str(exc))
    return completed


def _complete_one(
    factory: sessionmaker[Session],
    study_id: int,
    cutoff: datetime,
    on_complete: CompletionCallback | None,
) -> bool:
    with write_transaction(factory) as session:
        query = select(Study).where(
            Study.id == study_id, Study.state == RECEIVING, Study.last_received_at < cutoff
        )
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        study = session.scalars(query).first()
        if study is None:  # another process got it, or a new instance arrived
            return False
        study.state = COMPLETE
        study.completed_at = utcnow()
        session.flush()
        if on_complete is not None:
            on_complete(session, study)
        log.info(
            "study complete", study_uid=study.study_uid, instances=study.instance_count,
            episode=study.episode,
        )
        return True
