"""Agreement of findings with report labels, and shifts of distributions.

Per class (one against the rest): sensitivity and specificity with Wilson 95 % intervals,
Cohen's kappa with a percentile-bootstrap interval; overall: accuracy (Wilson) and the
multi-class kappa (bootstrap). The population stability index compares the predicted
class distribution of a week with the baseline's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> list[float] | None:
    """Wilson score interval of a proportion k/n."""
    if n <= 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


def kappa(truth: np.ndarray, pred: np.ndarray, k: int) -> float | None:
    """Cohen's kappa of integer labels in 0..k-1 (None when undefined)."""
    n = len(truth)
    if n == 0:
        return None
    m = np.zeros((k, k))
    np.add.at(m, (truth, pred), 1)
    po = np.trace(m) / n
    pe = float((m.sum(0) * m.sum(1)).sum()) / (n * n)
    if pe >= 1.0:
        return 1.0 if po >= 1.0 else None
    return float((po - pe) / (1 - pe))


def _boot(truth: np.ndarray, pred: np.ndarray, k: int, n_boot: int, seed: int
          ) -> list[float] | None:
    if len(truth) < 10 or n_boot <= 0:
        return None
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(truth), len(truth))
        v = kappa(truth[idx], pred[idx], k)
        if v is not None:
            vals.append(v)
    if len(vals) < 10:
        return None
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return [float(lo), float(hi)]


def agreement(pairs: Sequence[tuple[str, str]], classes: Sequence[str], n_boot: int = 500,
              seed: int = 0) -> dict[str, Any]:
    """Figures for (truth, predicted) class-key pairs; classes outside `classes` are added."""
    keys = list(dict.fromkeys([*classes, *(t for t, _ in pairs), *(p for _, p in pairs)]))
    index = {c: i for i, c in enumerate(keys)}
    truth = np.array([index[t] for t, _ in pairs], dtype=int)
    pred = np.array([index[p] for _, p in pairs], dtype=int)
    n = len(pairs)
    correct = int((truth == pred).sum()) if n else 0
    out: dict[str, Any] = {
        "n": n, "accuracy": correct / n if n else None, "accuracy_ci95": wilson(correct, n),
        "kappa": kappa(truth, pred, len(keys)),
        "kappa_ci95": _boot(truth, pred, len(keys), n_boot, seed), "per_class": {}}
    for c, i in index.items():
        t, p = truth == i, pred == i
        tp, fn = int((t & p).sum()), int((t & ~p).sum())
        tn, fp = int((~t & ~p).sum()), int((~t & p).sum())
        if tp + fn + fp == 0:
            continue
        out["per_class"][c] = {
            "positives": tp + fn, "tp": tp, "fn": fn, "tn": tn, "fp": fp,
            "sensitivity": tp / (tp + fn) if tp + fn else None,
            "sensitivity_ci95": wilson(tp, tp + fn),
            "specificity": tn / (tn + fp) if tn + fp else None,
            "specificity_ci95": wilson(tn, tn + fp),
            "kappa": kappa(t.astype(int), p.astype(int), 2),
            "kappa_ci95": _boot(t.astype(int), p.astype(int), 2, n_boot, seed),
        }
    return out


def distribution(values: Sequence[str]) -> dict[str, float]:
    n = len(values)
    out: dict[str, float] = {}
    for v in values:
        out[v] = out.get(v, 0.0) + 1.0 / n
    return out


def psi(expected: Mapping[str, float], actual: Mapping[str, float], floor: float = 1e-3
        ) -> float:
    """Population stability index of two class distributions (0: the same; > 0.25: a
    large shift, by the usual rule of thumb)."""
    total = 0.0
    for key in set(expected) | set(actual):
        e = max(float(expected.get(key, 0.0)), floor)
        a = max(float(actual.get(key, 0.0)), floor)
        total += (a - e) * math.log(a / e)
    return total
