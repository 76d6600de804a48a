"""The whole flow with real peers: storescu -> hiprouter -> inference -> SR/SC/KOS -> PACS.

The PACS is DCMTK storescp in one test and Orthanc (checked through its REST API) in the
other. The router runs as `hiprouter serve` with the repository's default rules and the
bundled demo model.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import highdicom as hd
import pytest
import yaml
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select

from hiprouter.inference.classes import class_by_key
from hiprouter.schema import AuditEvent, Inference, Output, SendAttempt, Study
from hiprouter.synth.study import make_study
from tests.conftest import REPO, require_tool
from tests.e2e.orthanc import start_orthanc
from tests.router.conftest import storescu
from tests.router.pacs import StoreSCP

VALIDATOR = REPO.parent / "shared" / "tools" / "validate_dicom.py"
SR, SC, KOS = "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7", \
    "1.2.840.10008.5.1.4.1.1.88.59"


def repo_routing() -> dict[str, Any]:
    """The default rules and pipelines of the repository's config.yaml."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    for rule in cfg["rules"]:  # the fracture pipeline: tests/e2e/test_triage_e2e.py
        rule["pipelines"] = [p for p in rule.get("pipelines", []) if p != "fracture"]
    return {key: cfg[key] for key in ("rule_mode", "rules", "pipelines")}


def router_overrides(pacs_ae: str, pacs_port: int) -> dict[str, Any]:
    return {
        **repo_routing(),
        "destinations": {"pacs": {"ae_title": pacs_ae, "host": "127.0.0.1", "port": pacs_port}},
        "queue": {"workers": 1, "poll_interval_s": 0.2,
                  "retry": {"initial_s": 1, "max_s": 5, "max_attempts": 5}},
        "studies": {"complete_after_s": 1.5, "sweep_interval_s": 0.2},
    }


