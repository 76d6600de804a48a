"""Route a complete study: apply the rules to its headers and queue its jobs.

Per matching rule: one analysis job running all of the rule's inference pipelines (they
write one report together) and one forward job when the rule forwards the originals.

Called inside the transaction that marks the study complete (see studies.py), so a study
episode is routed exactly once; the unique (study, episode, rule, pipeline) key makes a
second call a no-op that returns the jobs already queued.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session

from hiprouter import audit
from hiprouter.config import Settings, StorageConfig
from hiprouter.logs import get_logger
from hiprouter.router.flow import queue, studies
from hiprouter.router.flow.rules import Header, Route, plan_routes
from hiprouter.schema import Instance, Job, Study

log = get_logger(__name__)

FORWARD = "forward"


def read_header(path: str | Path, calling_ae: str | None = None) -> Header | None:
    """The header of a spooled file (no pixel data), or None when it cannot be read."""
    try:
        return Header(dcmread(path, stop_before_pixels=True), calling_ae)
    except Exception as exc:
        log.warning("cannot read header", path=str(path), error=str(exc))
        return None


def series_headers(session: Session, study_uid: str,
                   storage: StorageConfig) -> dict[str, Header]:
    """One representative header per series (its first stored, readable instance)."""
    rows = session.scalars(
        select(Instance)
        .where(Instance.study_uid == study_uid, Instance.state == "stored",
               Instance.purpose == "clinical")
        .order_by(Instance.series_uid, Instance.received_at, Instance.id)
    ).all()
    headers: dict[str, Header] = {}
    for row in rows:
        if row.series_uid in headers:
            continue
        header = read_header(storage.resolve(row.spool_path), row.calling_ae)
        if header is not None:
            headers[row.series_uid] = header
    return headers


def route_study(session: Session, settings: Settings, study: Study) -> list[Job]:
    """Apply the rules to a study and queue its jobs in the caller's transaction.

    Marks the study `routed` (jobs queued) or `ignored` (no rule matched, or the matching
    rule asks for nothing; see `studies.mark_routed`) and records a routing audit event
    either way.
    """
    existing = session.scalars(
        select(Job).where(Job.study_uid == study.study_uid, Job.episode == study.episode)
        .order_by(Job.id)
    ).all()
    if existing:
        return list(existing)
    routes = plan_routes(settings.rules, settings.rule_mode,
                         series_headers(session, study.study_uid, settings.storage))
    jobs = [job for route in routes for job in _enqueue_route(session, study, route)]
    studies.mark_routed(study, jobs)
    _audit(session, study, routes, jobs)
    log.info("study routed", study_uid=study.study_uid, episode=study.episode,
             rules=[r.rule.name for r in routes], jobs=len(jobs), state=study.state)
    return jobs


def analysis_name(pipelines: list[str]) -> str:
    """The job name of an analysis running these pipelines, e.g. ``hardware+fracture``."""
    name = "+".join(pipelines)
    if len(name) <= 64:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:55]}+{digest}"


def _enqueue_route(session: Session, study: Study, route: Route) -> list[Job]:
    """One analysis job running every inference pipeline of the rule (one report), and
    one forward job for the original images."""
    rule = route.rule
    jobs = []
    analysis = [p for p in rule.pipelines if p != FORWARD]
    if analysis:
        jobs.append(queue.enqueue(
            session, study_uid=study.study_uid, pipeline=analysis_name(analysis),
            rule=rule.name, send_to=list(rule.send_to), series_uids=route.series_uids,
            episode=study.episode, pipelines=analysis))
    forward = list(rule.send_to) if FORWARD in rule.pipelines else []
    forward += [d for d in rule.forward_to if d not in forward]
    if forward:
        jobs.append(queue.enqueue(
            session, study_uid=study.study_uid, pipeline=FORWARD, rule=rule.name,
            send_to=forward, series_uids=route.series_uids, episode=study.episode))
    return jobs


def _audit(session: Session, study: Study, routes: list[Route], jobs: list[Job]) -> None:
    if routes:
        parts = [
            f"rule {r.rule.name} ({r.rule.level}): "
            + "; ".join(f"series {uid}: {why}" for uid, why in r.reasons.items())
            for r in routes
        ]
        description = " | ".join(parts)
    else:
        description = "no rule matched"
    audit.record(
        session, audit.ROUTING, "E", audit.SUCCESS,
        description=f"{study.state}: {description}"[:4000],
        participants=[audit.participant("source", study.calling_ae)],
        objects={
            "study_uid": study.study_uid,
            "episode": study.episode,
            "jobs": [{"id": j.id, "pipeline": j.pipeline, "rule": j.rule,
                      "send_to": j.send_to, "series_uids": j.series_uids} for j in jobs],
        },
    )
