"""The SC's heat-map blend: the table-driven version draws what colour-mapping every pixel does."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps

from hiprouter.report.sc import COLORMAP, OVERLAY_OPACITY, blend


def reference_blend(display: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """Colour-map every pixel in float (the straightforward definition)."""
    grey = np.repeat(display.astype(np.float32)[..., None], 3, axis=2)
    heat = np.clip(np.nan_to_num(heatmap.astype(np.float32)), 0.0, 1.0)
    colour = colormaps[COLORMAP](heat)[..., :3].astype(np.float32) * 255.0
    alpha = (OVERLAY_OPACITY * heat)[..., None]
    return np.clip(grey * (1 - alpha) + colour * alpha + 0.5, 0, 255).astype(np.uint8)


def test_blend_matches_the_per_pixel_colour_map() -> None:
    rng = np.random.default_rng(3)
    display = rng.integers(0, 256, (300, 240), dtype=np.uint8)
    yy, xx = np.mgrid[0:300, 0:240]
    heat = np.clip(1.2 - np.hypot(yy - 150, xx - 60) / 80, -0.5, 1.5).astype(np.float32)
    heat[5, 5] = np.nan
    got = blend(display, heat)
    want = reference_blend(display, heat)
    assert got.shape == (300, 240, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 3  # 256 heat levels
    cold = np.nan_to_num(heat) <= 0.5 / 255
    assert np.array_equal(got[cold], np.repeat(display[cold][:, None], 3, axis=1))
    assert (got[150, 60] != display[150, 60]).any()  # the hot spot is coloured


def test_blend_without_heat_is_the_grey_image() -> None:
    display = np.arange(64, dtype=np.uint8).reshape(8, 8)
    got = blend(display, np.zeros((8, 8), np.float32))
    assert np.array_equal(got, np.repeat(display[..., None], 3, axis=2))
