"""Triage priority from findings and configured rules."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hiprouter.config import PipelineConfig, TriageRule
from hiprouter.report.triage import triage
from tests.report.inputs import make_study


def test_fracture_is_high_with_reason() -> None:
    result, _ = make_study(right=("femoral_neck_fracture", 0.91), left=("tha", 0.9))
    flag = triage(result, PipelineConfig())
    assert flag.level == "HIGH"
    assert flag.reason == "Femoral neck fracture, right hip (p=0.91)"


def test_dislocation_is_high_and_all_urgent_findings_are_named() -> None:
    result, _ = make_study(right=("tha_dislocation", 0.8),
                           left=("intertrochanteric_fracture", 0.7))
    flag = triage(result, PipelineConfig())
    assert flag.level == "HIGH"
    assert "Dislocation of total hip arthroplasty, right hip" in flag.reason
    assert "Intertrochanteric fracture, left hip" in flag.reason


def test_hardware_only_is_routine() -> None:
    result, _ = make_study(right=("tha", 0.99), left=("no_hardware", 0.97))
    flag = triage(result, PipelineConfig())
    assert flag.level == "ROUTINE"
    assert flag.reason == "no finding above the triage thresholds"


def test_fracture_below_threshold_is_routine() -> None:
    result, _ = make_study(right=("femoral_neck_fracture", 0.4), left=None)
    assert triage(result, PipelineConfig()).level == "ROUTINE"


def test_configured_rules_and_default_priority() -> None:
    cfg = PipelineConfig(
        triage=[TriageRule(classes=["post_infectious"], level="MEDIUM", min_probability=0.6),
                TriageRule(classes=["*fracture*"], level="HIGH", min_probability=0.9)],
        default_priority="ROUTINE")
    result, _ = make_study(right=("post_infectious", 0.7), left=("femoral_neck_fracture", 0.8))
    flag = triage(result, cfg)
    assert (flag.level, flag.reason) == (
        "MEDIUM", "Post-infectious hip (cement spacer), right hip (p=0.70)")
    result, _ = make_study(right=("tha", 0.9), left=None)
    assert triage(result, PipelineConfig(default_priority="MEDIUM")).level == "MEDIUM"


def test_fracture_probability_of_a_non_predicted_class_counts() -> None:
    result, _ = make_study(right=("no_hardware", 0.45), left=None)
    result.hips[0].probabilities = {"no_hardware": 0.45, "femoral_neck_fracture": 0.5}
    assert triage(result, PipelineConfig()).level == "HIGH"


def test_no_hips() -> None:
    result, _ = make_study(right=None, left=None, refused=1)
    assert triage(result, PipelineConfig()) == triage(result, PipelineConfig())
    assert triage(result, PipelineConfig()).reason == "no hip could be assessed"


def test_bad_triage_and_language_config_is_rejected() -> None:
    with pytest.raises(ValidationError, match="classes"):
        PipelineConfig(triage=[{"classes": []}])
    with pytest.raises(ValidationError, match="level"):
        PipelineConfig(triage=[{"classes": ["*fracture*"], "level": "URGENT"}])
    with pytest.raises(ValidationError, match="language"):
        PipelineConfig(language="../en")
