"""Acceptance of the shipped ONFH demo weights (models/onfh-demo), on synthetic studies.

Separate from the plumbing tests (which fit their own small model): this checks what the
synthetic-trained demo model itself does, and is skipped until the weights ship. Synthetic
figures only; they say nothing about real radiographs.
"""

from __future__ import annotations

import pytest

import tests.onfh.register  # noqa: F401  (kind onfh without a reinstalled entry point)
from hiprouter.inference.models import demo_model_dir, read_card, verify_weights
from hiprouter.inference.onfh import ONFH_TASK
from tests.onfh.helpers import onfh_study

DEMO = demo_model_dir("onfh")
pytestmark = pytest.mark.skipif(not (DEMO / "card.yaml").is_file(),
                                reason="ONFH demo weights not shipped (models/onfh-demo)")


def test_demo_card_is_a_labelled_synthetic_onfh_model() -> None:
    card = read_card(DEMO)
    assert card.label_set == "onfh" and card.task == ONFH_TASK and card.synthetic_demo
    assert verify_weights(DEMO, card)
    assert (DEMO / card.weights_file).stat().st_size < 6_000_000
    figures = card.evaluation["holdout"]
    assert figures["dice_mean"] >= 0.97
    assert figures["auc_healthy_vs_grade"]["0_vs_4"]["auc"] >= 0.9


def test_acceptance_demo_weights_stage_a_grade4_head_above_a_healthy_one() -> None:
    """Healthy right head, grade-4 left head, five synthetic patients rendered like the demo's
    training data: the left head is the farther one and staged 3 or 4 in at least four.

    Grade 4 because that is what the demo separates well on its hold-out set (AUC 0.92 for
    grade 0 vs 4; 0.68 for grade 3, which the plumbing tests cover with their own model)."""
    from hiprouter.config import Settings
    from hiprouter.inference.study import StudyInput
    from hiprouter.pipelines.registry import PipelineSet

    pipe = PipelineSet(Settings.model_validate(
        {"pipelines": {"onfh": {"kind": "onfh", "device": "cpu"}}})).get("onfh")
    farther = staged = 0
    for index in range(5):
        synth = onfh_study(4242, index, {"R": 0, "L": 4}, size=(700, 1000), plain=False)
        study = StudyInput.from_datasets(synth.study_uid, [i.dataset for i in synth.images],
                                         ("CR", "DX"))
        by_side = {f.laterality: f for f in pipe.run(study, None).findings}
        if "not_assessed" in (by_side["L"].status, by_side["R"].status):
            continue  # no head found; a stage below the card's min_confidence still counts
        d = {s: f.measurement("mahalanobis_distance").value for s, f in by_side.items()}
        farther += d["L"] > d["R"]
        staged += by_side["L"].classification.predicted in ("onfh_3", "onfh_4")
    assert farther >= 4 and staged >= 4
