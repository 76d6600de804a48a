"""The one report per study: SR, SC, SEG and KOS built from findings; validity, content, UIDs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from hiprouter.config import ReportConfig
from hiprouter.findings import Classification, Mask, ModelInfo, Region
from hiprouter.report.build import NothingToReport, ReportBundle, build_report, write_bundle
from hiprouter.report.sc import TRANSFER_SYNTAXES
from tests.conftest import require_tool
from tests.report.inputs import DEMO_MODEL, make_cr, make_study, numbers_by_tracking_uid
from tests.validation import assert_valid

SR_UID = "1.2.840.10008.5.1.4.1.1.88.34"
SC_UID = "1.2.840.10008.5.1.4.1.1.7"
SEG_UID = "1.2.840.10008.5.1.4.1.1.66.4"
KOS_UID = "1.2.840.10008.5.1.4.1.1.88.59"


def report(study_and_sources: tuple, cfg: ReportConfig | None = None,
           **kwargs: object) -> ReportBundle:
    study, sources, displays = study_and_sources
    return build_report(study, sources, displays, cfg or ReportConfig(), **kwargs)


def validate(paths: list[Path]) -> None:
    """The project's validation: dciodvfy, dsrdump, highdicom read-back."""
    assert_valid(paths)


def written(bundle: ReportBundle, tmp_path: Path) -> dict[str, list[Dataset]]:
    """Write the bundle, read every file back, group by SOP Class."""
    paths = write_bundle(bundle, tmp_path)
    out: dict[str, list[Dataset]] = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        out.setdefault(str(ds.SOPClassUID), []).append(ds)
    return out


@pytest.mark.parametrize(("scenario", "kwargs", "cfg"), [
    ("fracture with lateral view and a refused image",
     {"right": ("femoral_neck_fracture", 0.91), "left": ("tha", 0.55), "extra_images": 1,
      "refused": 1}, ReportConfig()),
    ("bilateral, German", {"right": ("tha", 0.93), "left": ("tha", 0.9)},
     ReportConfig(language="de")),
    ("unknown laterality only", {"right": None, "left": None,
                                 "unknown": ("dynamic_hip_screw", 0.8)}, ReportConfig()),
])
def test_every_object_passes_the_validators(tmp_path: Path, scenario: str, kwargs: dict,
                                            cfg: ReportConfig) -> None:
    bundle = report(make_study(**kwargs), cfg)
    assert not bundle.left_out
    paths = write_bundle(bundle, tmp_path)
    assert len(paths) == 2 + len(bundle.scs)
    validate(paths)


def test_sr_reads_back_with_the_same_findings(tmp_path: Path) -> None:
    inputs = make_study(right=("femoral_neck_fracture", 0.91), left=("tha", 0.87), refused=1)
    src = inputs[1][0]
    sr_ds = written(report(inputs), tmp_path)[SR_UID][0]
    sr = hd.sr.Comprehensive3DSR.from_dataset(sr_ds)
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == 2
    numbers = numbers_by_tracking_uid(sr)
    assert set(numbers) == {str(g.tracking_uid) for g in groups}
    seen = {}
    for group in groups:
        (site,) = group.finding_sites
        assert (site.value.value, site.value.scheme_designator) == ("24136001", "SCT")
        assert group.get_measurements() == []  # OHIF cannot load NUMs without a SCOORD
        (prob,) = numbers[str(group.tracking_uid)].values()
        assert (prob.name.value, prob.name.scheme_designator, prob.unit.value) == (
            "122157", "DCM", "1")
        (qual,) = group.get_qualitative_evaluations()
        assert qual.value == group.finding_type
        region = group.roi
        assert region.graphic_type.value == "POINT"
        (image,) = region.ContentSequence
        assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert group.tracking_uid and group.tracking_identifier
        seen[site.laterality.value] = (group.finding_type.value,
                                       group.finding_type.scheme_designator, prob.value)
    assert seen["24028007"] == ("5913000", "SCT", pytest.approx(0.91))
    assert seen["7771000"] == ("HW001", "99HIPAI", pytest.approx(0.87))

    assert (sr_ds.CompletionFlag, sr_ds.VerificationFlag, sr_ds.PreliminaryFlag) == (
        "COMPLETE", "UNVERIFIED", "PRELIMINARY")
    assert sr_ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr_ds.ConceptNameCodeSequence[0].CodeValue == "126000"
    schemes = [i.CodingSchemeDesignator for i in sr_ds.CodingSchemeIdentificationSequence]
    assert "99HIPAI" in schemes
    equipment = [e for e in sr_ds.ContributingEquipmentSequence
                 if e.get("ManufacturerModelName") == DEMO_MODEL.name]
    models = [e for e in sr_ds.ContributingEquipmentSequence if "DeviceUID" in e]
    assert len(models) == 2  # the hardware and the fracture model
    assert len(equipment) == 1
    assert equipment[0].SoftwareVersions == DEMO_MODEL.version
    assert equipment[0].DeviceUID == DEMO_MODEL.device_uid
    assert equipment[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    assert_joins_study(sr_ds, src)
    assert sr_ds.SeriesDescription.endswith("NOT FOR DIAGNOSTIC USE")


def assert_joins_study(ds: Dataset, src: Dataset) -> None:
    """Same Patient and Study modules, own series."""
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "StudyInstanceUID", "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
                    "ReferringPhysicianName", "StudyDescription"):
        assert ds[keyword].value == src[keyword].value, keyword
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID
    assert "AI" in ds.SeriesDescription and len(ds.SeriesDescription) <= 64


