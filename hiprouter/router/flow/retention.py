"""Retention: remove a study's files and rows `storage.retention_days` after it was last
received, once all its work is finished (no pending, running or retrying job or send).

Studies still receiving or waiting to be routed are never touched. Audit events stay (they
hold UIDs only); a "DICOM Study Deleted" event records each removal. Files are deleted
after the rows are committed, so a crash can leave an orphan file but never a row that
points at a missing file of unfinished work.
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from hiprouter import audit
from hiprouter.config import Settings
from hiprouter.db import utcnow, write_transaction
from hiprouter.logs import get_logger
from hiprouter.router.flow import queue, studies
from hiprouter.schema import FindingRow, Instance, Job, Output, Send, SendAttempt, Study

log = get_logger(__name__)

ACTIVE_STUDY_STATES = (studies.RECEIVING, studies.COMPLETE)


def sweep_retention(factory: sessionmaker[Session], settings: Settings) -> int:
    """Remove finished studies older than the retention period; returns how many.

    `storage.retention_days: 0` keeps everything.
    """
    days = settings.storage.retention_days
    if days <= 0:
        return 0
    cutoff = utcnow() - timedelta(days=days)
    with factory() as session:
        candidates = session.scalars(
            select(Study.study_uid).where(Study.last_received_at < cutoff,
                                          Study.state.not_in(ACTIVE_STUDY_STATES))
        ).all()
    removed = 0
    for study_uid in candidates:
        try:
            files = _remove_rows(factory, settings, study_uid, cutoff)
        except Exception as exc:
            log.error("retention failed", study_uid=study_uid, error=str(exc))
            continue
        if files is None:
            continue
        for path in files:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        removed += 1
        log.info("study removed by retention", study_uid=study_uid, files=len(files))
    return removed


def _remove_rows(factory: sessionmaker[Session], settings: Settings, study_uid: str,
                 cutoff: object) -> list[Path] | None:
    with write_transaction(factory) as session:
        study = session.scalars(select(Study).where(
            Study.study_uid == study_uid, Study.last_received_at < cutoff,
            Study.state.not_in(ACTIVE_STUDY_STATES))).first()
        if study is None or queue.unfinished_work(session, study_uid):
            return None
        storage = settings.storage
        files = [storage.resolve(p) for p in session.scalars(
            select(Instance.spool_path).where(Instance.study_uid == study_uid))]
        out_root = storage.output_dir.resolve()
        for ref in [*session.scalars(select(Send.path).where(Send.study_uid == study_uid)),
                    *session.scalars(select(Output.path).where(Output.study_uid == study_uid))]:
            path = storage.resolve(ref)
            if _inside(path, out_root):
                files.append(path)
        job_ids = list(session.scalars(select(Job.id).where(Job.study_uid == study_uid)))
        for job_id in job_ids:
            files.extend(out_root.glob(f"{job_id}-*"))
        send_ids = select(Send.id).where(Send.study_uid == study_uid)
        session.execute(delete(SendAttempt).where(SendAttempt.send_id.in_(send_ids)))
        for table in (Send, Output, FindingRow, Job, Instance):
            session.execute(delete(table).where(table.study_uid == study_uid))
        session.delete(study)
        audit.record(session, audit.STUDY_DELETED,
                     "D", audit.SUCCESS,
                     description=f"retention: older than {settings.storage.retention_days} "
                                 "days, all work finished",
                     participants=[audit.participant("application", settings.node.ae_title)],
                     objects={"study_uid": study_uid, "jobs": job_ids})
        return files


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root)
    except OSError:
        return False
