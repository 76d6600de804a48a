"""The ONFH model's arithmetic against hand computations and numpy/scipy references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis

from hiprouter.inference.models import ModelCard, ModelError
from hiprouter.inference.onfh import (
    HeadSegmentation,
    Square,
    Staging,
    centroid,
    equivalent_diameter,
    head_patch,
    largest_component,
    lateral_on_image_right,
    mahalanobis,
    outline,
    paste,
    percentile_of,
    resample,
)
from hiprouter.training.normative import NormativeConfig, calibrate_stages, ordinal_thresholds
from hiprouter.training.onfh_data import dice
from hiprouter.training.onfh_eval import auc, holm


def test_dice_of_a_hand_computed_example() -> None:
    a = np.zeros((4, 5), bool)
    b = np.zeros((4, 5), bool)
    a[0:2, 0:3] = True  # 6 pixels
    b[1:3, 1:3] = True  # 4 pixels, 2 of them shared with a
    assert dice(a, b) == pytest.approx(2 * 2 / (6 + 4))  # 0.4
    assert dice(a, a) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0  # both empty: agreement
    with pytest.raises(ValueError):
        dice(a, np.zeros((5, 4), bool))


def test_mahalanobis_against_numpy_and_scipy_on_a_fixed_covariance() -> None:
    cov = np.array([[4.0, 1.2, 0.0], [1.2, 2.0, -0.5], [0.0, -0.5, 1.0]])
    mean = np.array([1.0, -2.0, 0.5])
    z = np.array([[1.0, -2.0, 0.5], [3.0, 0.0, 0.0], [-1.0, -1.0, 2.0]])
    precision = np.linalg.inv(cov)
    got = mahalanobis(z, mean, precision)
    want = [float(np.sqrt((x - mean) @ np.linalg.solve(cov, x - mean))) for x in z]
    assert got == pytest.approx(want, rel=1e-12)
    assert got[1] == pytest.approx(scipy_mahalanobis(z[1], mean, precision), rel=1e-12)
    assert got[0] == 0.0
    # identity covariance: the Euclidean distance
    assert mahalanobis([[3.0, 4.0]], [0.0, 0.0], np.eye(2))[0] == pytest.approx(5.0)


def test_percentile_among_healthy_reference() -> None:
    ref = np.array([1.0, 2.0, 3.0, 4.0])
    assert percentile_of(0.5, ref) == 0.0
    assert percentile_of(2.0, ref) == 50.0  # at or below
    assert percentile_of(10.0, ref) == 100.0
    assert np.isnan(percentile_of(1.0, np.array([])))


def test_holm_adjustment_by_hand() -> None:
    # sorted p 0.01, 0.02, 0.04 -> 3*0.01, max(0.03, 2*0.02), max(0.04, 1*0.04)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def test_auc_counts_ties_half() -> None:
    assert auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 1.0
    assert auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 0.0
    assert auc(np.array([1.0, 2.0]), np.array([2.0, 3.0])) == pytest.approx(0.875)
    assert auc(np.array([]), np.array([1.0])) is None


def test_ordinal_thresholds_separate_ordered_bands() -> None:
    d = np.array([1.0, 1.2, 1.1, 3.0, 3.3, 6.0, 7.0, 6.5])
    bands = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    t = ordinal_thresholds(d, bands, 3)
    assert len(t) == 2 and t == sorted(t)
    assert 1.2 < t[0] < 3.0 and 3.3 < t[1] < 6.0
    # an empty middle band still gives ascending thresholds
    t = ordinal_thresholds(np.array([1.0, 2.0, 5.0, 6.0]), np.array([0, 0, 2, 2]), 3)
    assert t == sorted(t) and 2.0 <= t[0] and t[-1] <= 5.0


def test_stage_calibration_merges_inseparable_grades_0_and_1() -> None:
    rng = np.random.default_rng(0)
    grades = np.repeat([0, 1, 2, 3, 4], 30)
    centre = {0: 1.0, 1: 1.0, 2: 3.0, 3: 6.0, 4: 12.0}
    d = np.array([centre[g] * np.exp(rng.normal(0, 0.15)) for g in grades])
    cal, classes = calibrate_stages(d, grades, NormativeConfig())
    assert classes == ["onfh_0_1", "onfh_2", "onfh_3", "onfh_4"]
    assert cal["grades_0_vs_1"]["merged"] is True
    card = ModelCard(name="t", version="1", architecture="x", input_size=32, classes=classes,
                     training_data="none", label_set="onfh", calibration=cal)
    staging = Staging.from_card(card)
    assert [staging.keys[staging.band(x)] for x in (1.0, 3.0, 6.0, 12.0)] == classes
    probs = staging.probabilities(12.0)
    assert set(probs) == set(classes) and sum(probs.values()) == pytest.approx(1.0)
    assert max(probs, key=probs.get) == "onfh_4"
    # separable grades 0 and 1 keep their own bands
    d[grades == 1] *= 2.0
    cal, classes = calibrate_stages(d, grades, NormativeConfig())
    assert classes == ["onfh_0", "onfh_1", "onfh_2", "onfh_3", "onfh_4"]
    bad = card.model_copy(update={"calibration": {**cal, "stage_thresholds": [3.0, 1.0]}})
    with pytest.raises(ModelError):
        Staging.from_card(bad)


def _disc(shape: tuple[int, int], cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r


def test_window_round_trip_keeps_a_disc_in_source_pixels() -> None:
    shape = (120, 150)
    disc = _disc(shape, 70.0, 50.0, 20.0)
    window = Square(72.0, 47.0, 50.0)  # off-centre, as the locator's estimate would be
    w = resample(disc.astype(np.float32), window, 64)
    probs, (r0, c0) = paste(w, window, shape)
    back = np.zeros(shape, bool)
    back[r0:r0 + probs.shape[0], c0:c0 + probs.shape[1]] = probs > 0.5
    assert dice(back, disc) > 0.98
    x, y = centroid(largest_component(back))
    assert x == pytest.approx(70.0, abs=0.3) and y == pytest.approx(50.0, abs=0.3)
    assert equivalent_diameter(disc) == pytest.approx(40.0, rel=0.02)
    ring = outline(w, window)
    radius = np.hypot(ring[:, 0] - 70.0, ring[:, 1] - 50.0)
    assert len(ring) >= 16 and np.all(np.abs(radius - 20.0) < 1.0)


def test_window_outside_the_image_is_black() -> None:
    img = np.ones((40, 40), np.float32)
    w = resample(img, Square(0.0, 0.0, 20.0), 20)
    assert w[:8, :8].max() == 0.0 and w[-6:, -6:].min() == pytest.approx(1.0)


def test_head_patch_is_normalised_and_mirrored() -> None:
    img = np.zeros((64, 64), np.float32)
    prob = _disc((64, 64), 32, 32, 16).astype(np.float32)
    img[prob > 0.5] = 0.6
    img[20:32, 20:28] = 0.9  # a bright lateral patch on the image's left
    p = head_patch(img, prob, 32, 1.2, mirror=False)
    q = head_patch(img, prob, 32, 1.2, mirror=True)
    assert p is not None and q is not None and p.shape == (2, 32, 32)
    assert set(np.unique(p[1])) <= {0.0, 1.0}
    assert np.all(p[0][p[1] == 0] == 0) and np.abs(p[0]).max() <= 1.0
    assert np.array_equal(q, p[:, :, ::-1])
    assert p[0][:, :16].max() > p[0][:, 16:].max()
    assert head_patch(img, np.zeros_like(prob), 32, 1.2, False) is None


def test_lateral_side_follows_laterality_and_display() -> None:
    assert lateral_on_image_right("L", True) is True    # standard AP: left hip on the right
    assert lateral_on_image_right("R", True) is False
    assert lateral_on_image_right("R", False) is True   # flipped display
    assert lateral_on_image_right("U", True) is None


def test_crop_mask_labels_only_the_window_and_equals_the_whole_crop_computation() -> None:
    """The head mask is found in the window's box; the result is the one the whole crop
    gives (largest component kept, holes filled), also for a window over the crop's edge."""
    rng = np.random.default_rng(7)
    size = 64
    yy, xx = np.mgrid[:size, :size]
    prob = np.exp(-((yy - 30) ** 2 + (xx - 34) ** 2) / 300.0).astype(np.float32)
    prob[28:32, 30:36] = 0.0  # a hole
    prob[5:9, 5:9] = 0.9  # a smaller second component
    prob += rng.normal(0, 0.02, prob.shape).astype(np.float32)
    shape = (300, 200)
    for window in (Square(90.0, 140.0, 96.0), Square(20.0, 30.0, 80.0),
                   Square(190.0, 280.0, 70.0)):
        seg = HeadSegmentation(window, np.zeros((size, size), np.float32), prob, 40.0, 40.0)
        whole = np.zeros(shape, dtype=bool)
        probs, (r0, c0) = paste(prob, window, shape)
        whole[r0:r0 + probs.shape[0], c0:c0 + probs.shape[1]] = probs > 0.5
        expected = largest_component(whole)
        got = seg.crop_mask(shape)
        assert got.any()
        np.testing.assert_array_equal(got, expected)
