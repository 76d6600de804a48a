"""Kind onfh in process: findings through the contract, the cascade, and the report.

The model is fitted by the test session (tests/onfh/helpers.py): plumbing, not accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest

from hiprouter.config import ConfigError, ReportConfig, Settings
from hiprouter.findings import (
    FEMORAL_HEAD,
    Classification,
    Finding,
    ModelInfo,
    PipelineResult,
)
from hiprouter.inference.study import StudyInput
from hiprouter.pipelines.hardware import HARDWARE
from hiprouter.pipelines.onfh import ONFH, OnfhKind, OnfhOptions
from hiprouter.pipelines.registry import PipelineSet, resolve_order, runs_on
from hiprouter.pipelines.runner import run_pipelines
from hiprouter.report.build import build_report
from hiprouter.training.onfh_data import dice
from tests.onfh.helpers import onfh_study

HW_MODEL = ModelInfo("hw-fixed", "1", "fixed", "2.25.4242", synthetic_demo=True)


def settings(model: Path, **extra: Any) -> Settings:
    return Settings.model_validate({"pipelines": {
        "hardware": {"kind": "hardware"},
        "onfh": {"kind": "onfh", "models": [str(model)], "device": "cpu", **extra}}})


def hardware_result(classes: dict[str, str], uid: str) -> PipelineResult:
    """What a hardware pipeline would have said (fixed, no model needed)."""
    findings = [Finding("hardware", side, [uid], HW_MODEL,
                        Classification(cls, 0.95, {cls: 0.95})) for side, cls in classes.items()]
    return PipelineResult("hardware", "hardware", HARDWARE, HW_MODEL, findings)


@pytest.fixture(scope="module")
def grade3_left() -> Any:
    return onfh_study(5, 1, {"R": 0, "L": 3})


@pytest.fixture(scope="module")
def kind(onfh_model: Path) -> OnfhKind:
    pipe = PipelineSet(settings(onfh_model)).get("onfh")
    assert isinstance(pipe, OnfhKind)
    return pipe


def _study(synth: Any) -> StudyInput:
    return StudyInput.from_datasets(synth.study_uid, [i.dataset for i in synth.images],
                                    ("CR", "DX"))


def test_every_native_head_gets_mask_outline_distance_and_stage(kind: OnfhKind,
                                                                grade3_left: Any) -> None:
    study = _study(grade3_left)
    result = kind.run(study, None)
    assert [f.laterality for f in result.findings] == ["R", "L"]
    image = grade3_left.images[0]
    uid = str(image.dataset.SOPInstanceUID)
    for f in result.findings:
        assert f.finding_site == FEMORAL_HEAD
        assert f.classification is not None and f.classification.status == "assessed"
        assert f.classification.predicted in kind.vocabulary()
        assert sum(f.classification.probabilities.values()) == pytest.approx(1.0)
        (mask,) = f.masks
        assert mask.sop_instance_uid == uid and mask.property_type == FEMORAL_HEAD
        assert mask.label == {"R": "Right femoral head", "L": "Left femoral head"}[f.laterality]
        assert mask.mask.shape == image.display.shape
        assert dice(mask.mask, image.head_masks[f.laterality]) > 0.85
        (region,) = f.regions
        assert region.graphic_type == "POLYLINE" and len(region.points) >= 16
        inside = mask.mask[np.clip(region.points[:, 1].astype(int), 0, mask.mask.shape[0] - 1),
                           np.clip(region.points[:, 0].astype(int), 0, mask.mask.shape[1] - 1)]
        assert inside.mean() > 0.3  # the outline runs along the mask's edge
        keys = [m.key for m in f.measurements]
        assert keys == ["mahalanobis_distance", "healthy_percentile"]
        assert all(m.unit.code == "1" for m in f.measurements)
        assert 0.0 <= f.measurement("healthy_percentile").value <= 100.0
        assert f.qualifiers["label"].startswith("stage ")
        assert f.qualifiers["hardware"] == "not checked"  # no cascade: every hip
    assert result.model is not None and result.model.name == "onfh-test"


def test_grade3_head_is_farther_from_healthy_than_the_healthy_head(kind: OnfhKind,
                                                                   grade3_left: Any) -> None:
    by_side = {f.laterality: f for f in kind.run(_study(grade3_left), None).findings}
    right = by_side["R"].measurement("mahalanobis_distance").value
    left = by_side["L"].measurement("mahalanobis_distance").value
    assert left > right
    assert int(by_side["L"].qualifiers["stage"][-1]) >= 2


def test_hips_with_arthroplasty_are_skipped_and_audited(onfh_model: Path) -> None:
    synth = onfh_study(5, 2, {"R": 0}, hardware={"R": "no_hardware", "L": "tha"})
    study = _study(synth)
    uid = str(synth.images[0].dataset.SOPInstanceUID)
    s = settings(onfh_model)
    pipe = PipelineSet(s).get("onfh")
    cond = runs_on("onfh", s, ["hardware", "onfh"])
    assert cond is not None and cond.pipeline == "hardware"
    done = run_pipelines([_Fixed(hardware_result({"R": "no_hardware", "L": "tha"}, uid)), pipe],
                         {"hardware": None, "onfh": cond}, study)
    onfh = done.result("onfh")
    assert [f.laterality for f in onfh.findings] == ["R"]
    assert onfh.skipped == ["L hip: hardware found tha (assessed); runs on: hardware finds any "
                            "class but tha, hemiarthroplasty, tha_with_fixation, post_infectious"
                            " (every hip when hardware does not run)"]
    assert "hardware" not in onfh.findings[0].qualifiers  # the cascade checked it

    bundle = build_report(done, [i.dataset for i in synth.images],
                          {uid: study.images[uid].decoded.display_uint8()}, ReportConfig())
    assert not bundle.left_out
    (seg,) = bundle.segs
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Right femoral head"]
    sr = hd.sr.Comprehensive3DSR.from_dataset(bundle.sr)
    drawn = [g.tracking_identifier for g in sr.content.get_planar_roi_measurement_groups()]
    numbers = {g.tracking_identifier for g in sr.content.get_image_measurement_groups()}
    assert drawn == ["onfh right hip"]  # no ONFH group for the THA hip
    assert numbers == {"hardware left hip", "hardware right hip", "onfh right hip"}


class _Fixed:
    """A stand-in pipeline returning a fixed result (the upstream hardware findings)."""

    def __init__(self, result: PipelineResult) -> None:
        self.result, self.name = result, result.pipeline

    def run(self, study: StudyInput, targets: Any) -> PipelineResult:
        return self.result


def test_cascade_is_optional_only_for_the_default(onfh_model: Path) -> None:
    s = settings(onfh_model)
    assert resolve_order(["onfh"], s) == ["onfh"]  # no hardware: runs on every hip
    assert runs_on("onfh", s, ["onfh"]) is None
    assert resolve_order(["onfh", "hardware"], s) == ["hardware", "onfh"]
    strict = settings(onfh_model, runs_on={"pipeline": "hardware", "exclude": ["tha"]})
    with pytest.raises(ConfigError, match="runs on pipeline 'hardware'"):
        resolve_order(["onfh"], strict)


def test_report_has_one_seg_with_both_heads_and_onfh_groups(kind: OnfhKind,
                                                            grade3_left: Any) -> None:
    from hiprouter.findings import StudyFindings

    study = _study(grade3_left)
    findings = StudyFindings(grade3_left.study_uid, [kind.run(study, None)])
    uid = str(grade3_left.images[0].dataset.SOPInstanceUID)
    bundle = build_report(findings, [i.dataset for i in grade3_left.images],
                          {uid: study.images[uid].decoded.display_uint8()}, ReportConfig())
    assert not bundle.left_out
    (seg,) = bundle.segs
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Right femoral head",
                                                             "Left femoral head"]
    modifiers = [s.SegmentedPropertyTypeCodeSequence[0]
                 .SegmentedPropertyTypeModifierCodeSequence[0].CodeValue
                 for s in seg.SegmentSequence]
    assert modifiers == ["24028007", "7771000"]
    sr = hd.sr.Comprehensive3DSR.from_dataset(bundle.sr)
    groups = sr.content.get_planar_roi_measurement_groups()
    assert sorted(g.tracking_identifier for g in groups) == ["onfh left hip", "onfh right hip"]
    for g in groups:
        assert g.roi.graphic_type.value == "POLYLINE"
        (site,) = g.finding_sites
        assert site.value.value == "119189000"  # femoral head
    assert "hardware not checked" in bundle.text.impression


def test_vocabulary_and_options() -> None:
    assert ONFH.keys == ["onfh_0_1", "onfh_0", "onfh_1", "onfh_2", "onfh_3", "onfh_4"]
    assert ONFH.is_negative("onfh_0_1") and not ONFH.is_negative("onfh_3")
    assert all(fc.triage is None for fc in ONFH)
    from hiprouter.pipelines.onfh import DISTANCE, PERCENTILE

    for code in [fc.code for fc in ONFH] + [DISTANCE, PERCENTILE]:
        assert len(code.meaning) <= 64, code  # DICOM LO
    with pytest.raises(ValueError):
        OnfhOptions.model_validate({"models": ["a", "b"]})
    with pytest.raises(ValueError):
        OnfhOptions.model_validate({"unknown": 1})


def test_model_folder_of_another_kind_is_refused(tmp_path: Path) -> None:
    from hiprouter.inference.models import ModelError
    from tests.inference.helpers import constant_model

    folder = constant_model(tmp_path / "hw", "hardware", "tha")
    with pytest.raises(ModelError, match="onfh"):
        PipelineSet(settings(folder)).get("onfh")


def test_onnx_runtime_and_torch_assess_alike(onfh_model: Path, grade3_left: Any) -> None:
    """runtime auto (ONNX Runtime on the CPU) gives the torch model's masks and distances."""
    from hiprouter.inference.onfh import OnfhModel, OnnxNet

    torch_model = OnfhModel.load(onfh_model, "cpu", runtime="torch")
    onnx_model = OnfhModel.load(onfh_model, "cpu", runtime="auto")
    assert isinstance(onnx_model.segmenter.locator, OnnxNet)
    assert onnx_model.normative is not None and onnx_model.normative.encoder is not None
    assert not isinstance(torch_model.segmenter.locator, OnnxNet)
    assessed = 0
    for _, crop in _study(grade3_left).crops():
        a = torch_model.assess(crop.pixels, None)
        b = onnx_model.assess(crop.pixels, None)
        assert type(a) is type(b)
        if isinstance(a, str):
            assert a == b
            continue
        assessed += 1
        assert np.abs(a.segmentation.prob - b.segmentation.prob).max() < 1e-4
        assert b.distance == pytest.approx(a.distance, rel=1e-4) and a.band == b.band
    assert assessed >= 1


