"""Projection geometry of each view: where the tube, detector and legs are.

AP views are supine with a vertical beam; the frog-leg view flexes, abducts and externally
rotates the hip; the cross-table lateral has a horizontal beam angled ~45 degrees towards
the head, the detector against the lateral flank and the other leg lifted out of the beam.
The whole patient may lie slightly rotated or tilted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hiprouter.synth.alt.patient import Body
from hiprouter.synth.alt.raycast import Camera, rotation, unit

FOV_MM = {  # (width, height) ranges at the patient
    "ap_pelvis": ((370, 430), (290, 350)),
    "ap_hip": ((210, 250), (260, 310)),
    "frog_leg": ((230, 280), (240, 290)),
    "cross_table_lateral": ((250, 300), (200, 240)),
}


@dataclass(frozen=True)
class LegPose:
    flexion: float
    abduction: float
    rotation: float
    """Internal rotation (negative: external)."""


@dataclass(frozen=True)
class ViewGeometry:
    view: str
    side: str | None
    """The hip a single-hip view is taken of (None: AP pelvis)."""
    camera: Camera
    """Detector at the stored image's grid."""
    legs: dict[str, LegPose]
    fov_mm: tuple[float, float]
    view_position: str
    orientation: tuple[str, str]
    """DICOM Patient Orientation (row direction, column direction)."""
    anode_vertical: bool


def _letters(vec: np.ndarray) -> str:
    names = (("R", "L"), ("A", "P"), ("F", "H"))
    order = np.argsort(-np.abs(vec))
    out = [names[k][int(vec[k] > 0)] for k in order if abs(vec[k]) > 0.3]
    return "".join(out[:2]) or names[order[0]][int(vec[order[0]] > 0)]


def _legs(rng: np.random.Generator, view: str, side: str | None) -> dict[str, LegPose]:
    legs = {}
    for s in ("R", "L"):
        legs[s] = LegPose(rng.uniform(0, 6), rng.uniform(-2, 8), rng.normal(6, 9))
    if view == "frog_leg" and side:
        legs[side] = LegPose(rng.uniform(30, 50), rng.uniform(35, 55), -rng.uniform(20, 40))
    if view == "cross_table_lateral" and side:
        other = "L" if side == "R" else "R"
        legs[side] = LegPose(rng.uniform(0, 5), rng.uniform(-3, 5), rng.uniform(5, 18))
        legs[other] = LegPose(rng.uniform(80, 95), rng.uniform(10, 30), rng.uniform(-10, 10))
    return legs


def plan_view(rng: np.random.Generator, body: Body, view: str, side: str | None,
              long_side: int) -> ViewGeometry:
    """Random but plausible geometry of one exposure; the image's long side in pixels."""
    (w0, w1), (h0, h1) = FOV_MM[view]
    fov = (float(rng.uniform(w0, w1)), float(rng.uniform(h0, h1)))
    s = body.size
    if body.child:
        fov = (fov[0] * s * 1.1, fov[1] * s * 1.1)
    lat = 0.0 if side is None else (1.0 if side == "L" else -1.0)
    back = 12 * s + body.trunk_b
    sid = float(rng.uniform(1000, 1200))
    if view == "cross_table_lateral":
        beta = np.radians(rng.uniform(38, 52))
        d = unit([lat * np.sin(beta), rng.normal(0, 0.03), np.cos(beta)])
        target = np.array([lat * (body.hip_half + 22 * s), 0.0, -18 * s])
        oid = body.trunk_a * 0.55 + 60
        center = target + d * oid
        source = center - d * sid
        v = np.array([0, 1.0, 0])
        u = unit(np.cross(d, v))
        if rng.random() < 0.5:
            u = -u
        vpos = "LL" if side == "L" else "RL"
    else:
        if view == "ap_pelvis":
            target = np.array([rng.normal(0, 8), 0, rng.uniform(10, 40) * s])
        else:
            target = np.array([lat * (body.hip_half + rng.uniform(5, 25) * s), 0,
                               -rng.uniform(15, 40) * s])
        tilt = rotation((1, 0, 0), rng.normal(0, 3))
        d = tilt @ np.array([0, 1.0, 0])
        center = np.array([target[0], back + rng.uniform(45, 80), target[2]])
        source = center - d * sid
        u = np.array([1.0, 0, 0])
        v = unit(np.cross(d, u))
        vpos = "AP"
    depth = oid if view == "cross_table_lateral" else center[1] - target[1]
    mag = sid / (sid - depth)
    # the patient lies slightly rotated (about the long axis) and tilted
    roll = rotation((0, 0, 1), rng.normal(0, 3)) @ rotation((1, 0, 0), rng.normal(0, 3))
    pivot = np.array([0, 10.0, 20.0])
    inv = roll.T
    source = inv @ (source - pivot) + pivot
    center = inv @ (center - pivot) + pivot
    u, v = inv @ u, inv @ v
    aspect = fov[1] / fov[0]
    if aspect > 1:
        shape = (long_side, max(16, int(round(long_side / aspect))))
    else:
        shape = (max(16, int(round(long_side * aspect))), long_side)
    pixel = fov[0] * mag / shape[1]
    cam = Camera(source, center, u, v, float(pixel), shape)
    return ViewGeometry(view, side, cam, _legs(rng, view, side), fov, vpos,
                        (_letters(u), _letters(v)), bool(rng.random() < 0.7))
