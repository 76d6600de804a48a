"""Label sets (classifier kinds' vocabularies): the fracture classes, labels-CSV columns and
aliases, training and evaluating a fracture model, its wording and triage, and the kind."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from hiprouter.cli import main
from hiprouter.config import Settings
from hiprouter.findings import (
    PRIVATE_SCHEME,
    Classification,
    Finding,
    ModelInfo,
    PipelineResult,
    StudyFindings,
)
from hiprouter.inference.classifier import CropClassifier
from hiprouter.inference.models import ModelError, demo_model_dir, read_card
from hiprouter.pipelines.fracture import FRACTURE, FractureKind
from hiprouter.pipelines.hardware import HARDWARE
from hiprouter.pipelines.registry import PipelineSet, installed_kinds, kind_class
from hiprouter.report.text import render_report_text
from hiprouter.report.triage import triage
from hiprouter.training.dataset import DatasetError, label_spec, read_labels
from hiprouter.training.train import TrainConfig, train
from tests.inference.helpers import toy_dataset

FRACTURE_KEYS = ["no_fracture", "femoral_neck_fracture", "intertrochanteric_fracture"]


def test_fracture_vocabulary_codes_and_triage_meaning() -> None:
    assert FRACTURE.keys == FRACTURE_KEYS
    assert label_spec("hardware").classes[0] == "no_hardware"
    negative = FRACTURE["no_fracture"]
    assert negative.negative and negative.triage is None
    assert (negative.code.scheme, negative.code.value, negative.code.meaning) == (
        PRIVATE_SCHEME, "FX000", "No fracture detected")
    neck = FRACTURE["femoral_neck_fracture"]
    assert (neck.code.value, neck.code.scheme, neck.triage) == ("5913000", "SCT", "HIGH")
    assert {"hardware", "fracture"} <= set(installed_kinds())
    assert kind_class("fracture") is FractureKind
    with pytest.raises(DatasetError, match="unknown pipeline kind 'ribs'.*fracture, hardware"):
        label_spec("ribs")


def test_label_specs_name_the_column_and_aliases() -> None:
    assert label_spec("hardware").column == "hardware"
    fx = label_spec("fracture")
    assert fx.column == "fracture" and fx.aliases == {"none": "no_fracture"}


def _labels_csv(path: Path, values: list[str]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "study_uid", "patient_id", "laterality", "hardware", "fracture"])
        for i, v in enumerate(values):
            w.writerow([f"S{i}/IM1.dcm", f"1.2.3.{i}", f"P{i}", "R", "no_hardware", v])
    return path


def test_read_labels_maps_aliases_and_refuses_unknown_values(tmp_path: Path) -> None:
    src = label_spec("fracture")
    csv_path = _labels_csv(tmp_path / "ok.csv", ["none", "femoral_neck_fracture", "no_fracture"])
    rows = read_labels(csv_path, FRACTURE_KEYS, src.column, src.aliases)
    assert [r.label for r in rows] == ["no_fracture", "femoral_neck_fracture", "no_fracture"]
    # Without the alias, "none" is not a class of the set.
    with pytest.raises(DatasetError, match=r"ok.csv:2: label 'none'"):
        read_labels(csv_path, FRACTURE_KEYS, src.column)
    bad = _labels_csv(tmp_path / "bad.csv", ["none", "rib_fracture"])
    with pytest.raises(DatasetError, match=r"bad.csv:3: label 'rib_fracture'"):
        read_labels(bad, FRACTURE_KEYS, src.column, src.aliases)
    with pytest.raises(DatasetError, match="missing column"):
        read_labels(csv_path, FRACTURE_KEYS, "fractures", src.aliases)


def test_unknown_label_set_is_refused(tmp_path: Path) -> None:
    labels = _labels_csv(tmp_path / "labels.csv", ["none"])
    with pytest.raises(DatasetError, match="unknown pipeline kind 'ribs'"):
        train(tmp_path, labels, tmp_path / "out", TrainConfig(label_set="ribs"))
    result = CliRunner().invoke(main, ["train", str(tmp_path), "--out", str(tmp_path / "o"),
                                       "--label-set", "ribs"])
    assert result.exit_code != 0 and "ribs" in result.output


@pytest.fixture(scope="module")
def fracture_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A few training steps of a 3-class fracture model on toy images (CSV values with alias)."""
    root = tmp_path_factory.mktemp("fx-train")
    # toy_dataset writes the class into the "hardware" column: here it holds fracture values.
    labels = toy_dataset(root / "data", 12, ["none", *FRACTURE_KEYS[1:]], seed=5)
    out = root / "model"
    result = CliRunner().invoke(main, [
        "train", str(root / "data"), "--labels", str(labels), "--out", str(out),
        "--label-set", "fracture", "--label-column", "hardware", "--balance",
        "--arch", "resnet10t", "--input-size", "48", "--epochs-head", "1", "--epochs", "1",
        "--batch-size", "8", "--max-steps", "4", "--name", "toy-fracture", "--synthetic-demo",
        "--workers", "0",
    ])
    assert result.exit_code == 0, result.output
    return root, out


