"""Heat maps given as crop pieces: placed only when asked for, and straight at SC size."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hiprouter.findings import HeatMap


def _pieces(shape: tuple[int, int]) -> list[tuple[np.ndarray, tuple[int, int, int, int]]]:
    rows, cols = shape
    mid = cols // 2
    yy, xx = np.mgrid[:rows, :mid]
    right = np.exp(-((yy - rows * 0.55) ** 2 + (xx - mid * 0.4) ** 2) / (rows * 8.0))
    left = np.exp(-((yy - rows * 0.5) ** 2 + (xx - mid * 0.7) ** 2) / (rows * 4.0))
    return [(right.astype(np.float32), (0, 0, rows, mid)),
            (left.astype(np.float32) * 0.7, (0, mid, rows, cols))]


def test_pieces_give_the_map_the_crops_placed_at_their_boxes_give() -> None:
    shape = (700, 560)
    pieces = _pieces(shape)
    expected = np.zeros(shape, np.float32)
    for crop_map, (top, left, bottom, right) in pieces:
        expected[top:bottom, left:right] = np.maximum(expected[top:bottom, left:right],
                                                      np.clip(crop_map, 0, 1))
    heat = HeatMap("1.2.3", label="tha", shape=shape, pieces=pieces)
    assert heat.shape == shape
    np.testing.assert_array_equal(heat.heat, expected)


def test_resized_pieces_match_resizing_the_whole_map() -> None:
    """At an SC's size the pieces give what resizing the placed map gives (within 0.02,
    apart from the column where the two hips' boxes meet)."""
    shape = (1700, 1400)
    pieces = _pieces(shape)
    whole = HeatMap("1.2.3", shape=shape, pieces=pieces).heat
    rows, cols = 1024, 843
    expected = np.asarray(Image.fromarray(whole).resize((cols, rows),
                                                        Image.Resampling.BILINEAR))
    got = HeatMap("1.2.3", shape=shape, pieces=pieces).resized(rows, cols)
    assert got.shape == (rows, cols) and got.dtype == np.float32
    seam = round(700 * cols / 1400)
    away = np.ones(cols, bool)
    away[seam - 2:seam + 2] = False
    assert np.abs(got[:, away] - expected[:, away]).max() < 0.02
    assert 0.0 <= got.min() and got.max() <= 1.0


def test_a_whole_map_resizes_as_before_and_can_be_replaced() -> None:
    heat = np.zeros((400, 300), np.float32)
    heat[100:200, 50:120] = 1.0
    h = HeatMap("1.2.3", heat, "fracture")
    expected = np.asarray(Image.fromarray(heat).resize((150, 200), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(h.resized(200, 150), expected)
    assert h.resized(400, 300) is h.heat
    h.heat = np.ones((40, 30), np.float32)
    assert h.shape == (40, 30) and not h.pieces


def test_a_piece_that_does_not_fit_its_box_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit box"):
        HeatMap("1.2.3", shape=(100, 100), pieces=[(np.zeros((10, 10)), (0, 0, 20, 10))])
    with pytest.raises(ValueError, match="shape"):
        HeatMap("1.2.3")
