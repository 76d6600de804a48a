"""Second-stage kinds on hips with hardware: prosthesis_failure (seed 000) and
fixation_device (seed 004).

The hardware stage uses constant-output models per side (tests/pipelines/cascade_kinds.py)
and the second stage constant or freshly built models: these tests check plumbing
(cascades, fusion of views, maps, outlines, report text, triage, model cards), never
detection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from hiprouter.config import ReportConfig, Settings, TriageRule
from hiprouter.findings import PRIVATE_SCHEME
from hiprouter.inference import dualview
from hiprouter.inference.models import ModelCard, read_card
from hiprouter.pipelines.fixation_device import FIXATION_DEVICES, FixationDeviceKind
from hiprouter.pipelines.prosthesis_failure import (
    PROSTHESIS_FAILURE,
    ProsthesisFailureKind,
    hot_outline,
)
from hiprouter.pipelines.registry import PipelineSet, kind_class
from hiprouter.pipelines.runner import analyse_study
from hiprouter.report.build import build_report
from hiprouter.report.sc import finding_label
from hiprouter.synth.labels import DEVICE_KEYS, FAILURES
from hiprouter.synth.study import make_study
from tests.conftest import REPO
from tests.inference.helpers import constant_model
from tests.pipelines.cascade_kinds import constant_dual_view

SIZE = (400, 520)
PIPELINES = ["fixation_device", "prosthesis_failure", "hardware"]  # any order: cascades sort


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cascade-models")
    return {
        "tha": constant_model(root / "hw-tha", "hardware", "tha"),
        "dhs": constant_model(root / "hw-dhs", "hardware", "dynamic_hip_screw"),
        "none": constant_model(root / "hw-none", "hardware", "no_hardware"),
        "dislocation": constant_dual_view(root / "pf-dislocation", "dislocation"),
        "loosening": constant_dual_view(root / "pf-loosening", "loosening"),
        "no_failure": constant_dual_view(root / "pf-none", "no_failure"),
        "shs": constant_model(root / "dev-shs", "fixation_device", "sliding_hip_screw"),
    }


def settings(models: dict[str, Path], right: str = "tha", left: str = "dhs",
             failure: str = "dislocation", **extra: Any) -> Settings:
    pipelines: dict[str, Any] = {
        "hardware": {"kind": "sided_hardware", "right": [str(models[right])],
                     "left": [str(models[left])]},
        "prosthesis_failure": {"kind": "prosthesis_failure", "models": [str(models[failure])],
                               "device": "cpu", "runtime": "torch"},
        "fixation_device": {"kind": "fixation_device", "models": [str(models["shs"])],
                            "device": "cpu", "runtime": "torch"},
    }
    for name, values in extra.items():
        pipelines.setdefault(name, {}).update(values)
    return Settings.model_validate({"plugins": ["tests.pipelines.cascade_kinds"],
                                    "pipelines": pipelines})


def analyse(s: Settings, study: Any, names: list[str] = PIPELINES) -> tuple[Any, Any]:
    datasets = [i.dataset for i in study.images]
    findings, decoded = analyse_study(PipelineSet(s), names, study.study_uid, datasets)
    return findings, decoded


def report(s: Settings, study: Any, findings: Any, decoded: Any, language: str = "en") -> Any:
    return build_report(findings, [i.dataset for i in study.images],
                        {u: im.decoded.display_uint8() for u, im in decoded.items()},
                        ReportConfig(language=language),
                        {n: s.pipelines[n].triage for n in s.pipelines})


def tha_and_dhs(views: tuple[str, ...] = ("ap_pelvis", "cross_table_lateral"),
                seed: int = 31) -> Any:
    return make_study(seed, 0, hardware={"R": "tha", "L": "dynamic_hip_screw"},
                      failure={"R": "dislocation"}, device={"L": "sliding_hip_screw"},
                      views=views, side="R", size=SIZE)


def by_pipeline(findings: Any) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for f in findings.findings():
        out.setdefault(f.pipeline, {})[f.laterality] = f
    return out


# -- the contract -------------------------------------------------------------------------


def test_kinds_declare_their_cascades_and_vocabularies() -> None:
    assert kind_class("prosthesis_failure") is ProsthesisFailureKind
    assert kind_class("fixation_device") is FixationDeviceKind
    pf, fd = ProsthesisFailureKind.default_runs_on, FixationDeviceKind.default_runs_on
    assert (pf.pipeline, pf.classes) == ("hardware", ["tha", "tha_with_fixation"])
    assert (fd.pipeline, sorted(fd.classes)) == (
        "hardware", sorted(["im_nail", "cannulated_screws", "dynamic_hip_screw",
                            "lateral_plate"]))
    aliases = ProsthesisFailureKind.label_aliases
    assert sorted(aliases.get(k, k) for k in FAILURES) == sorted(PROSTHESIS_FAILURE.keys)
    assert FIXATION_DEVICES.keys == list(DEVICE_KEYS)
    triage = {fc.key: fc.triage for fc in PROSTHESIS_FAILURE}
    assert triage == {"no_failure": None, "infection": "MEDIUM", "loosening": "MEDIUM",
                      "dislocation": "HIGH", "periprosthetic_fracture": "HIGH", "wear": None}
    assert [fc.key for fc in PROSTHESIS_FAILURE if fc.negative] == ["no_failure"]
    assert not any(fc.triage for fc in FIXATION_DEVICES)
    # no exact SNOMED CT concept for these classes: all private, declared in the SR
    assert {fc.code.scheme for fc in (*PROSTHESIS_FAILURE, *FIXATION_DEVICES)} == {
        PRIVATE_SCHEME}
    pyproject = (REPO / "pyproject.toml").read_text()
    for kind, cls in (("prosthesis_failure", "ProsthesisFailureKind"),
                      ("fixation_device", "FixationDeviceKind")):
        assert f'{kind} = "hiprouter.pipelines.{kind}:{cls}"' in pyproject


def test_conformance_statement_lists_the_codes() -> None:
    doc = (REPO / "docs" / "conformance-statement.md").read_text(encoding="utf-8")
    for kind, vocab in (("prosthesis_failure", PROSTHESIS_FAILURE),
                        ("fixation_device", FIXATION_DEVICES)):
        for fc in vocab:
            triage = fc.triage or ("negative" if fc.negative else "")
            row = (f"| {kind} | `{fc.key}` | {fc.code.value} ({fc.code.scheme}) | "
                   f"{fc.code.meaning} | {triage} |")
            assert row in doc, row


# -- the dual-view model ------------------------------------------------------------------


def test_dual_view_head_maps_and_back_ends_agree(tmp_path: Path) -> None:
    import torch

    net = dualview.build_net("regnetx_002", 6)
    with torch.no_grad():
        net.missing.normal_()
    card = ModelCard(name="t", version="1", architecture="regnetx_002", input_size=64,
                     label_set="prosthesis_failure", classes=PROSTHESIS_FAILURE.keys,
                     parameters=dualview.card_parameters(net, 0.3), training_data="none")
    saved = dualview.save(net, card, tmp_path / "m")
    assert saved.task == dualview.TASK and saved.parameters["feature_channels"] == net.channels
    from safetensors.torch import load_file

    assert {v.dtype for v in load_file(str(tmp_path / "m" / "model.safetensors")).values()
            if v.is_floating_point()} == {torch.float16}
    model = dualview.load(tmp_path / "m")
    rng = np.random.default_rng(0)
    ap, lat = (torch.from_numpy(rng.normal(0, 1, (2, 1, 64, 64)).astype(np.float32))
               for _ in range(2))
    keep = torch.tensor([True, False])
    with torch.no_grad():
        expected = model.net(ap, lat[keep], keep).numpy()
        f_ap = model.net.features(ap).numpy()
        f_lat = model.net.features(lat).numpy()
    # numpy head == torch head, with and without the lateral view
    got = np.concatenate([model.logits(f_ap[:1].mean((2, 3)), f_lat[:1].mean((2, 3))),
                          model.logits(f_ap[1:].mean((2, 3)), None)])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # each view's CAM is its share of the logit, spatially resolved
    c, k = model.channels, 3
    raw = np.tensordot(model.weight[k, :c], f_ap[0], axes=([0], [0]))
    share = model.weight[k, :c] @ f_ap[0].mean((1, 2))
    assert raw.mean() == pytest.approx(share, rel=1e-4, abs=1e-5)
    # ONNX Runtime and torch give the same feature maps
    batch = rng.normal(0, 1, (3, 1, 64, 64)).astype(np.float32)
    onnx = dualview.OnnxFeatures(model).run(batch)
    eager = dualview.TorchFeatures(model, "cpu").run(batch)
    np.testing.assert_allclose(onnx, eager, rtol=1e-3, atol=1e-3)
    # an ensemble folder (member folders, no card of its own) expands to its members
    for n in (1, 2):
        (tmp_path / "ens" / f"member-{n}").mkdir(parents=True)
        for f in (tmp_path / "m").iterdir():
            (tmp_path / "ens" / f"member-{n}" / f.name).write_bytes(f.read_bytes())
    assert [p.name for p in dualview.expand_model_dirs([tmp_path / "ens"])] == [
        "member-1", "member-2"]
    ens = dualview.DualViewEnsemble.from_dirs([tmp_path / "ens"], "cpu", "torch")
    assert "ensemble of 2" in ens.info.name
    pred = ens.predict([rng.random((80, 50)).astype(np.float32)], [])
    assert pred.single_view and pred.lateral_maps == [] and pred.ap_maps[0].shape == (80, 50)


def test_implant_window_centres_the_metal_and_maps_go_back_to_the_crop() -> None:
    crop = np.full((300, 150), 0.3, np.float32)
    crop[200:240, 60:100] = 1.0  # the implant, low in a tall crop
    crop[5:12, 5:12] = 1.0  # a marker in the corner (inside the margin: ignored)
    top, left, bottom, right = dualview.implant_window(crop)
    assert (left, right) == (0, 150) and bottom - top == 150
    assert top < 200 and bottom > 240 and abs((top + bottom) / 2 - 220) <= 2
    assert dualview.implant_window(np.zeros((100, 110), np.float32)) == (0, 0, 100, 110)
    boxed, lb, window = dualview.model_input(crop, 64, "implant_window")
    assert boxed.shape == (64, 64) and window == (top, left, bottom, right)
    back = dualview.map_to_crop(np.ones((4, 4), np.float32), lb, window, crop.shape)
    assert back.shape == crop.shape and back[:top].max() == 0 and back[top:bottom].min() > 0.9
    _, _, full = dualview.model_input(crop, 64, "full")
    assert full == (0, 0, 300, 150)


def test_hot_outline_encloses_the_peak_in_source_pixels() -> None:
    heat = np.zeros((40, 30), np.float32)
    heat[10:20, 5:12] = 1.0
    heat[30:35, 20:25] = 0.9  # a second hot area, not connected to the peak
    outline = hot_outline(heat, (100, 200, 140, 230))
    assert outline is not None and len(outline) >= 4
    cols, rows = outline[:, 0], outline[:, 1]
    assert cols.min() == 205 and cols.max() == 212 and rows.min() == 110 and rows.max() == 120
    assert hot_outline(np.zeros((5, 5), np.float32), (0, 0, 5, 5)) is None


# -- the cascades through the runner and the report ---------------------------------------


def test_tha_and_dhs_get_one_second_stage_finding_each(models: dict[str, Path]) -> None:
    s = settings(models)
    study = tha_and_dhs()
    ap, lateral = (str(i.dataset.SOPInstanceUID) for i in study.images)
    findings, decoded = analyse(s, study)
    assert [r.pipeline for r in findings.results] == ["hardware", "fixation_device",
                                                      "prosthesis_failure"]
    got = by_pipeline(findings)
    assert sorted(got["hardware"]) == ["L", "R"]
    assert list(got["prosthesis_failure"]) == ["R"] and list(got["fixation_device"]) == ["L"]
    failure = got["prosthesis_failure"]["R"]
    assert failure.classification.predicted == "dislocation"
    assert failure.source_sop_uids == [ap, lateral]  # fused: the AP and the lateral
    assert "single_view" not in failure.qualifiers
    assert failure.qualifiers["views"] == "AP pelvis + cross-table lateral"
    assert {h.sop_instance_uid for h in failure.heatmaps} == {ap, lateral}  # a map per view
    (region,) = failure.regions
    assert region.graphic_type == "POLYLINE" and region.sop_instance_uid == ap
    cols = study.images[0].dataset.Columns
    assert region.points[:, 0].max() <= cols / 2 + 1  # on the right hip's half of the AP
    device = got["fixation_device"]["L"]
    assert device.classification.predicted == "sliding_hip_screw"
    assert device.source_sop_uids == [ap]  # AP views only, as the seed
    skipped = {r.pipeline: r.skipped for r in findings.results}
    assert skipped["prosthesis_failure"] == [
        "L hip: hardware found dynamic_hip_screw (assessed); runs on: hardware finds classes "
        "tha, tha_with_fixation"]
    assert len(skipped["fixation_device"]) == 1 and skipped["fixation_device"][0].startswith(
        "R hip: hardware found tha")

    bundle = report(s, study, findings, decoded)
    assert bundle.left_out == [] and bundle.priority == "HIGH"
    assert bundle.reason.startswith("Dislocation, right hip (p=0.")
    sentences = bundle.text.sentences
    assert sentences[0] == "Right hip: total hip arthroplasty; dislocation of the prosthesis."
    assert sentences[1].startswith("Left hip: dynamic hip screw; sliding hip screw with side "
                                   "plate (probability 0.")
    assert "top 3: sliding hip screw with side plate 0." in sentences[1]
    # the SC of the AP pelvis: the failure map on the right hip, the device map on the left
    sc_ap = next(sc for sc in bundle.scs
                 if sc.SourceImageSequence[0].ReferencedSOPInstanceUID == ap)
    assert "heat map of prosthesis_failure, fixation_device" in sc_ap.DerivationDescription
    de = report(s, study, findings, decoded, "de").text.sentences
    assert de[0] == "Rechte Hüfte: Hüft-Totalendoprothese; Luxation der Prothese."
    assert "Top 3: dynamische Hüftschraube mit Seitenplatte 0," in de[1]


def test_an_ap_alone_is_assessed_single_view_and_says_so(models: dict[str, Path]) -> None:
    s = settings(models, failure="loosening")
    study = tha_and_dhs(views=("ap_pelvis",))
    findings, decoded = analyse(s, study)
    failure = by_pipeline(findings)["prosthesis_failure"]["R"]
    assert failure.qualifiers["single_view"] == "AP only"
    assert len(failure.heatmaps) == 1
    bundle = report(s, study, findings, decoded)
    assert bundle.text.sentences[0] == ("Right hip: total hip arthroplasty; aseptic loosening "
                                        "(AP only).")
    assert bundle.priority == "MEDIUM"
    label = finding_label(failure, PROSTHESIS_FAILURE)  # burned into the SC
    assert label.startswith("Aseptic loosening 0.") and label.endswith(" (AP only)")


def test_a_lateral_alone_is_not_assessed(models: dict[str, Path]) -> None:
    s = settings(models)
    study = make_study(32, 0, hardware={"R": "tha", "L": "no_hardware"},
                       views=("cross_table_lateral",), side="R", size=SIZE)
    findings, decoded = analyse(s, study)
    failure = by_pipeline(findings)["prosthesis_failure"]["R"]
    assert failure.classification.status == "not_assessed"
    assert "no AP view" in failure.classification.reason
    bundle = report(s, study, findings, decoded)
    assert "prosthesis failure assessment not assessed (no AP view" in bundle.text.sentences[0]
    assert bundle.priority == "ROUTINE"


def test_a_study_without_hardware_gets_no_second_stage(models: dict[str, Path]) -> None:
    s = settings(models, right="none", left="none")
    study = make_study(33, 0, hardware={"R": "no_hardware", "L": "no_hardware"},
                       views=("ap_pelvis", "frog_leg"), side="L", size=SIZE)
    findings, decoded = analyse(s, study)
    got = by_pipeline(findings)
    assert list(got) == ["hardware"]
    for name in ("prosthesis_failure", "fixation_device"):
        result = findings.result(name)
        assert result.findings == [] and len(result.skipped) == 2
        assert result.upstream == "hardware"
    bundle = report(s, study, findings, decoded)
    assert bundle.priority == "ROUTINE"
    assert bundle.text.sentences == ["No orthopedic hardware in either hip."]


def test_triage_is_configurable(models: dict[str, Path]) -> None:
    s = settings(models, failure="loosening",
                 prosthesis_failure={"triage": [{"classes": ["loosening"], "level": "HIGH"}]})
    assert s.pipelines["prosthesis_failure"].triage == [TriageRule(classes=["loosening"],
                                                                   level="HIGH")]
    study = tha_and_dhs()
    findings, decoded = analyse(s, study)
    assert report(s, study, findings, decoded).priority == "HIGH"
    quiet = settings(models, failure="no_failure")
    findings, decoded = analyse(quiet, study)
    bundle = report(quiet, study, findings, decoded)
    assert bundle.priority == "ROUTINE"
    assert bundle.text.sentences[0] == ("Right hip: total hip arthroplasty; no prosthesis "
                                        "failure detected.")


def test_a_site_device_catalogue_is_reported_with_its_names(models: dict[str, Path],
                                                           tmp_path: Path) -> None:
    """A card with other device names (classes + vocabulary) is reported with those."""
    import torch

    from hiprouter.inference.models import create_model, save_model

    keys = ["acme_gamma_nail", "acme_dhs_135", "other_plate"]
    module = create_model("regnetx_002", len(keys))
    with torch.no_grad():
        module.get_classifier().weight.zero_()
        module.get_classifier().bias.copy_(torch.tensor([0.0, 3.0, 0.5]))
    card = ModelCard(
        name="site-devices", version="2", architecture="regnetx_002", input_size=64,
        label_set="fixation_device", classes=keys, training_data="site (test)",
        vocabulary=[{"key": "acme_gamma_nail", "display": "ACME Gamma nail", "code": "G1",
                     "scheme": "99SITE"},
                    {"key": "acme_dhs_135", "display": "ACME DHS 135 degrees", "code": "D135",
                     "scheme": "99SITE"},
                    {"key": "other_plate", "display": "Other plate", "code": "OP",
                     "scheme": "99SITE"}])
    save_model(module, card, tmp_path / "site")
    s = settings(models, fixation_device={"models": [str(tmp_path / "site")]})
    study = tha_and_dhs()
    findings, decoded = analyse(s, study)
    device = by_pipeline(findings)["fixation_device"]["L"]
    assert device.classification.predicted == "acme_dhs_135"
    vocab = findings.vocabulary("fixation_device")
    assert vocab.keys == keys and vocab["acme_dhs_135"].code.scheme == "99SITE"
    bundle = report(s, study, findings, decoded)
    assert bundle.text.sentences[1].startswith(
        "Left hip: dynamic hip screw; acme dhs 135 degrees (probability 0.")
    assert "top 3: acme dhs 135 degrees 0." in bundle.text.sentences[1]
    assert "other plate" in bundle.text.sentences[1]
    import highdicom as hd

    sr = hd.sr.Comprehensive3DSR.from_dataset(bundle.sr)
    codes = {g.finding_type.value for g in sr.content.get_planar_roi_measurement_groups()}
    assert "D135" in codes


# -- training -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_failure_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hiprouter.synth.study import generate_dataset

    out = tmp_path_factory.mktemp("failure-data")
    generate_dataset(out, 12, 5, progress=False, task="failure", size=(300, 380))
    return out


@pytest.mark.slow
def test_train_and_evaluate_the_dual_view_model(tiny_failure_data: Path, tmp_path: Path,
                                                models: dict[str, Path]) -> None:
    import shutil

    from click.testing import CliRunner

    from hiprouter.cli import main
    from hiprouter.inference.models import verify_weights
    from hiprouter.training.calibration import nll
    from hiprouter.training.retriage import _dual_view_logits

    run = CliRunner().invoke
    out = tmp_path / "pf"
    result = run(main, ["train-dual-view", str(tiny_failure_data), "--out", str(out),
                        "--arch", "regnetx_002", "--input-size", "64", "--epochs", "1",
                        "--members", "2", "--threads", "1", "--synthetic-demo",
                        "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "ensemble: test accuracy" in result.output
    cards = [read_card(out / f"member-{n}") for n in (1, 2)]
    for n, card in enumerate(cards):
        assert card.task == dualview.TASK and card.label_set == "prosthesis_failure"
        assert card.classes == PROSTHESIS_FAILURE.keys and card.synthetic_demo
        assert card.training["seed"] == n and card.training["split_seed"] == 0
        assert {"test_split", "test_split_ap_only", "ensemble_test_split"} <= set(
            card.evaluation)
        assert card.calibration == {}  # no temperature fitted by this trainer
    assert (out / "evaluation" / "test-split" / "report.md").is_file()
    assert (out / "split.csv").read_text().count("\n") > 5

    result = run(main, ["evaluate-dual-view", str(out), "--data", str(tiny_failure_data),
                        "--out", str(tmp_path / "ev"), "--bootstrap", "20", "--record",
                        "again", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "AP views only: accuracy" in result.output and "member 2:" in result.output
    assert read_card(out / "member-1").evaluation["again"]["members"] == 2
    assert "wrong definitive causes" in result.output  # what the pipeline would say
    selective = read_card(out / "member-1").evaluation["again"]["selective"]
    assert selective["min_confidence"] == 0.0 and selective["indeterminate_rate"] == 0.0

    # a temperature and an abstention threshold fitted on labelled studies, per pair
    member = tmp_path / "member"
    shutil.copytree(out / "member-1", member)
    result = run(main, ["models", "recalibrate", str(member), "--data",
                        str(tiny_failure_data), "--accuracy", "0.9"])
    assert result.exit_code == 0, result.output
    card = read_card(member)
    cal, chosen = card.calibration, card.abstention
    assert cal["chosen_by"] == chosen["chosen_by"] == "hiprouter models recalibrate"
    assert "AP x lateral pairs" in cal["fitted_on"] and chosen["target_accuracy"] == 0.9
    assert verify_weights(member, card)
    assert dualview.load(member).temperature == pytest.approx(cal["temperature"])
    logits, labels, _ = _dual_view_logits(member, [tiny_failure_data], None, "cpu")
    assert nll(logits, labels, cal["temperature"]) <= nll(logits, labels, 1.0) + 1e-6
    bad = run(main, ["models", "recalibrate", str(out), "--data", str(tiny_failure_data),
                     "--accuracy", "0.9"])
    assert bad.exit_code != 0 and "one model directory at a time" in bad.output, bad.output

    # the trained ensemble runs as the kind's models
    s = settings(models, prosthesis_failure={"models": [str(out)]})
    findings, _ = analyse(s, tha_and_dhs())
    failure = by_pipeline(findings)["prosthesis_failure"]["R"]
    assert failure.model.name == "prosthesis_failure (ensemble of 2)"
    assert failure.classification.predicted in PROSTHESIS_FAILURE.keys


@pytest.mark.slow
def test_device_classifier_trains_with_the_standard_trainer(tmp_path: Path) -> None:
    """The device column is empty for hips without a catalogue fixation: those rows are
    skipped; `hiprouter models half` halves the weights and the kind still loads them."""
    from click.testing import CliRunner

    from hiprouter.cli import main
    from hiprouter.synth.study import generate_dataset
    from hiprouter.training.dataset import read_labels

    data = tmp_path / "device"
    labels = generate_dataset(data, 8, 6, progress=False, task="device", size=(300, 380))
    rows = read_labels(labels, FIXATION_DEVICES.keys, "device")
    assert rows and all(r.label in DEVICE_KEYS for r in rows)
    run = CliRunner().invoke
    out = tmp_path / "fd"
    result = run(main, ["train", str(data), "--out", str(out), "--label-set",
                        "fixation_device", "--arch", "regnetx_002", "--input-size", "64",
                        "--epochs-head", "0", "--epochs", "1", "--device", "cpu",
                        "--workers", "0", "--synthetic-demo", "--name", "fd-test"])
    assert result.exit_code == 0, result.output
    card = read_card(out)
    assert card.label_set == "fixation_device" and card.classes == list(DEVICE_KEYS)
    size = (out / card.weights_file).stat().st_size
    result = run(main, ["models", "half", str(out)])
    assert result.exit_code == 0, result.output
    halved = read_card(out)
    assert (out / card.weights_file).stat().st_size < 0.6 * size
    assert halved.device_uid != card.device_uid  # other weights, other Device UID
    from tests.inference.helpers import classify

    _, result = classify([i.dataset for i in tha_and_dhs().images], "fixation_device",
                         models=[str(out)])
    assert result.findings


def test_cards_of_the_kinds_round_trip(tmp_path: Path) -> None:
    """The model card keeps the dual-view task and parameters (yaml round trip)."""
    path = constant_dual_view(tmp_path / "m", "wear")
    card = yaml.safe_load((path / "card.yaml").read_text())
    assert card["task"] == dualview.TASK
    assert card["parameters"]["views"]["lateral"] == ["frog_leg", "cross_table_lateral"]
