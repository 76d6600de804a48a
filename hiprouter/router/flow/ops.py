"""Operator actions on the queue: `hiprouter retry` (dead work back in the queue) and
`hiprouter replay` (run a study's pipelines again and send their results again).

Both run in one write transaction, and a study with queued work again is `routed` again
(`studies.reopen_studies`), so it settles to done or failed once that work finishes.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from hiprouter.config import Settings
from hiprouter.db import utcnow, write_transaction
from hiprouter.router.flow import queue, studies
from hiprouter.router.flow.routing import route_study
from hiprouter.schema import Job, Send, Study


@dataclass(frozen=True)
class Requeued:
    jobs: int
    sends: int


def retry_dead(factory: sessionmaker[Session], study_uid: str | None = None) -> Requeued:
    """Put dead jobs and dead sends (of one study, or all) back in the queue, due now."""
    now = utcnow()
    with write_transaction(factory) as session:
        job_filter = [Job.state == queue.DEAD] + (
            [Job.study_uid == study_uid] if study_uid else [])
        jobs = session.execute(
            update(Job).where(*job_filter)
            .values(state=queue.PENDING, attempts=0, next_run_at=now, updated_at=now,
                    finished_at=None)
            .execution_options(synchronize_session=False)
        ).rowcount
        send_filter = [Send.state == queue.DEAD] + (
            [Send.study_uid == study_uid] if study_uid else [])
        sends = session.execute(
            update(Send).where(*send_filter)
            .values(state=queue.PENDING, attempts=0, next_run_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
        studies.reopen_studies(session, study_uid)
    return Requeued(jobs or 0, sends or 0)


@dataclass(frozen=True)
class Replayed:
    jobs: int
    running: int
    rerouted: bool


def replay_study(factory: sessionmaker[Session], settings: Settings, study_uid: str) -> Replayed:
    """Run a study's pipelines again and send their results again.

    The jobs of the study's latest episode go back to pending with `replay` set, so the
    sends they produce are repeated even when sent before. A study that no rule matched
    (no jobs) is routed again with the current rules. Running jobs are left alone.
    """
    with write_transaction(factory) as session:
        study = session.scalars(select(Study).where(Study.study_uid == study_uid)).first()
        if study is None:
            raise LookupError(f"study {study_uid} is not known")
        episode = session.scalar(
            select(func.max(Job.episode)).where(Job.study_uid == study_uid)
        )
        if episode is None:
            jobs = route_study(session, settings, study)
            return Replayed(len(jobs), 0, True)
        now = utcnow()
        base = [Job.study_uid == study_uid, Job.episode == episode]
        running = session.scalar(
            select(func.count()).select_from(Job).where(*base, Job.state == queue.RUNNING)
        ) or 0
        count = session.execute(
            update(Job).where(*base, Job.state != queue.RUNNING)
            .values(state=queue.PENDING, attempts=0, next_run_at=now, updated_at=now,
                    replay=True, finished_at=None, last_error=None)
            .execution_options(synchronize_session=False)
        ).rowcount
        studies.reopen_studies(session, study_uid)
        return Replayed(count or 0, running, False)
