"""Out-of-distribution images are not assessed, unsure findings are indeterminate, children
are outside the intended use, and a metal-channel model runs unchanged through the
classifier on both runtimes. Models are trained inside the tests (never shipped weights)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from click.testing import CliRunner

from hiprouter.cli import main
from hiprouter.inference.classifier import CropClassifier
from hiprouter.inference.models import read_card
from tests.inference.helpers import blob_image, classify, make_radiograph


@pytest.fixture(scope="module")
def hip_model(tmp_path_factory: pytest.TempPathFactory):
    """A small hardware model trained on a few primary-renderer studies, with grey + metal
    input channels and a Mahalanobis OOD threshold fitted on its training crops (with so
    few crops the held-out ones are not yet typical; real runs take the threshold from the
    validation split)."""
    from hiprouter.synth.study import generate_dataset

    root = tmp_path_factory.mktemp("oodtrain")
    labels = generate_dataset(root / "data", 24, 7, progress=False, size=(220, 300))
    out = root / "model"
    result = CliRunner().invoke(main, [
        "train", str(root / "data"), "--labels", str(labels), "--out", str(out),
        "--arch", "resnet10t", "--input-size", "64", "--epochs-head", "0", "--epochs", "4",
        "--batch-size", "8", "--channels", "grey,metal", "--ood-method", "mahalanobis",
        "--ood-tpr", "0.99", "--ood-threshold-on", "training", "--workers", "0",
        "--name", "ood-test", "--synthetic-demo", "--augment", "strong", "--tta", "hflip"])
    assert result.exit_code == 0, result.output
    return out, root / "data", result.output


def _claims_pelvis(ds):
    """Headers that claim an AP pelvis, so only the image itself can refuse it."""
    ds.BodyPartExamined = "PELVIS"
    ds.SeriesDescription = "AP PELVIS"
    for key in ("PatientAge", "PatientBirthDate"):
        if key in ds:
            delattr(ds, key)
    return ds


def test_card_records_channels_ood_calibration_and_abstention(hip_model) -> None:
    out, _, output = hip_model
    card = read_card(out)
    assert card.in_chans == 2 and card.parameters["channels"] == ["grey", "metal"]
    assert card.parameters["tta"] == ["hflip"]
    assert card.ood["method"] == "mahalanobis" and card.ood["tpr"] == 0.99
    assert "threshold:" in card.ood["fitted_on"] and (out / card.ood["file"]).is_file()
    assert card.calibration["temperature"] > 0 and "ece_after" in card.calibration
    assert 0.0 <= card.abstention["min_confidence"] <= 1.0
    assert "OOD (mahalanobis)" in output


@pytest.mark.parametrize("kind", ["chest_pa", "noise", "photo_mono"])
def test_out_of_distribution_images_are_not_assessed(hip_model, kind) -> None:
    from hiprouter.synth.ood import make_ood_image

    out, _, _ = hip_model
    ds = _claims_pelvis(make_ood_image(kind, 5))
    _, result = classify([ds], models=[out], runtime="torch")
    assert result.findings, result.not_assessed
    for finding in result.findings:
        assert finding.classification.status == "not_assessed", (
            kind, finding.classification.reason)
        assert "unlike the training data" in finding.classification.reason


def test_training_images_stay_assessed(hip_model) -> None:
    import pydicom

    out, data, _ = hip_model
    with (out / "split.csv").open() as fh:
        paths = sorted({r["path"] for r in csv.DictReader(fh) if r["split"] == "train"})[:6]
    statuses = []
    for p in paths:
        _, result = classify([pydicom.dcmread(p)], models=[out], runtime="torch",
                             min_confidence=0.0)
        statuses += [f.classification.status for f in result.findings]
    assert statuses.count("not_assessed") <= len(statuses) // 4, statuses


def test_metal_channel_model_agrees_between_torch_and_onnx(hip_model) -> None:
    out, _, _ = hip_model
    crops = [blob_image((90, 60), (40, 30), 9).astype(np.float32) / 4095.0,
             np.random.default_rng(1).random((70, 50)).astype(np.float32)]
    torch_out = CropClassifier.from_dirs([out], "cpu", "torch").predict(crops)
    onnx_out = CropClassifier.from_dirs([out], "cpu", "onnx").predict(crops)
    for a, b in zip(torch_out, onnx_out, strict=True):
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-4)
        assert a.ood_score == pytest.approx(b.ood_score, rel=1e-3, abs=1e-2)
        assert a.heatmap.shape == b.heatmap.shape


def test_indeterminate_finding_prepopulates_no_definitive_sentence(hip_model) -> None:
    from hiprouter.findings import StudyFindings
    from hiprouter.report.text import render_report_text

    out, data, _ = hip_model
    import pydicom

    first = sorted(data.glob("S*/IM1.dcm"))[0]
    _, result = classify([pydicom.dcmread(first)], models=[out], runtime="torch",
                         min_confidence=0.999, ood_detection=False)
    assert {f.classification.status for f in result.findings} == {"indeterminate"}
    study = StudyFindings("1.2.3", [result])
    for sentence in render_report_text(study).finding_sentences:
        assert "indeterminate (candidates:" in sentence
        assert sentence.count(":") >= 1 and not sentence.endswith("arthroplasty.")


def test_children_are_outside_the_intended_use() -> None:
    from hiprouter.pipelines.classifier import patient_age_years
    from tests.inference.helpers import constant_model

    pixels = blob_image((120, 200), (60, 50), 8)
    child = make_radiograph(pixels, SeriesDescription="AP PELVIS", PatientAge="006Y")
    born = make_radiograph(pixels, SeriesDescription="AP PELVIS", PatientBirthDate="20150301",
                           StudyDate="20240301")
    adult = make_radiograph(pixels, SeriesDescription="AP PELVIS", PatientAge="067Y")
    unknown = make_radiograph(pixels, SeriesDescription="AP PELVIS")
    assert patient_age_years(child) == 6 and patient_age_years(unknown) is None
    assert patient_age_years(born) == pytest.approx(9.0, abs=0.01)
    assert patient_age_years(make_radiograph(pixels, PatientAge="018M")) == 1.5
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        model = constant_model(Path(tmp) / "m", "hardware", "tha")
        for ds in (child, born):
            _, result = classify([ds], models=[model], min_age_years=18)
            assert result.findings == []
            (reason,) = result.not_assessed.values()
            assert reason.startswith("patient younger than 18 years")
        for ds in (adult, unknown):
            _, result = classify([ds], models=[model], min_age_years=18)
            assert [f.classification.predicted for f in result.findings] == ["tha", "tha"]
            assert not result.not_assessed


def test_empty_labels_are_skipped_and_counted(tmp_path) -> None:
    from tests.inference.helpers import toy_dataset

    labels = toy_dataset(tmp_path / "data", 10, ["no_hardware", "tha"], seed=1)
    with labels.open() as fh:
        rows = list(csv.DictReader(fh))
    for r in rows[::3]:
        r["hardware"] = ""
    with labels.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    result = CliRunner().invoke(main, [
        "train", str(tmp_path / "data"), "--out", str(tmp_path / "m"), "--arch", "resnet10t",
        "--input-size", "32", "--epochs-head", "0", "--epochs", "1", "--max-steps", "1",
        "--workers", "0", "--ood-tpr", "0"])
    assert result.exit_code == 0, result.output
    skipped = len(rows[::3])
    assert f"skipped {skipped} row(s) with an empty 'hardware' label" in result.output
    assert read_card(tmp_path / "m").training["skipped_empty_labels"] == skipped


def test_blank_and_noise_crops_show_no_anatomy_but_radiograph_crops_do() -> None:
    from hiprouter.inference.decode import decode
    from hiprouter.inference.laterality import hip_crops
    from hiprouter.inference.ood import no_anatomy
    from hiprouter.inference.preprocess import letterbox
    from hiprouter.synth.study import make_study

    rng = np.random.default_rng(3)
    assert no_anatomy(np.full((64, 64), 0.4))
    assert no_anatomy(rng.uniform(0.05, 1.0, (64, 64)))
    study = make_study(11, hardware={"R": "tha", "L": "no_hardware"})
    crops = [c for image in study.images
             for c in hip_crops(image.dataset, decode(image.dataset).pixels)]
    assert crops and not any(no_anatomy(letterbox(c.pixels, 160)[0]) for c in crops)
