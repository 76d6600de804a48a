"""What the generator draws: femoral head masks, and each finding changing the pixels where
it is (and not elsewhere)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from hiprouter.synth.labels import DEVICE_KEYS, THA
from hiprouter.synth.study import SynthImage, make_study

SIZE = (360, 420)
NATIVE = {"R": "no_hardware", "L": "no_hardware"}
CLEAN = {"fracture": {"R": "none", "L": "none"}, "oa_grade": {"R": 0, "L": 0},
         "onfh_grade": {"R": 0, "L": 0}, "ddh": {"R": False, "L": False}}


def _label(img: SynthImage, side: str) -> dict[str, Any]:
    return next(r for r in img.labels if r["laterality"] == side)


@pytest.mark.parametrize("index", range(6))
def test_head_masks_cover_the_drawn_heads(index: int) -> None:
    study = make_study(70, index, views=("ap_pelvis", "ap_hip", "frog_leg"), side="L",
                       size=SIZE)
    assert study.patient is not None
    for img in study.images:
        spacing = float(img.dataset.ImagerPixelSpacing[0])
        for row in img.labels:
            side = str(row["laterality"])
            hip = study.hips[side]
            mask = img.head_masks.get(side)
            if not hip.native_head:
                assert mask is None
                continue
            if row["hip_x"] != row["hip_x"]:  # head outside the image
                continue
            assert mask is not None and mask.shape == img.display.shape
            rows, cols = np.nonzero(mask)
            r_px = study.patient.femur[side].head_r * study.patient.scale / spacing
            # centroid at the labelled head centre, area of a disc of the head's radius
            # (less the collapse of an osteonecrotic or arthritic head)
            assert abs(cols.mean() - float(row["hip_x"])) < 0.15 * r_px
            assert abs(rows.mean() - float(row["hip_y"])) < 0.15 * r_px
            assert 0.75 < mask.sum() / (np.pi * r_px**2) < 1.1
            assert mask[int(round(float(row["hip_y"]))), int(round(float(row["hip_x"])))]


def test_no_mask_for_arthroplasty_or_a_dislocated_head() -> None:
    study = make_study(71, 0, views=("ap_pelvis",), hardware={"R": "tha", "L": "post_infectious"},
                       failure={"R": "dislocation"}, size=SIZE)
    assert study.images[0].head_masks == {}


def _pair(kwargs: dict[str, Any], a: dict[str, Any], b: dict[str, Any], seed: int = 80,
          index: int = 0) -> tuple[SynthImage, SynthImage]:
    base = dict(size=SIZE, plain=True, photometric="MONOCHROME2", **kwargs)
    return (make_study(seed, index, **base, **a).images[0],
            make_study(seed, index, **base, **b).images[0])


def _near_far(one: SynthImage, two: SynthImage, near_r: float) -> tuple[float, float]:
    """Mean absolute difference within near_r pixels of the right hip, and over the image's
    other half (the left hip's side of an AP pelvis)."""
    diff = np.abs(one.display - two.display)
    row = _label(one, "R")
    yy, xx = np.mgrid[: diff.shape[0], : diff.shape[1]]
    d = np.hypot(xx - float(row["hip_x"]), yy - float(row["hip_y"]))
    return float(diff[d < near_r].mean()), float(diff[:, int(0.6 * diff.shape[1]):].mean())


def _without(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in keys}


@pytest.mark.parametrize("grade", [2, 3, 4])
def test_onfh_changes_the_head_and_nothing_far_away(grade: int) -> None:
    kw = dict(views=("ap_pelvis",), hardware=NATIVE, **_without(CLEAN, "onfh_grade"))
    healthy, sick = _pair(kw, {"onfh_grade": {"R": 0, "L": 0}},
                          {"onfh_grade": {"R": grade, "L": 0}})
    assert [r["onfh_grade"] for r in sick.labels] == [grade, 0]
    mask = healthy.head_masks["R"]
    diff = np.abs(sick.display - healthy.display)
    far = ~ndimage.binary_dilation(mask, iterations=int(0.06 * max(mask.shape)))
    # far away: less than one 8-bit grey level on average (grade 4's collapse narrows the
    # joint, so the whole femur moves up a little)
    assert diff[mask].mean() > 0.002
    assert diff[far].mean() < 1 / 256 and diff[mask].mean() > 5 * diff[far].mean()


def test_higher_onfh_grades_change_the_head_more() -> None:
    kw = dict(views=("ap_hip",), side="R", hardware=NATIVE, **_without(CLEAN, "onfh_grade"))
    base = make_study(81, 0, size=SIZE, plain=True, onfh_grade={"R": 0}, **kw).images[0]
    mask = base.head_masks["R"]
    change = []
    for grade in range(1, 5):
        img = make_study(81, 0, size=SIZE, plain=True, **{**kw, "onfh_grade": {"R": grade}}
                         ).images[0]
        change.append(float(np.abs(img.display - base.display)[mask].mean()))
    assert change[0] < change[1] < change[3] and change[0] < change[2]


@pytest.mark.parametrize(("finding", "values"), [
    ("oa_grade", ({"R": 0}, {"R": 4})),
    ("ddh", ({"R": False}, {"R": True})),
    ("fracture", ({"R": "none"}, {"R": "femoral_neck_fracture"})),
])
def test_native_findings_change_the_hip(finding: str, values: tuple[dict, dict]) -> None:
    kw = dict(views=("ap_pelvis",), hardware=NATIVE, **_without(CLEAN, finding))
    a, b = _pair(kw, {finding: values[0]}, {finding: values[1]})
    r_px = 0.1 * a.display.shape[1]  # ~ 40 mm
    near, far = _near_far(a, b, 1.5 * r_px)
    assert near > 0.002 and far < 1 / 256 and near > 5 * far, (near, far)


def test_displaced_fractures_move_the_fragments_more() -> None:
    kw = dict(views=("ap_pelvis",), hardware=NATIVE, **_without(CLEAN, "fracture"))
    base = make_study(82, 0, size=SIZE, plain=True, fracture={"R": "none", "L": "none"},
                      **kw).images[0]
    moved = []
    for displaced in (False, True):
        img = make_study(82, 0, size=SIZE, plain=True, **{
            **kw, "fracture": {"R": "intertrochanteric_fracture", "L": "none"},
            "displaced": {"R": displaced}}).images[0]
        assert _label(img, "R")["fracture_displaced"] == int(displaced)
        moved.append(int((np.abs(img.display - base.display) > 0.05).sum()))
    assert moved[0] > 20 and moved[1] > 2 * moved[0]


@pytest.mark.parametrize("failure", ["infection", "loosening", "periprosthetic_fracture",
                                     "wear"])
def test_tha_failures_change_the_bone_or_implant_around_the_tha(failure: str) -> None:
    kw = dict(views=("ap_hip",), side="R", hardware={"R": "tha", "L": "no_hardware"})
    ok, failed = _pair(kw, {"failure": {"R": "none"}}, {"failure": {"R": failure}}, index=1)
    assert _label(failed, "R")["failure"] == failure
    assert _label(failed, "R")["dislocation"] == int(failure == "dislocation")
    implant = ok.implant_mask() | failed.implant_mask()
    around = ndimage.binary_dilation(implant, iterations=int(0.1 * max(implant.shape)))
    diff = np.abs(failed.display - ok.display)
    medial = np.zeros_like(around)  # the pelvis beside the hip (the right hip: image right)
    medial[:, int(0.7 * medial.shape[1]):] = True
    far = diff[medial & ~around].mean()
    assert diff[around].mean() > 0.001
    assert far < 1 / 256 and diff[around].mean() > 5 * far


def test_the_six_devices_are_drawn_differently() -> None:
    masks = {}
    for device in DEVICE_KEYS:
        img = make_study(83, 0, views=("ap_hip",), side="R", size=SIZE, plain=True,
                         device={"R": device}).images[0]
        assert _label(img, "R")["device"] == device
        row = _label(img, "R")
        yy, xx = np.mgrid[: img.display.shape[0], : img.display.shape[1]]
        # the head and neck, where the designs' head elements are
        near = np.hypot(xx - float(row["hip_x"]), yy - float(row["hip_y"])) < 0.2 * SIZE[1]
        masks[device] = img.implant_mask() & near
        assert masks[device].sum() > 100
    for i, a in enumerate(DEVICE_KEYS):
        for b in DEVICE_KEYS[i + 1:]:  # same patient and view: only the design differs
            differ = (masks[a] ^ masks[b]).sum() / (masks[a] | masks[b]).sum()
            assert differ > 0.15, (a, b, differ)


def test_every_view_draws_each_task_without_error() -> None:
    for task in ("screening", "failure", "device", "onfh"):
        for index in range(2):
            study = make_study(84, index, task=task, size=(160, 200),
                               views=("ap_pelvis", "ap_hip", "frog_leg", "cross_table_lateral"))
            assert len(study.images) == 4
            for img in study.images:
                assert np.isfinite(img.display).all()
                assert 0 <= img.display.min() and img.display.max() <= 1
            if task == "failure":
                assert any(h.hardware in THA for h in study.hips.values())
