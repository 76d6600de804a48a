"""Every shipped demo says when it does not know: the single- and dual-view classifiers have a
fitted temperature (applied at run time) and an abstention threshold (below it a hip is
"indeterminate"), the ONFH demo a threshold on its stage probability, each with how it was
chosen. Their detection is tested by each kind's acceptance tests."""

from __future__ import annotations

import pytest

from hiprouter.inference.classifier import CropClassifier
from hiprouter.inference.models import demo_model_dir, read_card, verify_weights

CLASSIFIER_DEMOS = ("hardware", "screening", "fracture", "fixation_device")


@pytest.mark.parametrize("kind", CLASSIFIER_DEMOS)
def test_demo_has_a_fitted_temperature_and_abstention_threshold(kind: str) -> None:
    folder = demo_model_dir(kind)
    card = read_card(folder)
    assert card.synthetic_demo and verify_weights(folder, card)
    cal, abstain = card.calibration, card.abstention
    assert cal["method"] == "temperature scaling" and cal["temperature"] > 0
    # (the NLL-optimal temperature need not lower the ECE of fused hips: both are recorded)
    assert "fitted_on" in cal and 0 <= cal["ece_before"] <= 1 and 0 <= cal["ece_after"] <= 1
    assert 0 < abstain["min_confidence"] < 1 and abstain["target_accuracy"] >= 0.9
    assert abstain["chosen_on"] and abstain["rule"]
    loaded = CropClassifier.from_dirs([folder], "cpu", runtime="torch")
    assert loaded.members[0].temperature == pytest.approx(cal["temperature"])


def test_dual_view_demo_has_a_fitted_temperature_and_abstention_threshold() -> None:
    from hiprouter.inference import dualview

    folder = demo_model_dir("prosthesis_failure")
    card = read_card(folder)
    assert card.synthetic_demo and verify_weights(folder, card)
    cal, abstain = card.calibration, card.abstention
    assert cal["method"] == "temperature scaling" and "AP x lateral pairs" in cal["fitted_on"]
    assert 0 < abstain["min_confidence"] < 1 and abstain["target_accuracy"] >= 0.9
    assert abstain["chosen_by"] == "hiprouter models recalibrate"
    assert dualview.load(folder).temperature == pytest.approx(cal["temperature"])


def test_onfh_demo_has_an_abstention_threshold_on_its_stage_probability() -> None:
    from hiprouter.config import Settings
    from hiprouter.pipelines.registry import PipelineSet

    card = read_card(demo_model_dir("onfh"))
    abstain = card.abstention
    assert 0 < abstain["min_confidence"] < 1 and abstain["target_accuracy"] >= 0.9
    assert abstain["chosen_by"] == "hiprouter models recalibrate" and abstain["chosen_on"]
    pipe = PipelineSet(Settings.model_validate(
        {"pipelines": {"onfh": {"kind": "onfh", "device": "cpu"}}})).get("onfh")
    assert pipe.min_confidence == abstain["min_confidence"]  # type: ignore[attr-defined]
