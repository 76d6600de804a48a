"""What an analysis job records: findings rows (replaced on a re-run) and audit events."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from hiprouter import db
from hiprouter.config import Settings
from hiprouter.findings import (
    Classification,
    Finding,
    ModelInfo,
    PipelineResult,
    StudyFindings,
)
from hiprouter.pipelines.hardware import HARDWARE
from hiprouter.pipelines.job import JobContext, record
from hiprouter.schema import AuditEvent, FindingRow, Job

MODEL = ModelInfo("hw", "1", "resnet", "2.25.5")


def _job(factory) -> Job:  # type: ignore[no-untyped-def]
    now = db.utcnow()
    with factory() as s, s.begin():
        job = Job(study_uid="1.2.3", pipeline="hardware", rule="hip", send_to=[],
                  state="running", attempts=1, next_run_at=now, created_at=now,
                  updated_at=now, episode=2, pipelines=["hardware"])
        s.add(job)
    return job


def test_findings_are_replaced_on_rerun_and_abstentions_audited(sqlite_url: str,
                                                                tmp_path: Path) -> None:
    db.upgrade(sqlite_url)
    factory = db.session_factory(db.make_engine(sqlite_url))
    job = _job(factory)
    ctx = JobContext(Settings(), factory, job, [], tmp_path)
    findings = [
        Finding("hardware", "R", ["1.2.3.1"], MODEL, Classification("tha", 0.9, {"tha": 0.9})),
        Finding("hardware", "L", ["1.2.3.1"], MODEL, Classification(
            "tha", 0.5, {"tha": 0.5}, "not_assessed", "image unlike the training data")),
    ]
    result = PipelineResult("hardware", "hardware", HARDWARE, MODEL, findings,
                            not_assessed={"1.2.3.9": "modality MR is not one this model accepts"},
                            skipped=["U hip: nothing"])
    study = StudyFindings("1.2.3", [result])
    record(ctx, study, None, [], {"1.2.3.8": "cannot read the stored file"},
           {"1.2.3.1": "an AP pelvis, read per hip"})
    record(ctx, study, None, [], {})  # the job ran again
    with factory() as s:
        rows = s.scalars(select(FindingRow)).all()
        events = s.scalars(select(AuditEvent)).all()
    assert sorted((r.laterality, r.status, r.episode, r.device_uid) for r in rows) == [
        ("L", "not_assessed", 2, "2.25.5"), ("R", "assessed", 2, "2.25.5")]
    texts = [e.outcome_description for e in events if e.event_id_code == "HIP008"]
    assert "L hip not assessed by hardware: image unlike the training data" in texts
    assert "image not assessed: modality MR is not one this model accepts" in texts
    assert "image not assessed: cannot read the stored file" in texts
    assert any("hardware not run on: U hip: nothing" == e.outcome_description for e in events)
    view = [e for e in events if e.outcome_description.startswith("view read from the image")]
    assert [e.outcome_description for e in view] == [
        "view read from the image (its own headers name none): an AP pelvis, read per hip"]
