"""The pipeline contract: registry, options validation, cascade order and selection, kinds."""

from __future__ import annotations

import pytest

from hiprouter.config import ConfigError, RunsOn, Settings
from hiprouter.findings import (
    Classification,
    Finding,
    ModelInfo,
    PipelineResult,
    StudyFindings,
)
from hiprouter.pipelines.hardware import HARDWARE
from hiprouter.pipelines.registry import (
    installed_kinds,
    resolve_order,
    validate_options,
    validate_pipelines,
)
from hiprouter.pipelines.runner import admits, select_targets
from hiprouter.pipelines.screening import SCREENING
from hiprouter.report.text import render_report_text
from hiprouter.synth.labels import HARDWARE_KEYS, SCREENING_CLASSES

MODEL = ModelInfo("m", "1", "a", "2.25.1")


def settings(**pipelines: dict) -> Settings:
    return Settings.model_validate({"pipelines": pipelines})


def test_built_in_kinds_come_through_entry_points() -> None:
    kinds = installed_kinds()
    for kind in ("hardware", "fracture", "screening"):
        assert kinds[kind].startswith(f"hiprouter.pipelines.{kind}:")


def test_kind_options_are_validated_with_the_key_named() -> None:
    s = settings(hw={"kind": "hardware", "batch_size": 0, "colour": "blue"})
    with pytest.raises(ConfigError) as err:
        validate_options("hw", s.pipelines["hw"], s)
    assert "pipelines.hw.batch_size" in str(err.value)
    assert "pipelines.hw.colour" in str(err.value)
    with pytest.raises(ConfigError, match="unknown pipeline kind 'nosuch'"):
        validate_pipelines(settings(x={"kind": "nosuch"}))


def test_relative_model_paths_resolve_against_the_config_folder(tmp_path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("pipelines:\n  hw:\n    kind: hardware\n    models: [models/mine]\n")
    from hiprouter.config import load_settings

    s = load_settings(cfg)
    options = validate_options("hw", s.pipelines["hw"], s)
    assert options.models == [tmp_path / "models" / "mine"]  # type: ignore[attr-defined]


def test_cascades_run_after_their_upstream_and_need_it() -> None:
    s = settings(hw={"kind": "hardware"},
                 fx={"kind": "fracture", "runs_on": {"pipeline": "hw", "classes": ["tha"]}})
    assert resolve_order(["fx", "hw"], s) == ["hw", "fx"]
    with pytest.raises(ConfigError, match="runs on pipeline 'hw', which is not run with it"):
        resolve_order(["fx"], s)
    cyc = settings(a={"kind": "hardware", "runs_on": {"pipeline": "b", "classes": ["x"]}},
                   b={"kind": "hardware", "runs_on": {"pipeline": "a", "classes": ["x"]}})
    with pytest.raises(ConfigError, match="cycle"):
        resolve_order(["a", "b"], cyc)
    with pytest.raises(ValueError, match="either `classes` or `exclude`"):
        RunsOn(pipeline="hw")


def finding(side: str, key: str, p: float = 0.9, status: str = "assessed") -> Finding:
    return Finding("hw", side, ["1.2"], MODEL,  # type: ignore[arg-type]
                   Classification(key, p, {key: p}, status))  # type: ignore[arg-type]


def test_a_hip_that_matches_nothing_gets_no_second_stage_and_the_skip_is_said() -> None:
    upstream = PipelineResult("hw", "hardware", HARDWARE, MODEL, [
        finding("R", "tha"), finding("L", "no_hardware"), finding("U", "tha", 0.3),
    ])
    cond = RunsOn(pipeline="hw", classes=["tha", "tha_with_fixation"], min_probability=0.5)
    targets, skipped = select_targets(cond, upstream)
    assert [t.laterality for t in targets] == ["R"]
    assert targets[0].upstream is upstream.findings[0]
    assert len(skipped) == 2 and "L hip: hw found no_hardware (assessed)" in skipped[0]
    assert not admits(cond, finding("R", "tha", status="not_assessed"))
    assert not admits(cond, finding("R", "tha", status="indeterminate"))
    assert admits(cond.model_copy(update={"include_indeterminate": True}),
                  finding("R", "tha", status="indeterminate"))
    assert admits(RunsOn(pipeline="hw", exclude=["no_hardware"]), finding("L", "im_nail"))


def test_vocabularies_match_the_synthetic_label_columns() -> None:
    assert HARDWARE.keys == list(HARDWARE_KEYS)
    assert sorted(SCREENING.keys) == sorted(SCREENING_CLASSES)
    triage = {fc.key for fc in SCREENING if fc.triage == "HIGH"}
    assert triage == {"femoral_neck_fracture", "intertrochanteric_fracture"}
    assert [fc.key for fc in SCREENING if fc.negative] == ["normal"]
    assert SCREENING["osteoarthritis"].code.value == "239872002"


def test_screening_wording_in_english_and_german() -> None:
    findings = [Finding("scr", "R", ["1.2"], MODEL, Classification("tha", 0.9, {"tha": 0.9})),
                Finding("scr", "L", ["1.2"], MODEL,
                        Classification("osteonecrosis", 0.8, {"osteonecrosis": 0.8}))]
    study = StudyFindings("1.2.3", [PipelineResult("scr", "screening", SCREENING, MODEL,
                                                   findings)])
    assert render_report_text(study).sentences == [
        "Right hip: hip arthroplasty.", "Left hip: osteonecrosis of the femoral head."]
    assert render_report_text(study, "de").sentences == [
        "Rechte Hüfte: Hüftendoprothese.", "Linke Hüfte: Femurkopfnekrose."]
