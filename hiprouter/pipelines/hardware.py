"""The `hardware` and `fracture` pipelines: classify each hip with a label set and report it.

`hardware` names the orthopaedic hardware (seed 003); `fracture` flags acute proximal
femoral fractures for triage (seed 001). Both run the same code with their own models:
read spool -> HardwareClassifier.predict_study -> SR + SC overlays + KOS triage flag
-> files for the job's destinations. Each hip's result and each unusable image is
recorded in the database (inferences, audit events); each object created in `outputs`.
"""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from hiprouter import audit
from hiprouter.config import Settings
from hiprouter.db import dialect_insert, utcnow, write_transaction
from hiprouter.inference.models import ModelError
from hiprouter.inference.predict import HardwareClassifier
from hiprouter.inference.results import StudyResult
from hiprouter.report.build import ReportBundle, build_outputs, write_bundle
from hiprouter.router.pipelines import JobContext, Pipeline, register_pipeline
from hiprouter.schema import Inference, Output

KINDS = {"1.2.840.10008.5.1.4.1.1.88.34": "SR", "1.2.840.10008.5.1.4.1.1.7": "SC",
         "1.2.840.10008.5.1.4.1.1.88.59": "KOS"}


def read_sources(ctx: JobContext) -> tuple[list[Dataset], dict[str, str]]:
    """The job's spooled instances as datasets, and the reasons for those unreadable."""
    datasets, refused = [], {}
    for inst in ctx.instances:
        try:
            datasets.append(dcmread(inst.spool_path))
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            refused[inst.sop_instance_uid] = f"cannot read the stored file: {exc}"
    return datasets, refused


def record_results(ctx: JobContext, result: StudyResult, bundle: ReportBundle | None,
                   paths: list[Path]) -> None:
    """Inference rows, output rows and audit events, in one transaction."""
    now = utcnow()
    model = result.model
    with write_transaction(ctx.factory) as session:
        for hip in result.hips:
            session.add(Inference(
                job_id=ctx.job.id, study_uid=result.study_uid, pipeline=result.pipeline,
                laterality=hip.laterality, source_sop_uids=hip.source_sop_uids,
                model_name=model.name, model_version=model.version,
                predicted_class=hip.predicted_class, probability=hip.probability,
                probabilities=hip.probabilities, latency_ms=hip.latency_ms, created_at=now,
            ))
        if result.hips:
            audit.record(
                session, audit.INFERENCE, "E", audit.SUCCESS,
                description=f"{model.name} {model.version}: "
                + "; ".join(f"{h.laterality} {h.predicted_class} {h.probability:.3f}"
                            for h in result.hips),
                participants=[audit.participant("application", ctx.settings.node.ae_title,
                                                device_uid=model.device_uid)],
                objects={"study_uid": result.study_uid, "job_id": ctx.job.id,
                         "sop_instance_uids": sorted({u for h in result.hips
                                                      for u in h.source_sop_uids})},
            )
        for sop_uid, reason in result.refused.items():
            audit.record(
                session, audit.QUARANTINE, "E", audit.MINOR_FAILURE,
                description=f"image not used by {result.pipeline}: {reason}",
                objects={"study_uid": result.study_uid, "sop_instance_uids": [sop_uid],
                         "job_id": ctx.job.id},
            )
        if bundle is None:
            return
        insert = dialect_insert(session.get_bind().dialect.name)
        for ds, path in zip(bundle.datasets(), paths, strict=True):
            sop_class = str(ds.SOPClassUID)
            kind = KINDS.get(sop_class, "OT")
            values = {"job_id": ctx.job.id, "study_uid": result.study_uid,
                      "sop_instance_uid": str(ds.SOPInstanceUID), "sop_class_uid": sop_class,
                      "kind": kind, "path": str(path),
                      "priority": bundle.priority if kind == "KOS" else None, "created_at": now}
            session.execute(insert(Output).values(**values).on_conflict_do_update(
                index_elements=["sop_instance_uid"],
                set_={k: values[k] for k in ("job_id", "path", "priority", "created_at")},
            ))


KINDS_BY_LABEL_SET = ("hardware", "fracture")
"""Pipeline kinds served by this module; each expects models of the label set of its name."""


def classifier_pipeline(settings: Settings, name: str) -> Pipeline:
    """Build the pipeline: models are loaded once here, then reused for every job."""
    cfg = settings.pipelines[name]
    classifier = HardwareClassifier.from_config(cfg)
    for member in classifier.members:
        card = member.model.card
        if cfg.kind in KINDS_BY_LABEL_SET and card.label_set != cfg.kind:
            raise ModelError(f"pipelines.{name}: {member.model.model_dir} is a "
                             f"{card.label_set!r} model; kind {cfg.kind!r} needs "
                             f"{cfg.kind!r} models")

    def run(ctx: JobContext) -> list[Path]:
        datasets, unreadable = read_sources(ctx)
        result = classifier.predict_study(datasets, ctx.job.study_uid, pipeline=name)
        result.refused.update(unreadable)
        if not result.hips:
            record_results(ctx, result, None, [])
            ctx.log.info("no hip to report", refused=len(result.refused))
            return []
        bundle = build_outputs(result, datasets, cfg, settings.sr_templates_dir)
        paths = write_bundle(bundle, ctx.output_dir)
        record_results(ctx, result, bundle, paths)
        ctx.log.info("study reported", priority=bundle.priority, objects=len(paths),
                     hips=[f"{h.laterality}:{h.predicted_class}" for h in result.hips])
        return paths

    return run


hardware = classifier_pipeline
"""The factory under its first name."""

for _kind in KINDS_BY_LABEL_SET:
    register_pipeline(_kind, classifier_pipeline)
