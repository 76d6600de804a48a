"""A patient's body: skeletal size and shape, bone quality, habitus (independent of labels,
except that age and sex come with the ground truth)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Body:
    """Dimensions in mm, angles in degrees; x to the patient's left, y posterior, z up."""

    age: float
    sex: str
    size: float
    """Overall skeletal scale (1 = average adult)."""
    hip_half: float
    """Half the distance between the acetabular centres."""
    head_r: float
    neck_shaft: tuple[float, float]
    """Neck-shaft angle (right, left)."""
    anteversion: tuple[float, float]
    neck_len: float
    """Head centre to the shaft axis along the neck."""
    shaft_r: float
    cortex: float
    """Diaphyseal cortical thickness of the femur."""
    bvtv: float
    """Trabecular bone volume fraction."""
    cup_incl: tuple[float, float]
    """Native acetabular axis inclination (right, left)."""
    cup_av: tuple[float, float]
    flare: float
    """Iliac wing flare (wider in women)."""
    crest_height: float
    inlet: float
    """Pelvic inlet half-width."""
    pubic_arch: float
    sacral_slope: float
    lordosis: float
    trunk_a: float
    """Half-width of the trunk at the hips."""
    trunk_b: float
    """Half-depth of the trunk."""
    fat: float
    """Subcutaneous fat thickness."""
    thigh_r: float
    child: bool = False

    def side(self, pair: tuple[float, float], side: str) -> float:
        return pair[0] if side == "R" else pair[1]


def sample_body(rng: np.random.Generator, age: float, sex: str) -> Body:
    """Random adult (or, with age < 14, child) body."""
    female = sex == "F"
    child = age < 14
    size = rng.normal(0.95 if female else 1.03, 0.04)
    if child:
        size *= 0.45 + 0.035 * age
    bmi = float(np.clip(rng.normal(27, 5), 17, 45))
    osteo = np.clip((age - 45) / 45, 0, 1) * (1.4 if female else 1.0)
    nsa = rng.normal(131, 4)
    av = rng.normal(15, 5)
    fat = (4 + (bmi - 17) * (2.6 if female else 1.9)) * rng.uniform(0.8, 1.2)
    trunk_a = size * (165 + (bmi - 20) * 3.4 + (14 if female else 0)) * rng.uniform(0.95, 1.05)
    hip_half = size * rng.normal(92 if female else 88, 3)
    trunk_a = max(trunk_a, hip_half + size * (85 + fat))  # wide enough for the trochanters
    return Body(
        age=float(age), sex=sex, size=float(size),
        hip_half=float(hip_half),
        head_r=float(size * rng.normal(22.5 if female else 25, 1.1)),
        neck_shaft=(float(nsa + rng.normal(0, 1.5)), float(nsa + rng.normal(0, 1.5))),
        anteversion=(float(av + rng.normal(0, 2)), float(av + rng.normal(0, 2))),
        neck_len=float(size * rng.normal(57 if female else 61, 3)),
        shaft_r=float(size * rng.normal(14 if female else 15.5, 0.8)),
        cortex=float(size * rng.uniform(5.0, 7.5) * (1 - 0.25 * osteo)),
        bvtv=float(np.clip(rng.normal(0.30, 0.03) * (1 - 0.5 * osteo), 0.1, 0.4)),
        cup_incl=tuple(float(x) for x in rng.normal(55, 2.5) + rng.normal(0, 1, 2)),
        cup_av=tuple(float(x) for x in rng.normal(18, 3) + rng.normal(0, 1, 2)),
        flare=float(rng.normal(1.08 if female else 0.95, 0.05)),
        crest_height=float(size * rng.normal(118 if female else 130, 6)),
        inlet=float(size * rng.normal(62 if female else 54, 3)),
        pubic_arch=float(rng.normal(1.15 if female else 0.9, 0.06)),
        sacral_slope=float(rng.normal(40, 6)),
        lordosis=float(rng.normal(45, 8)),
        trunk_a=float(trunk_a),
        trunk_b=float(trunk_a * rng.uniform(0.56, 0.7)),
        fat=float(size * fat),
        thigh_r=float(size * (74 + (bmi - 20) * 2.6) * rng.uniform(0.92, 1.08)),
        child=child,
    )
