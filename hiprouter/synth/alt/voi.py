"""Modality and VOI LUT variations as consoles write them: rescale slope/intercept, one or
two windows, a sigmoid VOI function, a VOI LUT table, or no VOI at all (CR only)."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from hiprouter.synth.alt.acquire import Acquisition


def sample_rescale(rng: np.random.Generator, acq: Acquisition) -> tuple[float, float] | None:
    """(slope, intercept) or None; DX always has one."""
    if acq.modality == "DX":
        return (1.0, 0.0)
    choice = rng.random()
    if choice < 0.4:
        return None
    if choice < 0.8:
        return (1.0, 0.0)
    return (float(rng.choice([0.5, 2.0])), float(rng.choice([0.0, -512.0])))


def apply_voi(ds: Dataset, rng: np.random.Generator, stored: np.ndarray, acq: Acquisition
              ) -> str:
    """Add a VOI transform to ds (values in rescaled units); returns which kind."""
    slope = float(ds.get("RescaleSlope", 1.0))
    intercept = float(ds.get("RescaleIntercept", 0.0))
    lo, hi = np.percentile(stored[::4, ::4], [2, 98])
    lo, hi = lo * slope + intercept, hi * slope + intercept
    kinds = ["window", "two_windows", "sigmoid", "lut"] + (["none"] if acq.modality == "CR"
                                                         else [])
    kind = str(rng.choice(kinds))
    if kind == "lut" and (hi - max(lo, 0)) > 30000:
        kind = "window"  # a LUT this long would not fit an explicit VR US element
    if kind == "none":
        return kind
    width = max((hi - lo) * rng.uniform(1.0, 1.3), 2.0)
    center = (hi + lo) / 2 + rng.normal(0, 0.03) * width
    if kind in ("window", "sigmoid"):
        ds.WindowCenter = f"{center:.1f}"
        ds.WindowWidth = f"{width:.1f}"
        ds.VOILUTFunction = "SIGMOID" if kind == "sigmoid" else "LINEAR"
    elif kind == "two_windows":
        ds.WindowCenter = [f"{center:.1f}", f"{center:.1f}"]
        ds.WindowWidth = [f"{width:.1f}", f"{width * 0.6:.1f}"]
        ds.WindowCenterWidthExplanation = ["NORMAL", "HARDER"]
        ds.VOILUTFunction = "LINEAR"
    else:
        ds.VOILUTSequence = Sequence([_lut_item(lo, hi, rng)])
    return kind


def _lut_item(lo: float, hi: float, rng: np.random.Generator) -> Dataset:
    """A 16-bit sigmoid-like table from lo to hi (first mapped value = lo)."""
    first = max(0, int(np.floor(lo)))
    n = int(min(max(np.ceil(hi) - first + 1, 2), 65535))
    x = np.linspace(-1, 1, n)
    k = rng.uniform(1.5, 3.5)
    y = (np.tanh(k * x) / np.tanh(k) + 1) / 2 * 65535
    item = Dataset()
    item.add_new(0x00283002, "US", [n, first, 16])  # LUT Descriptor
    item.LUTExplanation = "CONSOLE DEFAULT"
    item.add_new(0x00283006, "US", [int(v) for v in np.rint(y)])  # LUT Data
    return item
