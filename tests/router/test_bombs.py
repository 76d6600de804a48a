"""Decompression and size bombs through the router: a deflate bomb over C-STORE is refused
at the door; a JPEG 2000 bomb in a study costs that image only (audited), the study still
reports on its other images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from hiprouter import db
from hiprouter.config import Settings
from hiprouter.inference import pixels
from hiprouter.pipelines.registry import PipelineSet
from hiprouter.router.flow import queue
from hiprouter.router.flow.worker import run_job
from hiprouter.schema import AuditEvent, FindingRow, Instance
from tests.router.conftest import RouterProcess, echoscu, storescu
from tests.router.dicomkit import add_study, deflate_bomb, j2k_bomb, make_dataset, write_dataset
from tests.router.rawdul import wait_until
from tests.toy import NO_ANATOMY_CHECK


def test_deflate_bomb_is_refused_and_quarantined(
    router_process: Callable[..., RouterProcess], tmp_path: Path
) -> None:
    router = router_process({"node": {"max_dataset_mb": 16}})
    bomb = deflate_bomb(tmp_path / "bomb.dcm", 64, BodyPartExamined="HIP")
    assert bomb.stat().st_size < 1024 * 1024
    done = storescu(router.port, [bomb], extra=["-xd"])
    out = done.stdout + done.stderr
    assert "Received Store Response" in out and "Success" not in out.split("Received Store")[1]

    def audited() -> list[AuditEvent]:
        with router.session_factory()() as s:
            return list(s.scalars(select(AuditEvent).where(
                AuditEvent.event_type_code == "HIP002")))

    wait_until(lambda: bool(audited()), 30, "the quarantine audit event")
    assert "inflates to more than 16 MiB" in audited()[0].outcome_description
    with router.session_factory()() as s:
        assert s.scalars(select(Instance)).all() == []
    assert echoscu(router.port).returncode == 0


def test_jpeg2000_bomb_costs_one_image_and_the_study_reports_the_others(
    tmp_path: Path, sqlite_url: str
) -> None:
    settings = Settings.model_validate({
        "database": {"url": sqlite_url},
        "storage": {"spool_dir": str(tmp_path / "spool"), "output_dir": str(tmp_path / "out")},
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 1}},
        "pipelines": {"marked": {"kind": "marked"}},
        "plugins": ["tests.router.testpipes"],
        "report": {"secondary_captures": False},
        "decode": {"memory_limit_mb": 512},
        "inference": NO_ANATOMY_CHECK,
    })
    db.upgrade(sqlite_url)
    engine = db.make_engine(sqlite_url)
    factory = db.session_factory(engine)
    good = make_dataset(BodyPartExamined="HIP")
    bomb = j2k_bomb(study_uid=good.StudyInstanceUID, series_uid=good.SeriesInstanceUID,
                    BodyPartExamined="HIP", InstanceNumber=2)
    paths = [write_dataset(good, tmp_path / "in" / "good.dcm"),
             write_dataset(bomb, tmp_path / "in" / "bomb.dcm")]
    uid = add_study(factory, paths, state="routed")
    with factory() as s, s.begin():
        queue.enqueue(s, study_uid=uid, pipeline="marked", rule="t", send_to=["pacs"])
    from hiprouter.service import configure_decoding

    configure_decoding(settings)
    try:
        job = queue.claim(factory, "w", 30, settings.queue.retry)
        assert run_job(factory, settings, PipelineSet(settings), job, "w") == "done"
    finally:
        pixels.configure(pixels.DecodeLimits())
        pixels.shutdown()
    with factory() as s:
        findings = s.scalars(select(FindingRow)).all()
        not_assessed = s.scalars(select(AuditEvent).where(
            AuditEvent.event_id_code == "HIP008")).all()
    engine.dispose()
    assert findings and {u for f in findings for u in f.source_sop_uids} == {
        str(good.SOPInstanceUID)}
    assert [e.objects["sop_instance_uids"] for e in not_assessed] == [
        [str(bomb.SOPInstanceUID)]]
    assert "cannot be decoded" in not_assessed[0].outcome_description
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "out").rglob("*.dcm")) == [
        "ko", "sr"]
