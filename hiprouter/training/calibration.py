"""Calibration, abstention and triage thresholds, all chosen on the validation split.

- Temperature scaling (Guo et al. 2017): one scalar T > 0 minimising the negative
  log-likelihood of softmax(logits / T) on the validation crops. Applied at run time by
  `CropClassifier` (the card's ``calibration.temperature``).
- Expected calibration error (ECE): 15 equal-width confidence bins, the weighted mean of
  |accuracy - mean confidence| per bin; with a reliability diagram PNG.
- Abstention: the smallest confidence t such that the validation hips predicted with
  confidence >= t are at least `target` accurate (selective classification); hips below
  t are "indeterminate".
- Triage thresholds: per triage class, the highest probability threshold at which the
  one-vs-rest sensitivity on the validation hips is still >= the target.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ECE_BINS = 15


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, y: Sequence[int], temperature: float = 1.0) -> float:
    p = softmax(logits, temperature)
    return float(-np.log(p[np.arange(len(p)), np.asarray(y)] + 1e-12).mean())


def fit_temperature(logits: np.ndarray, y: Sequence[int],
                    bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature minimising validation NLL (bounded scalar search on log T)."""
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    if len(logits) == 0:
        return 1.0
    res = minimize_scalar(lambda lt: nll(logits, y, float(np.exp(lt))),
                          bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded")
    return float(np.exp(res.x))


def reliability(probs: np.ndarray, y: Sequence[int], bins: int = ECE_BINS) -> dict[str, Any]:
    """Per confidence bin: count, accuracy, mean confidence; and the ECE."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y)
    conf = probs.max(axis=1) if len(probs) else np.zeros(0)
    correct = (probs.argmax(axis=1) == y) if len(probs) else np.zeros(0, bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    out = {"edges": edges.tolist(), "count": [], "accuracy": [], "confidence": []}
    ece = 0.0
    for b in range(bins):
        sel = which == b
        n = int(sel.sum())
        out["count"].append(n)
        if n:
            acc, c = float(correct[sel].mean()), float(conf[sel].mean())
            ece += n / len(conf) * abs(acc - c)
        else:
            acc, c = None, None
        out["accuracy"].append(acc)
        out["confidence"].append(c)
    out["ece"] = float(ece) if len(conf) else None
    return out


def ece(probs: np.ndarray, y: Sequence[int], bins: int = ECE_BINS) -> float | None:
    """Expected calibration error (equal-width bins of the top-class probability)."""
    return reliability(probs, y, bins)["ece"]


def rounded(value: float | None, digits: int = 4) -> float | None:
    """A figure as a model card records it (None stays None)."""
    return None if value is None else round(float(value), digits)


def plot_reliability(probs: np.ndarray, y: Sequence[int], path: Path,
                     title: str = "Reliability diagram") -> Path:
    """Accuracy vs confidence per bin, with the bin counts, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rel = reliability(probs, y)
    edges = np.asarray(rel["edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    acc = [a if a is not None else 0.0 for a in rel["accuracy"]]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(5, 6), dpi=80, sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(centres, acc, width=width * 0.95, color="tab:blue", label="accuracy")
    gaps = [(c if c is not None else 0.0) for c in rel["confidence"]]
    ax.bar(centres, np.asarray(gaps) - np.asarray(acc), bottom=acc, width=width * 0.95,
           color="tab:red", alpha=0.3, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ece_text = "n/a" if rel["ece"] is None else f"{rel['ece']:.3f}"
    ax.set(ylabel="accuracy", title=f"{title} (ECE {ece_text})", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7, loc="upper left")
    ax2.bar(centres, rel["count"], width=width * 0.95, color="grey")
    ax2.set(xlabel="confidence (top-class probability)", ylabel="hips")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def choose_min_confidence(probs: np.ndarray, y: Sequence[int], target: float = 0.95,
                          ) -> dict[str, Any]:
    """Smallest confidence t whose accepted set (confidence >= t) is >= `target` accurate,
    for probabilities whose argmax is the answer (`min_confidence_of`)."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y)
    if len(probs) == 0:
        return {"min_confidence": 0.0, "target_accuracy": target, "reached": False}
    return min_confidence_of(probs.max(axis=1), probs.argmax(axis=1) == y, target)


def min_confidence_of(confidence: np.ndarray, correct: np.ndarray, target: float = 0.95
                      ) -> dict[str, Any]:
    """Smallest confidence t whose accepted set (confidence >= t) is >= `target` accurate,
    given each hip's confidence in its answer and whether the answer was right.

    Returns t with the validation accuracy and coverage above it (and the accuracy of all).
    When even the most confident hips miss the target, t is the highest confidence seen
    (almost everything abstains) and `reached` is False.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if len(conf) == 0:
        return {"min_confidence": 0.0, "target_accuracy": target, "reached": False}
    order = np.argsort(-conf, kind="stable")
    cum_acc = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    ok = np.nonzero(cum_acc >= target)[0]
    if len(ok) == 0:
        t, reached, k = float(conf.max()), False, 1
    else:
        k = int(ok.max()) + 1  # the largest accepted set that still meets the target
        t, reached = float(conf[order][k - 1]), True
        if k == len(order):
            t = 0.0  # everything meets the target: never abstain
    accepted = conf >= t
    return {
        "min_confidence": float(np.ceil(t * 1e4) / 1e4),
        "target_accuracy": target,
        "reached": reached,
        "val_accuracy_all": float(correct.mean()),
        "val_accuracy_assessed": float(correct[accepted].mean()) if accepted.any() else None,
        "val_coverage": float(accepted.mean()),
    }


def triage_threshold(probs_c: np.ndarray, positive: np.ndarray, sensitivity: float = 0.95,
                     ) -> float | None:
    """Highest threshold t with sensitivity(p >= t) >= `sensitivity`; None without positives."""
    pos = np.sort(np.asarray(probs_c, dtype=np.float64)[np.asarray(positive, bool)])
    if len(pos) == 0:
        return None
    # keep at least ceil(sensitivity * n) positives at or above t
    need = int(np.ceil(sensitivity * len(pos) - 1e-9))
    return float(pos[len(pos) - need]) if need > 0 else 1.0


def triage_thresholds(probs: np.ndarray, y: Sequence[int], classes: Sequence[str],
                      triage_classes: Sequence[str], sensitivity: float = 0.95,
                      ) -> dict[str, Any]:
    """Per triage class: threshold, and its validation sensitivity and specificity."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y)
    out: dict[str, Any] = {}
    for key in triage_classes:
        c = list(classes).index(key)
        positive = y == c
        t = triage_threshold(probs[:, c], positive, sensitivity)
        if t is None:
            continue
        flagged = probs[:, c] >= t
        spec = float((~flagged[~positive]).mean()) if (~positive).any() else None
        t = float(np.floor(t * 1e4) / 1e4)  # rounded down: never below the target sensitivity
        out[key] = {"threshold": t, "val_sensitivity": float(flagged[positive].mean()),
                    "val_specificity": spec, "val_positives": int(positive.sum())}
    return out
