"""The durable job queue: rows in `jobs`, claimed with a lease, retried with backoff.

Claiming is safe with many worker processes on many hosts: on PostgreSQL the claim is
`SELECT ... FOR UPDATE SKIP LOCKED`; on SQLite it runs in a write transaction (BEGIN
IMMEDIATE), which admits one writer at a time. A claimed job carries a lease (owner and
expiry) that the worker renews while it runs; a job whose lease expired (its worker died)
is claimed again. Completion and failure are fenced by the lease owner, so a worker that
lost its lease cannot overwrite the result of the worker that took the job over.

Job states: pending -> running -> done; running -> failed (waiting for its next attempt)
-> running ...; after `queue.retry.max_attempts` attempts -> dead (until `ops.retry_dead`).

A leaf: it imports only configuration, database, logging and schema modules. What a job
or send finishing means for its study is `studies.settle_study`, called by the worker and
the dispatcher in the same transaction.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from hiprouter.config import RetryConfig
from hiprouter.db import utcnow, write_transaction
from hiprouter.logs import get_logger
from hiprouter.schema import Job, Send

log = get_logger(__name__)

PENDING, RUNNING, FAILED, DONE, DEAD = "pending", "running", "failed", "done", "dead"
SENT = "sent"
COMMITTING = "committing"
"""A send stored at the peer, waiting for its storage commitment report."""
WAITING = (PENDING, FAILED)
"""States of work that is not finished (plus RUNNING)."""
UNFINISHED = (PENDING, RUNNING, FAILED, COMMITTING)


class LeaseLost(RuntimeError):
    """The worker no longer owns the job (its lease expired and another worker took it)."""


def owner_id(tag: str) -> str:
    """A lease owner name unique across hosts, processes and threads."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{tag}"


def backoff_s(retry: RetryConfig, attempts: int) -> float:
    """Capped exponential delay before attempt `attempts + 1`."""
    return float(min(retry.max_s, retry.initial_s * retry.factor ** max(attempts - 1, 0)))


def is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def enqueue(
    session: Session,
    *,
    study_uid: str,
    pipeline: str,
    rule: str,
    send_to: Sequence[str],
    series_uids: Sequence[str] | None = None,
    episode: int = 1,
    pipelines: Sequence[str] | None = None,
) -> Job:
    """Add a pending job in the caller's transaction (unique per study episode, rule and
    pipeline: a second enqueue of the same job returns the existing row).

    `pipelines` are the inference pipelines an analysis job runs (in cascade order);
    `pipeline` is then the job's name for them.
    """
    existing = session.scalars(
        select(Job).where(
            Job.study_uid == study_uid, Job.episode == episode, Job.rule == rule,
            Job.pipeline == pipeline,
        )
    ).first()
    if existing is not None:
        return existing
    now = utcnow()
    job = Job(
        study_uid=study_uid, pipeline=pipeline, rule=rule, send_to=list(send_to),
        series_uids=list(series_uids) if series_uids is not None else None, episode=episode,
        pipelines=list(pipelines) if pipelines is not None else None,
        state=PENDING, attempts=0, next_run_at=now, created_at=now, updated_at=now,
        replay=False,
    )
    session.add(job)
    session.flush()
    return job


def claim(
    factory: sessionmaker[Session], owner: str, lease_s: float, retry: RetryConfig
) -> Job | None:
    """Take the next runnable job (due, or with an expired lease) or None.

    The returned row is detached; its `attempts` already counts this attempt. A job whose
    lease expired on its last allowed attempt goes to `dead` instead.
    """
    while True:
        if not due(factory, Job):
            return None  # idle polls never take the write lock
        with write_transaction(factory) as session:
            now = utcnow()
            query = select(Job).where(runnable(Job, now)).order_by(Job.next_run_at, Job.id) \
                .limit(1)
            if is_postgres(session):
                query = query.with_for_update(skip_locked=True)
            job = session.scalars(query).first()
            if job is None:
                return None
            if job.state == RUNNING:
                log.warning("job lease expired", job_id=job.id, owner=job.lease_owner,
                            attempts=job.attempts)
                if job.attempts >= retry.max_attempts:
                    _set_dead(job, f"lease of {job.lease_owner} expired on the last attempt")
                    continue
            job.state = RUNNING
            job.attempts += 1
            job.lease_owner = owner
            job.lease_expires_at = now + timedelta(seconds=lease_s)
            job.updated_at = now
            return job


