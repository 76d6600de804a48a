"""Labels from report text: classes per hip and language, laterality, negation,
contradictions; the rules file is checked against the kinds' vocabularies."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from hiprouter.lifecycle.reportlabels import (
    RulesError,
    extract,
    is_final,
    load_rules,
    scrub,
    text_of_sr,
)
from hiprouter.pull import kind_classes

RULES = load_rules()


def labels(text: str, kinds: tuple[str, ...] = ("hardware", "fracture"), **kw: object
           ) -> dict[tuple[str, str], str]:
    res = extract(text, RULES, kinds, **kw)  # type: ignore[arg-type]
    return {(h.kind, h.laterality): h.label or h.status for h in res.labels}


def test_shipped_rules_name_only_classes_of_the_kinds() -> None:
    for kind in ("hardware", "fracture", "screening"):
        RULES.check_kind(kind, kind_classes(kind))


@pytest.mark.parametrize(("text", "expected"), [
    ("Right hip: total hip arthroplasty. Left hip: native hip. No evidence of fracture.",
     {("hardware", "R"): "tha", ("hardware", "L"): "no_hardware",
      ("fracture", "R"): "no_fracture", ("fracture", "L"): "no_fracture"}),
    ("Displaced femoral neck fracture on the left. No orthopaedic hardware.",
     {("hardware", "R"): "no_hardware", ("hardware", "L"): "no_hardware",
      ("fracture", "R"): "unlabelled", ("fracture", "L"): "femoral_neck_fracture"}),
    ("Dynamic hip screw on the right. A fracture is excluded.",
     {("hardware", "R"): "dynamic_hip_screw", ("hardware", "L"): "unlabelled",
      ("fracture", "R"): "no_fracture", ("fracture", "L"): "no_fracture"}),
    ("Bilateral total hip replacements. Right THA with cerclage wires. No fracture.",
     {("hardware", "R"): "tha_with_fixation", ("hardware", "L"): "tha",
      ("fracture", "R"): "no_fracture", ("fracture", "L"): "no_fracture"}),
])
def test_english(text: str, expected: dict[tuple[str, str], str]) -> None:
    assert labels(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("Hüft-TEP rechts in regelrechter Lage. Kein Hinweis auf Fraktur. Links native Hüfte.",
     {("hardware", "R"): "tha", ("hardware", "L"): "no_hardware",
      ("fracture", "R"): "no_fracture", ("fracture", "L"): "no_fracture"}),
    ("BEFUND:\nRECHTS:\nKeine Fraktur. Kein Osteosynthesematerial.\n\nLINKS:\n"
     "Pertrochantäre Femurfraktur, versorgt mit DHS.\n",
     {("hardware", "R"): "no_hardware", ("hardware", "L"): "dynamic_hip_screw",
      ("fracture", "R"): "no_fracture", ("fracture", "L"): "intertrochanteric_fracture"}),
    ("Schenkelhalsfraktur re. Eine Fraktur links ist ausgeschlossen.",
     {("hardware", "R"): "unlabelled", ("hardware", "L"): "unlabelled",
      ("fracture", "R"): "femoral_neck_fracture", ("fracture", "L"): "no_fracture"}),
])
def test_german(text: str, expected: dict[tuple[str, str], str]) -> None:
    res = extract(text, RULES, ("hardware", "fracture"))
    assert res.language == "de"
    assert {(h.kind, h.laterality): h.label or h.status for h in res.labels} == expected


def test_contradictions_single_side_and_silence() -> None:
    got = labels("No fracture. Left femoral neck fracture.", ("fracture",))
    assert got == {("fracture", "R"): "no_fracture", ("fracture", "L"): "contradictory"}
    # a single-hip study: an unsided mention is about the imaged hip only
    got = labels("Intramedullary nail in situ. No fracture.", imaged=("L",), side_hint="L")
    assert got == {("hardware", "L"): "im_nail", ("fracture", "L"): "no_fracture"}
    # an unsided positive mention on a pelvis says nothing per hip
    res = extract("Total hip arthroplasty.", RULES, ("hardware",))
    assert {h.status for h in res.labels} == {"unlabelled"} and res.unsided()


def test_negation_stops_at_clause_and_breakers() -> None:
    got = labels("No fracture, but a cannulated screw fixation on the right.",
                 ("hardware", "fracture"))
    assert got[("hardware", "R")] == "cannulated_screws"
    assert got[("fracture", "R")] == "no_fracture"


def test_edited_rules_are_validated(tmp_path: Path) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text("languages: {en: {right: ['(('], left: [left]}}\nkinds: {}\n")
    with pytest.raises(RulesError, match="does not compile"):
        load_rules(bad)
    text = (Path(__file__).parents[2] / "hiprouter/lifecycle/report_rules.yaml").read_text()
    odd = tmp_path / "odd.yaml"
    odd.write_text(text.replace("negative: no_fracture", "negative: nothing_broken"))
    with pytest.raises(RulesError, match="nothing_broken"):
        load_rules(odd).check_kind("fracture", kind_classes("fracture"))


def test_text_of_basic_text_sr_and_scrub() -> None:
    ds = Dataset()
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "VERIFIED"
    item = Dataset()
    item.ValueType = "TEXT"
    name = Dataset()
    name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning = "121071", "DCM", "Finding"
    item.ConceptNameCodeSequence = Sequence([name])
    item.TextValue = "Right THA. Patient Zwiebelfisch, ID 123456789."
    ds.ContentSequence = Sequence([item])
    assert text_of_sr(ds) == "Right THA. Patient Zwiebelfisch, ID 123456789."
    assert is_final(ds)
    ds.VerificationFlag = "UNVERIFIED"
    assert not is_final(ds)
    cleaned = scrub(text_of_sr(ds), ["ZWIEBELFISCH^KUNIGUNDE"])
    assert "Zwiebelfisch" not in cleaned and "123456789" not in cleaned
