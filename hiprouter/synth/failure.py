"""Failure of a total hip arthroplasty, drawn around its implants (seed 000's causes).

- aseptic loosening: a radiolucent zone with a thin sclerotic margin at the bone-cement or
  bone-implant interface of the stem (Gruen zones) and/or the cup, stem subsidence, cup
  tilt;
- polyethylene wear: the head sits eccentrically in the cup, towards its dome (sometimes
  with osteolysis from wear particles);
- periprosthetic fracture: a fracture line around the stem, at the trochanter or below the
  tip (Vancouver A, B, C), the distal fragment displaced;
- dislocation: the head out of the cup;
- infection: periosteal new bone, irregular osteolysis, endosteal scalloping, sometimes
  an interface lucency.

`ThaFailure.sample` picks the geometry with randomised severity from the hip's own stream;
`add_failure` draws it once the femur and implants are drawn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from hiprouter.synth.anatomy import Cut, FemurShape
from hiprouter.synth.canvas import Array, Canvas, Field, bbox_of, line, smoothstep, strip
from hiprouter.synth.hardware import Implants

_STREAM = 21


@dataclass
class Lysis:
    """An irregular osteolytic area at the interface."""

    site: str
    """'stem' (femur frame, `where` = position along the stem as a fraction, lateral or
    medial by sign) or 'cup' (degrees from the dome)."""
    where: float
    radius: float
    seed: int


@dataclass
class ThaFailure:
    """The geometry of one THA's failure (kind 'none' draws nothing)."""

    kind: str
    head_offset: tuple[float, float] = (0.0, 0.0)
    """Head centre minus cup centre (hemipelvis frame: lateral, distal; mm)."""
    head_rot_deg: float = 0.0
    subsidence: float = 0.0
    """mm the stem has sunk into the femur."""
    cup_tilt_deg: float = 0.0
    stem_zones: tuple[int, ...] = ()
    """Gruen zones (1-7) with an interface lucency."""
    cup_zones: tuple[int, ...] = ()
    """DeLee-Charnley zones (1-3) with an interface lucency."""
    lucency_mm: float = 0.0
    irregular: float = 0.0
    """Waviness of the lucent zone (infection), 0 for a smooth line (loosening)."""
    fracture: Cut | None = None
    lysis: list[Lysis] = field(default_factory=list)
    periosteal: list[tuple[float, float, int, int]] = field(default_factory=list)
    """(start, end along the shaft in mm, side +1 lateral / -1 medial, layers)."""
    scallops: list[tuple[float, int, float]] = field(default_factory=list)
    """(position along the shaft in mm, side, radius)."""

    @classmethod
    def sample(cls, kind: str, f: FemurShape, seed: int) -> ThaFailure:
        """Failure geometry for a THA of femur `f` (stem length is not known yet: positions
        along the stem are in mm from the neck-shaft junction, for a ~130 mm stem)."""
        rng = np.random.default_rng([seed, _STREAM])
        r = f.head_r
        fail = cls(kind)
        if kind == "dislocation":
            if rng.random() < 0.85:  # posterior: head above and lateral of the cup
                fail.head_offset = (rng.uniform(0.2, 0.9) * r, -rng.uniform(1.4, 2.4) * r)
                fail.head_rot_deg = rng.uniform(4, 14)
            else:  # anterior/inferior
                fail.head_offset = (-rng.uniform(0.3, 0.8) * r, rng.uniform(1.2, 2.0) * r)
                fail.head_rot_deg = -rng.uniform(5, 15)
        elif kind == "wear":
            shift = rng.uniform(2.5, 5.0)
            a = np.radians(rng.uniform(0, 35))  # towards the dome, superolateral
            fail.head_offset = (shift * np.sin(a), -shift * np.cos(a))
            if rng.random() < 0.35:  # particle disease: lysis behind the cup or at the calcar
                site = str(rng.choice(["cup", "stem"]))
                where = rng.uniform(-40, 40) if site == "cup" else -rng.uniform(0.0, 0.25)
                fail.lysis = [Lysis(site, where, rng.uniform(3, 8), int(rng.integers(2**31)))]
        elif kind == "loosening":
            part = str(rng.choice(["stem", "cup", "both"], p=[0.5, 0.2, 0.3]))
            fail.lucency_mm = rng.uniform(1.6, 4.0)
            if part in ("stem", "both"):
                first = int(rng.integers(1, 8))
                n = int(rng.integers(3, 8))
                fail.stem_zones = tuple(sorted({(first - 1 + k) % 7 + 1 for k in range(n)}))
                fail.subsidence = 0.0 if rng.random() < 0.35 else rng.uniform(3, 12)
            if part in ("cup", "both"):
                fail.cup_zones = (1, 2, 3) if rng.random() < 0.6 else tuple(
                    sorted(rng.choice([1, 2, 3], 2, replace=False).tolist()))
                fail.cup_tilt_deg = rng.uniform(0, 14)
                up = rng.uniform(0, 4)
                fail.head_offset = (rng.uniform(-1, 1), -up)
        elif kind == "periprosthetic_fracture":
            fail.fracture = _periprosthetic_cut(f, rng)
        elif kind == "infection":
            for _ in range(int(rng.integers(1, 3))):
                t0 = rng.uniform(20, 110)
                fail.periosteal.append((t0, t0 + rng.uniform(25, 80),
                                        int(rng.choice([-1, 1])), int(rng.integers(1, 4))))
            fail.lysis = [Lysis(str(rng.choice(["stem", "stem", "cup"])),
                                rng.uniform(-1, 1), rng.uniform(3, 10),
                                int(rng.integers(2**31)))
                          for _ in range(int(rng.integers(2, 6)))]
            for lysis in fail.lysis:
                if lysis.site == "cup":
                    lysis.where = rng.uniform(-70, 70)
            fail.scallops = [(rng.uniform(30, 140), int(rng.choice([-1, 1])),
                              rng.uniform(2.5, 5.0)) for _ in range(int(rng.integers(3, 9)))]
            if rng.random() < 0.5:
                fail.stem_zones = tuple(sorted({int(z) for z in rng.integers(1, 8, 3)}))
                fail.lucency_mm = rng.uniform(1.0, 2.5)
                fail.irregular = rng.uniform(0.4, 1.0)
        elif kind != "none":
            raise ValueError(f"unknown THA failure {kind!r}")
        return fail


