"""Soft tissue of the pelvis and thighs: muscle and fat volumes, fat planes, bowel gas,
phleboliths and vascular calcification, all in 3D so every view sees the same patient."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hiprouter.synth.alt.femur import FemurFrame, Pose
from hiprouter.synth.alt.patient import Body
from hiprouter.synth.alt.raycast import (
    Convex,
    Layers,
    Solid,
    capsule_chain,
    ellipsoid,
    frustum,
    rotation,
    solid,
    sphere,
    unit,
)


@dataclass(frozen=True)
class Abdomen:
    """Gas and calcifications of one patient (patient frame)."""

    gas: tuple[Convex, ...]
    bubbles: tuple[Convex, ...]
    """Small gas bubbles in stool (mottled)."""
    phleboliths: tuple[tuple[np.ndarray, float], ...]
    plaques: tuple[np.ndarray, ...]
    """Calcified arterial wall segments (2 points each)."""


def _path(points: list[tuple[float, float, float]], n: int) -> np.ndarray:
    pts = np.asarray(points, float)
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    t = np.concatenate([[0], np.cumsum(seg)])
    q = np.linspace(0, t[-1], n)
    return np.column_stack([np.interp(q, t, pts[:, k]) for k in range(3)])


def sample_abdomen(rng: np.random.Generator, body: Body) -> Abdomen:
    s = body.size
    colon = {
        "rectum": [(0, 62, -18), (4, 55, 20), (6, 42, 55)],
        "sigmoid": [(6, 42, 55), (35, 10, 75), (62, -12, 62), (78, -18, 96), (70, 0, 125)],
        "descending": [(70, 0, 125), (112, 30, 170), (118, 35, 260)],
        "cecum": [(-88, -8, 62), (-100, 5, 110), (-112, 25, 180), (-115, 30, 260)],
    }
    gas: list[Convex] = []
    bubbles: list[Convex] = []
    for name, pts in colon.items():
        if rng.random() < 0.25:
            continue
        path = _path([(x * s * rng.uniform(0.9, 1.1), y * s, z * s) for x, y, z in pts], 14)
        path += rng.normal(0, 4 * s, path.shape)
        fill = rng.uniform(0.2, 1.0)
        for k in range(len(path) - 1):
            if rng.random() > fill:
                continue
            c = (path[k] + path[k + 1]) / 2
            axis = unit(path[k + 1] - path[k] + 1e-6)
            r = rng.uniform(7, 16) * s * (1.3 if name == "cecum" else 1.0)
            rot = np.column_stack([unit(np.cross(axis, [0, 1, 0.1])),
                                   unit(np.cross(axis, np.cross(axis, [0, 1, 0.1]))), axis])
            if rng.random() < 0.55:  # stool: many small bubbles
                for _ in range(int(rng.integers(15, 40))):
                    bubbles.append(sphere(c + rng.normal(0, 0.45 * r, 3), rng.uniform(0.7, 2.2)))
            else:  # gas with haustral indentations
                gas.append(ellipsoid(c, rot, (r, r * rng.uniform(0.5, 0.9), r * 0.45)))
    for _ in range(int(rng.integers(0, 6))):  # small bowel loops above the pelvis
        c = np.array([rng.uniform(-70, 70), rng.uniform(-60, 0), rng.uniform(110, 220)]) * s
        gas.append(ellipsoid(c, rotation((0, 1, 0), rng.uniform(0, 180)),
                             (rng.uniform(8, 16), rng.uniform(3, 6), rng.uniform(4, 8))))
    phleb = tuple((np.array([rng.choice([-1, 1]) * rng.uniform(35, 70), rng.uniform(-5, 40),
                             rng.uniform(-25, 15)]) * s, rng.uniform(1.5, 3.0))
                  for _ in range(int(rng.poisson(1.5 if body.age > 40 else 0.3))))
    plaques = []
    if body.age > 58 and rng.random() < 0.45:
        for lat in (-1, 1):
            h = body.hip_half
            line = _path([(lat * 55 * s, -30 * s, 70 * s), (lat * (h - 5), -40 * s, 0),
                          (lat * (h - 10), -35 * s, -90 * s), (lat * (h - 20), -30 * s, -250 * s)],
                         60)
            for k in range(0, len(line) - 2, 2):
                for off in (-3.0, 3.0):
                    if rng.random() < 0.45:
                        seg = line[k:k + 2] + np.array([off, 0, 0]) + rng.normal(0, 0.7, (2, 3))
                        plaques.append(seg)
    return Abdomen(tuple(gas), tuple(bubbles), phleb, tuple(plaques))


def _thigh(frame: FemurFrame, pose: Pose, radius: float, shrink: float) -> Solid:
    top = pose.point(frame.shaft_point(45) + np.array([-12.0, 0, 0]))
    bottom = pose.point(frame.shaft_point(450))
    return capsule_chain(np.array([top, bottom]), [radius - shrink, radius * 0.8 - shrink])


def draw_soft_tissue(layers: Layers, body: Body, frames: dict[str, FemurFrame],
                     poses: dict[str, Pose], abdomen: Abdomen,
                     rng: np.random.Generator) -> None:
    """Muscle inside a subcutaneous fat layer, fat planes, gas and calcifications."""
    a, b, f, s = body.trunk_a, body.trunk_b, body.fat, body.size
    fold = -40 * s

    def trunk(shrink: float) -> list[Convex | Solid]:
        x = np.array([1.0, 0, 0])
        t = frustum(np.array([0, 12 * s, fold]), np.array([0, 12 * s, 450.0]), a - shrink,
                    0.86 * a - shrink, ratio=(b - shrink) / (a - shrink), hint=x)
        bottom = ellipsoid(np.array([0, 12 * s, fold]), np.eye(3),
                           (a - shrink, b - shrink, 120 * s - shrink)).clip(
                               np.array([0, 0, 1.0]), np.array([0, 0, fold]))
        return [Solid((t, bottom), 1.0)]

    outer = solid(*trunk(0), *(_thigh(frames[k], poses[k], body.thigh_r, 0) for k in frames),
                  power=16.0)
    core = solid(*trunk(f), *(_thigh(frames[k], poses[k], body.thigh_r, 0.6 * f)
                              for k in frames), power=16.0)
    layers.add("tissue", core)
    layers.add("fat", outer)
    layers.add("fat", core, -1.0)
    planes: list[Convex] = []
    for lat in (-1.0, 1.0):  # gluteal, obturator internus and iliopsoas fat planes
        h = body.hip_half
        planes.append(ellipsoid(np.array([lat * (h + 34 * s), 12 * s, 28 * s]),
                                rotation((0, 1, 0), -lat * 25), (1.6, 22 * s, 32 * s)))
        planes.append(ellipsoid(np.array([lat * (h - 36 * s), 5 * s, -15 * s]),
                                rotation((0, 1, 0), lat * 8), (1.4, 20 * s, 26 * s)))
        planes.append(ellipsoid(np.array([lat * (h + 2 * s), -28 * s, -40 * s]),
                                rotation((0, 1, 0), lat * 20), (1.5, 10 * s, 30 * s)))
    fat_planes = Solid(tuple(planes))
    layers.add("fat", fat_planes, rng.uniform(0.25, 0.5))
    layers.add("tissue", fat_planes, -1.0)
    if abdomen.gas:
        layers.add("gas", Solid(abdomen.gas))
    if abdomen.bubbles:
        layers.add("gas", Solid(abdomen.bubbles))
    for c, r in abdomen.phleboliths:
        layers.add_shell(solid(sphere(c, r)), solid(sphere(c, r * 0.55)), "cortical", None, 0.8)
    if abdomen.plaques:
        plaques = solid(*(capsule_chain(seg, [0.6, 0.6]) for seg in abdomen.plaques))
        layers.add("cortical", plaques, 0.9)
