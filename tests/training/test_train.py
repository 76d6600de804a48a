"""A tiny end-to-end training run, evaluation and the model registry commands."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from hiprouter.cli import main
from hiprouter.inference.models import ModelError, load_model, read_card, verify_weights
from hiprouter.pipelines.hardware import HARDWARE
from tests.inference.helpers import classify, make_radiograph, toy_dataset

CLASSES = HARDWARE.keys


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("train")
    labels = toy_dataset(root / "data", 14, CLASSES, seed=3)
    out = root / "model"
    result = CliRunner().invoke(main, [
        "train", str(root / "data"), "--labels", str(labels), "--out", str(out),
        "--arch", "resnet10t", "--input-size", "48", "--epochs-head", "1", "--epochs", "2",
        "--batch-size", "8", "--max-steps", "5", "--name", "toy", "--synthetic-demo",
        "--decode-workers", "2",
    ])
    assert result.exit_code == 0, result.output
    return root, out, result.output


def test_training_writes_card_weights_split_and_report(trained) -> None:
    root, out, output = trained
    assert "split (hips): train" in output and "Device UID" in output
    card = read_card(out)
    assert card.architecture == "resnet10t" and card.input_size == 48
    assert card.classes == CLASSES and card.synthetic_demo
    assert card.training["steps"] == 5
    assert 0.0 <= card.evaluation["test_split"]["accuracy"] <= 1.0
    assert verify_weights(out, card)
    assert card.device_uid.startswith("1.2.826.0.1.3680043.8.498.")
    split = (out / "split.csv").read_text().splitlines()
    assert len(split) == 1 + 28
    patients = {}
    for line in split[1:]:
        part, *_, patient, _lat, _label = line.split(",")
        patients.setdefault(patient, set()).add(part)
    assert all(len(parts) == 1 for parts in patients.values())  # patient-level split
    assert (out / "evaluation" / "report.md").is_file()
    assert (out / "checkpoints" / "last.pt").is_file()
    assert list((out / "cache").glob("*.npz"))


def test_trained_model_reloads_and_predicts(trained) -> None:
    root, out, _ = trained
    import numpy as np

    ds = make_radiograph(np.full((48, 96), 900, np.uint16), SeriesDescription="AP PELVIS")
    _, result = classify([ds], models=[out], runtime="torch")
    assert result.model.name == "toy" and result.model.synthetic_demo
    assert [f.laterality for f in result.findings] == ["R", "L"]


def test_evaluate_command(trained, tmp_path) -> None:
    root, out, _ = trained
    result = CliRunner().invoke(main, ["evaluate", str(out), str(root / "data"),
                                       "--out", str(tmp_path / "ev"), "--bootstrap", "50"])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "no_hardware" in result.output
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["n"] == 28 and len(report["confusion_matrix"]) == 9
    assert "synthetic" in report["note"].lower()


def test_changed_weights_are_refused_and_listed(trained, tmp_path) -> None:
    root, out, _ = trained
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"pipelines": {"hardware": {"models": [str(out)]}}}))
    listed = CliRunner().invoke(main, ["--config", str(cfg), "models", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = {r["dir"]: r for r in json.loads(listed.output)}
    assert rows[str(out)]["sha256_ok"] and rows[str(out)]["synthetic_demo"]
    weights = out / "model.safetensors"
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-4] + b"\0\0\0\1")
        with pytest.raises(ModelError, match="does not match the model card"):
            load_model(out)
    finally:
        weights.write_bytes(original)


def test_bad_labels_are_reported(tmp_path) -> None:
    (tmp_path / "labels.csv").write_text("path,hardware\nx.dcm,spaceship\n")
    result = CliRunner().invoke(main, ["train", str(tmp_path), "--out", str(tmp_path / "m")])
    assert result.exit_code != 0 and "spaceship" in result.output


def test_fine_tuning_starts_from_an_existing_model(trained, tmp_path) -> None:
    root, out, _ = trained
    args = ["train", str(root / "data"), "--out", str(tmp_path / "ft"), "--arch", "resnet10t",
            "--input-size", "48", "--epochs-head", "0", "--epochs", "1", "--max-steps", "2",
            "--init-from", str(out), "--workers", "0"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "starting from the weights of" in result.output
    wrong = CliRunner().invoke(main, [*args[:5], "efficientnet_b0", *args[6:]])
    assert wrong.exit_code != 0 and "differ" in wrong.output


def test_outlier_exposure_flattens_the_output_on_images_that_are_not_hips(trained,
                                                                           tmp_path) -> None:
    """`--outliers`: crops of non-hip images (chest, knee, noise, ...) are trained towards a
    uniform output. Same start, data, seed and steps; only the term's weight differs."""
    import numpy as np

    from hiprouter.inference.models import load_model
    from hiprouter.synth.ood import generate_ood_dataset
    from hiprouter.training.calibration import softmax
    from hiprouter.training.train import forward_arrays, outlier_crops

    root, out, _ = trained
    ood = generate_ood_dataset(tmp_path / "ood", 2, seed=77).parent
    crops = outlier_crops([ood], 48)
    assert len(crops) >= 8  # several kinds give hip crops (photos of screens are refused)

    def distance_from_uniform(weight: str) -> tuple[float, float]:
        """(mean KL(uniform || p), mean top probability) over the outlier crops."""
        model_dir = tmp_path / f"oe{weight}"
        result = CliRunner().invoke(main, [
            "train", str(root / "data"), "--out", str(model_dir), "--arch", "resnet10t",
            "--input-size", "48", "--epochs-head", "0", "--epochs", "3", "--max-steps", "24",
            "--batch-size", "8", "--lr", "3e-3", "--init-from", str(out), "--workers", "0",
            "--outliers", str(ood), "--outlier-weight", weight, "--cache", str(tmp_path / "c")])
        assert result.exit_code == 0, result.output
        assert "outlier exposure:" in result.output
        model = load_model(model_dir, "cpu")
        assert model.card.training["outliers"] == [str(ood)]
        logits, _ = forward_arrays(model.module, crops, "cpu")
        p = softmax(logits)
        kl = -np.log(p).mean(axis=1) - np.log(p.shape[1])
        return float(kl.mean()), float(p.max(axis=1).mean())

    (plain_kl, plain_top), (exposed_kl, exposed_top) = (distance_from_uniform("0"),
                                                        distance_from_uniform("3"))
    print(plain_kl, plain_top, exposed_kl, exposed_top)
    assert exposed_kl < 0.5 * plain_kl, (plain_kl, exposed_kl)
    assert exposed_top < plain_top, (plain_top, exposed_top)


def test_outlier_folders_without_any_usable_image_are_refused(trained, tmp_path) -> None:
    """An --outliers folder whose files are no radiographs (a text file, a broken DICOM)
    gets a clear error naming the folder, not a training run without outlier exposure."""
    root, _, _ = trained
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.dcm").write_text("not DICOM")
    (junk / "cut.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    result = CliRunner().invoke(main, [
        "train", str(root / "data"), "--out", str(tmp_path / "m"), "--arch", "resnet10t",
        "--input-size", "48", "--epochs-head", "0", "--epochs", "1", "--max-steps", "1",
        "--workers", "0", "--outliers", str(junk)])
    assert result.exit_code != 0
    assert "no hip crops in the outlier folders" in result.output and str(junk) in result.output
