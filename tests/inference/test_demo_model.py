"""The bundled hardware demo model: intact, labelled synthetic, within the size budget.

Its detection on freshly generated studies and images is in test_hardware_acceptance.py."""

from __future__ import annotations

from hiprouter.inference.models import demo_model_dir, read_card, verify_weights

DEMO_MODEL_DIR = demo_model_dir("hardware")


def test_demo_model_card_and_weights() -> None:
    card = read_card(DEMO_MODEL_DIR)
    assert card.synthetic_demo and "synthetic" in card.training_data.lower()
    assert "nothing about" in card.limitations
    assert verify_weights(DEMO_MODEL_DIR, card)
    assert (DEMO_MODEL_DIR / card.weights_file).stat().st_size <= 20 * 1024 * 1024
    assert card.evaluation["held_out_synthetic"]["accuracy"] > 0.6
    assert (DEMO_MODEL_DIR / "evaluation" / "report.md").is_file()