def test_recalibrate_chooses_the_stage_probability_the_kind_reports(onfh_model: Path,
                                                                   tmp_path: Path) -> None:
    """`models recalibrate` on an ONFH model: min_confidence chosen on labelled studies,
    per hip as the kind reports it (distance averaged over the hip's AP views, its band's
    probability); the kind then abstains below it, the calibration and weights untouched."""
    import csv
    import json
    import shutil

    from click.testing import CliRunner
    from pydicom import dcmread

    from hiprouter.cli import main
    from hiprouter.inference.models import read_card, verify_weights
    from tests.onfh.helpers import write_heads_dataset

    model = tmp_path / "model"
    shutil.copytree(onfh_model, model)
    before = read_card(model)
    data = tmp_path / "fresh"
    write_heads_dataset(data, 10, seed=5)
    result = CliRunner().invoke(main, ["models", "recalibrate", str(model), "--data",
                                       str(data), "--accuracy", "0.8"])
    assert result.exit_code == 0, result.output
    assert "no temperature" in result.output
    card = read_card(model)
    chosen = card.abstention
    assert chosen["chosen_by"] == "hiprouter models recalibrate"
    assert chosen["target_accuracy"] == 0.8
    assert card.calibration == before.calibration and verify_weights(model, card)
    pipe = PipelineSet(settings(model)).get("onfh")
    assert isinstance(pipe, OnfhKind) and pipe.min_confidence == chosen["min_confidence"]

    # the same hips through the kind: the answered share is the card's coverage
    with (data / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    band_of = {0: "onfh_0_1", 1: "onfh_0_1", 2: "onfh_2", 3: "onfh_3", 4: "onfh_4"}
    truth = {(r["study_uid"], r["laterality"]): band_of[int(r["onfh_grade"])] for r in rows}
    hips: list[tuple[float, bool]] = []
    for study_uid in sorted({r["study_uid"] for r in rows}):
        files = sorted({r["path"] for r in rows if r["study_uid"] == study_uid})
        study = StudyInput.from_datasets(study_uid, [dcmread(data / f) for f in files],
                                         ("CR", "DX"))
        for f in pipe.run(study, None).findings:
            c = f.classification
            if c is None or c.status == "not_assessed":
                continue
            assert (c.status == "indeterminate") == (c.probability < chosen["min_confidence"])
            hips.append((c.probability, c.predicted == truth[(study_uid, f.laterality)]))
    assert f"({len(hips)} hips)" in chosen["chosen_on"]
    # the card's threshold is the chosen probability rounded up to 4 decimals
    answered = [right for p, right in hips if p >= chosen["min_confidence"] - 1e-4]
    assert len(answered) == round(chosen["val_coverage"] * len(hips))
    if chosen["reached"] and answered:
        assert sum(answered) / len(answered) >= 0.8

    # `evaluate` reports the same per-hip answers
    out = tmp_path / "ev"
    result = CliRunner().invoke(main, ["evaluate", str(model), str(data), "--out", str(out),
                                       "--bootstrap", "20"])
    assert result.exit_code == 0, result.output
    assert "wrong definitive stages" in result.output
    selective = json.loads((out / "report.json").read_text())["selective"]
    staged = [right for p, right in hips if p >= chosen["min_confidence"]]
    assert selective["hips"] == len(hips)
    assert selective["assessed_rate"] == pytest.approx(len(staged) / len(hips))
    assert selective["wrong_definitive_rate"] == pytest.approx(
        (len(staged) - sum(staged)) / len(hips))