def runnable(table: type[Job] | type[Send], now: datetime) -> Any:
    """Due and waiting, or running with an expired lease (its worker died)."""
    return or_(and_(table.state.in_(WAITING), table.next_run_at <= now),
               and_(table.state == RUNNING, table.lease_expires_at < now))


def due(factory: sessionmaker[Session], table: type[Job] | type[Send], *where: Any) -> bool:
    """Whether any row of `table` is runnable now (a read, no lock)."""
    with factory() as session:
        return session.scalar(
            select(table.id).where(runnable(table, utcnow()), *where).limit(1)
        ) is not None


def heartbeat(factory: sessionmaker[Session], job_id: int, owner: str, lease_s: float) -> bool:
    """Extend the lease of a running job; False when the worker no longer owns it."""
    with factory() as session, session.begin():
        now = utcnow()
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == owner, Job.state == RUNNING)
            .values(lease_expires_at=now + timedelta(seconds=lease_s), updated_at=now)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)


def complete(session: Session, job_id: int, owner: str) -> None:
    """Mark a job done in the caller's transaction; raises LeaseLost when not the owner."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == owner, Job.state == RUNNING)
        .values(state=DONE, finished_at=now, updated_at=now, lease_owner=None,
                lease_expires_at=None, last_error=None, replay=False)
        .execution_options(synchronize_session=False)
    )
    if not result.rowcount:
        raise LeaseLost(f"job {job_id} is no longer leased by {owner}")


def fail(
    session: Session, job_id: int, owner: str, error: str, retry: RetryConfig
) -> str | None:
    """Record a failed attempt in the caller's transaction: `failed` with a backoff delay,
    or `dead` after the last attempt. Returns the new state, or None when the worker no
    longer owned the job."""
    job = session.scalars(
        select(Job).where(Job.id == job_id, Job.lease_owner == owner, Job.state == RUNNING)
    ).first()
    if job is None:
        return None
    if job.attempts >= retry.max_attempts:
        _set_dead(job, error)
    else:
        now = utcnow()
        job.state = FAILED
        job.last_error = error[:4000]
        job.next_run_at = now + timedelta(seconds=backoff_s(retry, job.attempts))
        job.lease_owner = None
        job.lease_expires_at = None
        job.updated_at = now
    return job.state


def _set_dead(job: Job, error: str) -> None:
    now = utcnow()
    job.state = DEAD
    job.last_error = error[:4000]
    job.lease_owner = None
    job.lease_expires_at = None
    job.finished_at = now
    job.updated_at = now
    log.error("job dead", job_id=job.id, study_uid=job.study_uid, pipeline=job.pipeline,
              attempts=job.attempts, error=error[:500])


def unfinished_work(session: Session, study_uid: str) -> int:
    """How many jobs and sends of a study are still pending, running or waiting to retry."""
    jobs = session.scalar(
        select(func.count()).select_from(Job)
        .where(Job.study_uid == study_uid, Job.state.in_(UNFINISHED))
    ) or 0
    sends = session.scalar(
        select(func.count()).select_from(Send)
        .where(Send.study_uid == study_uid, Send.state.in_(UNFINISHED))
    ) or 0
    return int(jobs) + int(sends)


def expire_orphaned_leases(factory: sessionmaker[Session], hostname: str) -> int:
    """Expire leases held by processes of this host that no longer exist (killed -9),
    so their jobs and sends are taken over now instead of after `lease_s`.

    Lease owners are "<host>:<pid>:<thread>" (see `owner_id`).
    """
    import psutil

    expired = 0
    with write_transaction(factory) as session:
        now = utcnow()
        for table in (Job, Send):
            owners = session.scalars(
                select(table.lease_owner).distinct()
                .where(table.state == RUNNING, table.lease_owner.like(f"{hostname}:%"))
            ).all()
            for owner in owners:
                if not owner or not owner.startswith(f"{hostname}:"):
                    continue  # LIKE treats _ as a wildcard
                pid = owner[len(hostname) + 1:].split(":")[0]
                if not pid.isdigit() or psutil.pid_exists(int(pid)):
                    continue
                expired += session.execute(
                    update(table).where(table.state == RUNNING, table.lease_owner == owner)
                    .values(lease_expires_at=now - timedelta(seconds=1))
                    .execution_options(synchronize_session=False)
                ).rowcount or 0
    if expired:
        log.warning("expired leases of dead local processes", count=expired)
    return expired
