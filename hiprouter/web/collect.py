"""What the web server reads from the database: scrape-time gauges for Prometheus and the
rows of the status page. Read-only; UIDs and accession numbers, never patient names or IDs.
"""

from __future__ import annotations

import shutil
import threading
from collections import OrderedDict
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from pydicom import dcmread
from sqlalchemy import String, cast, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from hiprouter import __version__
from hiprouter.config import StorageConfig
from hiprouter.db import as_utc, utcnow
from hiprouter.logs import get_logger
from hiprouter.schema import AuditEvent, FindingRow, Instance, Job, Output, Send, Study

log = get_logger(__name__)

UNFINISHED = ("pending", "running", "failed", "committing")


def spool_free_bytes(spool: Path) -> int:
    probe = spool if spool.exists() else spool.parent if spool.parent.exists() else Path("/")
    return int(shutil.disk_usage(probe).free)


class DatabaseCollector:
    """Gauges computed from SQL at each scrape, so they hold for every process of the node
    (serve and `hiprouter worker` on other hosts share the database)."""

    def __init__(self, factory: sessionmaker[Session], spool: Path) -> None:
        self.factory = factory
        self.spool = spool

    def describe(self) -> list[Any]:
        return []  # computed families: no fixed description (skips a collect at register)

    def collect(self) -> Iterator[Any]:
        try:
            with self.factory() as session:
                yield from self._collect(session)
        except Exception as exc:  # a scrape must not fail because the database is down
            log.warning("metrics: cannot read the database", error=str(exc))
            up = GaugeMetricFamily("hiprouter_database_up",
                                   "1 when the last scrape could read the database")
            up.add_metric([], 0)
            yield up

    def _collect(self, session: Session) -> Iterator[Any]:
        up = GaugeMetricFamily("hiprouter_database_up",
                               "1 when the last scrape could read the database")
        up.add_metric([], 1)
        yield up
        info = GaugeMetricFamily("hiprouter_build_info", "Version of this process",
                                 labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        free = GaugeMetricFamily("hiprouter_spool_free_bytes",
                                 "Free space on the spool's file system")
        free.add_metric([], spool_free_bytes(self.spool))
        yield free

        studies = GaugeMetricFamily("hiprouter_studies", "Studies by state", labels=["state"])
        for state, n in session.execute(select(Study.state, func.count()).group_by(
                Study.state)):
            studies.add_metric([str(state)], int(n))
        yield studies
        instances = GaugeMetricFamily("hiprouter_instances", "Stored instances by state",
                                      labels=["state"])
        for state, n in session.execute(select(Instance.state, func.count()).group_by(
                Instance.state)):
            instances.add_metric([str(state)], int(n))
        yield instances

        jobs = GaugeMetricFamily("hiprouter_jobs", "Jobs by pipeline and state",
                                 labels=["pipeline", "state"])
        for pipe, state, n in session.execute(select(Job.pipeline, Job.state, func.count())
                                              .group_by(Job.pipeline, Job.state)):
            jobs.add_metric([str(pipe), str(state)], int(n))
        yield jobs
        sends = GaugeMetricFamily("hiprouter_sends", "Sends by destination and state",
                                  labels=["destination", "state"])
        for dest, state, n in session.execute(select(Send.destination, Send.state, func.count())
                                              .group_by(Send.destination, Send.state)):
            sends.add_metric([str(dest), str(state)], int(n))
        yield sends

        dead = GaugeMetricFamily("hiprouter_dead_letters",
                                 "Dead jobs and sends waiting for `hiprouter retry`",
                                 labels=["queue"])
        dead.add_metric(["jobs"], int(session.scalar(
            select(func.count()).select_from(Job).where(Job.state == "dead")) or 0))
        dead.add_metric(["sends"], int(session.scalar(
            select(func.count()).select_from(Send).where(Send.state == "dead")) or 0))
        yield dead

        now = utcnow()
        age = GaugeMetricFamily(
            "hiprouter_queue_oldest_age_seconds",
            "Age of the oldest unfinished job (per pipeline) or send (per destination), "
            "counted from when it was queued", labels=["queue", "name"])
        for name, created in session.execute(
                select(Job.pipeline, func.min(Job.created_at))
                .where(Job.state.in_(UNFINISHED)).group_by(Job.pipeline)):
            age.add_metric(["jobs", str(name)], _age(now, created))
        for name, created in session.execute(
                select(Send.destination, func.min(Send.created_at))
                .where(Send.state.in_(UNFINISHED)).group_by(Send.destination)):
            age.add_metric(["sends", str(name)], _age(now, created))
        yield age


def _age(now: datetime, then: datetime | None) -> float:
    return max((now - as_utc(then)).total_seconds(), 0.0) if then is not None else 0.0


class HeaderCache:
    """Accession numbers (and study dates) read from one stored instance of each study,
    kept for the last `size` studies. Patient name and ID are never read."""

    TAGS = ["AccessionNumber", "StudyDate", "StudyDescription"]

    def __init__(self, size: int = 2000, storage: StorageConfig | None = None) -> None:
        self.size = size
        self.storage = storage
        """Resolves the rows' file references; None: they must be absolute paths."""
        self._data: OrderedDict[str, dict[str, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, study_uid: str, path: str | None) -> dict[str, str]:
        with self._lock:
            if study_uid in self._data:
                self._data.move_to_end(study_uid)
                return self._data[study_uid]
        found = {"AccessionNumber": "", "StudyDate": "", "StudyDescription": ""}
        if path:
            try:
                local = self.storage.resolve(path) if self.storage is not None else path
                ds = dcmread(local, stop_before_pixels=True, specific_tags=self.TAGS)
                found = {k: str(ds.get(k, "") or "") for k in self.TAGS}
            except Exception:
                pass  # a removed or unreadable file: shown without them
        with self._lock:
            self._data[study_uid] = found
            while len(self._data) > self.size:
                self._data.popitem(last=False)
        return found


def _findings_summary(rows: list[Any]) -> str:
    parts = []
    for r in rows:
        what = r.predicted_class if r.status == "assessed" else r.status.replace("_", " ")
        prob = f" {r.probability:.2f}" if r.status == "assessed" and r.probability else ""
        parts.append(f"{r.laterality} {r.pipeline}: {what}{prob}")
    return "; ".join(parts)


def recent_studies(session: Session, headers: HeaderCache, limit: int,
                   query: str = "") -> list[dict[str, Any]]:
    """The most recently received studies with state, triage level and findings.

    `query` filters on a Study Instance UID prefix or an accession number (exact).
    """
    stmt = select(Study).order_by(Study.last_received_at.desc())
    q = query.strip()
    uids: list[str] | None = None
    if q:
        if all(c.isdigit() or c == "." for c in q):
            stmt = stmt.where(Study.study_uid.like(q.replace("_", "") + "%"))
        else:
            uids = [u for u, h in _accession_index(session, headers).items()
                    if h == q]
            stmt = stmt.where(Study.study_uid.in_(uids))
    studies = list(session.scalars(stmt.limit(limit)))
    out = []
    for st in studies:
        path = session.scalar(select(Instance.spool_path).where(
            Instance.study_uid == st.study_uid, Instance.state == "stored",
            Instance.purpose == "clinical")
            .order_by(Instance.id).limit(1))
        head = headers.get(st.study_uid, path)
        rows = list(session.scalars(
            select(FindingRow).where(FindingRow.study_uid == st.study_uid,
                                     FindingRow.episode == st.episode)
            .order_by(FindingRow.pipeline, FindingRow.laterality.desc())))
        priority = session.scalar(
            select(Output.priority).join(Job, Job.id == Output.job_id)
            .where(Output.study_uid == st.study_uid, Output.kind == "KOS",
                   Job.episode == st.episode).order_by(Output.id.desc()).limit(1))
        sends = dict(session.execute(
            select(Send.state, func.count()).where(Send.study_uid == st.study_uid)
            .group_by(Send.state)).all())
        out.append({
            "study_uid": st.study_uid, "accession": head["AccessionNumber"],
            "study_date": head["StudyDate"], "state": st.state, "episode": st.episode,
            "instances": st.instance_count, "calling_ae": st.calling_ae or "",
            "last_received_at": as_utc(st.last_received_at),
            "priority": priority or "", "findings": _findings_summary(rows),
            "sends": {str(k): int(v) for k, v in sends.items()},
        })
    return out


def _accession_index(session: Session, headers: HeaderCache,
                     scan: int = 2000) -> dict[str, str]:
    """Accession number per study for the last `scan` studies (from the header cache)."""
    rows = session.execute(
        select(Study.study_uid, func.min(Instance.spool_path))
        .join(Instance, Instance.study_uid == Study.study_uid, isouter=True)
        .group_by(Study.study_uid, Study.last_received_at)
        .order_by(Study.last_received_at.desc()).limit(scan)).all()
    return {uid: headers.get(uid, path)["AccessionNumber"] for uid, path in rows}


def study_detail(session: Session, headers: HeaderCache, study_uid: str
                 ) -> dict[str, Any] | None:
    st = session.scalar(select(Study).where(Study.study_uid == study_uid))
    if st is None:
        return None
    path = session.scalar(select(Instance.spool_path).where(
        Instance.study_uid == study_uid).order_by(Instance.id).limit(1))
    series = session.execute(
        select(Instance.series_uid, Instance.sop_class_uid, func.count(),
               func.min(Instance.received_at))
        .where(Instance.study_uid == study_uid)
        .group_by(Instance.series_uid, Instance.sop_class_uid)).all()
    jobs = list(session.scalars(select(Job).where(Job.study_uid == study_uid)
                                .order_by(Job.id)))
    findings = list(session.scalars(select(FindingRow).where(FindingRow.study_uid == study_uid)
                                    .order_by(FindingRow.episode, FindingRow.pipeline,
                                              FindingRow.laterality.desc())))
    outputs = list(session.scalars(select(Output).where(Output.study_uid == study_uid)
                                   .order_by(Output.id)))
    sends = list(session.scalars(select(Send).where(Send.study_uid == study_uid)
                                 .order_by(Send.destination, Send.id)))
    return {"study": st, "header": headers.get(study_uid, path),
            "series": [{"series_uid": s, "sop_class_uid": c, "count": n,
                        "received_at": as_utc(t)} for s, c, n, t in series],
            "jobs": jobs, "findings": findings, "outputs": outputs, "sends": sends,
            "audit": audit_events(session, study_uid=study_uid, limit=500)}


def audit_events(session: Session, *, study_uid: str = "", text: str = "",
                 event: str = "", outcome: str = "", limit: int = 200,
                 before_id: int | None = None) -> list[AuditEvent]:
    """Audit events, newest first, filtered by study (UID anywhere in the event's
    objects), free text (description, participants, objects), event code and outcome."""
    stmt = select(AuditEvent).order_by(AuditEvent.id.desc())
    if study_uid:
        stmt = stmt.where(cast(AuditEvent.objects, String).contains(study_uid))
    if text:
        like = f"%{text}%"
        stmt = stmt.where(or_(AuditEvent.outcome_description.ilike(like),
                              AuditEvent.event_id_meaning.ilike(like),
                              AuditEvent.event_type_meaning.ilike(like),
                              cast(AuditEvent.participants, String).ilike(like),
                              cast(AuditEvent.objects, String).ilike(like)))
    if event:
        stmt = stmt.where(or_(AuditEvent.event_id_code == event,
                              AuditEvent.event_type_code == event))
    if outcome.isdigit():
        stmt = stmt.where(AuditEvent.outcome == int(outcome))
    if before_id is not None:
        stmt = stmt.where(AuditEvent.id < before_id)
    return list(session.scalars(stmt.limit(limit)))


def event_codes(session: Session) -> list[tuple[str, str]]:
    """(code, meaning) of the event IDs and types present, for the search form."""
    ids = session.execute(select(AuditEvent.event_id_code, AuditEvent.event_id_meaning)
                          .distinct()).all()
    types = session.execute(select(AuditEvent.event_type_code, AuditEvent.event_type_meaning)
                            .where(AuditEvent.event_type_code.is_not(None)).distinct()).all()
    return sorted({(str(c), str(m)) for c, m in [*ids, *types]})


def model_versions(session: Session) -> list[dict[str, Any]]:
    rows = session.execute(
        select(FindingRow.pipeline, FindingRow.kind, FindingRow.model_name,
               FindingRow.model_version, FindingRow.device_uid, func.count(),
               func.min(FindingRow.created_at), func.max(FindingRow.created_at))
        .group_by(FindingRow.pipeline, FindingRow.kind, FindingRow.model_name,
                  FindingRow.model_version, FindingRow.device_uid)
        .order_by(FindingRow.pipeline, func.max(FindingRow.created_at).desc())).all()
    return [{"pipeline": p, "kind": k, "name": n, "version": v, "device_uid": d or "",
             "findings": int(c), "first": as_utc(a), "last": as_utc(b)}
            for p, k, n, v, d, c, a, b in rows]
