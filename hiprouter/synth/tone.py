"""Tone curves (console look-up tables) of synthetic radiographs.

A curve maps normalised processed values (0 = least dense anatomy, 1 = densest anatomy)
to display brightness, monotonically: gamma, sigmoid (S-curve), double sigmoid (bone and
soft-tissue emphasis), logarithmic or exponential, random piecewise-linear knots, and
histogram equalisation blended with the identity. Many are strongly nonlinear, as on real
consoles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hiprouter.synth.canvas import Array

KINDS = {"gamma": 0.3, "sigmoid": 0.2, "double": 0.1, "log": 0.1, "exp": 0.08,
         "piecewise": 0.12, "equalise": 0.1}
_N = 4096


@dataclass
class ToneCurve:
    """One console look-up table; `equalise` needs the image's values (`fit`)."""

    kind: str
    lut: Array
    """Display value at _N evenly spaced inputs in [0, 1]."""
    blend: float = 1.0

    @classmethod
    def sample(cls, rng: np.random.Generator) -> ToneCurve:
        kind = str(rng.choice(list(KINDS), p=np.array(list(KINDS.values())) / sum(KINDS.values())))
        u = rng.uniform(0, 1, 6)
        t = np.linspace(0, 1, _N)
        if kind == "gamma":
            lut = t ** (0.6 + 1.0 * u[0])
        elif kind == "sigmoid":
            lut = _sigmoid(t, 3 + 6 * u[0], 0.4 + 0.2 * u[1])
        elif kind == "double":
            w = 0.3 + 0.4 * u[2]
            lut = (w * _sigmoid(t, 5 + 6 * u[0], 0.2 + 0.2 * u[1])
                   + (1 - w) * _sigmoid(t, 5 + 6 * u[3], 0.6 + 0.2 * u[4]))
        elif kind == "log":
            k = 1 + 9 * u[0]
            lut = np.log1p(k * t) / np.log1p(k)
        elif kind == "exp":
            k = 0.5 + 2.5 * u[0]
            lut = np.expm1(k * t) / np.expm1(k)
        elif kind == "piecewise":  # random knots, slopes within 0.4-2.5 (no flat runs)
            xs = np.concatenate([[0], np.sort(rng.uniform(0, 1, 4)), [1]])
            slopes = np.exp(rng.uniform(np.log(0.4), np.log(2.5), 5))
            ys = np.concatenate([[0], np.cumsum(np.diff(xs) * slopes)])
            lut = np.interp(t, xs, ys / ys[-1])
        else:
            lut = t
        lut = (lut - lut[0]) / max(lut[-1] - lut[0], 1e-6)
        return cls(kind, lut.astype(np.float32), blend=0.4 + 0.6 * float(u[5]))

    @classmethod
    def gamma(cls, g: float) -> ToneCurve:
        return cls("gamma", (np.linspace(0, 1, _N) ** g).astype(np.float32))

    def fit(self, values: Array) -> ToneCurve:
        """Histogram equalisation of `values` (a sample of the anatomy) blended with the
        identity; other kinds are returned unchanged."""
        if self.kind != "equalise" or values.size < 16:
            return self
        hist, _ = np.histogram(np.clip(values, 0, 1), bins=_N, range=(0, 1))
        cdf = np.cumsum(hist).astype(np.float64)
        cdf = (cdf - cdf[0]) / max(cdf[-1] - cdf[0], 1.0)
        t = np.linspace(0, 1, _N)
        lut = self.blend * cdf + (1 - self.blend) * t
        return ToneCurve(self.kind, lut.astype(np.float32), self.blend)

    def __call__(self, values: Array) -> Array:
        """Apply to values in [0, 1] (clipped)."""
        idx = values * (_N - 1)
        np.clip(idx, 0, _N - 1, out=idx)
        return self.lut[idx.astype(np.int32)]


def _sigmoid(t: Array, k: float, c: float) -> Array:
    return 1 / (1 + np.exp(-k * (t - c)))
