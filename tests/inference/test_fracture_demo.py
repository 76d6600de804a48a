"""The shipped fracture demo model (models/fracture-demo): intact and labelled synthetic.

Synthetic demo weights: their figures say nothing about real radiographs.
"""

from __future__ import annotations

from hiprouter.inference.models import demo_model_dir, read_card, verify_weights
from hiprouter.pipelines.fracture import FRACTURE

DEMO = demo_model_dir("fracture")

def test_card_describes_a_synthetic_fracture_model() -> None:
    card = read_card(DEMO)
    assert card.label_set == "fracture" and card.synthetic_demo
    assert card.classes == FRACTURE.keys
    assert "synthetic" in card.limitations.lower()
    assert verify_weights(DEMO, card)
    assert (DEMO / card.weights_file).stat().st_size < 15 * 2**20
