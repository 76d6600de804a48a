"""Source headers: real-world defects in the source must not break or invalidate the outputs."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pytest

from hiprouter.config import ReportConfig
from hiprouter.report.build import build_report, write_bundle
from hiprouter.report.header import paired_body_part, source_header
from tests.report.inputs import make_study
from tests.validation import assert_valid as validate


def test_missing_and_invalid_patient_study_attributes() -> None:
    _, (ds,), _ = make_study()
    del ds.PatientID, ds.PatientBirthDate, ds.StudyID
    ds.StudyDate = "d14a028c2a3a2bc9476102bb288234c4"  # seen in the wild
    ds.AccessionNumber = "A" * 56  # SH allows 16
    ds.AcquisitionDate = "not a date"  # Type 3: dropped
    header = source_header(ds)
    for keyword in ("PatientID", "PatientBirthDate", "StudyID", "StudyDate", "AccessionNumber"):
        assert keyword in header and header[keyword].value in (None, ""), keyword
    assert "AcquisitionDate" not in header
    assert "PixelData" not in header
    assert header.SOPInstanceUID == ds.SOPInstanceUID
    assert str(header.PatientName) == "Müller^Anna"
    assert ds.AccessionNumber == "A" * 56  # the source is not changed


def test_outputs_from_a_defective_source_are_valid(tmp_path: Path) -> None:
    study, sources, displays = make_study(right=("femoral_neck_fracture", 0.8))
    ds = sources[0]
    del ds.PatientID, ds.PatientSex, ds.ReferringPhysicianName
    ds.StudyDate = "2026-11-20"  # not DA
    ds.AccessionNumber = "ACC-" + "9" * 30
    ds.add_new(0x60003000, "OW", b"\x00" * (ds.Rows * ds.Columns // 8))  # an overlay
    bundle = build_report(study, sources, displays, ReportConfig())
    assert bundle.sr.AccessionNumber in (None, "") and bundle.sr.PatientID in (None, "")
    validate(write_bundle(bundle, tmp_path))


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")
@pytest.mark.parametrize(("body_part", "paired"), [
    ("HIP", True), ("PELVIS", False), ("pelvis", False), ("CHEST", False), ("KNEE", True),
    ("HUEFTE", True), ("", True), (None, True),
])
def test_paired_body_part(body_part: str | None, paired: bool) -> None:
    _, (ds,), _ = make_study()
    if body_part is None:
        del ds.BodyPartExamined
    else:
        ds.BodyPartExamined = body_part
    assert paired_body_part(ds) is paired


@pytest.mark.parametrize(("body_part", "image_laterality", "expected"), [
    ("HIP", "R", "R"),  # single-hip view of the right hip
    ("HIP", "U", ""),  # paired body part, side unknown: present and empty
    ("PELVIS", "U", None),  # unpaired: absent
    (None, "L", "L"),  # no body part: counted as paired
])
def test_sc_series_laterality(tmp_path: Path, body_part: str | None, image_laterality: str,
                              expected: str | None) -> None:
    study, sources, displays = make_study(right=("tha", 0.9), left=None)
    if body_part is None:
        del sources[0].BodyPartExamined
    else:
        sources[0].BodyPartExamined = body_part
    sources[0].ImageLaterality = image_laterality
    bundle = build_report(study, sources, displays, ReportConfig())
    (sc,) = bundle.scs
    if expected is None:
        assert "Laterality" not in sc
    else:
        assert (sc.Laterality or "") == expected
    validate(write_bundle(bundle, tmp_path))


def test_numbers_of_the_source_are_kept() -> None:
    """DS and IS values (held by pydicom as numbers) are checked as the text they are."""
    _, (ds,), _ = make_study()
    ds.WindowCenter = "2048.5"
    header = source_header(ds)
    assert header.InstanceNumber == 1 and list(header.PatientOrientation) == ["L", "F"]
    assert float(header.WindowCenter) == 2048.5
    assert [float(v) for v in header.ImagerPixelSpacing] == [0.2, 0.2]


@pytest.mark.parametrize("defect", ["none", "no orientation or spacing"])
def test_a_study_with_no_image_assessed_still_gets_its_sr(tmp_path: Path, defect: str) -> None:
    """Every image refused (e.g. by the anatomy check): the SR says so, with the reason, and
    validates; a radiograph whose header cannot fill an image library entry is left out of
    the library, not out of the report."""
    from hiprouter.findings import PipelineResult, StudyFindings
    from hiprouter.pipelines.hardware import HARDWARE
    from tests.report.inputs import DEMO_MODEL, make_cr

    ds = make_cr("1.2.826.0.1.3680043.8.498.1")
    if defect != "none":
        del ds.PatientOrientation, ds.ImagerPixelSpacing
    reason = "not a hip or pelvis radiograph of an adult: looks like a chest radiograph"
    study = StudyFindings(str(ds.StudyInstanceUID), [PipelineResult(
        "hardware", "hardware", HARDWARE, DEMO_MODEL,
        not_assessed={str(ds.SOPInstanceUID): reason})])
    bundle = build_report(study, [ds], {}, ReportConfig())
    assert bundle.left_out == [] and bundle.sr is not None and bundle.scs == []
    assert reason in bundle.text.impression
    validate(write_bundle(bundle, tmp_path))
    sr = hd.sr.Comprehensive3DSR.from_dataset(bundle.sr)
    # a TID 1410 group outlining the whole image, so that OHIF draws and lists the reason
    (group,) = sr.content.get_planar_roi_measurement_groups()
    assert str(group.tracking_identifier) == "image not assessed"
    assert sr.content.get_image_measurement_groups() == []
    region = group.roi
    assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    points = region.value
    assert points[:, 0].min() > 0 and points[:, 0].max() < ds.Columns
    assert points[:, 1].min() > 0 and points[:, 1].max() < ds.Rows
    assert (points[:, 0].max() - points[:, 0].min()) > 0.9 * ds.Columns
    assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
        ds.SOPInstanceUID
    again = build_report(study, [ds], {}, ReportConfig())  # a rerun: the same UIDs
    assert again.sr.SOPInstanceUID == bundle.sr.SOPInstanceUID
    assert hd.sr.Comprehensive3DSR.from_dataset(again.sr).content.get_planar_roi_measurement_groups(
        )[0].tracking_uid == group.tracking_uid


def test_an_image_of_unknown_size_not_assessed_gets_a_group_without_outline(
        tmp_path: Path) -> None:
    """Without Rows/Columns there is nothing to outline: the reason goes in a TID 1501
    group that references the image, and the SR still validates."""
    from hiprouter.findings import PipelineResult, StudyFindings
    from hiprouter.pipelines.hardware import HARDWARE
    from tests.report.inputs import DEMO_MODEL, make_cr

    ds = make_cr("1.2.826.0.1.3680043.8.498.2")
    del ds.Rows
    reason = "pixel data cannot be decoded: no Rows"
    study = StudyFindings(str(ds.StudyInstanceUID), [PipelineResult(
        "hardware", "hardware", HARDWARE, DEMO_MODEL,
        not_assessed={str(ds.SOPInstanceUID): reason})])
    bundle = build_report(study, [ds], {}, ReportConfig())
    sr = hd.sr.Comprehensive3DSR.from_dataset(bundle.sr)
    assert sr.content.get_planar_roi_measurement_groups() == []
    (group,) = sr.content.get_image_measurement_groups()
    assert str(group.tracking_identifier) == "image not assessed"
    assert [str(i.referenced_sop_instance_uid) for i in group.source_images] == [
        str(ds.SOPInstanceUID)]
    comments = [str(i.TextValue) for i in group[0].ContentSequence
                if i.ConceptNameCodeSequence[0].CodeValue == "121106"]  # DCM Comment
    assert comments == [f"Image not assessed: {reason}"]
    validate([p for p in write_bundle(bundle, tmp_path) if p.name.startswith("sr-")])
