"""Acceptance of the shipped screening demo weights (seed 001) on studies generated afresh.

The floors sit well below the figures measured on the held-out sets (the card's
`evaluation`, docs/validation.md), so they catch broken, swapped or untrained weights, not
the sampling noise of a small set."""

from __future__ import annotations

from pathlib import Path

import pytest

from hiprouter.inference.models import demo_model_dir

DEMO = demo_model_dir("screening")
FRACTURES = ("femoral_neck_fracture", "intertrochanteric_fracture")
MACRO_AUC_FLOOR = 0.7
"""Floor of the macro AUC (one-vs-rest) on a small fresh primary-renderer set; the card's
held-out figure is far above it."""


@pytest.fixture(scope="module")
def fresh_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hiprouter.synth.study import generate_dataset

    out = tmp_path_factory.mktemp("screening")
    generate_dataset(out, 24, seed=4343, task="screening", size=(600, 900), progress=False)
    return out


def test_shipped_screening_card_has_triage_calibration_abstention_and_ood() -> None:
    from hiprouter.inference.models import read_card, verify_weights
    from hiprouter.pipelines.screening import SCREENING

    card = read_card(DEMO)
    assert verify_weights(DEMO, card) and card.synthetic_demo
    assert card.label_set == "screening" and list(card.classes) == list(SCREENING.keys)
    assert (DEMO / card.weights_file).stat().st_size <= 20 * 1024 * 1024
    # seed 001's recipe: CBAM attention, GeM pooling, class-balanced focal loss
    assert card.training["attention"] == "cbam" and card.training["pool"] == "gem"
    assert card.training["loss"] == "cb-focal"
    # fracture triage thresholds chosen on the validation split at a target sensitivity
    thresholds = card.triage_thresholds
    assert set(thresholds) == set(FRACTURES) and all(0 < t < 1 for t in thresholds.values())
    assert card.calibration["temperature"] > 0
    assert 0 < card.abstention["min_confidence"] < 1
    assert card.ood["threshold"] > 0 and card.ood["structure_check"]
    assert "held_out_synthetic" in card.evaluation


def test_shipped_screening_model_ranks_the_classes_of_a_fresh_set(fresh_set: Path,
                                                                  tmp_path: Path) -> None:
    from hiprouter.training.evaluate import evaluate_model

    metrics, _ = evaluate_model([DEMO], fresh_set, fresh_set / "labels.csv", tmp_path / "ev",
                                device="cpu", n_boot=20)
    assert metrics["n"] >= 40
    assert metrics["macro_auc"] >= MACRO_AUC_FLOOR, metrics["macro_auc"]
    sel = metrics["selective"]
    assert sel["accuracy_assessed"] is None or sel["accuracy_assessed"] >= metrics["accuracy"]


@pytest.mark.parametrize("kind", ["chest_pa", "knee_ap", "hand_pa"])
def test_films_that_are_not_hips_claimed_as_a_pelvis_get_no_definitive_answer(kind: str) -> None:
    """A chest, knee or hand film whose headers claim an AP pelvis (only the image can then
    refuse it): no hip gets a definitive screening answer (0.1.0 called chest films
    "internal fixation" or "normal" definitively; 0.2.0 was trained with outlier exposure)."""
    from hiprouter.inference.classifier import CropClassifier
    from hiprouter.inference.models import read_card
    from tests.inference.helpers import claimed_pelvis_predictions

    classifier = CropClassifier.from_dirs([DEMO], "cpu")
    min_confidence = read_card(DEMO).abstention["min_confidence"]
    for preds in claimed_pelvis_predictions(classifier, kind):
        assert preds
        assert all(p.ood or p.probabilities.max() < min_confidence for p in preds), kind
