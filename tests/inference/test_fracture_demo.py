"""The shipped fracture demo model (models/fracture-demo) tells fractured from intact hips
on fresh synthetic AP pelvis radiographs, made with a seed its training never saw.

Synthetic demo weights: these figures say nothing about real radiographs.
"""

from __future__ import annotations

import numpy as np

from hiprouter.inference.models import demo_model_dir, read_card, verify_weights
from hiprouter.pipelines.fracture import FRACTURE
from hiprouter.synth.study import make_study
from tests.inference.helpers import classify

DEMO = demo_model_dir("fracture")
SEED = 424242
"""Not a training or evaluation seed of the demo model (see its card)."""
STUDIES = 16

def test_card_describes_a_synthetic_fracture_model() -> None:
    card = read_card(DEMO)
    assert card.label_set == "fracture" and card.synthetic_demo
    assert card.classes == FRACTURE.keys
    assert "synthetic" in card.limitations.lower()
    assert verify_weights(DEMO, card)
    assert (DEMO / card.weights_file).stat().st_size < 15 * 2**20
    assert str(SEED) not in str(card.training_data)


def test_demo_model_finds_fractures_on_fresh_synthetic_hips() -> None:

    rng = np.random.default_rng(SEED)
    choices = ["none", "none", "femoral_neck_fracture", "intertrochanteric_fracture"]
    truth, predicted = [], []
    for i in range(STUDIES):
        fracture = {s: str(rng.choice(choices)) for s in ("R", "L")}
        study = make_study(SEED, i, hardware={"R": "no_hardware", "L": "no_hardware"},
                           fracture=fracture, views=("ap_pelvis",), size=(450, 650))
        _, result = classify([img.dataset for img in study.images], kind="fracture",
                             runtime="torch", heatmaps=False)
        assert result.model.name == "fracture-demo" and result.model.synthetic_demo
        by_side = {f.laterality: f.classification.predicted for f in result.findings}
        assert set(by_side) == {"R", "L"}, result.not_assessed
        for side in ("R", "L"):
            truth.append(fracture[side] != "none")
            predicted.append(by_side[side] != "no_fracture")
    truth_a, pred_a = np.array(truth), np.array(predicted)
    assert truth_a.sum() >= 8 and (~truth_a).sum() >= 8  # both kinds of hip are tested
    sensitivity = float(pred_a[truth_a].mean())
    specificity = float((~pred_a[~truth_a]).mean())
    assert sensitivity >= 0.7, f"fractures found on {sensitivity:.0%} of fractured hips"
    assert specificity >= 0.7, f"no fracture on {specificity:.0%} of intact hips"
