"""SR, SC and KOS objects built from study results: validity, content, determinism."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from hiprouter.config import PipelineConfig
from hiprouter.inference.results import ModelInfo
from hiprouter.report.build import NothingToReport, ReportBundle, build_outputs, write_bundle
from tests.conftest import REPO, require_tool
from tests.report.inputs import DEMO_MODEL, make_cr, make_study

VALIDATOR = REPO.parent / "shared" / "tools" / "validate_dicom.py"
SR_UID = "1.2.840.10008.5.1.4.1.1.88.34"
SC_UID = "1.2.840.10008.5.1.4.1.1.7"
KOS_UID = "1.2.840.10008.5.1.4.1.1.88.59"


def validate(paths: list[Path]) -> None:
    """Run the project's validator (dciodvfy + dsrdump) and fail on any problem it reports."""
    if not VALIDATOR.is_file():
        pytest.skip("../shared/tools/validate_dicom.py not present")
    for tool in ("dciodvfy", "dsrdump", "dcmdump"):
        require_tool(tool)
    proc = subprocess.run([sys.executable, str(VALIDATOR), *map(str, paths)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(paths)} passed, 0 failed" in proc.stdout


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
      "refused": 1}, PipelineConfig()),
    ("bilateral, German", {"right": ("tha", 0.93), "left": ("tha", 0.9)},
     PipelineConfig(language="de")),
    ("unknown laterality only", {"right": None, "left": None,
                                 "unknown": ("dynamic_hip_screw", 0.8)}, PipelineConfig()),
])
def test_every_object_passes_the_validators(tmp_path: Path, scenario: str, kwargs: dict,
                                            cfg: PipelineConfig) -> None:
    result, sources = make_study(**kwargs)
    bundle = build_outputs(result, sources, cfg)
    paths = write_bundle(bundle, tmp_path)
    assert len(paths) == 2 + len(bundle.scs)
    validate(paths)


