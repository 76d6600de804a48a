"""Prepopulated report text from the bundled and from site-edited templates."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hiprouter.config import ReportConfig, Settings
from hiprouter.findings import ModelInfo
from hiprouter.report.text import TemplateError, check_templates, render_report_text
from hiprouter.resources import sr_templates_dir
from tests.report.inputs import DEMO_MODEL, make_study

SITE_MODEL = ModelInfo(name="site-hardware", version="2.0", architecture="nfnet_f3",
                       device_uid="2.25.99", synthetic_demo=False)


def findings(**kwargs: object):  # type: ignore[no-untyped-def]
    return make_study(**kwargs)[0]  # type: ignore[arg-type]


def test_per_hip_sentences_and_impression() -> None:
    text = render_report_text(findings(right=("tha", 0.93), left=("no_hardware", 0.88)))
    assert text.finding_sentences == ["Right hip: total hip arthroplasty.",
                                      "Left hip: no orthopedic hardware."]
    assert text.impression.startswith(
        "Right hip: total hip arthroplasty. Left hip: no orthopedic hardware.")


def test_bilateral_phrasing_when_both_hips_share_a_confident_class() -> None:
    text = render_report_text(findings(right=("tha", 0.93), left=("tha", 0.91)))
    assert text.sentences == ["Bilateral total hip arthroplasties."]
    assert len(text.finding_sentences) == 2  # the SR still has one sentence per hip
    assert render_report_text(findings(right=("no_hardware", 0.93), left=("no_hardware", 0.91))
                              ).sentences == ["No orthopedic hardware in either hip."]


def test_no_bilateral_phrasing_when_one_side_is_uncertain() -> None:
    text = render_report_text(findings(right=("tha", 0.93), left=("tha", 0.41)),
                              low_confidence=0.6)
    assert text.sentences == [
        "Right hip: total hip arthroplasty.",
        "Left hip: possible total hip arthroplasty (low confidence, probability 0.41).",
    ]


def test_low_confidence_threshold_comes_from_config() -> None:
    study = findings(right=("im_nail", 0.7), left=None)
    assert "possible" not in render_report_text(study, low_confidence=0.6).impression
    assert "possible intramedullary nail" in render_report_text(
        study, low_confidence=0.8).impression


def test_unknown_laterality_is_named_as_such() -> None:
    study = findings(right=None, left=None, unknown=("dynamic_hip_screw", 0.95))
    assert render_report_text(study).finding_sentences == [
        "Hip of unknown side: dynamic hip screw."]


def test_indeterminate_names_candidates_and_prepopulates_no_definitive_sentence() -> None:
    study = findings(right=("tha", 0.44), left=None)
    c = study.findings()[0].classification
    c.status, c.reason = "indeterminate", "confidence 0.44 below 0.50"
    c.probabilities = {"tha": 0.44, "hemiarthroplasty": 0.41, "no_hardware": 0.15}
    (sentence,) = render_report_text(study).finding_sentences
    assert sentence == ("Right hip: hardware indeterminate (candidates: total hip arthroplasty "
                        "0.44, hemiarthroplasty 0.41, no orthopedic hardware 0.15).")
    c.status, c.reason = "not_assessed", "image unlike the training data"
    (sentence,) = render_report_text(study).finding_sentences
    assert sentence == "Right hip: hardware not assessed (image unlike the training data)."
    assert "arthroplasty" not in sentence


def test_german_templates() -> None:
    text = render_report_text(findings(right=("tha", 0.93), left=("tha", 0.91)), language="de")
    assert text.sentences == ["Beidseits Hüft-Totalendoprothesen."]
    assert text.finding_sentences[0] == "Rechte Hüfte: Hüft-Totalendoprothese."
    assert "nicht ärztlich verifiziert" in text.disclaimer
    assert render_report_text(findings(right=("lateral_plate", 0.45), left=None),
                              language="de").finding_sentences == [
        "Rechte Hüfte: möglicherweise laterale Klingen- oder Plattenosteosynthese "
        "(geringe Konfidenz, Wahrscheinlichkeit 0,45)."]
    study = findings(right=("tha", 0.44), left=None)
    study.findings()[0].classification.status = "indeterminate"
    assert "Implantate unklar (Kandidaten: Hüft-Totalendoprothese 0,44)" in render_report_text(
        study, language="de").finding_sentences[0]


def test_disclaimer_always_and_demo_warning_only_for_demo_weights() -> None:
    demo = render_report_text(findings(model=DEMO_MODEL, right=("tha", 0.9), left=None))
    assert "DEMO MODEL TRAINED ON SYNTHETIC IMAGES - NOT FOR CLINICAL USE" in demo.disclaimer
    site = render_report_text(findings(model=SITE_MODEL, right=("tha", 0.9), left=None))
    assert "DEMO" not in site.disclaimer
    assert "site-hardware 2.0" in site.disclaimer
    for text in (demo, site):
        assert "AI-generated preliminary report" in text.disclaimer
        assert "not verified" in text.disclaimer
        assert text.impression.endswith(text.disclaimer)


def test_not_assessed_images_and_no_hips_are_stated() -> None:
    impression = render_report_text(findings(right=None, left=None, refused=2)).impression
    assert "No hip could be assessed." in impression
    assert "2 images not assessed: not a hip radiograph." in impression


def test_views_read_from_the_image_are_stated() -> None:
    """An image whose headers name no view, read per hip because the anatomy check saw an
    AP pelvis, is named in the impression (once, not per hip); an image that reached no
    finding, and a study whose views all came from the headers, add nothing."""
    study = findings(right=("tha", 0.93), left=("no_hardware", 0.88), refused=1)
    plain = render_report_text(study).impression
    assert "without a view" not in plain
    used = study.findings()[0].source_sop_uids[0]
    study.views_from_image = {used: "ap_pelvis", "1.2.3.999": "unknown"}
    impression = render_report_text(study).impression
    assert impression.count("without a view") == 1
    assert ("1 image without a view in its headers was read as an AP pelvis (both hips), "
            "the view taken from the image.") in impression
    assert impression.endswith(render_report_text(study).disclaimer)
    assert "1 Bild ohne Projektionsangabe in den Kopfdaten wurde nach dem Bild als " \
           "Beckenübersicht (beide Hüften) gelesen." in render_report_text(
               study, language="de").impression
    assert study.reported().views_from_image == study.views_from_image


def test_site_edited_templates_are_used(tmp_path: Path) -> None:
    shutil.copytree(sr_templates_dir(), tmp_path / "t")
    terms = tmp_path / "t" / "en" / "terms.j2"
    terms.write_text(terms.read_text().replace('"Right hip"', '"RIGHT HIP"'))
    assert render_report_text(findings(), templates_dir=tmp_path / "t").finding_sentences[0] \
        == "RIGHT HIP: total hip arthroplasty."


def test_a_kind_specific_template_adds_to_the_phrase(tmp_path: Path) -> None:
    shutil.copytree(sr_templates_dir(), tmp_path / "t")
    (tmp_path / "t" / "en" / "kinds" / "hardware.j2").write_text(
        "{{ ' (' ~ qualifiers.views ~ ')' if qualifiers.views }}")
    study = findings(right=("tha", 0.93), left=None)
    study.findings()[0].qualifiers["views"] = "AP pelvis"
    assert render_report_text(study, templates_dir=tmp_path / "t").finding_sentences == [
        "Right hip: total hip arthroplasty (AP pelvis)."]


def test_unknown_language_and_broken_template_raise(tmp_path: Path) -> None:
    study = findings()
    with pytest.raises(TemplateError, match="'xx'"):
        render_report_text(study, language="xx")
    with pytest.raises(TemplateError, match="invalid report language"):
        render_report_text(study, language="../en")
    shutil.copytree(sr_templates_dir(), tmp_path / "t")
    (tmp_path / "t" / "en" / "hip.j2").write_text("{{ no_such_variable }}")
    with pytest.raises(TemplateError, match="no_such_variable"):
        render_report_text(study, templates_dir=tmp_path / "t")


def test_check_templates_at_start_up(tmp_path: Path) -> None:
    check_templates(Settings(report=ReportConfig(language="de")))
    with pytest.raises(TemplateError, match="report.language: .*'fr'"):
        check_templates(Settings(report=ReportConfig(language="fr")))
    shutil.copytree(sr_templates_dir(), tmp_path / "t")
    (tmp_path / "t" / "en" / "bilateral.j2").write_text("{% if %}")
    with pytest.raises(TemplateError, match="report.language: bilateral.j2"):
        check_templates(Settings(sr_templates_dir=tmp_path / "t"))
