"""Triage priority from every pipeline's findings, their vocabularies and configured rules."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hiprouter.config import PipelineConfig, ReportConfig, TriageRule
from hiprouter.report.triage import triage
from tests.report.inputs import make_study


def findings(**kwargs: object):  # type: ignore[no-untyped-def]
    return make_study(**kwargs)[0]  # type: ignore[arg-type]


def test_fracture_is_high_with_reason() -> None:
    flag = triage(findings(right=("femoral_neck_fracture", 0.91), left=("tha", 0.9)), {})
    assert flag.level == "HIGH"
    assert flag.reason == "Femoral neck fracture, right hip (p=0.91)"


def test_every_urgent_finding_is_named() -> None:
    flag = triage(findings(right=("femoral_neck_fracture", 0.8),
                           left=("intertrochanteric_fracture", 0.7)), {})
    assert flag.level == "HIGH"
    assert flag.reason == ("Femoral neck fracture, right hip (p=0.80); "
                           "Intertrochanteric fracture, left hip (p=0.70)")


def test_hardware_only_is_routine() -> None:
    flag = triage(findings(right=("tha", 0.99), left=("no_hardware", 0.97)), {})
    assert (flag.level, flag.reason) == ("ROUTINE", "no finding above the triage thresholds")


def test_fracture_below_threshold_is_routine_and_the_card_threshold_applies() -> None:
    study = findings(right=("femoral_neck_fracture", 0.4), left=None)
    assert triage(study, {}).level == "ROUTINE"
    study.result("fracture").triage_thresholds["femoral_neck_fracture"] = 0.35
    assert triage(study, {}).level == "HIGH"


def test_configured_rules_and_default_priority() -> None:
    rules = {"hardware": [TriageRule(classes=["post_infectious"], level="MEDIUM",
                                     min_probability=0.6)],
             "fracture": [TriageRule(classes=["*fracture*"], level="HIGH",
                                     min_probability=0.9)]}
    study = findings(right=("post_infectious", 0.7), left=("femoral_neck_fracture", 0.8))
    flag = triage(study, rules)
    assert (flag.level, flag.reason) == (
        "MEDIUM", "Post-infectious hip (cement spacer), right hip (p=0.70)")
    assert triage(findings(right=("tha", 0.9), left=None), {}, "MEDIUM").level == "MEDIUM"


def test_lower_levels_are_named_after_the_highest() -> None:
    rules = {"hardware": [TriageRule(classes=["post_infectious"], level="MEDIUM")]}
    study = findings(right=("post_infectious", 0.7), left=("femoral_neck_fracture", 0.8))
    flag = triage(study, rules)
    assert flag.level == "HIGH"
    assert flag.reason == ("Femoral neck fracture, left hip (p=0.80); "
                           "MEDIUM: Post-infectious hip (cement spacer), right hip (p=0.70)")


def test_fracture_probability_of_a_non_predicted_class_counts() -> None:
    study = findings(right=("no_fracture", 0.45), left=None)
    study.findings()[0].classification.probabilities = {
        "no_fracture": 0.45, "femoral_neck_fracture": 0.5}
    assert triage(study, {}).level == "HIGH"


def test_negative_classes_and_not_assessed_findings_never_raise_the_level() -> None:
    rules = {"fracture": [TriageRule(classes=["*fracture*"], level="HIGH")]}
    assert triage(findings(right=("no_fracture", 0.99), left=None), rules).level == "ROUTINE"
    study = findings(right=("femoral_neck_fracture", 0.99), left=None)
    study.findings()[0].classification.status = "not_assessed"
    assert triage(study, rules).level == "ROUTINE"


def test_no_hips() -> None:
    assert triage(findings(right=None, left=None, refused=1), {}).reason == \
        "no hip could be assessed"


def test_bad_triage_and_language_config_is_rejected() -> None:
    with pytest.raises(ValidationError, match="classes"):
        PipelineConfig(triage=[{"classes": []}])
    with pytest.raises(ValidationError, match="level"):
        PipelineConfig(triage=[{"classes": ["*fracture*"], "level": "URGENT"}])
    with pytest.raises(ValidationError, match="language"):
        ReportConfig(language="../en")
