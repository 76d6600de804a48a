"""Arthroplasty hardware (total hip, hemiarthroplasty, cement spacer, fixation around a
stem) drawn as high-attenuation implants, and the dispatcher for every hardware class.

Femoral implants are drawn in the femur frame (origin at the head centre, x lateral, y
distal, see anatomy.FemurShape); acetabular components in the hemipelvis frame
(u lateral, acetabular centre at (ACETABULUM_U, 0)). Implant designs vary (stem shapes and
lengths, cemented or not, cup sizes, inclination and anteversion, screws, head sizes,
bipolar heads) independently of the labels. Internal fixation lives in `fixation`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from hiprouter.synth.anatomy import (
    ACETABULUM_U,
    MU_CEMENT,
    MU_METAL,
    Cut,
    FemurShape,
)
from hiprouter.synth.canvas import (
    Array,
    Canvas,
    Field,
    Point,
    affine,
    apply,
    bbox_of,
    ellipsoid,
    line,
    shell,
    smooth_polygon,
    smoothstep,
    sphere,
    strip,
    tube,
)
from hiprouter.synth.fixation import ViewGeometry, add_fixation, pt, screw
from hiprouter.synth.labels import FIXATION, THA


@dataclass
class Stem:
    """A femoral stem as drawn (femur frame)."""

    outline: Array
    interface: Array
    """Outline of the bone-implant interface: the cement mantle, or the stem itself."""
    cemented: bool
    length: float


@dataclass
class Cup:
    """An acetabular component as drawn (hemipelvis frame)."""

    centre: Point
    radius: float
    """Outer radius at the bone interface (shell, or cement mantle)."""
    opening_deg: float


@dataclass
class Implants:
    """Geometry of the drawn arthroplasty components, for drawing their failure."""

    stem: Stem | None = None
    cup: Cup | None = None


def resection_cut(f: FemurShape, rng: np.random.Generator) -> Cut:
    """Neck osteotomy of an arthroplasty: the head side is removed."""
    p = f.junction + rng.uniform(0.30, 0.45) * f.neck_len * f.neck_dir
    ang = float(np.degrees(np.arctan2(f.neck_dir[1], f.neck_dir[0]))) + 90 + rng.normal(0, 6)
    return Cut(point=(float(p[0]), float(p[1])), angle_deg=ang, keep="distal", wiggle=0.4)


def _add_metal_polygon(canvas: Canvas, frame: Array, pts, thickness: float,
                       mu: float = MU_METAL, layer: str = "metal") -> None:
    """A flat implant outline; projected thickness rounds off over 1.5 mm at its edge."""
    reg = canvas.region(frame, pts)
    if reg is None:
        return
    depth = canvas.soft_depth(reg.coverage(frame, pts))
    reg.add(layer, mu * thickness * smoothstep(0, 1.5, depth))


_STEM_SHAPES = {"straight": 0.35, "anatomic": 0.2, "short": 0.15, "long": 0.15,
                "collared": 0.15}


def _stem_outline(f: FemurShape, length: float, lat_w: float, tip_w: float, shoulder: float,
                  bow: float, grow: float = 0.0) -> Array:
    """Stem outline; `bow` curves it (mm at mid-length, positive lateral), `grow` widens
    it all round (cement mantle)."""
    nd = f.neck_dir
    perp = np.array([nd[1], -nd[0]])  # points superior-lateral of the neck axis
    if perp[1] > 0:
        perp = -perp
    neck_base = f.junction + 0.45 * f.neck_len * nd

    def sp(t: float, lateral: float) -> Array:
        b = bow * np.sin(np.pi * np.clip(t / length, 0, 1))
        side = 1 if lateral >= 0 else -1
        return f.shaft_point(t, lateral + b + side * grow)

    pts = [
        neck_base + (7.5 + grow) * perp - grow * nd, sp(-shoulder, lat_w), sp(25, lat_w - 0.5),
        sp(length * 0.6, (lat_w + tip_w) / 2), sp(length, tip_w),
        f.shaft_point(length + 5 + grow), sp(length, -tip_w),
        sp(length * 0.5, -tip_w - 2.5), sp(18, -lat_w - 1), sp(2, -lat_w - 4),
        neck_base - (8.5 + grow) * perp - grow * nd,
    ]
    return smooth_polygon([pt(p) for p in pts], 2)


def add_stem(canvas: Canvas, frame: Array, f: FemurShape, rng: np.random.Generator, *,
             length: float | None = None, cemented: bool | None = None) -> Stem:
    """Femoral stem with trunnion, in one of several shapes; optional cement mantle with a
    restrictor beyond the tip."""
    shape = str(rng.choice(list(_STEM_SHAPES), p=list(_STEM_SHAPES.values())))
    default_len = {"short": (70, 100), "long": (180, 250)}.get(shape, (105, 160))
    length = rng.uniform(*default_len) if length is None else length
    cemented = rng.random() < 0.45 if cemented is None else cemented
    tip_w = rng.uniform(3.5, 5.5) if shape != "long" else rng.uniform(5.5, 7.0)
    lat_w = rng.uniform(8.5, 11.5)
    shoulder = rng.uniform(12, 22) if shape != "short" else rng.uniform(2, 8)
    bow = {"anatomic": rng.uniform(2, 5), "short": -rng.uniform(3, 6)}.get(shape, 0.0)
    outline = _stem_outline(f, length, lat_w, tip_w, shoulder, bow)
    interface = outline
    mu = MU_METAL * rng.uniform(0.6, 1.0)  # titanium to cobalt-chrome
    if cemented:
        mantle = rng.uniform(2.0, 4.0)
        interface = _stem_outline(f, length, lat_w, tip_w, shoulder, bow, grow=mantle)
        reg = canvas.region(frame, interface, pad_mm=4)
        if reg is not None:
            d = canvas.soft_depth(reg.coverage(frame, interface))
            reg.add("metal", MU_CEMENT * 24 * smoothstep(0, 1.5, d) * (1 + 0.1 * np.cos(d)))
        plug = f.shaft_point(length + rng.uniform(12, 25))
        canvas.add("metal", frame, ellipsoid(pt(plug), 7, 5, f.shaft_tilt_deg),
                   bbox_of([plug], 10), mu=MU_CEMENT * 1.5)
    _add_metal_polygon(canvas, frame, outline, rng.uniform(9, 14), mu=mu)
    neck_base = f.junction + 0.45 * f.neck_len * f.neck_dir
    trunnion = tube((0.0, 0.0), pt(neck_base), 5.5, 7.0, cap=0.5)
    canvas.add("metal", frame, trunnion, bbox_of([(0, 0), pt(neck_base)], 10), mu=mu)
    if shape == "collared":
        calcar = [pt(f.shaft_point(-2, -lat_w - 8)), pt(f.shaft_point(-8, -lat_w + 2))]
        canvas.add("metal", frame, strip(calcar, 1.5), bbox_of(calcar, 4), mu=mu * 8)
    return Stem(outline, interface, cemented, length)


def cup_shell(c: Point, r_out: float, r_in: float, opening_deg: float,
              anteversion_deg: float) -> Field:
    """Hemispherical shell whose open face points `opening_deg` in the image plane, tilted
    `anteversion_deg` out of it: projected thickness (the rim shows as an ellipse)."""
    o, av = np.radians(opening_deg), np.radians(anteversion_deg)
    n = (np.cos(o) * np.cos(av), np.sin(o) * np.cos(av), max(np.sin(av), 1e-3))

    def kept(r: float, dx: Array, dy: Array) -> Array:
        h = np.sqrt(np.clip(r * r - dx * dx - dy * dy, 0, None))
        z_cut = -(n[0] * dx + n[1] * dy) / n[2]  # the dome side has z below the cut
        return np.clip(z_cut + h, 0, 2 * h)

    def field(x: Array, y: Array) -> Array:
        dx, dy = x - c[0], y - c[1]
        return kept(r_out, dx, dy) - kept(r_in, dx, dy)

    return field


def add_cup(canvas: Canvas, hemi: Array, centre: Point, r: float, geo: ViewGeometry,
            rng: np.random.Generator, tilt_deg: float = 0.0) -> Cup:
    """Acetabular cup: metal shell (cementless, maybe with screws) or a cemented
    polyethylene cup with its wire marker. `tilt_deg` adds inclination (migration)."""
    opening = geo.cup_opening_deg + rng.normal(0, 6) + tilt_deg
    anteversion = rng.uniform(5, 30) * (1 - geo.face)
    bbox = bbox_of([centre], r + 8)
    if rng.random() < 0.7:
        canvas.add("metal", hemi, cup_shell(centre, r, r - rng.uniform(2.5, 4.5), opening,
                                            anteversion), bbox, mu=MU_METAL)
        for _ in range(int(rng.choice([0, 0, 1, 2, 3]))):
            a = np.radians(opening + 180 + rng.uniform(-40, 40))
            p0 = (centre[0] + (r - 4) * np.cos(a), centre[1] + (r - 4) * np.sin(a))
            p1 = (centre[0] + (r + rng.uniform(15, 30)) * np.cos(a),
                  centre[1] + (r + rng.uniform(15, 30)) * np.sin(a))
            canvas.add("metal", hemi, tube(p0, p1, 3.2, 2.2, thread=(2.5, 0.8), round_end=True),
                       bbox_of([p0, p1], 6), mu=MU_METAL)
        return Cup(centre, r, opening)
    canvas.add("metal", hemi, cup_shell(centre, r + 3, r, opening, anteversion),
               bbox_of([centre], r + 10), mu=MU_CEMENT * 1.6)
    a0 = opening + 90 + rng.uniform(-15, 15)
    t = np.radians(np.linspace(a0, a0 + 180, 30))
    wire = [(centre[0] + (r - 1) * np.cos(x), centre[1] + (r - 1) * np.sin(x) * 0.35)
            for x in t]
    rot = affine(rot_deg=opening + 90 - a0)
    wire = [tuple(p) for p in apply(affine(tx=centre[0], ty=centre[1]) @ rot
                                    @ affine(tx=-centre[0], ty=-centre[1]), wire)]
    canvas.add("metal", hemi, line(wire, 0.9), bbox_of(wire, 4), mu=MU_METAL * 6)
    canvas.add("metal", hemi, line(_arc(centre, r - 0.5, opening + 95, opening + 265), 0.8),
               bbox, mu=MU_METAL * 5)
    return Cup(centre, r + 3, opening)


def _arc(c: Point, r: float, a0: float, a1: float, n: int = 28) -> list[Point]:
    t = np.radians(np.linspace(a0, a1, n))
    return [(c[0] + r * np.cos(a), c[1] + r * np.sin(a)) for a in t]


def add_head(canvas: Canvas, frame: Array, r: float, bipolar: bool = False,
             mu: float = MU_METAL) -> None:
    """Prosthetic head (metal or ceramic); bipolar: an outer shell around a small head."""
    bbox = bbox_of([(0, 0)], r + 3)
    if bipolar:
        canvas.add("metal", frame, shell((0, 0), r, r - 2.5), bbox, mu=mu)
        canvas.add("metal", frame, sphere((0, 0), 14), bbox, mu=mu * 0.6)
    else:
        canvas.add("metal", frame, sphere((0, 0), r), bbox, mu=mu)


def add_fixation_on_tha(canvas: Canvas, frame: Array, f: FemurShape, geo: ViewGeometry,
                        stem_len: float, rng: np.random.Generator) -> None:
    """Additional femoral fixation with a THA: cerclage wires/cables, a plate, or both.

    It always starts within ~90 mm of the neck base, so AP pelvis views show it."""
    kind = rng.choice(["cerclage", "plate", "plate_cerclage", "trochanteric"])
    if kind in ("cerclage", "plate_cerclage"):
        for _ in range(int(rng.integers(2, 5))):
            t = rng.uniform(5, min(stem_len + 30, 90))
            tilt = rng.normal(0, 0.15)
            a = f.shaft_point(t + f.shaft_r * tilt, f.shaft_r + 2)
            b = f.shaft_point(t - f.shaft_r * tilt, -f.shaft_r - 2)
            pts = [pt(a), pt(b)]
            canvas.add("metal", frame, line(pts, rng.uniform(0.7, 1.1)), bbox_of(pts, 4),
                       mu=MU_METAL * 5)
            canvas.add("metal", frame, ellipsoid(pt(a), 2.5, 2.0), bbox_of([pt(a)], 4),
                       mu=MU_METAL)
    if kind in ("plate", "plate_cerclage"):
        t0 = rng.uniform(-15, 45)
        face = geo.face
        lat = (1 - face) * (f.shaft_r + 2.8)
        half = 2.8 + face * 5.5
        t1 = t0 + rng.uniform(120, 220)
        pts = [pt(f.shaft_point(t0, lat)), pt(f.shaft_point(t1, lat))]
        canvas.add("metal", frame, strip(pts, half), bbox_of(pts, half + 3), mu=MU_METAL * 6)
        for t in np.arange(t0 + 12, t1 - 5, 18.0):
            if t < stem_len + 8:
                for side in (-1, 1):
                    p = [pt(f.shaft_point(t + side * 4, f.shaft_r + 3)),
                         pt(f.shaft_point(t - side * 4, -f.shaft_r - 3))]
                    canvas.add("metal", frame, line(p, 0.8), bbox_of(p, 3), mu=MU_METAL * 5)
            else:
                screw(canvas, frame, f.shaft_point(t, f.shaft_r + 6),
                       f.shaft_point(t, -f.shaft_r - 2), 2.25, 40, head_r=4.0)
    if kind == "trochanteric":
        top = f.shaft_point(-f.gt_size[1] * 1.3, 14)
        pts = [pt(top), pt(f.shaft_point(-f.gt_size[1] * 0.5, f.shaft_r + 8)),
               pt(f.shaft_point(20, f.shaft_r + 4)), pt(f.shaft_point(70, f.shaft_r + 3))]
        canvas.add("metal", frame, strip(pts, 2.6 + 5 * geo.face), bbox_of(pts, 10),
                   mu=MU_METAL * 6)
        for t in (-5.0, 25.0, 55.0):
            p = [pt(f.shaft_point(t + 3, f.shaft_r + 4)),
                 pt(f.shaft_point(t - 3, -f.shaft_r - 3))]
            canvas.add("metal", frame, line(p, 0.9), bbox_of(p, 3), mu=MU_METAL * 5)


def add_cement_spacer(canvas: Canvas, frame: Array, hemi: Array, f: FemurShape,
                      rng: np.random.Generator) -> None:
    """Antibiotic cement spacer: articulating ball-and-stem or an irregular block, beads."""
    sp = f.shaft_point
    if rng.random() < 0.55:
        r = f.head_r * rng.uniform(0.85, 1.05)
        lumps = [(0.0, 0.0, r)]
        length = rng.uniform(90, 150)
        core = [(0.0, 0.0), pt(f.junction), pt(sp(length - 10))]
        canvas.add("metal", frame, line(core, rng.uniform(1.5, 2.5)), bbox_of(core, 6),
                   mu=MU_METAL * 5)
    else:
        lumps = [(rng.normal(0, 5), rng.normal(-3, 5), rng.uniform(14, 24)) for _ in range(4)]
        length = rng.uniform(50, 110)
    for x, y, r in lumps:
        bumpy = _bumpy_blob((x, y), r, rng)
        _add_metal_polygon(canvas, frame, bumpy, r * 1.4, mu=MU_CEMENT * 1.3)
    dowel = [pt(f.junction + 0.2 * f.neck_len * f.neck_dir), pt(sp(length))]
    w = f.shaft_r * f.canal_r * rng.uniform(0.8, 1.1)
    canvas.add("metal", frame, tube(dowel[0], dowel[1], w + 3, w, cap=5), bbox_of(dowel, 20),
               mu=MU_CEMENT * 1.3)
    if rng.random() < 0.6:
        hip = np.array([ACETABULUM_U, 0.0])
        for _ in range(int(rng.integers(1, 4))):
            p = hip + rng.normal(0, 25, 2)
            heading = rng.uniform(0, 2 * np.pi)
            beads = []
            for _k in range(int(rng.integers(6, 16))):
                beads.append(pt(p))
                heading += rng.normal(0, 0.35)
                p = p + 8.0 * np.array([np.cos(heading), np.sin(heading)])
            canvas.add("metal", hemi, line(beads, 0.5), bbox_of(beads, 3), mu=MU_METAL * 3)
            for b in beads:
                canvas.add("metal", hemi, sphere(b, 3.5), bbox_of([b], 5), mu=MU_CEMENT * 2.5)


def _bumpy_blob(c: Point, r: float, rng: np.random.Generator) -> Array:
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    rr = r * (1 + ndimage.gaussian_filter1d(rng.normal(0, 0.22, t.size), 1.5, mode="wrap"))
    return np.stack([c[0] + rr * np.cos(t), c[1] + rr * np.sin(t)], axis=1)


def add_hip_hardware(canvas: Canvas, hardware: str, device: str, femur_frame: Array,
                     hemi: Array, cup_centre: Point, f: FemurShape, geo: ViewGeometry,
                     rng: np.random.Generator, cup_tilt_deg: float = 0.0) -> Implants:
    """Draw the implants of one hip (femur already drawn and resected); returns the
    arthroplasty geometry its failure is drawn around."""
    if hardware == "no_hardware":
        return Implants()
    if hardware in THA:
        cup_r = f.head_r * rng.uniform(1.02, 1.2)
        cup = add_cup(canvas, hemi, cup_centre, cup_r, geo, rng, cup_tilt_deg)
        head_r = float(rng.choice([11.0, 14.0, 16.0, 18.0, 20.0], p=[0.1, 0.35, 0.3, 0.2, 0.05]))
        add_head(canvas, femur_frame, min(head_r, cup_r - 9.5),  # poly liner >= 5 mm
                 mu=MU_METAL * (0.5 if rng.random() < 0.4 else 1.0))
        stem = add_stem(canvas, femur_frame, f, rng,
                        length=rng.uniform(160, 240) if hardware == "tha_with_fixation"
                        and rng.random() < 0.4 else None)
        if hardware == "tha_with_fixation":
            add_fixation_on_tha(canvas, femur_frame, f, geo, stem.length, rng)
        return Implants(stem, cup)
    if hardware == "hemiarthroplasty":
        add_head(canvas, femur_frame, f.head_r * rng.uniform(0.95, 1.03),
                 bipolar=rng.random() < 0.5)
        return Implants(add_stem(canvas, femur_frame, f, rng, cemented=rng.random() < 0.7))
    if hardware == "post_infectious":
        add_cement_spacer(canvas, femur_frame, hemi, f, rng)
        return Implants()
    if hardware in FIXATION:
        add_fixation(canvas, femur_frame, f, geo, hardware, device, rng)
        return Implants()
    raise ValueError(f"unknown hardware class {hardware!r}")


def add_foreign_bodies(canvas: Canvas, frame: Array, region: tuple[float, float, float, float],
                       rng: np.random.Generator) -> None:
    """Objects unrelated to the hip labels: clothing snaps, zips, surgical clips, monitoring
    leads (layer "foreign"), phleboliths and vascular calcification (layer "bone")."""
    x0, y0, x1, y1 = region

    def anywhere() -> Point:
        return (float(rng.uniform(x0, x1)), float(rng.uniform(y0, y1)))

    if rng.random() < 0.12:
        for _ in range(int(rng.integers(1, 5))):
            c, r = anywhere(), float(rng.uniform(4, 9))
            canvas.add("foreign", frame, shell(c, r, r * 0.6), bbox_of([c], r + 2), mu=MU_METAL)
    if rng.random() < 0.06:
        top = anywhere()
        teeth = [(top[0] + rng.normal(0, 0.3), top[1] + 3.0 * k) for k in range(25, 55)]
        for t in teeth[: int(rng.integers(10, 30))]:
            canvas.add("foreign", frame, strip([(t[0] - 2.5, t[1]), (t[0] + 2.5, t[1])], 0.8),
                       bbox_of([t], 5), mu=MU_METAL * 3)
    if rng.random() < 0.06:
        for _ in range(int(rng.integers(1, 6))):
            c = anywhere()
            a = rng.uniform(0, np.pi)
            d = np.array([np.cos(a), np.sin(a)]) * rng.uniform(3, 5)
            pts = [(c[0] - d[0], c[1] - d[1]), (c[0] + d[0], c[1] + d[1])]
            canvas.add("foreign", frame, line(pts, 0.6), bbox_of(pts, 3), mu=MU_METAL * 4)
    if rng.random() < 0.05:
        c = np.array(anywhere())
        pts, heading = [], rng.uniform(0, 2 * np.pi)
        for _ in range(40):
            pts.append((float(c[0]), float(c[1])))
            heading += rng.normal(0, 0.12)
            c = c + 6.0 * np.array([np.cos(heading), np.sin(heading)])
        canvas.add("foreign", frame, line(pts, 0.7), bbox_of(pts, 3), mu=MU_METAL * 2)
        canvas.add("foreign", frame, shell(pts[0], 9, 7), bbox_of(pts[:1], 11), mu=MU_METAL)
    if rng.random() < 0.3:
        for _ in range(int(rng.integers(1, 8))):
            c, r = anywhere(), float(rng.uniform(1.5, 3.5))
            canvas.add("bone", frame, shell(c, r, r * 0.5), bbox_of([c], r + 1), mu=0.08)
    if rng.random() < 0.15:
        c = np.array(anywhere())
        pts = [(float(c[0] + rng.normal(0, 2)), float(c[1] + 8 * k)) for k in range(10)]
        canvas.add("bone", frame, line(pts, 0.8), bbox_of(pts, 3), mu=0.12)
