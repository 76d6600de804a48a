"""The whole flow with real peers: storescu -> hiprouter -> inference -> one report -> PACS.

The PACS is DCMTK storescp in one test and Orthanc (checked through its REST API) in the
other. The router runs as `hiprouter serve` with the repository's default rules and
pipelines (hardware and screening, bundled demo models): each hip study gets exactly one
SR, one SC per radiograph and one KOS.
"""

from __future__ import annotations

import copy
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

from hiprouter.pipelines.hardware import HARDWARE
from hiprouter.pipelines.screening import SCREENING
from hiprouter.schema import AuditEvent, FindingRow, Output, SendAttempt, Study
from hiprouter.synth.study import make_study
from tests.conftest import REPO, require_tool
from tests.e2e.orthanc import start_orthanc
from tests.report.inputs import numbers_by_tracking_uid
from tests.router.conftest import storescu
from tests.router.pacs import StoreSCP
from tests.validation import assert_valid

VOCABULARIES = {"hardware": HARDWARE, "screening": SCREENING}
SR, SC, KOS = "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7", \
    "1.2.840.10008.5.1.4.1.1.88.59"


def repo_routing() -> dict[str, Any]:
    """The default rules, pipelines and report settings of the repository's config.yaml."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    return {key: cfg[key] for key in ("rule_mode", "rules", "pipelines", "report")}


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
    assert_valid(paths)


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
        factory = router.session_factory()
        wait_until(lambda: _all_sent(factory), 60, "every output sent")
        objects = pacs_objects(pacs)
        validate([Path(d.filename) for kind in (SR, SC, KOS) for d in objects.get(kind, [])])
        # One report per study: one SR, one SC per radiograph it assessed, one KOS.
        for study_uid, radiographs in ((hip.study_uid, 1), (broken.study_uid, 1)):
            count = {kind: sum(str(d.StudyInstanceUID) == study_uid for d in objects.get(kind, []))
                     for kind in (SR, SC, KOS)}
            assert count == {SR: 1, SC: radiographs, KOS: 1}, count

        with factory() as s:
            chest_uid = str(non_hip_study().StudyInstanceUID)
            chest = s.scalars(select(Study).where(Study.study_uid == chest_uid)).one()
            assert chest.state == "ignored"
            findings = s.scalars(select(FindingRow)
                                 .where(FindingRow.study_uid == hip.study_uid)).all()
            assert sorted((f.pipeline, f.laterality) for f in findings) == [
                ("hardware", "L"), ("hardware", "R"), ("screening", "L"), ("screening", "R")]
            for f in findings:
                assert abs(sum(f.probabilities.values()) - 1.0) < 1e-3
                assert f.latency_ms > 0 and f.regions and f.device_uid
            outputs = s.scalars(select(Output)).all()
            attempts = s.scalars(select(SendAttempt)).all()
            not_assessed = s.scalars(select(AuditEvent).where(
                AuditEvent.event_id_code == "HIP008")).all()
        # Nothing at the PACS for the chest study, everything else sent once with success.
        assert all(str(d.StudyInstanceUID) != chest_uid for ds in objects.values() for d in ds)
        sent_ok = {a.sop_instance_uid for a in attempts if a.status == 0}
        assert {o.sop_instance_uid for o in outputs} <= sent_ok
        # The corrupt image is audited and named as not assessed, with no overlay of its
        # own; its good sibling is reported.
        assert any(str(bad.SOPInstanceUID) in e.objects.get("sop_instance_uids", [])
                   and "cannot be decoded" in e.outcome_description for e in not_assessed)
        sr_broken = [d for d in objects[SR] if str(d.StudyInstanceUID) == broken.study_uid]
        assert len(sr_broken) == 1
        assert str(good.SOPInstanceUID) in sr_broken[0].to_json()
        assert "1 image not assessed: pixel data cannot be decoded" in sr_broken[0].to_json()
        assert not [d for d in objects[SC] if d.SourceImageSequence[0]
                    .ReferencedSOPInstanceUID == bad.SOPInstanceUID]

        # highdicom reads the SR back with the findings recorded in the database.
        sr_hip = [d for d in objects[SR] if str(d.StudyInstanceUID) == hip.study_uid]
        assert len(sr_hip) == 1
        report = hd.sr.Comprehensive3DSR.from_dataset(sr_hip[0])
        lateralities = {"24028007": "R", "7771000": "L"}
        by_key = {(f.pipeline, f.laterality): f for f in findings}
        read_back = {}
        numbers = numbers_by_tracking_uid(report)
        for group in report.content.get_planar_roi_measurement_groups():
            (site,) = group.finding_sites
            prob = numbers[str(group.tracking_uid)]["122157"]
            pipeline = group.tracking_identifier.split()[0]
            read_back[(pipeline, lateralities[site.laterality.value])] = (
                group.finding_type.value, float(prob.value), group.roi.graphic_type.value)
        assert set(read_back) == set(by_key)
        for key, f in by_key.items():
            # an indeterminate finding names no class (DESIGN: no definitive sentence)
            code = ("INDET" if f.status == "indeterminate"
                    else VOCABULARIES[f.pipeline][f.predicted_class].code.value)
            assert read_back[key] == (code, pytest.approx(f.probability, abs=1e-3), "POINT")
        # Every output is in the source study, in a series of its own, marked as AI output.
        for kind in (SR, SC, KOS):
            for ds in objects.get(kind, []):
                assert str(ds.StudyInstanceUID) in {hip.study_uid, broken.study_uid}
                assert str(ds.PatientID) in {str(hip.images[0].dataset.PatientID),
                                             str(good.PatientID)}
    finally:
        router.stop()
        pacs.stop()


def _all_sent(factory: Any) -> bool:
    with factory() as s:
        rows = s.scalars(select(Output)).all()
        sent = {a.sop_instance_uid for a in s.scalars(select(SendAttempt)).all()
                if a.status == 0}
    return bool(rows) and {o.sop_instance_uid for o in rows} <= sent


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
            mods = [(s["MainDicomTags"].get("Modality", ""), s["MainDicomTags"]
                     .get("SeriesDescription", "")) for s in series]
            instances = orthanc.get(f"/studies/{found}/instances")
            return mods if len(mods) >= 4 and len(instances) >= 4 else None

        mods = wait_until(series_modalities, 300, "SR, SC and KOS series in Orthanc")
        by_modality = {m: d for m, d in mods}
        assert sorted(m for m, _ in mods) == ["CR", "KO", "OT", "SR"]  # one series each
        assert by_modality["KO"].startswith("AI TRIAGE: ")
        assert "NOT FOR DIAGNOSTIC USE" in by_modality["SR"].upper()
        instances = orthanc.get(f"/studies/{orthanc.study_id(study.study_uid)}/instances")
        assert len(instances) == 4  # radiograph, SR, SC, KOS: all in the original study
    finally:
        router.stop()
        orthanc.stop()


def test_combined_orientation_letters_still_get_every_object(router_process: Any,
                                                             tmp_path: Path) -> None:
    """Rotated and cross-table views carry PatientOrientation such as FR\\HR; highdicom's SC
    constructor refuses them, yet the study gets its SR, SC and KOS (and they validate)."""
    from tests.inference.helpers import constant_model

    pacs = StoreSCP(tmp_path / "pacs", ae_title="PACS").start()
    overrides = router_overrides("PACS", pacs.port)
    overrides["pipelines"] = {"hardware": {
        "kind": "hardware", "device": "cpu",
        "models": [str(constant_model(tmp_path / "m", "hardware", "tha"))]}}
    for rule in overrides["rules"]:
        rule["pipelines"] = ["hardware"]
    router = router_process(overrides)
    try:
        study = make_study(41, 0, views=("ap_pelvis", "cross_table_lateral"), side="R",
                           size=(400, 500))
        datasets = [i.dataset for i in study.images]
        datasets[0].PatientOrientation = ["FR", "HR"]
        datasets[1].PatientOrientation = ["HR", "F"]
        sent = storescu(router.port, write_study(tmp_path / "study", datasets))
        assert sent.returncode == 0, sent.stderr
        wait_until(lambda: pacs_objects(pacs).get(KOS), 240, "the study's KOS at the PACS")
        wait_until(lambda: len(pacs_objects(pacs).get(SC, [])) == 2, 60, "both overlays")
        objects = pacs_objects(pacs)
        assert [len(objects[k]) for k in (SR, SC, KOS)] == [1, 2, 1]
        orientations = sorted(list(d.PatientOrientation) for d in objects[SC])
        assert orientations == [["FR", "HR"], ["HR", "F"]]
        validate([Path(d.filename) for kind in (SR, SC, KOS) for d in objects[kind]])
    finally:
        router.stop()
        pacs.stop()


def send_and_wait_for_report(router: Any, pacs: StoreSCP, folder: Path, ds: Dataset) -> Any:
    """storescu one image to the router, wait for its study's KOS at the PACS and for every
    output to be sent; returns the router's session factory."""
    sent = storescu(router.port, write_study(folder, [ds]))
    assert sent.returncode == 0, sent.stderr
    study_uid = str(ds.StudyInstanceUID)
    wait_until(lambda: [d for d in pacs_objects(pacs).get(KOS, [])
                        if str(d.StudyInstanceUID) == study_uid], 300, "the KOS")
    factory = router.session_factory()
    wait_until(lambda: _all_sent(factory), 60, "every output sent")
    return factory