def _periprosthetic_cut(f: FemurShape, rng: np.random.Generator) -> Cut:
    """Vancouver-like fracture line: A (greater trochanter), B (around the stem), C (below
    its tip); the fragment away from the head is displaced."""
    kind = str(rng.choice(["A", "B", "C"], p=[0.25, 0.6, 0.15]))
    sd = f.shaft_dir
    shaft_angle = float(np.degrees(np.arctan2(sd[1], sd[0])))
    if kind == "A":
        p = f.shaft_point(-f.gt_size[1] * 0.2, f.shaft_r * 0.6)
        return Cut(point=(float(p[0]), float(p[1])), angle_deg=shaft_angle + 180 - 35
                   + rng.normal(0, 8), gap=rng.uniform(1.5, 3.0), wiggle=rng.uniform(0.5, 1.5),
                   distal_shift=(rng.uniform(1, 5), -rng.uniform(6, 14)),
                   distal_rot_deg=rng.uniform(-8, 8))
    # B around the stem, C just below its tip (kept within an AP hip's field of view)
    t = rng.uniform(25, 100) if kind == "B" else rng.uniform(110, 150)
    p = f.shaft_point(t, rng.normal(0, 3))
    oblique = rng.uniform(35, 70) * rng.choice([-1, 1])
    return Cut(point=(float(p[0]), float(p[1])), angle_deg=shaft_angle + 90 + oblique,
               gap=rng.uniform(1.5, 3.5), wiggle=rng.uniform(0.6, 1.8),
               distal_shift=(rng.choice([-1, 1]) * rng.uniform(3, 9),
                             -rng.uniform(2, 12)),
               distal_rot_deg=rng.normal(0, 6))