def test_dsr2html_shows_each_hip_sentence(tmp_path: Path) -> None:
    dsr2html = require_tool("dsr2html")
    bundle = report(make_study(right=("tha", 0.93), left=("im_nail", 0.42)),
                    ReportConfig(low_confidence=0.6))
    sr_path = next(p for p in write_bundle(bundle, tmp_path) if p.name.startswith("sr-"))
    proc = subprocess.run([dsr2html, str(sr_path)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "Right hip: total hip arthroplasty." in proc.stdout
    assert ("Left hip: possible intramedullary nail (low confidence, probability 0.42)."
            in proc.stdout)
    assert "DEMO MODEL TRAINED ON SYNTHETIC IMAGES - NOT FOR CLINICAL USE" in proc.stdout
    assert "PRELIMINARY" in proc.stdout and "UNVERIFIED" in proc.stdout


def test_secondary_capture_attributes_and_overlay(tmp_path: Path) -> None:
    inputs = make_study(right=("tha", 0.93), left=("no_hardware", 0.88))
    src = inputs[1][0]
    (sc,) = written(report(inputs), tmp_path)[SC_UID]
    assert (sc.SamplesPerPixel, sc.PhotometricInterpretation, sc.BitsAllocated) == (3, "RGB", 8)
    assert (sc.Rows, sc.Columns) == (src.Rows, src.Columns)
    assert sc.ConversionType == "WSD"
    assert list(sc.ImageType) == ["DERIVED", "SECONDARY"]
    assert sc.BurnedInAnnotation == "YES"
    assert sc.BodyPartExamined == "PELVIS"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert DEMO_MODEL.name in sc.DerivationDescription
    assert_joins_study(sc, src)
    px = sc.pixel_array.astype(int)
    r, g, b = px[128, 64]  # the right hip's hot spot (image left on an AP pelvis)
    assert r > g + 40 and r > b + 40, (r, g, b)
    for y, x in ((140, 128), (128, 192)):  # between the hips; the hip without hardware
        r, g, b = px[y, x]  # (a negative class's map is not drawn): stays grey
        assert abs(r - g) < 8 and abs(g - b) < 8, (y, x, r, g, b)
    # burned-in labels: white text on black boxes, right hip's label on the image left
    top_left, top_right = px[:24, :100], px[:24, -100:]
    for region in (top_left, top_right):
        assert (region >= 240).all(axis=2).any() and (region == 0).all(axis=2).any()


def test_large_radiograph_is_downscaled(tmp_path: Path) -> None:
    study, _, _ = make_study(right=("tha", 0.93), left=None)
    big = make_cr(study.study_uid, rows=3000, cols=2400)
    uid = str(big.SOPInstanceUID)
    (finding,) = study.findings()
    heat = finding.heatmaps[0]
    heat.sop_instance_uid = uid
    heat.heat = np.zeros((3000, 2400), np.float32)
    heat.heat[1400:1600, 400:600] = 1.0
    finding.source_sop_uids = [uid]
    finding.regions = [Region(uid, "POINT", np.array([[500.0, 1500.0]]))]
    bundle = report((study, [big], {uid: np.full((3000, 2400), 100, np.uint8)}))
    (sc,) = bundle.scs
    assert (sc.Rows, sc.Columns) == (1024, 819)  # report.sc_max_side
    r, g, b = sc.pixel_array[int(1500 * 1024 / 3000), int(500 * 1024 / 3000)].astype(int)
    assert r > g + 40 and r > b + 40


def test_kos_flags_a_fracture_as_high_and_references_everything(tmp_path: Path) -> None:
    inputs = make_study(right=("intertrochanteric_fracture", 0.83), left=("tha", 0.9),
                        extra_images=1, refused=1)
    sources = inputs[1]
    bundle = report(inputs)
    assert bundle.priority == "HIGH"
    objs = written(bundle, tmp_path)
    (kos,) = objs[KOS_UID]
    assert kos.SeriesDescription == "AI TRIAGE: HIGH"
    assert kos.ConceptNameCodeSequence[0].CodeValue == "113000"
    assert kos.ConceptNameCodeSequence[0].CodeMeaning == "Of Interest"
    items = kos.ContentSequence
    (desc,) = [i.TextValue for i in items
               if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "113012"]
    assert desc == "AI TRIAGE PRIORITY=HIGH: Intertrochanteric fracture, right hip (p=0.83)"
    referenced = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                  for i in items if i.ValueType in ("IMAGE", "COMPOSITE")}
    expected = {s.SOPInstanceUID for s in sources[:2]}
    expected |= {d.SOPInstanceUID for d in [*objs[SR_UID], *objs[SC_UID]]}
    assert referenced == expected
    assert_joins_study(kos, sources[0])


def test_nothing_found_is_routine(tmp_path: Path) -> None:
    bundle = report(make_study(right=("no_hardware", 0.97), left=("no_hardware", 0.95)))
    assert (bundle.priority, bundle.kos.SeriesDescription) == ("ROUTINE", "AI TRIAGE: ROUTINE")
    assert bundle.text.sentences == ["No orthopedic hardware in either hip."]


def all_uids(ds: Dataset) -> set[str]:
    """Every UID value anywhere in a dataset."""
    found: set[str] = set()

    def walk(d: Dataset) -> None:
        for elem in d:
            if elem.VR == "SQ":
                for item in elem.value:
                    walk(item)
            elif elem.VR == "UI" and elem.value:
                found.add(str(elem.value))

    walk(ds)
    return found


def test_not_assessed_images_are_named_in_the_report_but_get_no_overlay() -> None:
    study, sources, displays = make_study(refused=2)
    refused = set(study.not_assessed())
    bundle = report((study, sources, displays))
    assert len(refused) == 2 and len(bundle.scs) == 1
    assert not all_uids(bundle.scs[0]) & refused
    assert set(bundle.referenced_sop_uids) == {str(s.SOPInstanceUID) for s in sources}
    assert "2 images not assessed: not a hip radiograph." in bundle.text.impression


def test_unreadable_source_is_left_out_and_the_rest_reported() -> None:
    study, sources, displays = make_study()
    study.results[0].findings[0].source_sop_uids.append("1.2.3.4.404")  # not among sources
    bundle = report((study, sources, displays))
    assert bundle.sr is not None and bundle.kos is not None and not bundle.left_out


def _identity(bundle: ReportBundle) -> list[tuple[str, str]]:
    return [(str(d.SeriesInstanceUID), str(d.SOPInstanceUID)) for d in bundle.datasets()]


def tracking_uids(bundle: ReportBundle) -> list[str]:
    """Tracking UIDs of the SR's measurement groups."""
    sr = hd.sr.Comprehensive3DSR.from_dataset(bundle.sr)
    return [str(g.tracking_uid) for g in sr.content.get_planar_roi_measurement_groups()]


def test_uids_are_deterministic_per_study_pipeline_and_model(tmp_path: Path) -> None:
    study, sources, displays = make_study(extra_images=1)
    first = report((study, sources, displays))
    again = report((study, sources, displays), ReportConfig(language="de"))
    assert _identity(first) == _identity(again)
    series = [s for s, _ in _identity(first)]
    assert series[1] == series[2] and len(set(series)) == 3  # SR, SC (one series), KOS
    assert tracking_uids(first) == tracking_uids(again)

    names = {p.name for p in write_bundle(first, tmp_path)}
    assert {p.name for p in write_bundle(again, tmp_path)} == names
    assert {p.name for p in tmp_path.iterdir()} == names  # rewritten, not duplicated
    for d in first.datasets():
        assert str(d.SOPInstanceUID) not in " ".join(names)

    # New images in the study (a later episode): new instances in the same series.
    extra = make_cr(study.study_uid, series_uid=sources[0].SeriesInstanceUID, instance=9)
    for f in study.findings():
        f.source_sop_uids = [*f.source_sop_uids, str(extra.SOPInstanceUID)]
    more = report((study, [*sources, extra], displays))
    assert {s for s, _ in _identity(more)} == set(series)  # SR, SC and KOS series
    assert not {i for _, i in _identity(more)} & {i for _, i in _identity(first)}
    assert tracking_uids(more) == tracking_uids(first)  # the same hips, tracked
    for f in study.findings():
        f.source_sop_uids = f.source_sop_uids[:-1]

    newer_model = ModelInfo(**{**DEMO_MODEL.__dict__, "version": "0.2.0"})
    for r in study.results:
        r.model = newer_model
        for f in r.findings:
            f.model = newer_model
    newer = report((study, sources, displays))
    assert not {u for pair in _identity(newer) for u in pair} & {
        u for pair in _identity(first) for u in pair}
    assert not set(tracking_uids(newer)) & set(tracking_uids(first))
    assert not {u for pair in _identity(report(make_study())) for u in pair} & {
        u for pair in _identity(first) for u in pair}


def test_files_have_file_meta(tmp_path: Path) -> None:
    for path in write_bundle(report(make_study()), tmp_path):
        assert path.read_bytes()[128:132] == b"DICM"
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1", ds.SOPClassUID.name
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("compression", ["none", "jpeg-ls", "jpeg2000", "rle"])
def test_sc_compression_is_lossless(compression: str, tmp_path: Path) -> None:
    """Each report.sc_compression gives the same pixels; the compressed ones are smaller."""
    study = make_study()
    bundle = report(study, ReportConfig(sc_compression=compression))
    files = [pydicom.dcmread(p) for p in write_bundle(bundle, tmp_path)]
    sc = next(ds for ds in files if ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7")
    assert sc.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[compression]
    plain = report(study, ReportConfig(sc_compression="none")).scs[0]
    assert np.array_equal(sc.pixel_array, plain.pixel_array)
    assert sc.LossyImageCompression == "00"
    if compression in ("jpeg-ls", "jpeg2000"):
        assert len(sc.PixelData) < 0.7 * len(plain.PixelData)
    assert_valid(files_of(tmp_path))


def files_of(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"))


def test_sc_max_side_downscales() -> None:
    from hiprouter.report.sc import Overlay, _fit

    overlay = Overlay("1.2.3", np.zeros((600, 500), np.uint8), np.ones((600, 500), np.float32))
    display, heat, scale = _fit(overlay, 300)
    assert display.shape == heat.shape == (300, 250) and scale == 0.5
    assert _fit(overlay, 2048)[0].shape == (600, 500)


def test_secondary_captures_can_be_disabled() -> None:
    bundle = report(make_study(), ReportConfig(secondary_captures=False))
    assert bundle.scs == []
    refs = {i.ReferencedSOPSequence[0].ReferencedSOPClassUID
            for i in bundle.kos.ContentSequence if i.ValueType in ("IMAGE", "COMPOSITE")}
    assert SC_UID not in refs and SR_UID in refs


def test_heat_map_of_the_configured_pipeline_is_drawn() -> None:
    inputs = make_study(right=("tha", 0.93), left=("femoral_neck_fracture", 0.9))
    px = report(inputs, ReportConfig(heatmap_pipelines=["fracture"])).scs[0].pixel_array
    r, g, b = px[128, 192].astype(int)  # the left hip's fracture map is drawn
    assert r > g + 40 and r > b + 40
    r, g, b = px[128, 64].astype(int)  # the right hip's hardware map is not
    assert abs(r - g) < 8 and abs(g - b) < 8
    sc = report(inputs).scs[0]  # default: every pipeline, first with a map for the image
    assert "heat map of hardware" in sc.DerivationDescription


def test_bad_input_is_rejected_or_left_out() -> None:
    study, sources, displays = make_study()
    stranger = make_cr("1.2.3.999")
    with pytest.raises(ValueError, match="is not in study"):
        report((study, [*sources, stranger], displays))
    with pytest.raises(NothingToReport, match="no finding and no source"):
        report((study, [], displays))


@pytest.mark.parametrize(("attribute", "value", "message"), [
    ("probability", float("nan"), "probability nan is not in"),
    ("probability", 1.5, "probability 1.5 is not in"),
    ("predicted", "spaceship", "class 'spaceship' is not in the pipeline's vocabulary"),
])
def test_a_broken_finding_is_left_out_and_the_rest_reported(attribute: str, value: object,
                                                            message: str) -> None:
    study, sources, displays = make_study()
    setattr(study.findings()[0].classification, attribute, value)
    bundle = report((study, sources, displays))
    (what, why), = bundle.left_out
    assert what == "hardware finding, R hip" and message in why
    sr = hd.sr.Comprehensive3DSR.from_dataset(bundle.sr)
    assert len(sr.content.get_planar_roi_measurement_groups()) == 1
    assert bundle.kos is not None and len(bundle.scs) == 1


def test_one_object_failing_leaves_the_others(tmp_path: Path) -> None:
    """An SC that cannot be built costs the study neither its SR nor its KOS."""
    study, sources, displays = make_study()
    uid = str(sources[0].SOPInstanceUID)
    displays[uid] = displays[uid].astype(np.float32)  # not uint8: the overlay refuses it
    bundle = report((study, sources, displays))
    assert bundle.scs == [] and bundle.sr is not None and bundle.kos is not None
    (what, why), = bundle.left_out
    assert what == f"SC of image {uid}" and "must be 2-D uint8" in why
    validate(write_bundle(bundle, tmp_path))


@pytest.mark.parametrize("orientation", [["F", "R"], ["R", "F"], ["H", "R"], ["FR", "HR"],
                                         None])
def test_unusual_patient_orientation_still_gives_every_object(tmp_path: Path,
                                                              orientation: list | None) -> None:
    study, sources, displays = make_study()
    if orientation is None:
        del sources[0].PatientOrientation
    else:
        sources[0].PatientOrientation = orientation
    bundle = report((study, sources, displays))
    assert not bundle.left_out and len(bundle.scs) == 1
    assert list(bundle.scs[0].get("PatientOrientation") or []) == (orientation or [])
    validate(write_bundle(bundle, tmp_path))


@pytest.mark.parametrize(("charset", "text"), [
    ("ISO_IR 100", "Hüfte beidseits, Röntgen"), ("ISO_IR 192", "Hüfte – Übersicht ¼")])
def test_unusual_headers_still_give_valid_objects(tmp_path: Path, charset: str,
                                                  text: str) -> None:
    study, sources, displays = make_study()
    src = sources[0]
    src.SpecificCharacterSet = charset
    src.StudyDescription = text
    src.SeriesDescription = text
    src.ImageType = ["ORIGINAL", "PRIMARY", "", "RAW"]
    del src.ImagerPixelSpacing
    bundle = report((study, sources, displays))
    assert not bundle.left_out
    paths = write_bundle(bundle, tmp_path)
    validate(paths)
    assert pydicom.dcmread(paths[0]).StudyDescription == text


def test_masks_become_a_segmentation(tmp_path: Path) -> None:
    study, sources, displays = make_study(right=("no_hardware", 0.9), left=("no_hardware", 0.9))
    uid = str(sources[0].SOPInstanceUID)
    for f, (x0, x1) in zip(study.findings(), ((44, 84), (172, 212)), strict=True):
        mask = np.zeros((256, 256), bool)
        mask[108:148, x0:x1] = True
        side = {"R": "Right", "L": "Left"}[f.laterality]
        f.masks = [Mask(uid, mask, f"{side} femoral head")]
        outline = np.array([[x0, 108], [x1, 108], [x1, 148], [x0, 148]], float)
        f.regions = [Region(uid, "POLYLINE", outline, "femoral head")]
    bundle = report((study, sources, displays))
    assert not bundle.left_out
    (seg,) = bundle.segs
    assert seg.SegmentSequence[0].SegmentLabel == "Right femoral head"
    laterality = [s.SegmentedPropertyTypeCodeSequence[0]
                  .SegmentedPropertyTypeModifierCodeSequence[0].CodeValue
                  for s in seg.SegmentSequence]
    assert laterality == ["24028007", "7771000"]
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0] \
        .ReferencedSOPInstanceUID == uid
    refs = {i.ReferencedSOPSequence[0].ReferencedSOPClassUID
            for i in bundle.kos.ContentSequence if i.ValueType in ("IMAGE", "COMPOSITE")}
    assert SEG_UID in refs
    sr = hd.sr.Comprehensive3DSR.from_dataset(bundle.sr)
    assert {g.roi.graphic_type.value for g in sr.content.get_planar_roi_measurement_groups()} \
        == {"POLYLINE"}
    px = bundle.scs[0].pixel_array.astype(int)
    assert tuple(px[108, 60]) == (255, 255, 0)  # the outline is drawn on the SC
    validate(write_bundle(bundle, tmp_path))


def test_indeterminate_and_not_assessed_findings_claim_nothing() -> None:
    study, sources, displays = make_study(right=("femoral_neck_fracture", 0.45),
                                          left=("femoral_neck_fracture", 0.95))
    right, left = study.findings()
    right.classification = Classification(
        "femoral_neck_fracture", 0.45,
        {"femoral_neck_fracture": 0.45, "no_fracture": 0.40, "intertrochanteric_fracture": 0.15},
        "indeterminate", "confidence 0.45 below 0.50")
    left.classification.status = "not_assessed"
    left.classification.reason = "image unlike the training data"
    bundle = report((study, sources, displays))
    assert bundle.priority == "ROUTINE"  # a not-assessed 0.95 never raises the priority
    sentence = " ".join(bundle.text.sentences)
    assert "indeterminate (candidates: femoral neck fracture 0.45, no fracture detected 0.40" \
        in sentence
    assert "not assessed (image unlike the training data)" in sentence
    sr = hd.sr.Comprehensive3DSR.from_dataset(bundle.sr)
    types = sorted(g.finding_type.meaning for g in sr.content.get_planar_roi_measurement_groups())
    assert types == ["Indeterminate", "Not assessed"]


def test_one_report_holds_every_pipeline() -> None:
    study, sources, displays = make_study(right=("tha", 0.93), left=("no_hardware", 0.9))
    fracture, _, _ = make_study(right=("no_fracture", 0.9), left=("femoral_neck_fracture", 0.8))
    for r in fracture.results:
        for f in r.findings:
            f.source_sop_uids = [str(sources[0].SOPInstanceUID)]
            for part in (*f.heatmaps, *f.regions):
                part.sop_instance_uid = str(sources[0].SOPInstanceUID)
    study.results += fracture.results
    bundle = report((study, sources, displays))
    sr = hd.sr.Comprehensive3DSR.from_dataset(bundle.sr)
    ids = sorted(g.tracking_identifier for g in sr.content.get_planar_roi_measurement_groups())
    assert ids == ["fracture left hip", "fracture right hip", "hardware left hip",
                   "hardware right hip"]
    assert len(bundle.scs) == 1 and bundle.priority == "HIGH"
    assert bundle.text.sentences == [
        "Right hip: total hip arthroplasty; no fracture detected.",
        "Left hip: no orthopedic hardware; femoral neck fracture."]
    labels = bundle.scs[0].DerivationDescription
    assert DEMO_MODEL.name in labels and "hip-fracture" in labels


PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")


def test_sr_and_kos_pass_pixelmed_template_validation(tmp_path: Path) -> None:
    """PixelMed's template-aware validator (Debian libpixelmed-java) checks TID 1500/2010:
    a report with findings, its KOS, and the report of a study in which no image was
    assessed (its group outlines the image: TID 1410)."""
    from hiprouter.findings import PipelineResult, StudyFindings
    from hiprouter.pipelines.hardware import HARDWARE

    java = require_tool("java")
    if not PIXELMED_JAR.is_file():
        pytest.skip("libpixelmed-java not installed")
    paths = [p for p in write_bundle(report(make_study(right=("femoral_neck_fracture", 0.91),
                                                       left=("tha", 0.9))), tmp_path / "found")
             if p.name.startswith(("sr-", "ko-"))]
    chest = make_cr("1.2.826.0.1.3680043.8.498.7")
    nothing = StudyFindings(str(chest.StudyInstanceUID), [PipelineResult(
        "hardware", "hardware", HARDWARE, DEMO_MODEL, not_assessed={
            str(chest.SOPInstanceUID): "not a hip or pelvis radiograph of an adult"})])
    paths += [p for p in write_bundle(build_report(nothing, [chest], {}, ReportConfig()),
                                      tmp_path / "nothing") if p.name.startswith("sr-")]
    limits = [f"-Djdk.xml.{k}=0" for k in ("xpathExprOpLimit", "xpathExprGrpLimit",
                                            "xpathTotalOpLimit")]
    # The validator takes one file per run; run them at once (JVM start-up dominates).
    procs = [subprocess.Popen([java, *limits, "-cp", str(PIXELMED_JAR),
                               "com.pixelmed.validate.DicomSRValidator", str(path)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for path in paths]
    out = "".join(proc.communicate(timeout=120)[0] for proc in procs)
    assert out.count("Root Template Validation Complete") == 3, out
    assert "TID_1500" in out and "TID_2010" in out
    assert not [line for line in out.splitlines() if line.startswith("Error")], out
