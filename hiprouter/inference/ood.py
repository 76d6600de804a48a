"""Out-of-distribution scores of a crop: is it unlike everything the model was trained on?

Two scores, both "higher = less familiar", each compared with the threshold in the model
card (``ood: {method, threshold, fitted_on, tpr}``), which training sets so that a chosen
fraction (``tpr``) of the training crops stays below it:

- ``energy``: ``-logsumexp(logits)`` (Liu et al. 2020); needs nothing but the logits.
- ``mahalanobis``: the smallest Mahalanobis distance of the crop's pooled last feature map
  to the class means, with one shared covariance (Lee et al. 2018); the means and the
  precision matrix are stored next to the weights (``ood.npz``, sha256 in the card).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

STATS_FILE = "ood.npz"


def energy(logits: np.ndarray) -> np.ndarray:
    """Energy score per row: -logsumexp(logits); higher = more unusual."""
    logits = np.asarray(logits, dtype=np.float64)
    m = logits.max(axis=-1)
    return -(m + np.log(np.exp(logits - m[..., None]).sum(axis=-1)))


GEM_EPS = 1e-6
"""The clamp of generalized-mean pooling (layers.GeMPool uses the same)."""


def pooled(features: np.ndarray, pool: str = "avg", p: float = 3.0) -> np.ndarray:
    """Global pooling of feature maps (B, C, h, w) -> (B, C), as the model's head pools."""
    f = np.asarray(features, dtype=np.float64)
    if pool == "gem":
        f = np.maximum(f, GEM_EPS)
        return np.power(np.power(f, p).mean(axis=(-2, -1)), 1.0 / p)
    return f.mean(axis=(-2, -1))


class Mahalanobis:
    """Class means and a shared precision matrix of pooled features."""

    def __init__(self, means: np.ndarray, precision: np.ndarray, centre: np.ndarray,
                 scale: np.ndarray) -> None:
        self.means = np.asarray(means, dtype=np.float64)
        self.precision = np.asarray(precision, dtype=np.float64)
        self.centre = np.asarray(centre, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)

    @classmethod
    def fit(cls, feats: np.ndarray, y: Sequence[int]) -> Mahalanobis:
        """Fit on training features: standardise, class means, and the shared within-class
        covariance with Ledoit-Wolf shrinkage (few crops, many feature dimensions)."""
        from sklearn.covariance import LedoitWolf

        x = np.asarray(feats, dtype=np.float64)
        y = np.asarray(y)
        centre = x.mean(axis=0)
        std = x.std(axis=0)
        # floor: a feature that barely varied in training must not blow distances up
        scale = np.maximum(std, 0.1 * float(std.mean()) + 1e-6)
        z = (x - centre) / scale
        classes = sorted(set(y.tolist()))
        means = np.stack([z[y == c].mean(axis=0) for c in classes])
        resid = z - means[np.searchsorted(classes, y)]
        lw = LedoitWolf(assume_centered=True).fit(resid)
        return cls(means, lw.precision_, centre, scale)

    def score(self, feats: np.ndarray) -> np.ndarray:
        """Smallest squared Mahalanobis distance to a class mean, per row."""
        z = (np.asarray(feats, dtype=np.float64) - self.centre) / self.scale
        d = z[:, None, :] - self.means[None]
        return np.einsum("nkc,cd,nkd->nk", d, self.precision, d).min(axis=1)

    def save(self, path: Path) -> Path:
        np.savez(path, means=self.means, precision=self.precision, centre=self.centre,
                 scale=self.scale)
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> Mahalanobis:
        with np.load(path, allow_pickle=False) as npz:
            return cls(npz["means"], npz["precision"], npz["centre"], npz["scale"])


MIN_CROP_STD = 0.02
"""Below this standard deviation of its pixels ([0, 1] display scale) a crop shows nothing."""
MIN_NEIGHBOUR_CORRELATION = 0.5
"""Below this correlation of horizontally adjacent pixels a crop is noise, not anatomy."""


def no_anatomy(boxed: np.ndarray) -> bool:
    """Model-independent check of a letterboxed display crop (S, S) in [0, 1]: True when it
    cannot show a hip, i.e. it is nearly uniform (a blank image, a window that misses the
    data) or spatially uncorrelated (noise). Radiographs are smooth at hip-crop scale:
    adjacent pixels of synthetic hip crops of both renderers correlate at >= 0.75, those of
    pixel noise at <= 0.3. The padding (exactly 0) is left out."""
    x = np.asarray(boxed, dtype=np.float64)
    valid = x > 0
    values = x[valid]
    if values.size < 16 or values.std() < MIN_CROP_STD:
        return True
    pair = valid[:, :-1] & valid[:, 1:]
    a = x[:, :-1][pair] - values.mean()
    b = x[:, 1:][pair] - values.mean()
    return float((a * b).mean() / values.var()) < MIN_NEIGHBOUR_CORRELATION


def threshold_at(scores: np.ndarray, tpr: float) -> float:
    """The score below which a fraction `tpr` of the (in-distribution) scores lie."""
    return float(np.quantile(np.asarray(scores, dtype=np.float64), tpr))


def detection_rates(scores_in: np.ndarray, scores_out: np.ndarray,
                    threshold: float) -> dict[str, Any]:
    """Fraction of in-distribution crops kept, of OOD crops caught, and the AUROC."""
    from sklearn.metrics import roc_auc_score

    s_in, s_out = np.asarray(scores_in), np.asarray(scores_out)
    auc = None
    if len(s_in) and len(s_out):
        auc = float(roc_auc_score(np.r_[np.zeros(len(s_in)), np.ones(len(s_out))],
                                  np.r_[s_in, s_out]))
    return {"in_kept": float((s_in <= threshold).mean()) if len(s_in) else None,
            "ood_caught": float((s_out > threshold).mean()) if len(s_out) else None,
            "auroc": auc}