def test_training_a_fracture_model_records_its_label_set(fracture_model) -> None:
    _root, out = fracture_model
    card = read_card(out)
    assert card.label_set == "fracture" and card.classes == FRACTURE_KEYS
    assert card.training["label_column"] == "hardware" and card.training["balance"] is True
    assert card.training["steps"] == 4
    clf = CropClassifier.from_dirs([out], "cpu", "torch")
    assert clf.classes == FRACTURE_KEYS


def test_evaluate_uses_the_cards_label_set(fracture_model, tmp_path: Path) -> None:
    root, out = fracture_model
    args = ["evaluate", str(out), str(root / "data"), "--out", str(tmp_path / "ev"),
            "--bootstrap", "20"]
    # The card's label set reads the "fracture" column, which this toy CSV lacks.
    missing = CliRunner().invoke(main, args)
    assert missing.exit_code != 0 and "missing column(s) fracture" in missing.output
    result = CliRunner().invoke(main, [*args, "--label-column", "hardware"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["classes"] == FRACTURE_KEYS and len(report["confusion_matrix"]) == 3
    assert report["n"] == 24


def _result(*hips: tuple[str, str, float]) -> StudyFindings:
    model = ModelInfo("fracture-demo", "0.1.0", "resnet18@192px", "1.2.3", synthetic_demo=True)
    out = []
    for side, key, p in hips:
        rest = (1.0 - p) / 2
        probs = {k: (p if k == key else rest) for k in FRACTURE_KEYS}
        out.append(Finding("fracture", side, ["1.2.3.4"], model,  # type: ignore[arg-type]
                           Classification(key, p, probs)))
    return StudyFindings("1.2.3", [PipelineResult("fracture", "fracture", FRACTURE, model,
                                                  out)])


def test_report_wording_for_fracture_results() -> None:
    en = render_report_text(_result(("R", "femoral_neck_fracture", 0.9),
                                    ("L", "no_fracture", 0.95)))
    assert en.sentences == ["Right hip: femoral neck fracture.",
                            "Left hip: no fracture detected."]
    both = render_report_text(_result(("R", "no_fracture", 0.9), ("L", "no_fracture", 0.8)))
    assert both.sentences == ["No fracture detected on either side."]
    unsure = render_report_text(_result(("R", "no_fracture", 0.5),
                                        ("L", "intertrochanteric_fracture", 0.45)))
    assert unsure.sentences == [
        "Right hip: probably no fracture (low confidence, probability 0.50).",
        "Left hip: possible intertrochanteric fracture (low confidence, probability 0.45).",
    ]
    de = render_report_text(_result(("R", "no_fracture", 0.9), ("L", "no_fracture", 0.8)),
                            language="de")
    assert de.sentences == ["Beidseits keine Fraktur nachweisbar."]
    de_unsure = render_report_text(_result(("R", "no_fracture", 0.55)), language="de")
    assert de_unsure.sentences == [
        "Rechte Hüfte: wahrscheinlich keine Fraktur (geringe Konfidenz, "
        "Wahrscheinlichkeit 0,55)."]
    assert "DEMO MODEL" in en.disclaimer


def test_default_triage_of_fracture_results() -> None:
    high = triage(_result(("R", "femoral_neck_fracture", 0.8), ("L", "no_fracture", 0.9)), {})
    assert high.level == "HIGH" and "Femoral neck fracture, right hip" in high.reason
    routine = triage(_result(("R", "no_fracture", 0.9), ("L", "no_fracture", 0.7)), {})
    assert routine.level == "ROUTINE"
    # A fracture below the default threshold does not raise the priority.
    low = triage(_result(("R", "no_fracture", 0.55), ("L", "no_fracture", 0.9)), {})
    assert low.level == "ROUTINE"


def test_fracture_kind_is_built_in_and_checks_the_models_label_set(
        tiny_model_dir: Path, fracture_model) -> None:
    assert demo_model_dir("fracture").name == "fracture-demo"
    _root, fx_dir = fracture_model
    wrong = Settings(pipelines={"fx": {"kind": "fracture", "models": [tiny_model_dir],
                                       "device": "cpu", "runtime": "torch"}})
    with pytest.raises(ModelError, match="is a 'hardware' model; kind 'fracture'"):
        PipelineSet(wrong).get("fx")
    right = Settings(pipelines={"fx": {"kind": "fracture", "models": [fx_dir],
                                       "device": "cpu", "runtime": "torch"}})
    pipe = PipelineSet(right).get("fx")
    assert pipe.vocabulary().keys == FRACTURE_KEYS


def test_fracture_model_starts_from_a_hardware_models_backbone(fracture_model,
                                                               tmp_path: Path) -> None:
    """--init-from across label sets takes the backbone and leaves a fresh 3-class head."""
    from safetensors.torch import load_file

    from hiprouter.inference.models import create_model, save_model

    hardware = create_model("resnet10t", 9)
    hw_card = read_card(fracture_model[1]).model_copy(update={
        "name": "toy-hardware", "label_set": "hardware",
        "classes": HARDWARE.keys})
    save_model(hardware, hw_card, tmp_path / "hw")
    root, _ = fracture_model
    out = tmp_path / "fx"
    result = CliRunner().invoke(main, [
        "train", str(root / "data"), "--labels", str(root / "data" / "labels.csv"),
        "--out", str(out), "--label-set", "fracture", "--label-column", "hardware",
        "--arch", "resnet10t", "--input-size", "48", "--epochs-head", "1", "--epochs", "0",
        "--batch-size", "8", "--max-steps", "1", "--workers", "0",
        "--init-from", str(tmp_path / "hw"),
    ])
    assert result.exit_code == 0, result.output
    assert "backbone only" in result.output
    before = hardware.state_dict()
    after = load_file(str(out / "model.safetensors"))
    assert after["fc.weight"].shape[0] == 3
    # A layer that head-only epochs do not train is exactly the hardware model's.
    assert (after["conv1.0.weight"] == before["conv1.0.weight"]).all()


def _copy_with_validation_split(fracture_model, tmp_path: Path) -> tuple[Path, Path]:  # noqa: ANN001
    """A copy of the toy fracture model and a split.csv with every toy hip as a validation
    hip (labels as class keys)."""
    import shutil

    root, out = fracture_model
    model = tmp_path / "model"
    shutil.copytree(out, model)
    split = tmp_path / "split.csv"
    with (root / "data" / "labels.csv").open(newline="") as src, split.open("w", newline="") as dst:
        w = csv.writer(dst)
        w.writerow(["split", "path", "study_uid", "patient_id", "laterality", "label"])
        for r in csv.DictReader(src):
            label = "no_fracture" if r["hardware"] == "none" else r["hardware"]
            w.writerow(["val", str(root / "data" / r["path"]), r["study_uid"], r["patient_id"],
                        r["laterality"], label])
    return model, split


def test_retriage_chooses_thresholds_again_on_the_validation_hips(fracture_model,
                                                                   tmp_path: Path) -> None:
    """`models retriage`: every validation hip of a triage class is flagged at target
    sensitivity 1.0 (the threshold is at most the lowest such probability); the card is
    rewritten, the weights are not; an impossible target is refused."""
    from hiprouter.inference.models import verify_weights

    model, split = _copy_with_validation_split(fracture_model, tmp_path)
    result = CliRunner().invoke(main, ["models", "retriage", str(model), "--split", str(split),
                                       "--sensitivity", "1.0"])
    assert result.exit_code == 0, result.output
    card = read_card(model)
    assert set(card.triage_thresholds) == set(FRACTURE_KEYS[1:])
    chosen = card.evaluation["triage_validation"]
    assert chosen["target_sensitivity"] == 1.0 and "retriage" in chosen["chosen_by"]
    for key in FRACTURE_KEYS[1:]:
        assert chosen[key]["val_sensitivity"] == 1.0 and chosen[key]["val_positives"] > 0
        assert 0 <= card.triage_thresholds[key] <= 1
    assert verify_weights(model, card)
    bad = CliRunner().invoke(main, ["models", "retriage", str(model), "--split", str(split),
                                    "--sensitivity", "1.5"])
    assert bad.exit_code != 0 and "sensitivity must be in (0, 1]" in bad.output


def test_reabstain_chooses_min_confidence_again_on_the_validation_hips(fracture_model,
                                                                     tmp_path: Path) -> None:
    """`models reabstain`: at target accuracy 1.0 every validation hip at or above the new
    min_confidence is right (recomputed here from the model's own predictions); the previous
    choice is kept, the weights are untouched, an impossible target is refused."""
    import numpy as np

    from hiprouter.inference.models import verify_weights
    from hiprouter.training.retriage import _validation_hips

    model, split = _copy_with_validation_split(fracture_model, tmp_path)
    before = read_card(model).abstention
    result = CliRunner().invoke(main, ["models", "reabstain", str(model), "--split", str(split),
                                       "--accuracy", "1.0"])
    assert result.exit_code == 0, result.output
    card = read_card(model)
    chosen = card.abstention
    assert chosen["target_accuracy"] == 1.0 and chosen["chosen_by"] == "hiprouter models reabstain"
    assert chosen["previous"]["min_confidence"] == before["min_confidence"]
    _, _, y_hip, p_hip = _validation_hips(model, split, None, "cpu")
    # (the card's threshold is the chosen confidence rounded up to 4 decimals)
    answered = p_hip.max(axis=1) >= chosen["min_confidence"] - 1e-4
    if chosen["reached"]:
        assert (p_hip.argmax(axis=1)[answered] == np.asarray(y_hip)[answered]).all()
    assert chosen["val_coverage"] == pytest.approx(answered.mean())
    assert verify_weights(model, card)
    bad = CliRunner().invoke(main, ["models", "reabstain", str(model), "--split", str(split),
                                    "--accuracy", "1.5"])
    assert bad.exit_code != 0 and "accuracy must be in (0, 1]" in bad.output


def test_recalibrate_fits_temperature_and_abstention_on_labelled_folders(fracture_model,
                                                                        tmp_path: Path) -> None:
    """`models recalibrate`: the temperature minimises the NLL of the folder's crops (no worse
    than the card's), min_confidence is chosen with it, the classifier applies it, the
    previous choices are kept and the weights untouched; a folder without labels is refused."""
    import shutil

    import numpy as np

    from hiprouter.inference.classifier import CropClassifier
    from hiprouter.inference.models import verify_weights
    from hiprouter.training.calibration import nll
    from hiprouter.training.retriage import _predictions, folder_rows

    root, trained = fracture_model
    model = tmp_path / "model"
    shutil.copytree(trained, model)
    before = read_card(model)
    result = CliRunner().invoke(main, ["models", "recalibrate", str(model), "--data",
                                       str(root / "data"), "--accuracy", "0.9"])
    assert result.exit_code == 0, result.output
    card = read_card(model)
    cal, chosen = card.calibration, card.abstention
    assert cal["chosen_by"] == chosen["chosen_by"] == "hiprouter models recalibrate"
    assert chosen["target_accuracy"] == 0.9 and "hips" in chosen["chosen_on"]
    if before.calibration:
        assert cal["previous"]["temperature"] == before.calibration["temperature"]
    assert verify_weights(model, card)
    clf = CropClassifier.from_dirs([model], "cpu")
    assert clf.members[0].temperature == pytest.approx(cal["temperature"])
    rows = folder_rows([root / "data"], card.classes, card.label_set, "hardware")
    _, _, _, labels, preds = _predictions(model, rows, None, "cpu", "test")
    logits = cal["temperature"] * np.log(np.stack([p.probabilities for p in preds]))
    old_t = float((before.calibration or {}).get("temperature", 1.0))
    assert nll(logits, labels, cal["temperature"]) <= nll(logits, labels, old_t) + 1e-4
    bad = CliRunner().invoke(main, ["models", "recalibrate", str(model), "--data",
                                    str(tmp_path), "--accuracy", "0.9"])
    assert bad.exit_code != 0 and "labels" in bad.output
