"""The shipped fracture demo model (models/fracture-demo) tells fractured from intact hips
on fresh synthetic AP pelvis radiographs, made with a seed its training never saw.

Synthetic demo weights: these figures say nothing about real radiographs.
"""

from __future__ import annotations

import numpy as np

from hiprouter.config import PipelineConfig
from hiprouter.inference.classes import FRACTURE_CLASSES
from hiprouter.inference.models import demo_model_dir, read_card, verify_weights
from hiprouter.inference.predict import HardwareClassifier
from hiprouter.synth.study import make_study

DEMO = demo_model_dir("fracture")
SEED = 424242
"""Not a training or evaluation seed of the demo model (see its card)."""
STUDIES = 16

def test_card_describes_a_synthetic_fracture_model() -> None:
    card = read_card(DEMO)
    assert card.label_set == "fracture" and card.synthetic_demo
    assert card.classes == [c.key for c in FRACTURE_CLASSES]
    assert "synthetic" in card.limitations.lower()
    assert verify_weights(DEMO, card)
    assert (DEMO / card.weights_file).stat().st_size < 15 * 2**20
    assert str(SEED) not in str(card.training_data)


def test_demo_model_finds_fractures_on_fresh_synthetic_hips() -> None:
    clf = HardwareClassifier.from_config(PipelineConfig(kind="fracture", device="cpu",
                                                        runtime="torch", heatmaps=False))
    assert clf.info.name == "fracture-demo" and clf.info.synthetic_demo
    rng = np.random.default_rng(SEED)
    choices = ["none", "none", "femoral_neck_fracture", "intertrochanteric_fracture"]
    truth, predicted = [], []
    for i in range(STUDIES):
        fracture = {s: str(rng.choice(choices)) for s in ("R", "L")}
        study = make_study(SEED, i, hardware={"R": "no_hardware", "L": "no_hardware"},
                           fracture=fracture, views=("ap_pelvis",), size=(450, 650))
        result = clf.predict_study([img.dataset for img in study.images], study.study_uid)
        by_side = {h.laterality: h.predicted_class for h in result.hips}
        assert set(by_side) == {"R", "L"}, result.refused
        for side in ("R", "L"):
            truth.append(fracture[side] != "none")
            predicted.append(by_side[side] != "no_fracture")
    truth_a, pred_a = np.array(truth), np.array(predicted)
    assert truth_a.sum() >= 8 and (~truth_a).sum() >= 8  # both kinds of hip are tested
    sensitivity = float(pred_a[truth_a].mean())
    specificity = float((~pred_a[~truth_a]).mean())
    assert sensitivity >= 0.7, f"fractures found on {sensitivity:.0%} of fractured hips"
    assert specificity >= 0.7, f"no fracture on {specificity:.0%} of intact hips"