def test_sr_reads_back_with_the_same_findings(tmp_path: Path) -> None:
    result, sources = make_study(right=("femoral_neck_fracture", 0.91),
                                 left=("tha", 0.87), refused=1)
    src = sources[0]
    sr_ds = written(build_outputs(result, sources, PipelineConfig()), tmp_path)[SR_UID][0]
    sr = hd.sr.Comprehensive3DSR.from_dataset(sr_ds)
    groups = sr.content.get_image_measurement_groups()
    assert len(groups) == 2
    seen = {}
    for group in groups:
        (site,) = group.finding_sites
        assert (site.value.value, site.value.scheme_designator) == ("24136001", "SCT")
        (prob,) = group.get_measurements()
        assert (prob.name.value, prob.name.scheme_designator, prob.unit.value) == (
            "122157", "DCM", "1")
        (qual,) = group.get_qualitative_evaluations()
        assert qual.value == group.finding_type
        assert [s.referenced_sop_instance_uid for s in group.source_images] == [
            src.SOPInstanceUID]
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
    result, sources = make_study(right=("tha", 0.93), left=("im_nail", 0.42))
    bundle = build_outputs(result, sources, PipelineConfig(low_confidence=0.6))
    sr_path = next(p for p in write_bundle(bundle, tmp_path) if p.name.startswith("sr-"))
    proc = subprocess.run([dsr2html, str(sr_path)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "Right hip: total hip arthroplasty." in proc.stdout
    assert ("Left hip: possible intramedullary nail (low confidence, probability 0.42)."
            in proc.stdout)
    assert "DEMO MODEL TRAINED ON SYNTHETIC IMAGES - NOT FOR CLINICAL USE" in proc.stdout
    assert "PRELIMINARY" in proc.stdout and "UNVERIFIED" in proc.stdout


def test_secondary_capture_attributes_and_overlay(tmp_path: Path) -> None:
    result, sources = make_study(right=("tha", 0.93), left=("no_hardware", 0.88))
    src = sources[0]
    (sc,) = written(build_outputs(result, sources, PipelineConfig()), tmp_path)[SC_UID]
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
    r, g, b = px[140, 128]  # between the hips, no heat: stays grey
    assert abs(r - g) < 8 and abs(g - b) < 8
    # burned-in labels: white text on black boxes, right hip's label on the image left
    top_left, top_right = px[:24, :100], px[:24, -100:]
    for region in (top_left, top_right):
        assert (region >= 240).all(axis=2).any() and (region == 0).all(axis=2).any()


def test_large_radiograph_is_downscaled(tmp_path: Path) -> None:
    result, _ = make_study(right=("tha", 0.93), left=None)
    big = make_cr(result.study_uid, rows=3000, cols=2400)
    heat = result.heatmaps[0]
    heat.sop_instance_uid = str(big.SOPInstanceUID)
    heat.heatmap = np.zeros((3000, 2400), np.float32)
    heat.heatmap[1400:1600, 400:600] = 1.0
    heat.display_image = np.full((3000, 2400), 100, np.uint8)
    result.hips[0].source_sop_uids = [str(big.SOPInstanceUID)]
    bundle = build_outputs(result, [big], PipelineConfig())
    (sc,) = bundle.scs
    assert (sc.Rows, sc.Columns) == (2048, 1638)
    r, g, b = sc.pixel_array[int(1500 * 2048 / 3000), int(500 * 2048 / 3000)].astype(int)
    assert r > g + 40 and r > b + 40


def test_kos_flags_a_fracture_as_high_and_references_everything(tmp_path: Path) -> None:
    result, sources = make_study(right=("intertrochanteric_fracture", 0.83), left=("tha", 0.9),
                                 extra_images=1, refused=1)
    bundle = build_outputs(result, sources, PipelineConfig())
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
    result, sources = make_study(right=("no_hardware", 0.97), left=("no_hardware", 0.95))
    bundle = build_outputs(result, sources, PipelineConfig())
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


def test_refused_images_are_never_referenced() -> None:
    result, sources = make_study(refused=2)
    bundle = build_outputs(result, sources, PipelineConfig())
    for ds in bundle.datasets():
        assert not all_uids(ds) & set(result.refused)
    assert len(bundle.scs) == 1
    assert bundle.referenced_sop_uids == [sources[0].SOPInstanceUID]


def _identity(bundle: ReportBundle) -> list[tuple[str, str]]:
    return [(str(d.SeriesInstanceUID), str(d.SOPInstanceUID)) for d in bundle.datasets()]


def tracking_uids(bundle: ReportBundle) -> list[str]:
    """Tracking UIDs of the SR's measurement groups."""
    sr = hd.sr.Comprehensive3DSR.from_dataset(bundle.sr)
    return [str(g.tracking_uid) for g in sr.content.get_image_measurement_groups()]


def test_uids_are_deterministic_per_study_pipeline_and_model(tmp_path: Path) -> None:
    result, sources = make_study(extra_images=1)
    first = build_outputs(result, sources, PipelineConfig())
    again = build_outputs(result, sources, PipelineConfig(language="de"))
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
    extra = make_cr(result.study_uid, series_uid=sources[0].SeriesInstanceUID, instance=9)
    for hip in result.hips:
        hip.source_sop_uids = [*hip.source_sop_uids, str(extra.SOPInstanceUID)]
    more = build_outputs(result, [*sources, extra], PipelineConfig())
    assert {s for s, _ in _identity(more)} == set(series)  # SR, SC and KOS series
    assert not {i for _, i in _identity(more)} & {i for _, i in _identity(first)}
    assert tracking_uids(more) == tracking_uids(first)  # the same hips, tracked
    for hip in result.hips:
        hip.source_sop_uids = hip.source_sop_uids[:-1]

    result.model = ModelInfo(**{**DEMO_MODEL.__dict__, "version": "0.2.0"})
    newer = build_outputs(result, sources, PipelineConfig())
    assert not {u for pair in _identity(newer) for u in pair} & {
        u for pair in _identity(first) for u in pair}
    assert not set(tracking_uids(newer)) & set(tracking_uids(first))
    other, other_sources = make_study()
    assert not {u for pair in _identity(build_outputs(other, other_sources, PipelineConfig()))
                for u in pair} & {u for pair in _identity(first) for u in pair}


def test_files_have_file_meta(tmp_path: Path) -> None:
    result, sources = make_study()
    for path in write_bundle(build_outputs(result, sources, PipelineConfig()), tmp_path):
        assert path.read_bytes()[128:132] == b"DICM"
        meta = pydicom.dcmread(path).file_meta
        assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert not list(tmp_path.glob(".tmp-*"))


def test_heatmaps_can_be_disabled() -> None:
    result, sources = make_study()
    bundle = build_outputs(result, sources, PipelineConfig(heatmaps=False))
    assert bundle.scs == []
    refs = {i.ReferencedSOPSequence[0].ReferencedSOPClassUID
            for i in bundle.kos.ContentSequence if i.ValueType in ("IMAGE", "COMPOSITE")}
    assert SC_UID not in refs and SR_UID in refs


def test_bad_input_is_rejected() -> None:
    result, sources = make_study()
    stranger = make_cr("1.2.3.999")
    with pytest.raises(ValueError, match="is not in study"):
        build_outputs(result, [*sources, stranger], PipelineConfig())
    with pytest.raises(ValueError, match="not passed as sources"):
        build_outputs(result, [], PipelineConfig())
    result, sources = make_study(refused=1)
    for hip in result.hips:
        hip.source_sop_uids = []
    result.heatmaps = []
    with pytest.raises(NothingToReport, match="no usable source"):
        build_outputs(result, sources[1:], PipelineConfig())  # only the refused image left
    result, sources = make_study(right=None, left=None, refused=1)
    with pytest.raises(NothingToReport, match="no hip result"):
        build_outputs(result, sources, PipelineConfig())


@pytest.mark.parametrize(("field", "value", "message"), [
    ("probability", float("nan"), "probability nan is not in"),
    ("probability", 1.5, "probability 1.5 is not in"),
    ("laterality", "B", "laterality 'B' is not R, L or U"),
    ("predicted_class", "spaceship", "unknown class 'spaceship'"),
])
def test_bad_hip_results_are_rejected(field: str, value: object, message: str) -> None:
    result, sources = make_study()
    setattr(result.hips[0], field, value)
    with pytest.raises(ValueError, match=message):
        build_outputs(result, sources, PipelineConfig())


PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")


def test_sr_and_kos_pass_pixelmed_template_validation(tmp_path: Path) -> None:
    """PixelMed's template-aware validator (Debian libpixelmed-java) checks TID 1500/2010."""
    java = require_tool("java")
    if not PIXELMED_JAR.is_file():
        pytest.skip("libpixelmed-java not installed")
    result, sources = make_study(right=("femoral_neck_fracture", 0.91), left=("tha", 0.9))
    paths = [p for p in write_bundle(build_outputs(result, sources, PipelineConfig()), tmp_path)
             if p.name.startswith(("sr-", "ko-"))]
    limits = [f"-Djdk.xml.{k}=0" for k in ("xpathExprOpLimit", "xpathExprGrpLimit",
                                            "xpathTotalOpLimit")]
    # The validator takes one file per run; run both at once (JVM start-up dominates).
    procs = [subprocess.Popen([java, *limits, "-cp", str(PIXELMED_JAR),
                               "com.pixelmed.validate.DicomSRValidator", str(path)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for path in paths]
    out = "".join(proc.communicate(timeout=120)[0] for proc in procs)
    assert out.count("Root Template Validation Complete") == 2, out
    assert "TID_1500" in out and "TID_2010" in out
    assert not [line for line in out.splitlines() if line.startswith("Error")], out