def write_study(folder: Path, datasets: list[Dataset]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        path = folder / f"{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def non_hip_study() -> Dataset:
    """A chest radiograph: the default rules must not route it."""
    ds = make_study(77, 0, hardware={"R": "no_hardware", "L": "no_hardware"},
                    views=("ap_pelvis",)).images[0].dataset
    ds.BodyPartExamined = "CHEST"
    ds.StudyDescription = "XR CHEST PA"
    ds.SeriesDescription = "CHEST PA"
    for keyword in ("ProtocolName", "Laterality", "ImageLaterality"):
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def corrupt_copy(ds: Dataset) -> Dataset:
    """The same header with truncated pixel data (a broken modality export)."""
    bad = copy.deepcopy(ds)
    bad.SOPInstanceUID = generate_uid()
    bad.file_meta.MediaStorageSOPInstanceUID = bad.SOPInstanceUID
    bad.PixelData = bytes(ds.PixelData)[: len(ds.PixelData) // 3]
    return bad


def validate(paths: list[Path]) -> None:
    if not VALIDATOR.exists():
        pytest.skip("../shared/tools/validate_dicom.py not present")
    require_tool("dciodvfy")
    require_tool("dsrdump")
    run = subprocess.run([sys.executable, str(VALIDATOR), *map(str, paths)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def wait_until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def pacs_objects(pacs: StoreSCP) -> dict[str, list[Dataset]]:
    """Objects at the PACS, by SOP class."""
    found: dict[str, list[Dataset]] = {}
    for f in pacs.folder.iterdir():
        if f.is_file() and not f.name.startswith("."):
            ds = dcmread(f)
            ds.filename = str(f)
            found.setdefault(str(ds.SOPClassUID), []).append(ds)
    return found


def test_storescu_to_router_to_storescp(router_process: Any, tmp_path: Path) -> None:
    pacs = StoreSCP(tmp_path / "pacs", ae_title="PACS").start()
    router = router_process(router_overrides("PACS", pacs.port))
    try:
        hip = make_study(11, 0, hardware={"R": "tha", "L": "no_hardware"},
                         views=("ap_pelvis",))
        broken = make_study(12, 0, hardware={"R": "no_hardware", "L": "dynamic_hip_screw"},
                            views=("ap_hip",), side="L")
        good = broken.images[0].dataset
        bad = corrupt_copy(good)
        files = (write_study(tmp_path / "hip", [i.dataset for i in hip.images])
                 + write_study(tmp_path / "broken", [good, bad])
                 + write_study(tmp_path / "chest", [non_hip_study()]))
        sent = storescu(router.port, files)
        assert sent.returncode == 0, sent.stderr

        def both_reported() -> bool:
            kos = pacs_objects(pacs).get(KOS, [])
            return {str(d.StudyInstanceUID) for d in kos} >= {hip.study_uid, broken.study_uid}

        wait_until(both_reported, 300, "KOS of both hip studies at the PACS")
        objects = pacs_objects(pacs)
        validate([Path(d.filename) for kind in (SR, SC, KOS) for d in objects.get(kind, [])])

        factory = router.session_factory()
        with factory() as s:
            chest_uid = str(non_hip_study().StudyInstanceUID)
            chest = s.scalars(select(Study).where(Study.study_uid == chest_uid)).one()
            assert chest.state == "ignored"
            inferences = s.scalars(select(Inference)
                                   .where(Inference.study_uid == hip.study_uid)).all()
            assert {i.laterality for i in inferences} == {"R", "L"}
            for inf in inferences:
                assert abs(sum(inf.probabilities.values()) - 1.0) < 1e-3
                assert inf.latency_ms > 0
            outputs = s.scalars(select(Output)).all()
            attempts = s.scalars(select(SendAttempt)).all()
            quarantine = s.scalars(select(AuditEvent).where(
                AuditEvent.event_id_code == "HIP002")).all()
        # Nothing at the PACS for the chest study, everything else sent once with success.
        assert all(str(d.StudyInstanceUID) != chest_uid for ds in objects.values() for d in ds)
        sent_ok = {a.sop_instance_uid for a in attempts if a.status == 0}
        assert {o.sop_instance_uid for o in outputs} <= sent_ok
        # The corrupt image is audited and not referenced; its good sibling is reported.
        assert any(str(bad.SOPInstanceUID) in e.objects.get("sop_instance_uids", [])
                   for e in quarantine)
        sr_broken = [d for d in objects[SR] if str(d.StudyInstanceUID) == broken.study_uid]
        assert len(sr_broken) == 1
        sr_text = sr_broken[0].to_json()
        assert str(good.SOPInstanceUID) in sr_text
        assert str(bad.SOPInstanceUID) not in sr_text

        # highdicom reads the SR back with the findings recorded in the database.
        sr_hip = [d for d in objects[SR] if str(d.StudyInstanceUID) == hip.study_uid]
        assert len(sr_hip) == 1
        report = hd.sr.Comprehensive3DSR.from_dataset(sr_hip[0])
        lateralities = {"24028007": "R", "7771000": "L"}
        by_side = {i.laterality: i for i in inferences}
        read_back = {}
        for group in report.content.get_image_measurement_groups():
            (site,) = group.finding_sites
            (prob,) = group.get_measurements()
            read_back[lateralities[site.laterality.value]] = (group.finding_type.value,
                                                              float(prob.value))
        assert set(read_back) == set(by_side)
        for side, inf in by_side.items():
            assert read_back[side][0] == class_by_key(inf.predicted_class).code
            assert read_back[side][1] == pytest.approx(inf.probability, abs=1e-3)
        # Every output is in the source study, in a series of its own, marked as AI output.
        for kind in (SR, SC, KOS):
            for ds in objects.get(kind, []):
                assert str(ds.StudyInstanceUID) in {hip.study_uid, broken.study_uid}
                assert str(ds.PatientID) in {str(hip.images[0].dataset.PatientID),
                                             str(good.PatientID)}
    finally:
        router.stop()
        pacs.stop()


def test_results_appear_in_the_study_at_orthanc(router_process: Any, tmp_path: Path) -> None:
    require_tool("Orthanc")
    orthanc = start_orthanc(tmp_path / "orthanc")
    router = router_process(router_overrides(orthanc.ae_title, orthanc.dicom_port))
    try:
        study = make_study(21, 0, hardware={"R": "tha", "L": "tha"}, views=("ap_pelvis",))
        files = write_study(tmp_path / "study", [i.dataset for i in study.images])
        # The PACS holds the study (the modality sent it there) and forwards it to us.
        to_pacs = storescu(orthanc.dicom_port, files, called=orthanc.ae_title)
        assert to_pacs.returncode == 0, to_pacs.stderr
        sent = storescu(router.port, files)
        assert sent.returncode == 0, sent.stderr

        def series_modalities() -> dict[str, str] | None:
            found = orthanc.study_id(study.study_uid)
            if not found:
                return None
            series = orthanc.get(f"/studies/{found}/series")
            mods = {s["MainDicomTags"].get("Modality", ""): s["MainDicomTags"]
                    .get("SeriesDescription", "") for s in series}
            return mods if {"SR", "KO"} <= set(mods) and len(series) >= 4 else None

        mods = wait_until(series_modalities, 300, "SR, SC and KOS series in Orthanc")
        assert mods["KO"].startswith("AI TRIAGE: ")
        assert "NOT FOR DIAGNOSTIC USE" in mods["SR"].upper()
        instances = orthanc.get(f"/studies/{orthanc.study_id(study.study_uid)}/instances")
        assert len(instances) == 4  # radiograph, SR, SC, KOS: all in the original study
    finally:
        router.stop()
        orthanc.stop()
