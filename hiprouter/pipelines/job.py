"""One analysis job: a study episode's images -> every pipeline of the rule -> one report.

read the spool -> decode once -> pipelines in cascade order (runner.py) -> one SR, one SC
per radiograph, SEGs and one KOS (report/build.py) -> files for the job's destinations.
Findings, created objects and audit events are recorded in one transaction; a job that runs
again (lease expired, replay) replaces its findings and rebuilds the same UIDs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from hiprouter import audit
from hiprouter.config import Settings
from hiprouter.db import dialect_insert, utcnow, write_transaction
from hiprouter.findings import Finding, PipelineResult, StudyFindings
from hiprouter.pipelines.registry import PipelineSet
from hiprouter.pipelines.runner import analyse_study
from hiprouter.report.build import NothingToReport, ReportBundle, build_report, write_bundle
from hiprouter.schema import FindingRow, Instance, Job, Output

KINDS = {"1.2.840.10008.5.1.4.1.1.88.34": "SR", "1.2.840.10008.5.1.4.1.1.7": "SC",
         "1.2.840.10008.5.1.4.1.1.66.4": "SEG", "1.2.840.10008.5.1.4.1.1.88.59": "KOS"}


@dataclass
class JobContext:
    """Everything a job run gets: the job, its instances and a folder for outputs."""

    settings: Settings
    factory: sessionmaker[Session]
    job: Job
    instances: list[Instance]
    """Stored (not quarantined) instances of the study, limited to job.series_uids."""
    output_dir: Path
    """An empty folder for this run's output files (storage.output_dir/<job id>-<id>)."""
    log: Any = field(default=None)


def read_sources(ctx: JobContext) -> tuple[list[Dataset], dict[str, str]]:
    """The job's spooled instances as datasets, and the reasons for those unreadable."""
    datasets, refused = [], {}
    for inst in ctx.instances:
        try:
            datasets.append(dcmread(ctx.settings.storage.resolve(inst.spool_path)))
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            refused[inst.sop_instance_uid] = f"cannot read the stored file: {exc}"
    return datasets, refused


def run_analysis(ctx: JobContext, pipelines: PipelineSet) -> list[Path]:
    """Run the job's pipelines on its study, build and write the report; returns the files.

    The log line of the study carries the wall time of each step (`timings_ms`).
    """
    clock = Timings()
    datasets, unreadable = read_sources(ctx)
    clock.lap("read")
    names = list(ctx.job.pipelines or [ctx.job.pipeline])
    study, decoded = analyse_study(pipelines, names, ctx.job.study_uid, datasets)
    clock.lap("analyse")
    settings = ctx.settings
    bundle: ReportBundle | None = None
    reported = study.reported()  # shadow results are recorded, never sent
    try:
        if reported.results:
            bundle = build_report(
                reported, datasets,
                {u: img.decoded.display_uint8() for u, img in decoded.items()},
                settings.report, {n: settings.pipelines[n].triage for n in names
                                  if n in settings.pipelines},
                settings.sr_templates_dir)
    except NothingToReport:
        bundle = None
    clock.lap("build")
    paths = write_bundle(bundle, ctx.output_dir) if bundle is not None else []
    clock.lap("write")
    views = {u: ("an AP pelvis, read per hip" if view == "ap_pelvis" else "a single hip")
             for u, view in study.views_from_image.items()}
    record(ctx, study, bundle, paths, unreadable, views)
    clock.lap("record")
    timings = {**clock.laps, "decode": round(study.decode_ms),
               **{f"run:{r.pipeline}": round(r.elapsed_ms) for r in study.results}}
    shadow = [f"{r.pipeline}:{r.model.version if r.model else '-'}:{f.laterality}:"
              f"{_summary(f)}" for r in study.results if r.mode == "shadow" for f in r.findings]
    if shadow:
        ctx.log.info("shadow findings recorded", findings=shadow)
    if bundle is None:
        ctx.log.info("nothing to report", timings_ms=timings,
                     not_assessed=len(study.not_assessed()),
                     unreadable=len(unreadable), shadow_only=bool(study.results)
                     and not reported.results)
    else:
        ctx.log.info("study reported", timings_ms=timings, priority=bundle.priority,
                     objects=len(paths),
                     left_out=[what for what, _ in bundle.left_out],
                     findings=[f"{f.pipeline}:{f.laterality}:{_summary(f)}"
                               for f in reported.findings()])
    return paths


class Timings:
    """Wall time of consecutive steps, in milliseconds."""

    def __init__(self) -> None:
        self.laps: dict[str, int] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round((now - self._last) * 1000)
        self._last = now


def _summary(f: Finding) -> str:
    c = f.classification
    if c is None:
        return ",".join(m.key for m in f.measurements) or "-"
    return c.predicted if c.status == "assessed" else c.status


