"""The acquisition console: exposure recognition, multiscale processing, tone curve, storage.

A raw log-exposure image becomes a "for presentation" image the way vendor consoles do it,
with randomised settings: the anatomy's exposure range is found from its histogram (inside
the collimated field, without direct exposure), a Laplacian pyramid is re-weighted (fine
detail boosted through a compressive non-linearity, coarse density differences reduced),
then a tone curve (film-like sigmoid, or a partial histogram equalisation) maps it to the
stored bit depth, as MONOCHROME1 or MONOCHROME2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Processing:
    """Console settings of one image."""

    detail_gain: tuple[float, ...]
    """Gain per pyramid level, finest first."""
    power: float
    """Compression of band amplitudes (1 = linear, < 1 lifts faint detail)."""
    latitude: float
    """Scale of the coarsest level (< 1 compresses the dynamic range)."""
    curve: str
    """'sigmoid', 'equalise' or 'gamma'."""
    curve_strength: float
    drc: float
    """Dynamic range compression: fraction of the very coarse density removed."""
    drc_mm: float


def sample_processing(rng: np.random.Generator) -> Processing:
    levels = 6
    base = rng.uniform(1.0, 1.8)
    gains = tuple(float(base * rng.uniform(0.8, 1.2) * (1.0 + 0.25 * (i in (1, 2, 3))))
                  for i in range(levels))
    return Processing(gains, float(rng.uniform(0.6, 0.95)), float(rng.uniform(0.6, 0.9)),
                      str(rng.choice(["sigmoid", "equalise", "gamma"], p=[0.5, 0.3, 0.2])),
                      float(rng.uniform(0.3, 1.0)), float(rng.uniform(0.25, 0.5)),
                      float(rng.uniform(35, 70)))


def anatomy_range(log_img: np.ndarray, field: np.ndarray, open_level: float
                  ) -> tuple[float, float]:
    """Log-exposure range of the anatomy: inside the field, darker than direct exposure."""
    vals = log_img[field & (log_img < open_level - 0.25)]
    if vals.size < 100:
        vals = log_img[field] if field.any() else log_img.ravel()
    lo, hi = np.percentile(vals, [0.3, 99.5])
    return float(lo), float(max(hi, lo + 1e-3))


def _pyramid(img: np.ndarray, levels: int) -> tuple[list[np.ndarray], np.ndarray]:
    bands = []
    cur = img
    for _ in range(levels):
        low = ndimage.gaussian_filter(cur, 1.0, mode="nearest")[::2, ::2]
        up = ndimage.zoom(low, 2, order=1, mode="nearest")[:cur.shape[0], :cur.shape[1]]
        pad = (cur.shape[0] - up.shape[0], cur.shape[1] - up.shape[1])
        up = np.pad(up, ((0, pad[0]), (0, pad[1])), mode="edge")
        bands.append(cur - up)
        cur = low
    return bands, cur


def _collapse(bands: list[np.ndarray], base: np.ndarray) -> np.ndarray:
    cur = base
    for band in reversed(bands):
        up = ndimage.zoom(cur, 2, order=1, mode="nearest")[:band.shape[0], :band.shape[1]]
        pad = (band.shape[0] - up.shape[0], band.shape[1] - up.shape[1])
        cur = np.pad(up, ((0, pad[0]), (0, pad[1])), mode="edge") + band
    return cur


def compress(density: np.ndarray, proc: Processing, pixel_mm: float, roi: np.ndarray
             ) -> np.ndarray:
    """Remove part of the very coarse density (thick against thin body parts)."""
    step = max(1, int(round(4.0 / pixel_mm)))
    small = density[::step, ::step]
    weight = roi[::step, ::step].astype(float)
    sigma = proc.drc_mm / (pixel_mm * step)
    num = ndimage.gaussian_filter(np.where(weight > 0, small, 0.0), sigma, mode="nearest")
    den = ndimage.gaussian_filter(weight, sigma, mode="nearest") + 1e-6
    coarse = num / den
    zoom = (density.shape[0] / small.shape[0], density.shape[1] / small.shape[1])
    coarse = ndimage.zoom(coarse, zoom, order=1, mode="nearest")[:density.shape[0],
                                                                  :density.shape[1]]
    mean = float(density[roi].mean()) if roi.any() else float(density.mean())
    return density - proc.drc * (coarse - mean)


def enhance(density: np.ndarray, proc: Processing, pixel_mm: float) -> np.ndarray:
    """Multiscale contrast equalisation of a density image (0..1, bright = dense)."""
    first = max(0, int(round(np.log2(0.25 / pixel_mm)))) if pixel_mm < 0.25 else 0
    levels = len(proc.detail_gain) + first
    bands, base = _pyramid(density, levels)
    out = []
    for i, band in enumerate(bands):
        g = proc.detail_gain[i - first] if i >= first else 1.0
        scale = np.percentile(np.abs(band), 95) + 1e-6
        norm = band / scale
        out.append(g * scale * np.sign(norm) * np.abs(norm) ** proc.power)
    mean = float(base.mean())
    return _collapse(out, mean + (base - mean) * proc.latitude)


def tone(x: np.ndarray, proc: Processing, roi: np.ndarray) -> np.ndarray:
    """Map enhanced density to 0..1 with the console's tone curve: the anatomy (roi) spans
    0..0.9, its middle near mid-grey; denser things (metal, collimated borders) keep some
    gradation above it."""
    vals = x[roi] if roi.any() else x.ravel()
    lo, mid, hi = np.percentile(vals, [0.5, 35 + 25 * proc.curve_strength, 99.7])
    span = max(hi - lo, 1e-6)
    y = np.clip((x - lo) / span, 0, 1)
    if proc.curve == "equalise":
        hist, edges = np.histogram(np.clip((vals - lo) / span, 0, 1), bins=256, range=(0, 1))
        cdf = np.cumsum(hist).astype(float)
        k = 0.45 + 0.35 * proc.curve_strength
        out = k * np.interp(y, edges[1:], cdf / cdf[-1]) + (1 - k) * y
    elif proc.curve == "sigmoid":
        k = 3.5 + 3 * proc.curve_strength
        m = (mid - lo) / span
        f = 1 / (1 + np.exp(-k * (y - m - 0.1)))
        f0, f1 = 1 / (1 + np.exp(k * (m + 0.1))), 1 / (1 + np.exp(-k * (0.9 - m)))
        out = (f - f0) / (f1 - f0)
    else:
        out = y ** (1.3 + 0.9 * proc.curve_strength)
    above = np.clip((x - hi) / span, 0, None)
    return np.clip(0.86 * out + 0.14 * np.tanh(above / 0.5), 0, 1)


def store(display: np.ndarray, bits: int, photometric: str, rng: np.random.Generator
          ) -> np.ndarray:
    """Stored pixel values: display (0..1, bright = dense) on part of the bit range."""
    top = 2**bits - 1
    lo = rng.uniform(0.0, 0.08) * top
    hi = rng.uniform(0.85, 1.0) * top
    val = lo + display * (hi - lo)
    if photometric == "MONOCHROME1":
        val = top - val
    return np.clip(np.rint(val), 0, top).astype(np.uint16)
