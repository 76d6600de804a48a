"""The bundled demo model: intact, labelled synthetic, and far above chance on new studies."""

from __future__ import annotations

import numpy as np

from hiprouter.inference.models import demo_model_dir, read_card, verify_weights
from hiprouter.synth.study import make_study
from tests.inference.helpers import classify

DEMO_MODEL_DIR = demo_model_dir("hardware")

FRESH_SEED = 424242
"""Not used for the demo model's training (1000) or held-out evaluation (2000) data."""


def test_demo_model_card_and_weights() -> None:
    card = read_card(DEMO_MODEL_DIR)
    assert card.synthetic_demo and "synthetic" in card.training_data.lower()
    assert "nothing about" in card.limitations
    assert verify_weights(DEMO_MODEL_DIR, card)
    assert (DEMO_MODEL_DIR / card.weights_file).stat().st_size < 30 * 1024 * 1024
    assert card.evaluation["held_out_synthetic"]["accuracy"] > 0.6
    assert (DEMO_MODEL_DIR / "evaluation" / "report.md").is_file()


def test_demo_model_far_above_chance_on_fresh_synthetic_studies() -> None:
    correct, total = 0, 0
    for index in range(16):
        study = make_study(FRESH_SEED, index, size=(450, 650))
        truth = {row["laterality"]: row["hardware"] for img in study.images
                 for row in img.labels}
        _, result = classify([img.dataset for img in study.images], heatmaps=False)
        assert result.model.synthetic_demo
        assert not result.not_assessed
        for f in result.findings:
            assert f.laterality in truth
            correct += f.classification.predicted == truth[f.laterality]
            total += 1
    accuracy = correct / total
    print(f"demo model on {total} fresh synthetic hips: accuracy {accuracy:.2f}")
    assert total >= 16
    assert accuracy >= 0.6, f"accuracy {accuracy:.2f} on {total} hips (chance ~0.11)"
    assert np.isfinite(accuracy)
