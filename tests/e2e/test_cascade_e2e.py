"""Second-stage cascades through the real flow: storescu -> `hiprouter serve` -> storescp,
and worker processes killed between the first and the second stage.

A synthetic study with a THA on the right hip and a dynamic hip screw on the left (AP
pelvis and a cross-table lateral of the right hip): the one SR holds the hardware group of
both hips, a prosthesis_failure group only for the THA hip (fused from both views) and a
fixation_device group only for the DHS hip; the dislocated THA flags the study HIGH. A
study without hardware gets no second-stage group. Replaying gives the same UIDs.

Deterministic: the hardware stage has one constant-output model per side and the second
stages constant models (tests/pipelines/cascade_kinds.py): plumbing, not detection.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import highdicom as hd
import pytest
import yaml
from pydicom.dataset import Dataset
from sqlalchemy import func, select

from hiprouter import db
from hiprouter.config import load_settings
from hiprouter.router.flow import ops
from hiprouter.router.flow.routing import route_study
from hiprouter.schema import AuditEvent, FindingRow, Job, Output, Send, Study
from hiprouter.synth.study import make_study
from tests.conftest import REPO
from tests.e2e.test_pipeline_e2e import KOS, SC, SR, pacs_objects, wait_until, write_study
from tests.inference.helpers import constant_model
from tests.pipelines.cascade_kinds import constant_dual_view
from tests.router.conftest import storescu
from tests.router.dicomkit import add_study
from tests.router.pacs import StoreSCP
from tests.validation import assert_valid

NATIVE_ID = "NATIVE-0001"
FIXATION = ["im_nail", "cannulated_screws", "dynamic_hip_screw", "lateral_plate"]
SIZE = (420, 560)


def build_models(root: Path) -> dict[str, Path]:
    return {
        "tha": constant_model(root / "hw-tha", "hardware", "tha"),
        "dhs": constant_model(root / "hw-dhs", "hardware", "dynamic_hip_screw"),
        "none": constant_model(root / "hw-none", "hardware", "no_hardware"),
        "dislocation": constant_dual_view(root / "pf-dislocation", "dislocation"),
        "shs": constant_model(root / "dev-shs", "fixation_device", "sliding_hip_screw"),
    }


def pipelines(models: dict[str, Path], failure_kind: str = "prosthesis_failure"
              ) -> dict[str, Any]:
    second = {"device": "cpu"}
    return {
        "hardware": {"kind": "sided_hardware", "right": [str(models["tha"])],
                     "left": [str(models["dhs"])]},
        "prosthesis_failure": {"kind": failure_kind, "models": [str(models["dislocation"])],
                               **second},
        "fixation_device": {"kind": "fixation_device", "models": [str(models["shs"])],
                            **second},
        "hardware_native": {"kind": "sided_hardware", "right": [str(models["none"])],
                            "left": [str(models["none"])]},
        "failure_native": {"kind": "prosthesis_failure", "models": [str(models["dislocation"])],
                           "runs_on": {"pipeline": "hardware_native",
                                       "classes": ["tha", "tha_with_fixation"]}, **second},
        "device_native": {"kind": "fixation_device", "models": [str(models["shs"])],
                          "runs_on": {"pipeline": "hardware_native", "classes": FIXATION},
                          **second},
    }


RULES = [
    {"name": "native", "level": "study", "match": {"tag": "PatientID", "equals": NATIVE_ID},
     "pipelines": ["hardware_native", "failure_native", "device_native"], "send_to": ["pacs"]},
    {"name": "hips", "level": "study", "match": {"tag": "Modality", "in": ["CR", "DX"]},
     "pipelines": ["fixation_device", "prosthesis_failure", "hardware"], "send_to": ["pacs"]},
]


def tha_and_dhs() -> Any:
    """THA (dislocated) right, DHS left; AP pelvis + cross-table lateral of the right hip."""
    return make_study(41, 0, hardware={"R": "tha", "L": "dynamic_hip_screw"},
                      failure={"R": "dislocation"}, device={"L": "sliding_hip_screw"},
                      views=("ap_pelvis", "cross_table_lateral"), side="R", size=SIZE)


def native() -> list[Dataset]:
    study = make_study(42, 0, hardware={"R": "no_hardware", "L": "no_hardware"},
                       views=("ap_pelvis", "frog_leg"), side="L", size=SIZE)
    datasets = [i.dataset for i in study.images]
    for ds in datasets:
        ds.PatientID = NATIVE_ID
    return datasets


def content_images(item: Any) -> set[str]:
    """SOP Instance UIDs of every IMAGE content item under an SR content item."""
    found = set()
    for child in getattr(item, "ContentSequence", []) or []:
        if child.ValueType == "IMAGE":
            found.add(str(child.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
        found |= content_images(child)
    return found


def test_cascades_through_serve_one_report_per_study(router_process: Any,
                                                     tmp_path: Path) -> None:
    pacs = StoreSCP(tmp_path / "pacs", ae_title="PACS").start()
    models = build_models(tmp_path / "models")
    config = {
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}},
        "queue": {"workers": 1, "poll_interval_s": 0.2,
                  "retry": {"initial_s": 1, "max_s": 5, "max_attempts": 3}},
        "plugins": ["tests.pipelines.cascade_kinds"],
        "pipelines": pipelines(models),
        "rules": RULES,
    }
    router = router_process(config, env={"PYTHONPATH": str(REPO)})
    try:
        study = tha_and_dhs()
        ap, lateral = (i.dataset for i in study.images)
        ap_uid, lat_uid = str(ap.SOPInstanceUID), str(lateral.SOPInstanceUID)
        other = native()
        files = (write_study(tmp_path / "hw", [ap, lateral])
                 + write_study(tmp_path / "native", other))
        sent = storescu(router.port, files)
        assert sent.returncode == 0, sent.stderr

        def both_reported() -> dict[str, list[Dataset]] | None:
            objects = pacs_objects(pacs)
            studies = {str(d.StudyInstanceUID) for d in objects.get(KOS, [])}
            return objects if {study.study_uid, str(other[0].StudyInstanceUID)} <= studies \
                else None

        objects = wait_until(both_reported, 300, "the KOS of both studies at the PACS")
        factory = router.session_factory()
        wait_until(lambda: _all_sent(factory), 60, "every output sent")
        objects = pacs_objects(pacs)
        assert_valid([Path(d.filename) for kind in (SR, SC, KOS) for d in objects.get(kind, [])])

        def of(kind: str, uid: str) -> list[Dataset]:
            return [d for d in objects.get(kind, []) if str(d.StudyInstanceUID) == uid]

        # the study with hardware: one SR, an SC per radiograph, one KOS flagged HIGH
        (sr_ds,) = of(SR, study.study_uid)
        assert len(of(SC, study.study_uid)) == 2
        (kos,) = of(KOS, study.study_uid)
        assert kos.SeriesDescription == "AI TRIAGE: HIGH"
        sr = hd.sr.Comprehensive3DSR.from_dataset(sr_ds)
        groups = {g.tracking_identifier: g for g in sr.content.get_planar_roi_measurement_groups()}
        assert sorted(groups) == ["fixation_device left hip", "hardware left hip",
                                  "hardware right hip", "prosthesis_failure right hip"]
        failure = groups["prosthesis_failure right hip"]
        assert failure.finding_type.value == "PF003"  # dislocation
        assert failure.roi.graphic_type.value == "POLYLINE"
        (image,) = failure.roi.ContentSequence
        assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ap_uid
        numbers = [g for g in sr.content.get_image_measurement_groups()
                   if str(g.tracking_uid) == str(failure.tracking_uid)]
        assert len(numbers) == 1 and content_images(numbers[0][0]) == {ap_uid, lat_uid}  # fused
        assert groups["fixation_device left hip"].finding_type.value == "FD004"
        impression = str(sr_ds.ContentSequence[-1].ContentSequence[0].TextValue)
        assert "Right hip: total hip arthroplasty; dislocation of the prosthesis." in impression
        assert "Left hip: dynamic hip screw; sliding hip screw with side plate (probability" \
            in impression and "top 3:" in impression

        # the study without hardware: hardware groups only, skips audited
        (native_sr,) = of(SR, str(other[0].StudyInstanceUID))
        ids = sorted(g.tracking_identifier for g in hd.sr.Comprehensive3DSR.from_dataset(
            native_sr).content.get_planar_roi_measurement_groups())
        assert ids == ["hardware_native left hip", "hardware_native right hip"]
        (native_kos,) = of(KOS, str(other[0].StudyInstanceUID))
        assert native_kos.SeriesDescription == "AI TRIAGE: ROUTINE"
        with factory() as s:
            rows = s.scalars(select(FindingRow)).all()
            skips = [e.outcome_description for e in s.scalars(select(AuditEvent)).all()
                     if "not run on" in (e.outcome_description or "")]
        assert sorted((r.pipeline, r.laterality) for r in rows
                      if r.study_uid == study.study_uid) == [
            ("fixation_device", "L"), ("hardware", "L"), ("hardware", "R"),
            ("prosthesis_failure", "R")]
        pf_row = next(r for r in rows if r.pipeline == "prosthesis_failure")
        assert pf_row.source_sop_uids == [ap_uid, lat_uid] and pf_row.kind == "prosthesis_failure"
        assert any(t.startswith("failure_native not run on: R hip") for t in skips)
        assert any(t.startswith("device_native not run on: R hip") for t in skips)

        # a replay rebuilds the same objects: same SOP Instance UIDs, sent again
        first = {str(d.SOPInstanceUID) for kind in (SR, SC, KOS)
                 for d in of(kind, study.study_uid)}
        settings = load_settings(router.config_path)
        assert ops.replay_study(factory, settings, study.study_uid).jobs == 1
        counts = wait_until(lambda: (c := pacs.received()) and all(
            c[u] == 2 for u in first) and c, 240, "the replayed report at the PACS")
        again = {u for u, n in counts.items() if n == 2}
        assert again == first
        with factory() as s:
            assert s.scalar(select(func.count()).select_from(FindingRow).where(
                FindingRow.study_uid == study.study_uid)) == 4
    finally:
        router.stop()
        pacs.stop()


def _all_sent(factory: Any) -> bool:
    with factory() as s:
        states = s.scalars(select(Send.state)).all()
        studies = s.scalars(select(Study.state)).all()
    return bool(states) and all(st == "sent" for st in states) and "routed" not in studies


# -- a worker killed between the first and the second stage -------------------------------


def _start_worker(config: Path, log: Path, delay_s: float) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HIPROUTER_TEST_PIPE_S": str(delay_s)}
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from hiprouter.cli import main; main()", "--config",
             str(config), "worker", "--count", "1"],
            stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    deadline = time.monotonic() + 60
    while "worker process ready" not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "worker did not start"
        time.sleep(0.05)
    return proc


def _runs(tmp_path: Path) -> list[tuple[str, int]]:
    path = tmp_path / "runs.log"
    if not path.exists():
        return []
    return [(w[0], int(w[2])) for w in (line.split() for line in path.read_text().splitlines())]


@pytest.mark.postgres
def test_worker_killed_between_stages_loses_and_duplicates_nothing(pg_url: str,
                                                                   tmp_path: Path) -> None:
    """One analysis job runs all stages; the killed worker's lease expires and another
    worker reruns the whole job, replacing its findings: every finding once, every output
    sent once."""
    db.upgrade(pg_url)
    engine = db.make_engine(pg_url)
    factory = db.session_factory(engine)
    pacs = StoreSCP(tmp_path / "pacs").start()
    models = build_models(tmp_path / "models")
    cfg = {
        "database": {"url": pg_url},
        "storage": {"spool_dir": str(tmp_path / "spool"), "output_dir": str(tmp_path / "out")},
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}},
        "plugins": ["tests.pipelines.cascade_kinds"],
        "pipelines": pipelines(models, failure_kind="logged_prosthesis_failure"),
        "rules": RULES[1:],
        "queue": {"lease_s": 3, "poll_interval_s": 0.1,
                  "retry": {"initial_s": 0.5, "max_s": 1}},
        "logging": {"level": "INFO", "json_logs": True},
    }
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    study = tha_and_dhs()
    paths = write_study(tmp_path / "spool-in", [i.dataset for i in study.images])
    uid = add_study(factory, paths)
    settings = load_settings(config)
    with db.write_transaction(factory) as s:
        row = s.scalars(select(Study).where(Study.study_uid == uid)).one()
        (job,) = route_study(s, settings, row)
        job_id = job.id
    first = _start_worker(config, tmp_path / "w0.log", 10.0)
    second = None
    try:
        deadline = time.monotonic() + 120
        while not _runs(tmp_path):  # the hardware stage is done, the second stage waits
            assert first.poll() is None, (tmp_path / "w0.log").read_text()
            with factory() as s:
                assert s.get(Job, job_id).attempts <= 1, (tmp_path / "w0.log").read_text()
            assert time.monotonic() < deadline, "the second stage never started"
            time.sleep(0.05)
        second = _start_worker(config, tmp_path / "w1.log", 0.0)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with factory() as s:
                done = s.get(Job, job_id).state == "done"
                sent = s.scalars(select(Send.state)).all()
            if done and sent and all(x == "sent" for x in sent):
                break
            time.sleep(0.2)
        received = pacs.wait_for(4, timeout=30)
    finally:
        if second is not None:
            second.send_signal(signal.SIGTERM)
            second.wait(30)
        pacs.stop()
    try:
        assert _runs(tmp_path) == [("start", first.pid), ("start", second.pid),
                                   ("end", second.pid)]
        with factory() as s:
            job = s.get(Job, job_id)
            assert job.state == "done" and job.attempts == 2
            rows = s.scalars(select(FindingRow).where(FindingRow.job_id == job_id)).all()
            outputs = s.scalars(select(Output.kind)).all()
            sends = s.scalars(select(Send.state)).all()
        assert sorted((r.pipeline, r.laterality) for r in rows) == [
            ("fixation_device", "L"), ("hardware", "L"), ("hardware", "R"),
            ("prosthesis_failure", "R")]
        assert sorted(outputs) == ["KOS", "SC", "SC", "SR"]
        assert sends == ["sent"] * 4
        assert len(received) == 4 and set(received.values()) == {1}
        assert "job lease expired" in (tmp_path / "w1.log").read_text()
    finally:
        engine.dispose()