def add_failure(canvas: Canvas, frame: Array, hemi: Array, f: FemurShape,
                implants: Implants, failure: ThaFailure) -> None:
    """Draw the bone changes of a THA failure. frame: the femur frame of the implant
    (origin at the prosthetic head); hemi: the hemipelvis frame."""
    stem, cup = implants.stem, implants.cup
    if stem is not None and failure.stem_zones:
        zones = _gruen(f, stem.length, failure.stem_zones)
        _interface_lucency(canvas, frame, stem.interface, failure.lucency_mm, zones,
                           failure.irregular)
    if cup is not None and failure.cup_zones:
        _cup_lucency(canvas, hemi, cup.centre, cup.radius, cup.opening_deg,
                     failure.cup_zones, failure.lucency_mm)
    for lysis in failure.lysis:
        if lysis.site == "cup" and cup is not None:
            a = np.radians(cup.opening_deg + 180 + lysis.where)
            d = cup.radius + lysis.radius * 0.6
            c = (cup.centre[0] + d * np.cos(a), cup.centre[1] + d * np.sin(a))
            canvas.scale("bone", hemi, _lytic(c, lysis.radius, lysis.seed),
                         bbox_of([c], lysis.radius * 1.6 + 2))
        elif lysis.site == "stem" and stem is not None:
            along = abs(lysis.where) * stem.length
            side = 1 if lysis.where >= 0 else -1
            c = tuple(f.shaft_point(along, side * (f.shaft_r * 0.55)))
            canvas.scale("bone", frame, _lytic(c, lysis.radius, lysis.seed),
                         bbox_of([c], lysis.radius * 1.6 + 2))
    for t, side, r in failure.scallops:  # wavy erosion of the inner cortex
        c = tuple(f.shaft_point(t, side * f.shaft_r * 0.7))
        canvas.scale("bone", frame, _scallop(c, r, f.shaft_dir), bbox_of([c], 2 * r + 2))
    for t0, t1, side, layers in failure.periosteal:  # lamellated periosteal new bone
        for k in range(layers):
            off = f.shaft_r + 2.0 + 1.8 * k
            pts = [tuple(f.shaft_point(t, side * off)) for t in np.linspace(t0, t1, 8)]
            canvas.add("bone", frame, _lamella(pts), bbox_of(pts, 4), mu=0.3)
        fill = [tuple(f.shaft_point(t, side * (f.shaft_r + 1.0 + 0.9 * layers)))
                for t in np.linspace(t0 + 5, t1 - 5, 8)]
        canvas.add("bone", frame, strip(fill, 0.9 * layers + 0.6, 1.5), bbox_of(fill, 8),
                   mu=0.05)


def _gruen(f: FemurShape, length: float, zones: tuple[int, ...]) -> Callable[[Array, Array],
                                                                             Array]:
    """Membership (0/1) of femur-frame points in the given Gruen zones of a stem: 1-3
    lateral (proximal to distal), 4 the tip, 5-7 medial (distal to proximal)."""

    def member(x: Array, y: Array) -> Array:
        along = ((x - f.junction[0]) * f.shaft_dir[0] + (y - f.junction[1]) * f.shaft_dir[1])
        lateral = ((x - f.junction[0]) * f.lateral_dir[0]
                   + (y - f.junction[1]) * f.lateral_dir[1]) > 0
        third = np.clip((along + 20) / (length * 0.9 + 20) * 3, 0, 2.999).astype(int)
        zone = np.where(lateral, 1 + third, 7 - third)
        zone = np.where(along > length * 0.9, 4, zone)
        return np.isin(zone, zones).astype(np.float32)

    return member