def test_chest_film_sent_as_a_pelvis_is_reported_not_assessed(router_process: Any,
                                                              tmp_path: Path) -> None:
    """A chest radiograph whose headers claim an AP pelvis is routed (the tags say pelvis),
    but the anatomy check stops it before every pipeline: the PACS gets a valid SR that says
    why nothing was assessed and a ROUTINE KOS, no overlay; the audit names the reason."""
    from hiprouter.synth.ood import claim_ap_pelvis, make_ood_image

    pacs = StoreSCP(tmp_path / "pacs", ae_title="PACS").start()
    router = router_process(router_overrides("PACS", pacs.port))
    try:
        chest = claim_ap_pelvis(make_ood_image("chest_pa", 9500))
        study_uid = str(chest.StudyInstanceUID)
        factory = send_and_wait_for_report(router, pacs, tmp_path / "chest", chest)
        objects = pacs_objects(pacs)
        assert {k: len(v) for k, v in objects.items()} == {SR: 1, KOS: 1}
        validate([Path(d.filename) for ds in objects.values() for d in ds])
        text = objects[SR][0].to_json()
        assert "No hip could be assessed" in text
        assert "not a hip or pelvis radiograph of an adult: looks like a chest" in text
        with factory() as s:
            assert s.scalars(select(FindingRow).where(FindingRow.study_uid == study_uid)
                             ).all() == []
            (kos_row,) = s.scalars(select(Output).where(Output.kind == "KOS")).all()
            audit = s.scalars(select(AuditEvent).where(
                AuditEvent.event_id_code == "HIP008")).all()
        assert kos_row.priority == "ROUTINE"
        assert any(str(chest.SOPInstanceUID) in e.objects.get("sop_instance_uids", [])
                   and "looks like a chest radiograph" in e.outcome_description
                   for e in audit)
    finally:
        router.stop()
        pacs.stop()