def finding_row(f: Finding, result: PipelineResult, job: Job) -> dict[str, Any]:
    """The `findings` table row of one finding."""
    c = f.classification
    return {
        "job_id": job.id, "study_uid": job.study_uid, "episode": job.episode,
        "pipeline": f.pipeline, "kind": result.kind, "laterality": f.laterality,
        "source_sop_uids": list(f.source_sop_uids), "model_name": f.model.name,
        "model_version": f.model.version, "device_uid": f.model.device_uid,
        "status": f.status, "reason": c.reason if c is not None and c.reason else None,
        "predicted_class": c.predicted if c is not None else None,
        "probability": float(c.probability) if c is not None else None,
        "probabilities": {k: float(v) for k, v in c.probabilities.items()} if c else {},
        "measurements": [{"key": m.key, "value": float(m.value), "unit": m.unit.code}
                         for m in f.measurements],
        "regions": [{"sop_instance_uid": r.sop_instance_uid, "graphic_type": r.graphic_type,
                     "points": [[round(float(x), 2), round(float(y), 2)] for x, y in r.points],
                     "label": r.label} for r in f.regions],
        "details": {"qualifiers": dict(f.qualifiers),
                    "masks": [{"sop_instance_uid": m.sop_instance_uid, "label": m.label,
                               "pixels": int(m.mask.sum())} for m in f.masks],
                    "heatmaps": [h.sop_instance_uid for h in f.heatmaps],
                    "scores": {k: float(v) for k, v in f.scores.items()}},
        "latency_ms": float(f.latency_ms),
        "mode": result.mode, "model_id": result.model_id,
    }


def record(ctx: JobContext, study: StudyFindings, bundle: ReportBundle | None,
           paths: list[Path], unreadable: dict[str, str],
           views_from_image: dict[str, str] | None = None) -> None:
    """Findings rows (replacing this job's earlier ones), outputs and audit events;
    `views_from_image`: SOP Instance UID -> the view the anatomy check read where the
    image's own headers name none."""
    now = utcnow()
    job = ctx.job
    app = audit.participant("application", ctx.settings.node.ae_title)
    objects = {"study_uid": job.study_uid, "job_id": job.id, "episode": job.episode}
    with write_transaction(ctx.factory) as session:
        session.execute(delete(FindingRow).where(FindingRow.job_id == job.id))
        for result in study.results:
            for f in result.findings:
                session.add(FindingRow(**finding_row(f, result, job), created_at=now))
            if result.findings:
                model = result.model
                audit.record(
                    session, audit.INFERENCE, "E", audit.SUCCESS,
                    description=f"{result.pipeline} ({result.kind}"
                    f"{', shadow: recorded, not sent' if result.mode == 'shadow' else ''}) "
                    f"{model.name + ' ' + model.version if model else ''}: "
                    + "; ".join(f"{f.laterality} {_summary(f)}"
                                + (f" {f.classification.probability:.3f}"
                                   if f.classification else "") for f in result.findings),
                    participants=[audit.participant("application", ctx.settings.node.ae_title,
                                                    device_uid=model.device_uid if model
                                                    else None)],
                    objects={**objects, "pipeline": result.pipeline, "mode": result.mode,
                             "model_id": result.model_id,
                             "sop_instance_uids": sorted({u for f in result.findings
                                                          for u in f.source_sop_uids})})
            for f in result.findings:
                if f.status == "not_assessed" and f.classification is not None:
                    audit.record(
                        session, audit.NOT_ASSESSED, "E", audit.MINOR_FAILURE,
                        description=f"{f.laterality} hip not assessed by {result.pipeline}: "
                                    f"{f.classification.reason}"[:4000],
                        participants=[app],
                        objects={**objects, "pipeline": result.pipeline,
                                 "sop_instance_uids": list(f.source_sop_uids)})
            if result.skipped:
                audit.record(
                    session, audit.INFERENCE, "E", audit.SUCCESS,
                    description=f"{result.pipeline} not run on: " + " | ".join(result.skipped),
                    participants=[app], objects={**objects, "pipeline": result.pipeline})
        for sop_uid, view in (views_from_image or {}).items():
            audit.record(
                session, audit.INFERENCE, "E", audit.SUCCESS,
                description=f"view read from the image (its own headers name none): {view}",
                participants=[app], objects={**objects, "sop_instance_uids": [sop_uid]})
        not_assessed = {**study.not_assessed(), **unreadable}
        for sop_uid, reason in not_assessed.items():
            audit.record(
                session, audit.NOT_ASSESSED, "E", audit.MINOR_FAILURE,
                description=f"image not assessed: {reason}"[:4000], participants=[app],
                objects={**objects, "sop_instance_uids": [sop_uid]})
        if bundle is None:
            return
        for what, why in bundle.left_out:
            audit.record(
                session, audit.REPORT, "C", audit.MINOR_FAILURE,
                description=f"left out of the report: {what}: {why}"[:4000],
                participants=[app], objects=objects)
        insert = dialect_insert(session.get_bind().dialect.name)
        for ds, path in zip(bundle.datasets(), paths, strict=True):
            sop_class = str(ds.SOPClassUID)
            kind = KINDS.get(sop_class, "OT")
            values = {"job_id": job.id, "study_uid": job.study_uid,
                      "sop_instance_uid": str(ds.SOPInstanceUID), "sop_class_uid": sop_class,
                      "kind": kind, "path": ctx.settings.storage.ref(path),
                      "priority": bundle.priority if kind == "KOS" else None, "created_at": now}
            session.execute(insert(Output).values(**values).on_conflict_do_update(
                index_elements=["sop_instance_uid"],
                set_={k: values[k] for k in ("job_id", "path", "priority", "created_at")},
            ))
        audit.record(
            session, audit.REPORT, "C", audit.SUCCESS,
            description=f"priority {bundle.priority}: {bundle.reason}; "
                        f"{len(paths)} objects"[:4000],
            participants=[app], objects={**objects, "sop_instance_uids": [
                str(ds.SOPInstanceUID) for ds in bundle.datasets()]})