def _interface_lucency(canvas: Canvas, frame: Array, outline: Array, width: float,
                       zones: Callable[[Array, Array], Array], irregular: float) -> None:
    """Lucent band of `width` mm outside an implant interface, bounded by a thin sclerotic
    line (a smooth line; wavy when `irregular`)."""
    reg = canvas.region(frame, outline, pad_mm=width + 5)
    if reg is None:
        return
    inside = reg.mask(frame, outline)
    dist = ndimage.distance_transform_edt(~inside).astype(np.float32) * canvas.pixel_mm
    x, y = reg.local(frame)
    zone = ndimage.gaussian_filter(zones(x, y), 1.5 / canvas.pixel_mm)
    w = width * (1 + irregular * 0.6 * np.sin(x * 0.45) * np.sin(y * 0.3))
    band = smoothstep(w + 0.5, w - 0.5, dist) * (dist > 0) * zone
    margin = np.exp(-(((dist - w - 0.8) / 0.6) ** 2)) * zone * (1 - irregular)
    bone = canvas.layers["bone"][reg.sl]
    bone *= (1 - 0.85 * band) * (1 + 0.6 * margin)


def _cup_lucency(canvas: Canvas, hemi: Array, centre: tuple[float, float], radius: float,
                 opening: float, zones: tuple[int, ...], width: float) -> None:
    """Lucent band around the cup in DeLee-Charnley zones: thirds of the arc from the
    lateral rim (1) over the dome (2) to the medial rim (3)."""
    lateral_rim = opening - 90

    def scale(x: Array, y: Array) -> Array:
        dx, dy = x - centre[0], y - centre[1]
        d = np.hypot(dx, dy) - radius
        phi = (lateral_rim - np.degrees(np.arctan2(dy, dx))) % 360
        zone = 1 + np.clip(phi / 60, 0, 2.999).astype(int)
        member = np.isin(zone, zones) & (phi <= 180)
        band = smoothstep(width + 0.5, width - 0.5, d) * (d > 0) * member
        margin = np.exp(-(((d - width - 0.8) / 0.6) ** 2)) * member
        return (1 - 0.85 * band) * (1 + 0.6 * margin)

    canvas.scale("bone", hemi, scale, bbox_of([centre], radius + width + 4))


def _lytic(c: tuple[float, float], r: float, seed: int) -> Field:
    """Multiplier of bone for an irregular (scalloped) osteolytic area."""
    rng = np.random.default_rng(seed)
    k = rng.uniform(0.1, 0.3, 3)
    ph = rng.uniform(0, 2 * np.pi, 3)

    def lytic(x: Array, y: Array) -> Array:
        dx, dy = x - c[0], y - c[1]
        t = np.arctan2(dy, dx)
        rr = r * (1 + k[0] * np.sin(2 * t + ph[0]) + k[1] * np.sin(3 * t + ph[1])
                  + k[2] * np.sin(5 * t + ph[2]))
        return 1 - 0.8 * smoothstep(rr + 1.0, rr - 1.0, np.hypot(dx, dy))

    return lytic


def _scallop(c: tuple[float, float], r: float, along: Array) -> Field:
    """Multiplier of bone for one endosteal scallop: a shallow ellipse along the shaft."""

    def scallop(x: Array, y: Array) -> Array:
        dx, dy = x - c[0], y - c[1]
        u = (dx * along[0] + dy * along[1]) / (2 * r)
        v = (-dx * along[1] + dy * along[0]) / r
        return 1 - 0.45 * smoothstep(1.1, 0.8, np.hypot(u, v))

    return scallop


def _lamella(pts: list) -> Field:
    """A thin shell of periosteal new bone, fading at both ends."""
    thin = line(pts, 0.6)
    p0, p1 = np.asarray(pts[0]), np.asarray(pts[-1])
    axis = p1 - p0
    length = float(np.hypot(*axis))

    def lamella(x: Array, y: Array) -> Array:
        t = ((x - p0[0]) * axis[0] + (y - p0[1]) * axis[1]) / (length * length)
        return thin(x, y) * np.clip(np.sin(np.pi * np.clip(t, 0, 1)) * 2, 0, 1)

    return lamella