def test_pelvis_film_in_a_hip_study_without_series_tags_is_read_per_hip(
        router_process: Any, tmp_path: Path) -> None:
    """An AP pelvis image whose own tags name no view, in a study described as a right hip
    (routed by the study's words): the anatomy check sees a pelvis, so every pipeline reads
    it as two hips, and the audit says the view was read from the image."""
    study = make_study(31, 0, hardware={"R": "tha", "L": "no_hardware"}, views=("ap_pelvis",))
    ds = study.images[0].dataset
    for key in ("SeriesDescription", "BodyPartExamined", "ProtocolName", "ViewPosition",
                "PerformedProcedureStepDescription", "AcquisitionDeviceProcessingDescription",
                "RequestedProcedureDescription"):
        if key in ds:
            delattr(ds, key)
    ds.StudyDescription = "XR RIGHT HIP 2 VIEWS"
    pacs = StoreSCP(tmp_path / "pacs", ae_title="PACS").start()
    router = router_process(router_overrides("PACS", pacs.port))
    try:
        study_uid = str(ds.StudyInstanceUID)
        factory = send_and_wait_for_report(router, pacs, tmp_path / "hip", ds)
        objects = pacs_objects(pacs)
        validate([Path(d.filename) for ds_ in objects.values() for d in ds_])
        (sr_ds,) = objects[SR]
        impression = str(sr_ds.ContentSequence[-1].ContentSequence[0].TextValue)
        assert ("1 image without a view in its headers was read as an AP pelvis (both hips), "
                "the view taken from the image.") in impression, impression
        with factory() as s:
            rows = s.scalars(select(FindingRow).where(FindingRow.study_uid == study_uid)).all()
            audit = s.scalars(select(AuditEvent).where(
                AuditEvent.outcome_description.like("view read from the image%"))).all()
        by_pipeline: dict[str, set[str]] = {}
        for r in rows:
            by_pipeline.setdefault(r.pipeline, set()).add(r.laterality)
        assert by_pipeline and all(sides == {"R", "L"} for sides in by_pipeline.values()), \
            by_pipeline
        assert all("view read from the image" in r.details["qualifiers"]["views"]
                   for r in rows if r.pipeline in ("hardware", "screening"))
        assert [e.outcome_description for e in audit] == [
            "view read from the image (its own headers name none): an AP pelvis, read per hip"]
        assert str(ds.SOPInstanceUID) in audit[0].objects["sop_instance_uids"]
    finally:
        router.stop()
        pacs.stop()
