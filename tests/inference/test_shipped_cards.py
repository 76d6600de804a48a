"""Every shipped single-view classifier demo says when it does not know: a fitted temperature
(applied at run time) and an abstention threshold (below it a hip is "indeterminate"), with
how each was chosen. Their detection is tested by each kind's acceptance tests."""

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
