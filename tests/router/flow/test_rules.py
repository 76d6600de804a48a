"""Routing rules: the grammar, evaluation on real pydicom headers, and rule planning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pydicom import dcmread

from hiprouter.config import ConfigError, Rule, Settings, load_settings
from hiprouter.router.flow.rules import Header, evaluate, first_matching, plan_routes
from tests.router.dicomkit import make_dataset, write_dataset

REPO = Path(__file__).resolve().parents[3]


def rule(match: dict | None, name: str = "r", **kw: object) -> Rule:
    return Rule.model_validate({"name": name, "match": match, **kw})


def matches(match: dict, ds_or_header: object) -> bool:
    header = ds_or_header if isinstance(ds_or_header, Header) else Header(ds_or_header)
    return evaluate(rule(match).match, header).matched


def reread(ds, tmp_path: Path) -> Header:
    """Round-trip through a file, so character sets are decoded as a receiver sees them."""
    path = write_dataset(ds, tmp_path / "x.dcm")
    return Header(dcmread(path, stop_before_pixels=True), calling_ae="MODALITY1")


@pytest.fixture(scope="module")
def default_settings() -> Settings:
    return load_settings(REPO / "config.yaml")


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({"BodyPartExamined": "HIP"}, True),
        ({"BodyPartExamined": "pelvis"}, True),
        ({"modality": "DX", "StudyDescription": "XR PELVIS AP"}, True),
        ({"SeriesDescription": "Hanche gauche face"}, True),
        ({"ProtocolName": "BECKEN UEBERSICHT"}, True),
        ({"StudyDescription": "HUEFTE LINKS"}, True),
        ({"StudyDescription": "Cadera derecha AP"}, True),
        ({"StudyDescription": "L HIP 2 VIEWS"}, True),
        ({"SeriesDescription": "LHIP"}, True),
        ({"StudyDescription": "acetabulum Judet"}, True),
        ({"StudyDescription": "Femur distal"}, True),
        ({"BodyPartExamined": "CHEST"}, False),
        ({"StudyDescription": "C-spine whiplash series"}, False),
        ({"modality": "CT", "BodyPartExamined": "HIP"}, False),
        ({"modality": "MR", "StudyDescription": "MRI HIP"}, False),
        ({}, False),
        ({"BodyPartExamined": "", "StudyDescription": ""}, False),
    ],
)
def test_default_rule_routes_hip_and_pelvis_radiographs(
    default_settings: Settings, attrs: dict, expected: bool
) -> None:
    ds = make_dataset(**attrs)
    hits = first_matching(default_settings.rules, Header(ds), default_settings.rule_mode)
    assert bool(hits) is expected
    if expected:
        assert hits[0][0].pipelines == ["hardware", "screening"]
        assert hits[0][0].send_to == ["pacs"]


@pytest.mark.parametrize(
    ("charset", "description"),
    [("ISO_IR 100", "Röntgen Hüfte links"), ("ISO_IR 192", "Hüfte beidseits"),
     ("ISO_IR 192", "Höftled vänster"), ("ISO_IR 100", "BASSIN DE FACE")],
)
def test_default_rule_non_ascii_descriptions(
    default_settings: Settings, tmp_path: Path, charset: str, description: str
) -> None:
    header = reread(make_dataset(charset=charset, StudyDescription=description), tmp_path)
    assert header.values("StudyDescription") == [description]
    assert first_matching(default_settings.rules, header, "first")


def test_non_ascii_regex_on_utf8(tmp_path: Path) -> None:
    header = reread(make_dataset(charset="ISO_IR 192",
                                 StudyDescription="ТАЗОБЕДРЕННЫЙ СУСТАВ"), tmp_path)
    assert matches({"tag": "StudyDescription", "regex": "тазобедрен", "ignore_case": True},
                   header)
    assert not matches({"tag": "StudyDescription", "regex": "тазобедрен"}, header)


def test_missing_tag_is_false_except_exists_false() -> None:
    ds = make_dataset()
    assert "BodyPartExamined" not in ds
    for leaf in ({"equals": "HIP"}, {"in": ["HIP"]}, {"regex": "."}, {"exists": True},
                 {"range": {"min": 0}}):
        assert not matches({"tag": "BodyPartExamined", **leaf}, ds)
    assert matches({"tag": "BodyPartExamined", "exists": False}, ds)
    assert matches({"not": {"tag": "BodyPartExamined", "equals": "HIP"}}, ds)


def test_empty_values_count_as_missing() -> None:
    ds = make_dataset(BodyPartExamined="", ImageType=["", ""], StudyDescription="   ")
    for tag in ("BodyPartExamined", "ImageType", "StudyDescription"):
        assert not matches({"tag": tag, "exists": True}, ds)
        assert not matches({"tag": tag, "regex": ".*"}, ds)
        assert matches({"tag": tag, "exists": False}, ds)


def test_multi_valued_tag_matches_when_any_value_matches() -> None:
    ds = make_dataset(ImageType=["ORIGINAL", "PRIMARY", "", "POST_PROCESSED"])
    assert matches({"tag": "ImageType", "equals": "PRIMARY"}, ds)
    assert matches({"tag": "ImageType", "in": ["DERIVED", "POST_PROCESSED"]}, ds)
    assert matches({"tag": "ImageType", "regex": "^post", "ignore_case": True}, ds)
    assert not matches({"tag": "ImageType", "equals": "DERIVED"}, ds)
    assert not matches({"tag": "ImageType", "equals": "primary"}, ds)
    assert matches({"tag": "ImageType", "equals": "primary", "ignore_case": True}, ds)
    ds.PixelSpacing = [0.1, 0.2]
    assert matches({"tag": "PixelSpacing", "range": {"min": 0.15, "max": 0.25}}, ds)
    assert not matches({"tag": "PixelSpacing", "range": {"min": 0.3}}, ds)


def test_numeric_range_and_equals() -> None:
    ds = make_dataset(KVP="70", ExposureTime=20, StudyDescription="not a number")
    assert matches({"tag": "KVP", "range": {"min": 60, "max": 80}}, ds)
    assert matches({"tag": "KVP", "range": {"max": 70}}, ds)
    assert not matches({"tag": "KVP", "range": {"min": 70.5}}, ds)
    assert matches({"tag": "KVP", "equals": 70}, ds)
    assert matches({"tag": "ExposureTime", "in": [10, 20]}, ds)
    assert matches({"tag": "Rows", "equals": 8}, ds)
    assert not matches({"tag": "StudyDescription", "range": {"min": 0}}, ds)


def test_calling_ae_title_is_a_field(tmp_path: Path) -> None:
    header = reread(make_dataset(), tmp_path)
    assert matches({"tag": "CallingAETitle", "equals": "MODALITY1"}, header)
    assert not matches({"tag": "CallingAETitle", "in": ["OTHER"]}, header)
    assert not matches({"tag": "CallingAETitle", "exists": True}, Header(make_dataset()))


def test_explain_names_the_deciding_condition() -> None:
    cond = rule({"all": [{"tag": "Modality", "in": ["CR", "DX"]},
                         {"any": [{"tag": "BodyPartExamined", "equals": "HIP"},
                                  {"tag": "StudyDescription", "regex": "pelvis",
                                   "ignore_case": True}]}]}).match
    ok = evaluate(cond, Header(make_dataset(StudyDescription="AP Pelvis")))
    assert ok.matched
    assert "StudyDescription ~ /pelvis/i" in ok.reason and "'AP Pelvis'" in ok.reason
    assert "BodyPartExamined" not in ok.reason
    no = evaluate(cond, Header(make_dataset(modality="CT", BodyPartExamined="HIP")))
    assert not no.matched
    assert no.reason.startswith("Modality in ['CR', 'DX'] (value 'CT')")
    none = evaluate(cond, Header(make_dataset()))
    assert not none.matched and "none of" in none.reason and "missing" in none.reason


@pytest.mark.parametrize(
    ("match", "message"),
    [
        ({"tag": "BodyPartExamine", "equals": "HIP"}, "not a DICOM keyword"),
        ({"tag": "BodyPartExamined", "equals": "HIP", "regex": "x"}, "exactly one of"),
        ({"tag": "BodyPartExamined"}, "exactly one of"),
        ({"tag": "StudyDescription", "regex": "hip("}, "does not compile"),
        ({"tag": "KVP", "range": {"min": 9, "max": 1}}, "greater than max"),
        ({"tag": "KVP", "range": {}}, "needs min, max"),
        ({"all": []}, "at least 1"),
        ({"any": "Modality"}, "valid list"),
        ({"nand": [{"tag": "Modality", "equals": "CR"}]}, "one of all, any, not or tag"),
        ({"tag": "Modality", "equals": "CR", "eval": "__import__('os')"}, "Extra inputs"),
        ({"tag": "Modality", "in": []}, "at least 1"),
    ],
)
def test_invalid_rules_are_rejected_at_load_naming_the_rule(
    tmp_path: Path, match: dict, message: str
) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"rules": [{"name": "ok", "match": None},
                                             {"name": "broken-rule", "match": match}]}))
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert "rules[broken-rule].match" in str(err.value)
    assert message in str(err.value)


def test_rule_names_unique_one_fallback_known_targets(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    for rules, message in [
        ([{"name": "a"}, {"name": "a"}], "rule names must be unique"),
        ([{"name": "a", "fallback": True}, {"name": "b", "fallback": True}], "at most one"),
        ([{"name": "a", "send_to": ["nowhere"]}], "unknown destination 'nowhere'"),
        ([{"name": "a", "pipelines": ["nope"]}], "unknown pipeline 'nope'"),
    ]:
        cfg.write_text(yaml.safe_dump({"rules": rules}))
        with pytest.raises(ConfigError, match=message):
            load_settings(cfg)


def _settings(rules: list[dict], mode: str = "first") -> Settings:
    return Settings.model_validate({
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104},
                         "archive": {"ae_title": "ARCH", "host": "127.0.0.1", "port": 105}},
        "pipelines": {"hardware": {"kind": "hardware"}},
        "rules": rules, "rule_mode": mode,
    })


HIP = {"tag": "BodyPartExamined", "equals": "HIP"}
CR = {"tag": "Modality", "equals": "CR"}


def test_plan_series_level_rule_covers_matching_series_only() -> None:
    s = _settings([{"name": "hip", "match": HIP, "pipelines": ["hardware"], "send_to": ["pacs"]}])
    series = {"1.1": Header(make_dataset(BodyPartExamined="HIP")),
              "1.2": Header(make_dataset(BodyPartExamined="CHEST"))}
    routes = plan_routes(s.rules, s.rule_mode, series)
    assert [(r.rule.name, r.series_uids) for r in routes] == [("hip", ["1.1"])]
    assert "HIP" in routes[0].reasons["1.1"]


def test_plan_study_level_rule_covers_whole_study() -> None:
    s = _settings([{"name": "hip", "level": "study", "match": HIP, "forward_to": ["pacs"]}])
    series = {"1.1": Header(make_dataset(BodyPartExamined="HIP")),
              "1.2": Header(make_dataset(BodyPartExamined="CHEST"))}
    assert [(r.rule.name, r.series_uids) for r in plan_routes(s.rules, "first", series)] == [
        ("hip", None)]
    none = {"1.2": Header(make_dataset(BodyPartExamined="CHEST"))}
    assert plan_routes(s.rules, "first", none) == []


def test_first_versus_all_match_mode_and_fallback() -> None:
    rules = [
        {"name": "hip", "match": HIP, "pipelines": ["hardware"], "send_to": ["pacs"]},
        {"name": "any-cr", "match": CR, "forward_to": ["archive"]},
        {"name": "rest", "fallback": True, "forward_to": ["archive"]},
    ]
    series = {"1.1": Header(make_dataset(BodyPartExamined="HIP")),
              "1.2": Header(make_dataset(BodyPartExamined="CHEST"))}
    first = _settings(rules, "first")
    got = {r.rule.name: r.series_uids for r in plan_routes(first.rules, "first", series)}
    assert got == {"hip": ["1.1"], "any-cr": ["1.2"]}
    every = _settings(rules, "all")
    got = {r.rule.name: r.series_uids for r in plan_routes(every.rules, "all", series)}
    assert got == {"hip": ["1.1"], "any-cr": ["1.1", "1.2"]}
    ct = {"2.1": Header(make_dataset(modality="CT"))}
    assert [(r.rule.name, r.series_uids) for r in plan_routes(first.rules, "first", ct)] == [
        ("rest", ["2.1"])]
    no_fallback = _settings(rules[:2])
    assert plan_routes(no_fallback.rules, "first", ct) == []


def test_rules_test_command_shows_rule_and_deciding_condition(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from hiprouter.cli import main

    folder = tmp_path / "files"
    write_dataset(make_dataset(BodyPartExamined="HIP"), folder / "hip.dcm")
    write_dataset(make_dataset(charset="ISO_IR 192", StudyDescription="Hüfte links"),
                  folder / "sub" / "huefte.dcm")
    write_dataset(make_dataset(BodyPartExamined="CHEST"), folder / "chest.dcm")
    (folder / "notes.txt").write_text("not dicom")
    cfg = ["--config", str(REPO / "config.yaml"), "rules", "test", str(folder)]
    result = CliRunner().invoke(main, [*cfg, "--json"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith('{"file"')]
    rows = {Path(r["file"]).name: r for r in map(json.loads, lines)}
    assert rows["hip.dcm"]["rule"] == "hip-pelvis-radiograph"
    assert rows["hip.dcm"]["level"] == "series"
    assert "BodyPartExamined in ['HIP', 'PELVIS'] (value 'HIP')" in rows["hip.dcm"]["condition"]
    assert "'Hüfte links'" in rows["huefte.dcm"]["condition"]
    assert rows["chest.dcm"]["rule"] is None
    assert "no match" in rows["chest.dcm"]["condition"] and "'CHEST'" in \
        rows["chest.dcm"]["condition"]
    assert rows["notes.txt"]["condition"] == "not readable as DICOM"
    table = CliRunner().invoke(main, cfg)
    assert table.exit_code == 0 and "2 of 4 files matched" in table.output
    assert "[a-km-qs-z]" in table.output  # rule text printed literally, not as markup


def test_default_rule_on_real_headers(default_settings: Settings, shared_data: Path) -> None:
    """NEMA WG04 CRs: the hip (RG2) in every transfer syntax is routed, the chest (RG1) and
    extremity (RG3) are not. The DDH pelvis DXs carry no body part or description at all,
    so the default rule (rightly, by its text) leaves them alone."""
    corpus = shared_data / "dicom-corpus" / "wg04"
    for path in sorted(corpus.glob("RG*.dcm")):
        header = Header(dcmread(path, stop_before_pixels=True))
        hits = first_matching(default_settings.rules, header, "first")
        assert bool(hits) is path.name.startswith("RG2"), path.name
    for path in sorted((shared_data / "hip-real" / "ddh_jordan").glob("*.dcm")):
        header = Header(dcmread(path, stop_before_pixels=True))
        assert not first_matching(default_settings.rules, header, "first")


def test_every_corpus_header_is_evaluated_without_error(
    default_settings: Settings, shared_data: Path
) -> None:
    """Malformed headers (bad VRs, truncated files, odd character sets) never raise."""
    from hiprouter.router.flow.routing import read_header

    every_tag = rule({"any": [{"tag": k, "regex": "."} for k in (
        "StudyDescription", "SeriesDescription", "ProtocolName", "BodyPartExamined",
        "PatientName", "ImageType", "PixelSpacing", "KVP", "SpecificCharacterSet")]}).match
    evaluated = 0
    for path in sorted((shared_data / "dicom-corpus").rglob("*.dcm")):
        header = read_header(path)
        if header is None:
            continue
        first_matching(default_settings.rules, header, "all")
        evaluate(every_tag, header)
        evaluated += 1
    assert evaluated > 200
