"""Evaluation figures agree with scikit-learn on a fixed example."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from hiprouter.training.evaluate import (
    _fast_auc,
    compute_metrics,
    fuse_hips,
    selective_figures,
    triage_figures,
    write_report,
)

CLASSES = ["a", "b", "c", "d"]
Y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 1, 2, 0, 1])  # class d never occurs
PROBS = np.array([
    [0.7, 0.1, 0.1, 0.1], [0.4, 0.3, 0.2, 0.1], [0.2, 0.5, 0.2, 0.1], [0.1, 0.8, 0.05, 0.05],
    [0.3, 0.4, 0.2, 0.1], [0.1, 0.2, 0.6, 0.1], [0.1, 0.1, 0.7, 0.1], [0.2, 0.2, 0.5, 0.1],
    [0.5, 0.1, 0.3, 0.1], [0.6, 0.2, 0.1, 0.1], [0.2, 0.6, 0.1, 0.1], [0.1, 0.2, 0.3, 0.4],
    [0.3, 0.3, 0.3, 0.1], [0.25, 0.35, 0.3, 0.1],
])


def test_metrics_match_scikit_learn(tmp_path) -> None:
    m = compute_metrics(Y, PROBS, CLASSES, n_boot=200, seed=1)
    pred = PROBS.argmax(1)
    assert m["accuracy"] == accuracy_score(Y, pred)
    assert m["cohen_kappa"] == cohen_kappa_score(Y, pred)
    assert m["confusion_matrix"] == confusion_matrix(Y, pred, labels=[0, 1, 2, 3]).tolist()
    p, r, f, s = precision_recall_fscore_support(Y, pred, labels=[0, 1, 2, 3], zero_division=0)
    for i, cls in enumerate(CLASSES):
        pc = m["per_class"][cls]
        assert (pc["precision"], pc["recall"], pc["f1"], pc["support"]) == (p[i], r[i], f[i], s[i])
    for i, cls in enumerate(CLASSES[:3]):
        auc = roc_auc_score((Y == i).astype(int), PROBS[:, i])
        assert abs(m["per_class"][cls]["auc"] - auc) < 1e-12
        lo, hi = m["per_class"][cls]["auc_ci95"]
        assert lo <= auc <= hi
    assert m["per_class"]["d"]["auc"] is None  # undefined, not made up
    lo, hi = m["accuracy_ci95"]
    assert lo <= m["accuracy"] <= hi and hi - lo > 0.05
    paths = write_report(m, Y, PROBS, tmp_path, "fixed example")
    assert json.loads(paths["json"].read_text())["accuracy"] == m["accuracy"]
    assert "Cohen's kappa" in paths["markdown"].read_text()
    for key in ("roc", "confusion"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rank_auc_equals_scikit_learn_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    score = np.round(rng.random(200), 1)  # many ties
    assert abs(_fast_auc(y, score) - roc_auc_score(y, score)) < 1e-12
    assert _fast_auc(np.zeros(5, int), score[:5]) is None


def test_views_of_the_same_hip_are_fused_but_unknown_sides_are_not() -> None:
    keys = [("s1", "R"), ("s1", "R"), ("s1", "L"), ("s2", "U"), ("s2", "U")]
    probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8], [0.6, 0.4], [0.4, 0.6]])
    y, p = fuse_hips(keys, [0, 0, 1, 0, 1], probs)
    assert y.tolist() == [0, 1, 0, 1]
    np.testing.assert_allclose(p[0], [0.7, 0.3])


def test_sensitivity_specificity_and_macro_figures_match_scikit_learn() -> None:
    from sklearn.metrics import f1_score, recall_score

    m = compute_metrics(Y, PROBS, CLASSES, n_boot=300, seed=2)
    pred = PROBS.argmax(1)
    assert m["macro_f1"] == pytest.approx(f1_score(Y, pred, labels=[0, 1, 2, 3], average="macro",
                                                   zero_division=0))
    for i, cls in enumerate(CLASSES[:3]):
        pc = m["per_class"][cls]
        assert pc["sensitivity"] == pytest.approx(recall_score(Y == i, pred == i))
        assert pc["specificity"] == pytest.approx(recall_score(Y != i, pred != i))
        lo, hi = pc["sensitivity_ci95"]
        assert lo <= pc["sensitivity"] <= hi
    assert m["per_class"]["d"]["sensitivity"] is None  # no positives: undefined
    lo, hi = m["macro_f1_ci95"]
    assert lo <= m["macro_f1"] <= hi
    lo, hi = m["macro_auc_ci95"]
    assert lo <= m["macro_auc"] <= hi


def test_triage_figures_flag_hips_as_the_pipeline_does() -> None:
    """Classes normal / neck / trochanteric; thresholds 0.2 and 0.5. Hips: a neck fracture at
    0.3 (flagged), a neck fracture at 0.1 (missed), a trochanteric one at 0.6 (flagged), a
    normal hip at neck 0.25 (falsely flagged), a normal hip (not flagged), and a neck
    fracture at 0.9 that is not assessed (never flagged)."""
    classes = ["normal", "neck", "troch"]
    probs = np.array([[0.6, 0.3, 0.1], [0.8, 0.1, 0.1], [0.3, 0.1, 0.6], [0.7, 0.25, 0.05],
                      [0.9, 0.05, 0.05], [0.05, 0.9, 0.05]])
    y = np.array([1, 1, 2, 0, 0, 1])
    tri = triage_figures(y, probs, classes, {"neck": 0.2, "troch": 0.5},
                         not_assessed=[False] * 5 + [True])
    assert tri["classes"]["neck"]["sensitivity"] == pytest.approx(1 / 3)
    assert tri["classes"]["neck"]["other_hips_flagged"] == pytest.approx(1 / 3)
    assert tri["classes"]["troch"]["sensitivity"] == 1.0
    assert tri["sensitivity"] == pytest.approx(2 / 4) and tri["specificity"] == 0.5
    assert tri["hips_flagged"] == pytest.approx(3 / 6)


def test_selective_figures_count_what_the_pipeline_would_say() -> None:
    probs = np.array([[0.9, 0.1], [0.55, 0.45], [0.2, 0.8], [0.7, 0.3]])
    y = np.array([0, 1, 0, 0])
    sel = selective_figures(y, probs, 0.6, not_assessed=[False, False, False, True])
    assert sel["not_assessed_rate"] == 0.25 and sel["indeterminate_rate"] == 0.25
    assert sel["assessed_rate"] == 0.5 and sel["accuracy_assessed"] == 0.5
    assert sel["wrong_definitive_rate"] == 0.25
