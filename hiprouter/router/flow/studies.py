"""Study bookkeeping: every change of `Study.state` happens here.

    receiving --(idle for studies.complete_after_s: sweep)--> complete
    complete  --(routing: jobs queued / none)---------------> routed | ignored
    routed    --(all its jobs and sends finished: settle)---> done | failed (something dead)
    done, failed --(operator retry or replay queues work)---> routed
    any state --(a new instance: next episode)--------------> receiving

The state lives in the `studies` table, so a restart neither forgets a study nor completes
it twice: the sweep flips `receiving -> complete` and runs the completion callback in the
same transaction. A study that receives instances after completion starts a new episode.
Other modules call the functions below; none of them assigns `Study.state` itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, case, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from hiprouter.config import Settings
from hiprouter.db import dialect_insert, utcnow, write_transaction
from hiprouter.logs import get_logger
from hiprouter.router.flow import queue
from hiprouter.schema import Job, Send, Study

log = get_logger(__name__)

RECEIVING = "receiving"
COMPLETE = "complete"
ROUTED, IGNORED = "routed", "ignored"
DONE, FAILED = "done", "failed"

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


def mark_routed(study: Study, jobs: Sequence[Job]) -> str:
    """After routing: `routed` when jobs were queued, `ignored` when none (no rule matched,
    or the matching rule asks for nothing); returns the new state."""
    study.state = ROUTED if jobs else IGNORED
    study.routed_at = utcnow()
    return study.state


def settle_study(session: Session, study_uid: str) -> str | None:
    """When a routed study has no unfinished jobs or sends left, mark it `done` (or
    `failed` when something is dead); returns the new state, or None if unchanged."""
    study = session.scalars(select(Study).where(Study.study_uid == study_uid)).first()
    if study is None or study.state != ROUTED or queue.unfinished_work(session, study_uid):
        return None
    dead = session.scalar(select(func.count()).select_from(Job).where(
        Job.study_uid == study_uid, Job.state == queue.DEAD)) or session.scalar(
        select(func.count()).select_from(Send).where(
            Send.study_uid == study_uid, Send.state == queue.DEAD))
    study.state = FAILED if dead else DONE
    return study.state


def settle_studies(session: Session, study_uids: Iterable[str]) -> None:
    """`settle_study` for several studies, in sorted order: concurrent transactions then
    lock study rows in the same order and cannot deadlock on them."""
    for study_uid in sorted(set(study_uids)):
        settle_study(session, study_uid)


def reopen_studies(session: Session, study_uid: str | None) -> None:
    """Studies (one, or all) that have queued work again are `routed` again (not done or
    failed), in the caller's transaction."""
    busy = select(Job.study_uid).where(Job.state.in_(queue.UNFINISHED)).union(
        select(Send.study_uid).where(Send.state.in_(queue.UNFINISHED)))
    query = update(Study).where(Study.state.in_((DONE, FAILED)),
                                Study.study_uid.in_(busy))
    if study_uid:
        query = query.where(Study.study_uid == study_uid)
    session.execute(query.values(state=ROUTED).execution_options(synchronize_session=False))
