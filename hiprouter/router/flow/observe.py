"""Metrics of finished job attempts (hiprouter/metrics.py): duration, outcome, and for a
successful analysis its findings' inference latency per model, its outputs by type and its
triage level, read back from the rows the job recorded (nothing here changes state)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from hiprouter import metrics
from hiprouter.logs import get_logger
from hiprouter.schema import FindingRow, Job, Output

log = get_logger(__name__)


def job_attempt(factory: sessionmaker[Session], job: Job, outcome: str,
                seconds: float) -> None:
    """Count one job attempt; never raises (metrics must not fail a job)."""
    try:
        metrics.JOBS_FINISHED.labels(job.pipeline, outcome).inc()
        metrics.JOB_SECONDS.labels(job.pipeline).observe(seconds)
        if outcome != "done":
            return
        with factory() as session:
            rows = session.execute(
                select(FindingRow.pipeline, FindingRow.model_name, FindingRow.model_version,
                       FindingRow.status, FindingRow.latency_ms)
                .where(FindingRow.job_id == job.id)).all()
            outputs = session.execute(
                select(Output.kind, Output.priority).where(Output.job_id == job.id)).all()
        for pipeline, model, version, status, latency_ms in rows:
            metrics.FINDINGS.labels(pipeline, status).inc()
            if latency_ms:
                metrics.INFERENCE_SECONDS.labels(pipeline, model, version).observe(
                    latency_ms / 1000.0)
        for kind, priority in outputs:
            metrics.OUTPUTS.labels(kind).inc()
            if kind == "KOS" and priority:
                metrics.TRIAGE.labels(priority).inc()
    except Exception as exc:
        log.warning("cannot update job metrics", job_id=job.id, error=str(exc))
