"""Prepopulated report text from the bundled and from site-edited templates."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hiprouter.config import PipelineConfig, Settings
from hiprouter.inference.results import ModelInfo
from hiprouter.report.text import (
    BUNDLED_TEMPLATES,
    TemplateError,
    check_templates,
    render_report_text,
)
from tests.report.inputs import DEMO_MODEL, make_study

SITE_MODEL = ModelInfo(name="site-hardware", version="2.0", architecture="nfnet_f3",
                       device_uid="2.25.99", synthetic_demo=False)


def test_per_hip_sentences_and_impression() -> None:
    result, _ = make_study(right=("tha", 0.93), left=("no_hardware", 0.88))
    text = render_report_text(result)
    assert text.hip_sentences == ["Right hip: total hip arthroplasty.",
                                  "Left hip: no orthopedic hardware."]
    assert text.impression.startswith(
        "Right hip: total hip arthroplasty. Left hip: no orthopedic hardware.")


def test_bilateral_phrasing_when_both_hips_share_a_confident_class() -> None:
    result, _ = make_study(right=("tha", 0.93), left=("tha", 0.91))
    text = render_report_text(result)
    assert text.sentences == ["Bilateral total hip arthroplasties."]
    assert len(text.hip_sentences) == 2  # the SR still has one sentence per hip
    result, _ = make_study(right=("no_hardware", 0.93), left=("no_hardware", 0.91))
    assert render_report_text(result).sentences == ["No orthopedic hardware in either hip."]


def test_no_bilateral_phrasing_when_one_side_is_uncertain() -> None:
    result, _ = make_study(right=("tha", 0.93), left=("tha", 0.41))
    text = render_report_text(result, low_confidence=0.6)
    assert text.sentences == [
        "Right hip: total hip arthroplasty.",
        "Left hip: possible total hip arthroplasty (low confidence, probability 0.41).",
    ]


def test_low_confidence_threshold_comes_from_config() -> None:
    result, _ = make_study(right=("im_nail", 0.7), left=None)
    assert "possible" not in render_report_text(result, low_confidence=0.6).impression
    assert "possible intramedullary nail" in render_report_text(
        result, low_confidence=0.8).impression


def test_unknown_laterality_is_named_as_such() -> None:
    result, _ = make_study(right=None, left=None, unknown=("dynamic_hip_screw", 0.95))
    assert render_report_text(result).hip_sentences == [
        "Hip of unknown side: dynamic hip screw."]


def test_german_templates() -> None:
    result, _ = make_study(right=("tha", 0.93), left=("tha", 0.91))
    text = render_report_text(result, language="de")
    assert text.sentences == ["Beidseits Hüft-Totalendoprothesen."]
    assert text.hip_sentences[0] == "Rechte Hüfte: Hüft-Totalendoprothese."
    assert "nicht ärztlich verifiziert" in text.disclaimer
    result, _ = make_study(right=("lateral_plate", 0.45), left=None)
    assert render_report_text(result, language="de").hip_sentences == [
        "Rechte Hüfte: möglicherweise laterale Klingen- oder Plattenosteosynthese "
        "(geringe Konfidenz, Wahrscheinlichkeit 0,45)."]


def test_disclaimer_always_and_demo_warning_only_for_demo_weights() -> None:
    result, _ = make_study(model=DEMO_MODEL)
    demo = render_report_text(result)
    assert "DEMO MODEL TRAINED ON SYNTHETIC IMAGES - NOT FOR CLINICAL USE" in demo.disclaimer
    result, _ = make_study(model=SITE_MODEL)
    site = render_report_text(result)
    assert "DEMO" not in site.disclaimer
    for text in (demo, site):
        assert "AI-generated preliminary report" in text.disclaimer
        assert "not verified" in text.disclaimer
        assert text.impression.endswith(text.disclaimer)


def test_refused_images_and_no_hips_are_stated() -> None:
    result, _ = make_study(right=None, left=None, refused=2)
    impression = render_report_text(result).impression
    assert "No hip could be assessed." in impression
    assert "2 images could not be assessed." in impression


def test_site_edited_templates_are_used(tmp_path: Path) -> None:
    shutil.copytree(BUNDLED_TEMPLATES, tmp_path / "t")
    terms = tmp_path / "t" / "en" / "terms.j2"
    terms.write_text(terms.read_text().replace('"Right hip"', '"RIGHT HIP"'))
    result, _ = make_study()
    assert render_report_text(result, templates_dir=tmp_path / "t").hip_sentences[0] == (
        "RIGHT HIP: total hip arthroplasty.")


def test_unknown_language_and_broken_template_raise(tmp_path: Path) -> None:
    result, _ = make_study()
    with pytest.raises(TemplateError, match="'xx'"):
        render_report_text(result, language="xx")
    with pytest.raises(TemplateError, match="invalid report language"):
        render_report_text(result, language="../en")
    shutil.copytree(BUNDLED_TEMPLATES, tmp_path / "t")
    (tmp_path / "t" / "en" / "hip.j2").write_text("{{ no_such_variable }}")
    with pytest.raises(TemplateError, match="no_such_variable"):
        render_report_text(result, templates_dir=tmp_path / "t")


def test_check_templates_at_start_up(tmp_path: Path) -> None:
    ok = Settings(pipelines={"hw": PipelineConfig(language="de"), "fw": PipelineConfig(
        kind="forward", language="xx")})
    check_templates(ok)  # forward pipelines write no report
    with pytest.raises(TemplateError, match="pipelines.hw.language: .*'fr'"):
        check_templates(Settings(pipelines={"hw": PipelineConfig(language="fr")}))
    shutil.copytree(BUNDLED_TEMPLATES, tmp_path / "t")
    (tmp_path / "t" / "en" / "bilateral.j2").write_text("{% if %}")
    with pytest.raises(TemplateError, match="pipelines.hw.language: bilateral.j2"):
        check_templates(Settings(pipelines={"hw": PipelineConfig()},
                                 sr_templates_dir=tmp_path / "t"))
