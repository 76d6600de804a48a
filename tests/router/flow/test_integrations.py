"""DICOMweb, HL7 and storage commitment sends with real peers (Orthanc with its DICOMweb
plugin, hl7apy's MLLP server, DCMTK storescp), their retries and dead letters, and the
HL7 message's structure validated by hl7apy. The whole flow through `hiprouter serve` is
tests/e2e/test_integrations_e2e.py."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from pydicom.dataset import Dataset
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from hiprouter import audit, db, metrics
from hiprouter.config import ConfigError, Hl7Destination, Settings, load_settings
from hiprouter.router.flow import commitment, hl7, ops, queue
from hiprouter.router.flow.dispatch import claim_sends, objects_for, send_batch
from hiprouter.router.flow.worker import enqueue_sends
from hiprouter.schema import AuditEvent, FindingRow, Instance, Job, Output, Send, SendAttempt
from tests.conftest import free_port
from tests.e2e.hl7_listener import start_ris, stop_ris
from tests.e2e.orthanc import dicomweb_plugin, start_orthanc
from tests.router.dicomkit import add_study, make_study
from tests.router.pacs import StoreSCP


def settings_with(tmp_path: Path, **dest: Any) -> Settings:
    return Settings.model_validate({
        "database": {"url": f"sqlite:///{tmp_path / 'db.sqlite'}"},
        "storage": {"spool_dir": str(tmp_path / "spool"), "output_dir": str(tmp_path / "out")},
        "destinations": {"dest": dest},
        "queue": {"poll_interval_s": 0.05, "send_batch": 10,
                  "retry": {"initial_s": 0.05, "factor": 2, "max_s": 0.1, "max_attempts": 3}},
    })


def queue_files(settings: Settings, paths: list[Path]) -> sessionmaker[Session]:
    db.upgrade(settings.database.url)
    factory = db.session_factory(db.make_engine(settings.database.url))
    uid = add_study(factory, paths, state="routed")
    with factory() as s, s.begin():
        job = queue.enqueue(s, study_uid=uid, pipeline="forward", rule="t", send_to=["dest"])
        enqueue_sends(s, job, [Path(p) for p in s.scalars(select(Instance.spool_path))])
    return factory


def make_due(factory: sessionmaker[Session]) -> None:
    with factory() as s, s.begin():
        s.execute(update(Send).values(next_run_at=db.utcnow() - timedelta(seconds=1)))


def states(factory: sessionmaker[Session]) -> list[str]:
    with factory() as s:
        return sorted(s.scalars(select(Send.state)))


# -- configuration -----------------------------------------------------------------------------

def test_destination_types_are_validated_with_the_key_named(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("destinations:\n  ris: {type: hl7, host: ris}\n"
                   "  web: {type: dicomweb, url: 'ftp://x'}\n  odd: {type: smtp}\n"
                   "web: {enabled: true, viewer_url: 'http://v/'}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    text = str(err.value)
    assert "destinations.ris.port: Field required" in text
    assert "destinations.web.url" in text
    assert "destinations.odd: type must be dicom, dicomweb or hl7" in text
    assert "web.viewer_url: Value error, must contain {study_uid}" in text


def test_hl7_destination_cannot_take_forwarded_images(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("destinations:\n  ris: {type: hl7, host: ris, port: 2575}\n"
                   "rules:\n  - {name: all, forward_to: [ris]}\n")
    with pytest.raises(ConfigError, match="rules\\[all\\].forward_to: 'ris' is an hl7"):
        load_settings(cfg)


def test_metrics_api_returns_the_same_metric_and_refuses_conflicts() -> None:
    a = metrics.gauge("hiprouter_test_drift_score", "drift", ["model"])
    assert metrics.gauge("hiprouter_test_drift_score", "drift", ["model"]) is a
    with pytest.raises(ValueError, match="already declared"):
        metrics.counter("hiprouter_test_drift_score", "x")
    with pytest.raises(ValueError, match="start with 'hiprouter_'"):
        metrics.gauge("drift", "x")
    c = metrics.counter("hiprouter_test_events_total", "events")
    assert metrics.counter("hiprouter_test_events", "events") is c
    c.inc()
    from prometheus_client import generate_latest

    assert b"hiprouter_test_events_total 1.0" in generate_latest(metrics.REGISTRY)


# -- DICOMweb STOW-RS to Orthanc -------------------------------------------------------------

@pytest.fixture()
def dicomweb_orthanc(tmp_path: Path) -> Any:
    if shutil.which("Orthanc") is None or dicomweb_plugin() is None:
        pytest.skip("Orthanc with DICOMweb not installed (orthanc orthanc-dicomweb)")
    server = start_orthanc(tmp_path / "orthanc", dicomweb=True)
    yield server
    server.stop()


def test_stow_rs_to_orthanc_then_qido_finds_the_instances(tmp_path: Path,
                                                          dicomweb_orthanc: Any) -> None:
    settings = settings_with(tmp_path, type="dicomweb", url=dicomweb_orthanc.dicomweb_root,
                             batch_size=2)
    paths = make_study(tmp_path / "in", 1, 3)
    factory = queue_files(settings, paths)
    sends = claim_sends(factory, settings, "dest", "o")
    assert send_batch(factory, settings, "dest", sends, "o") == 3
    assert states(factory) == ["sent"] * 3
    from dicomweb_client.api import DICOMwebClient

    with factory() as s:
        study_uid = s.scalars(select(Send.study_uid)).first()
        uids = set(s.scalars(select(Send.sop_instance_uid)))
        attempts = list(s.scalars(select(SendAttempt)))
        events = list(s.scalars(select(AuditEvent).where(
            AuditEvent.event_id_code == audit.INSTANCES_TRANSFERRED.value)))
    found = DICOMwebClient(dicomweb_orthanc.dicomweb_root).search_for_instances(
        study_instance_uid=study_uid)
    assert {i["00080018"]["Value"][0] for i in found} == uids
    assert {a.status for a in attempts} == {200}
    assert events and events[0].participants[1]["host"] == dicomweb_orthanc.dicomweb_root
    # idempotent: the same objects again are stored again under the same UIDs, no copies
    with factory() as s, s.begin():
        s.execute(update(Send).values(state="pending"))
    assert send_batch(factory, settings, "dest", claim_sends(factory, settings, "dest", "o"),
                      "o") == 3
    again = DICOMwebClient(dicomweb_orthanc.dicomweb_root).search_for_instances(
        study_instance_uid=study_uid)
    assert len(again) == 3


def test_stow_rs_http_error_and_unreachable_server_back_off_then_dead(
        tmp_path: Path, dicomweb_orthanc: Any) -> None:
    wrong = f"http://127.0.0.1:{dicomweb_orthanc.http_port}/no-such-root"
    settings = settings_with(tmp_path, type="dicomweb", url=wrong)
    factory = queue_files(settings, make_study(tmp_path / "in", 1, 1))
    assert send_batch(factory, settings, "dest", claim_sends(factory, settings, "dest", "o"),
                      "o") == 0
    with factory() as s:
        attempt = s.scalars(select(SendAttempt)).one()
    assert attempt.status == 404 and "STOW-RS HTTP 404" in (attempt.error or "")
    settings.destinations["dest"].url = f"http://127.0.0.1:{free_port()}/dicom-web"  # type: ignore[union-attr]
    for _ in range(2):
        make_due(factory)
        assert send_batch(factory, settings, "dest",
                          claim_sends(factory, settings, "dest", "o"), "o") == 0
    assert states(factory) == ["dead"]
    with factory() as s:
        last = s.scalars(select(SendAttempt).order_by(SendAttempt.id.desc())).first()
    assert last is not None and "ConnectionError" in (last.error or "")
    assert ops.retry_dead(factory).sends == 1


# -- HL7 v2 over MLLP --------------------------------------------------------------------------

def facts() -> hl7.ReportFacts:
    h = Dataset()
    h.AccessionNumber, h.PatientID, h.PatientName = "ACC|42", "PID-1", "Doe^Jane^^Dr"
    h.PatientBirthDate, h.PatientSex, h.StudyDate, h.StudyTime = "19500101", "F", \
        "20250101", "101010.5"
    return hl7.ReportFacts(
        study_uid="1.2.3", sr_uid="1.2.3.4", sr_series_uid="1.2.3.5", priority="HIGH",
        reason="AI TRIAGE PRIORITY=HIGH: femoral neck fracture", impression="Left: fracture^x",
        hip_text={"R": ["Right hip: total hip arthroplasty."],
                  "L": ["Left hip: femoral neck fracture."]},
        findings=[{"pipeline": "hardware", "laterality": "R", "status": "assessed",
                   "class": "tha", "probability": 0.91},
                  {"pipeline": "fracture", "laterality": "L", "status": "indeterminate",
                   "class": "femoral_neck_fracture", "probability": 0.41}],
        header=h)


@pytest.mark.parametrize("message_type", ["ORU^R01", "ORM^O01", "OMI^O23"])
def test_hl7_messages_follow_the_v25_structures(message_type: str) -> None:
    dest = Hl7Destination(type="hl7", host="ris", port=2575, message_type=message_type,
                          priority_map={"HIGH": "STAT"})
    er7 = hl7.build_message(facts(), dest, hl7.control_id("1.2.3.4", "ris"), "HIPROUTER")
    hl7.validate(er7, dest)  # what the dispatcher checks before sending
    level = VALIDATION_LEVEL.STRICT
    msg = parse_message(er7, validation_level=level, find_groups=True)
    if message_type == "ORM^O01":
        # hl7apy models ORM_O01's choice group (OBR | RQD | RQ1 | RXO | ODS | ODT) as if
        # each member were required; OBR is the member that applies to imaging orders
        with pytest.raises(Exception, match="RQD"):
            msg.validate()
    else:
        assert msg.validate()
    segments = {s.split("|")[0]: s.split("|") for s in er7.split("\r") if s}
    assert segments["MSH"][9] == hl7.control_id("1.2.3.4", "ris")
    assert len(segments["MSH"][9]) <= 20
    # retries keep the control ID; a replay (delivered once already) gets a new one
    assert hl7.control_id("1.2.3.4", "ris", 1) != hl7.control_id("1.2.3.4", "ris")
    assert segments["PID"][3] == "PID-1" and segments["PID"][5] == "Doe^Jane^^^Dr"
    assert segments["OBR"][3] == "ACC\\F\\42" and segments["OBR"][27] == "^^^^^STAT"
    assert "OBX|1|TX|121073^Impression^DCM||Left: fracture\\S\\x" in er7
    assert "|HIPTEXT^AI findings text per hip^99HIPAI|R|Right hip: total hip arthroplasty." in er7
    assert "|FRACTURE^AI fracture finding^99HIPAI|L|INDETERMINATE^indeterminate^99HIPAI" in er7
    assert "|RP|SR^AI structured report^99HIPAI||1.2.3.4^HIPROUTER^AP^DICOM" in er7
    if message_type == "OMI^O23":
        assert segments["TQ1"][9] == "STAT" and segments["IPC"][3] == "1.2.3"


def test_parse_ack() -> None:
    ok = hl7.parse_ack(b"MSH|^~\\&|RIS||||||ACK|1|P|2.5\rMSA|AA|HR1\r")
    assert (ok.code, ok.control_id) == ("AA", "HR1")
    bad = hl7.parse_ack(b"MSH|^~\\&|RIS||||||ACK|1|P|2.5\rMSA|AE|HR1\rERR|||207|E\r")
    assert bad.code == "AE" and "207" in bad.text
    with pytest.raises(hl7.Hl7Error, match="no MSA"):
        hl7.parse_ack(b"MSH|^~\\&|RIS\r")


def test_mllp_nack_then_ack_with_hl7apys_server() -> None:
    ris = start_ris(nack_first=1)
    try:
        dest = Hl7Destination(type="hl7", host="127.0.0.1", port=ris.port, timeout_s=10)
        er7 = hl7.build_message(facts(), dest, "HRTEST", "HIPROUTER")
        first = hl7.parse_ack(hl7.mllp_exchange(dest, er7))
        second = hl7.parse_ack(hl7.mllp_exchange(dest, er7))
    finally:
        stop_ris(ris)
    assert (first.code, second.code) == ("AE", "AA")
    assert first.control_id == second.control_id == "HRTEST"
    pid = ris.received[1].message.oru_r01_patient_result.oru_r01_patient.pid
    assert pid.pid_5.to_er7() == "Doe^Jane^^^Dr"
    dest = Hl7Destination(type="hl7", host="127.0.0.1", port=free_port(), timeout_s=2)
    with pytest.raises(OSError):
        hl7.mllp_exchange(dest, er7)


def _job_with_report(factory: sessionmaker[Session], uid: str, *, status: str,
                     priority: str) -> Job:
    with factory() as s, s.begin():
        job = queue.enqueue(s, study_uid=uid, pipeline="hardware", rule="t",
                            send_to=["pacs", "ris"])
        s.add(FindingRow(job_id=job.id, study_uid=uid, pipeline="hardware", kind="hardware",
                         laterality="R", source_sop_uids=[], model_name="m", model_version="1",
                         status=status, predicted_class="tha", probability=0.9,
                         probabilities={}, measurements=[], regions=[], details={},
                         created_at=db.utcnow()))
        s.add(Output(job_id=job.id, study_uid=uid, sop_instance_uid=f"{uid}.9",
                     sop_class_uid=hl7.KOS_CLASS, kind="KOS", path="k", priority=priority,
                     created_at=db.utcnow()))
        s.flush()
        s.expunge(job)
        return job


@pytest.mark.parametrize(("send_when", "status", "priority", "sent"), [
    ("findings", "assessed", "ROUTINE", True),
    ("findings", "not_assessed", "ROUTINE", False),
    ("flagged", "assessed", "ROUTINE", False),
    ("flagged", "assessed", "HIGH", True),
    ("always", "not_assessed", "ROUTINE", True),
])
def test_one_hl7_message_per_report_unless_send_when_says_no(
        tmp_path: Path, send_when: str, status: str, priority: str, sent: bool) -> None:
    settings = Settings.model_validate({
        "database": {"url": f"sqlite:///{tmp_path / 'db.sqlite'}"},
        "destinations": {"pacs": {"ae_title": "PACS", "host": "h", "port": 1},
                         "ris": {"type": "hl7", "host": "r", "port": 2575,
                                 "send_when": send_when}}})
    db.upgrade(settings.database.url)
    factory = db.session_factory(db.make_engine(settings.database.url))
    job = _job_with_report(factory, "1.2.9", status=status, priority=priority)
    objects = [(Path("sr"), "1.2.9.1", "1.2.840.10008.5.1.4.1.1.88.34"),
               (Path("sc"), "1.2.9.2", "1.2.840.10008.5.1.4.1.1.7"),
               (Path("kos"), "1.2.9.3", hl7.KOS_CLASS)]
    with factory() as s, s.begin():
        assert objects_for(s, settings, job, "pacs", objects) == objects
        picked = objects_for(s, settings, job, "ris", objects)
    assert picked == ([objects[0]] if sent else [])
    if not sent:
        with factory() as s:
            event = s.scalars(select(AuditEvent)).one()
        assert event.event_type_code == "HIP009"
        assert "no HL7 message" in (event.outcome_description or "")
    # a forward job's images never make a message
    assert hl7.pick_object(objects[1:2]) is None


# -- storage commitment ------------------------------------------------------------------------

def test_peer_without_storage_commitment_fails_the_sends_for_a_retry(tmp_path: Path) -> None:
    pacs = StoreSCP(tmp_path / "pacs").start()  # storescp: Storage only, no commitment
    try:
        settings = settings_with(tmp_path, ae_title="PACS", host="127.0.0.1", port=pacs.port,
                                 storage_commitment=True)
        factory = queue_files(settings, make_study(tmp_path / "in", 1, 2))
        sends = claim_sends(factory, settings, "dest", "o")
        assert send_batch(factory, settings, "dest", sends, "o") == 2  # stored ...
    finally:
        pacs.stop()
    with factory() as s:
        rows = list(s.scalars(select(Send)))
    assert {r.state for r in rows} == {"failed"}  # ... but not committed: retried
    assert all("N-ACTION" in (r.last_error or "") for r in rows)


def test_commitment_report_and_timeout(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, ae_title="PACS", host="127.0.0.1", port=1,
                             storage_commitment=True, commitment_timeout_s=30)
    factory = queue_files(settings, make_study(tmp_path / "in", 1, 3))
    now = db.utcnow()
    with factory() as s, s.begin():
        rows = list(s.scalars(select(Send).order_by(Send.id)))
        for r in rows:
            r.state, r.attempts, r.commit_uid, r.commit_requested_at = \
                "committing", 1, "9.9.1", now
        rows[2].commit_requested_at = now - timedelta(seconds=60)
        rows[2].commit_uid = "9.9.2"
        uids = [r.sop_instance_uid for r in rows]
    # one committed, one failed (retried), in the same report
    assert commitment.apply_report(factory, settings, "9.9.1", [uids[0]],
                                   {uids[1]: "failure reason 0x0110"}) == 2
    assert commitment.apply_report(factory, settings, "9.9.404", [uids[0]], {}) == 0
    dest = settings.destinations["dest"]
    assert commitment.expire(factory, settings, "dest", dest) == 1  # type: ignore[arg-type]
    with factory() as s:
        by_uid = {r.sop_instance_uid: r for r in s.scalars(select(Send))}
        events = [e.outcome for e in s.scalars(select(AuditEvent).where(
            AuditEvent.event_id_code == "HIP010"))]
    assert by_uid[uids[0]].state == "sent" and by_uid[uids[0]].committed_at is not None
    assert by_uid[uids[1]].state == "failed" and "0x0110" in by_uid[uids[1]].last_error
    assert by_uid[uids[2]].state == "failed" and "no storage commitment report" in \
        by_uid[uids[2]].last_error
    assert sorted(events) == [0, 4]
    info = Dataset()
    info.TransactionUID = "9.9.1"
    ok, bad = Dataset(), Dataset()
    ok.ReferencedSOPInstanceUID, bad.ReferencedSOPInstanceUID = "1.1", "1.2"
    bad.FailureReason = 0x0112
    info.ReferencedSOPSequence, info.FailedSOPSequence = [ok], [bad]
    assert commitment.parse_report(2, info) == ("9.9.1", ["1.1"],
                                                {"1.2": "failure reason 0x0112"})


def test_long_text_continues_in_the_next_obx() -> None:
    dest = Hl7Destination(type="hl7", host="ris", port=2575)
    f = facts()
    f.impression = "Right hip: total hip arthroplasty. " * 20
    er7 = hl7.build_message(f, dest, "HRTEST", "HIPROUTER")
    hl7.validate(er7, dest)
    lines = [seg.split("|")[5] for seg in er7.split("\r") if "|121073^Impression^DCM|" in seg]
    assert len(lines) == 4 and all(len(line) <= hl7.TEXT_LINE for line in lines)
    assert " ".join(lines) == f.impression.strip()


def test_a_message_that_breaks_its_structure_is_not_sent() -> None:
    dest = Hl7Destination(type="hl7", host="ris", port=2575)
    er7 = hl7.build_message(facts(), dest, "HRTEST", "HIPROUTER")
    broken = "\r".join(seg for seg in er7.split("\r") if not seg.startswith("OBR|"))
    with pytest.raises(hl7.Hl7Error, match="ORU\\^R01 2.5 message not valid"):
        hl7.validate(broken, dest)
