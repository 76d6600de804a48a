"""Orthopaedic hardware of the 9 hardware classes, drawn as high-attenuation implants.

Femoral implants are drawn in the femur frame (origin at the head centre, x lateral, y
distal, see anatomy.FemurShape); acetabular components in the hemipelvis frame
(u lateral, acetabular centre at (ACETABULUM_U, 0)). `face` says how the view sees a
lateral plate: 0 edge-on (AP), 1 face-on (lateral).
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

ARTHROPLASTY = frozenset({"tha", "hemiarthroplasty", "tha_with_fixation", "post_infectious"})
HAS_CUP = frozenset({"tha", "tha_with_fixation"})


@dataclass
class ViewGeometry:
    """How a view projects the implants."""

    face: float = 0.0
    """0: lateral plates seen edge-on (AP); 1: face-on (cross-table lateral)."""
    cup_opening_deg: float = 50.0
    """Direction (hemipelvis frame) the open face of an acetabular cup points to."""


def resection_cut(f: FemurShape, rng: np.random.Generator) -> Cut:
    """Neck osteotomy of an arthroplasty: the head side is removed."""
    p = f.junction + rng.uniform(0.30, 0.45) * f.neck_len * f.neck_dir
    ang = float(np.degrees(np.arctan2(f.neck_dir[1], f.neck_dir[0]))) + 90 + rng.normal(0, 6)
    return Cut(point=(float(p[0]), float(p[1])), angle_deg=ang, keep="distal", wiggle=0.4)


def _pt(a: Array) -> Point:
    return (float(a[0]), float(a[1]))


def _add_metal_polygon(canvas: Canvas, frame: Array, pts, thickness: float,
                       mu: float = MU_METAL, layer: str = "metal") -> None:
    """A flat implant outline; projected thickness rounds off over 1.5 mm at its edge."""
    reg = canvas.region(frame, pts)
    if reg is None:
        return
    depth = canvas.inside_depth(reg.mask(frame, pts))
    reg.add(layer, mu * thickness * smoothstep(0, 1.5, depth))


def add_stem(canvas: Canvas, frame: Array, f: FemurShape, rng: np.random.Generator, *,
             length: float | None = None, cemented: bool | None = None) -> float:
    """Femoral stem with trunnion; optional cement mantle and restrictor. Returns length."""
    length = rng.uniform(105, 160) if length is None else length
    cemented = rng.random() < 0.45 if cemented is None else cemented
    nd = f.neck_dir
    perp = np.array([nd[1], -nd[0]])  # points superior-lateral of the neck axis
    if perp[1] > 0:
        perp = -perp
    neck_base = f.junction + 0.45 * f.neck_len * nd
    tip_w = rng.uniform(3.5, 5.5)
    lat_w = rng.uniform(8.5, 11.5)
    sp = f.shaft_point
    outline = [
        neck_base + 7.5 * perp, sp(-rng.uniform(12, 22), lat_w), sp(25, lat_w - 0.5),
        sp(length * 0.6, (lat_w + tip_w) / 2), sp(length, tip_w), sp(length + 5, 0),
        sp(length, -tip_w), sp(length * 0.5, -tip_w - 2.5), sp(18, -lat_w - 1),
        sp(2, -lat_w - 4), neck_base - 8.5 * perp,
    ]
    outline = smooth_polygon([_pt(p) for p in outline], 2)
    if cemented:
        reg = canvas.region(frame, outline, pad_mm=10)
        if reg is not None:
            grown = ndimage.binary_dilation(reg.mask(frame, outline),
                                            iterations=max(1, int(3.0 / canvas.pixel_mm)))
            d = canvas.inside_depth(grown)
            reg.add("metal", MU_CEMENT * 24 * smoothstep(0, 2.0, d) * (1 + 0.1 * np.cos(d)))
        plug = sp(length + rng.uniform(12, 25))
        canvas.add("metal", frame, ellipsoid(_pt(plug), 7, 5, f.shaft_tilt_deg),
                   bbox_of([plug], 10), mu=MU_CEMENT * 1.5)
    _add_metal_polygon(canvas, frame, outline, rng.uniform(9, 14))
    trunnion = tube((0.0, 0.0), _pt(neck_base), 5.5, 7.0, cap=0.5)
    canvas.add("metal", frame, trunnion, bbox_of([(0, 0), _pt(neck_base)], 10), mu=MU_METAL)
    return length


def add_cup(canvas: Canvas, hemi: Array, centre: Point, r: float, geo: ViewGeometry,
            rng: np.random.Generator) -> None:
    """Acetabular cup: metal shell (cementless) or polyethylene cup with wire and cement."""
    opening = geo.cup_opening_deg + rng.normal(0, 6)
    bbox = bbox_of([centre], r + 8)
    if rng.random() < 0.7:
        canvas.add("metal", hemi, shell(centre, r, r - rng.uniform(2.5, 4.5), opening, rim=3.0),
                   bbox, mu=MU_METAL)
        for _ in range(int(rng.integers(0, 3))):
            a = np.radians(opening + 180 + rng.uniform(-35, 35))
            p0 = (centre[0] + (r - 4) * np.cos(a), centre[1] + (r - 4) * np.sin(a))
            p1 = (centre[0] + (r + 22) * np.cos(a), centre[1] + (r + 22) * np.sin(a))
            canvas.add("metal", hemi, tube(p0, p1, 3.2, 2.2, thread=(2.5, 0.8), round_end=True),
                       bbox_of([p0, p1], 6), mu=MU_METAL)
    else:
        canvas.add("metal", hemi, shell(centre, r + 3, r, opening), bbox_of([centre], r + 10),
                   mu=MU_CEMENT * 1.6)
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


def _arc(c: Point, r: float, a0: float, a1: float, n: int = 28) -> list[Point]:
    t = np.radians(np.linspace(a0, a1, n))
    return [(c[0] + r * np.cos(a), c[1] + r * np.sin(a)) for a in t]


def add_head(canvas: Canvas, frame: Array, r: float, bipolar: bool = False) -> None:
    bbox = bbox_of([(0, 0)], r + 3)
    if bipolar:
        canvas.add("metal", frame, shell((0, 0), r, r - 2.5), bbox, mu=MU_METAL)
        canvas.add("metal", frame, sphere((0, 0), 14), bbox, mu=MU_METAL * 0.6)
    else:
        canvas.add("metal", frame, sphere((0, 0), r), bbox, mu=MU_METAL)


def _screw(canvas: Canvas, frame: Array, head_end: Array, tip: Array, r: float,
           thread_len: float, *, head_r: float = 0.0, washer: bool = False) -> None:
    """Partially threaded screw from head_end (outside) to tip."""
    axis = tip - head_end
    length = float(np.hypot(*axis))
    u = axis / length
    split = tip - u * min(thread_len, length)
    bb = bbox_of([_pt(head_end), _pt(tip)], r + 8)
    if thread_len < length:
        canvas.add("metal", frame, tube(_pt(head_end), _pt(split), r * 0.72, cap=0.3), bb,
                   MU_METAL)
    canvas.add("metal", frame, tube(_pt(split), _pt(tip), r, r * 0.8, thread=(2.6, r * 0.35),
                                    round_end=True, cap=0.3), bb, MU_METAL)
    if head_r:
        canvas.add("metal", frame, tube(_pt(head_end - u * 4), _pt(head_end), head_r, cap=0.3),
                   bb, MU_METAL)
    if washer:
        n = np.array([-u[1], u[0]])
        w = [_pt(head_end + n * (r + 4)), _pt(head_end - n * (r + 4))]
        canvas.add("metal", frame, strip(w, 0.8, 0.3), bbox_of(w, 3), mu=MU_METAL * 12)


def _neck_line(f: FemurShape, tip_depth: float, offset: float) -> tuple[Array, Array]:
    """A line parallel to the neck axis, `offset` mm across it: (lateral start, tip)."""
    nd = f.neck_dir
    perp = np.array([-nd[1], nd[0]])
    tip = nd * (f.head_r - tip_depth) + perp * offset
    start = tip - nd * (f.head_r - tip_depth + f.neck_len + f.shaft_r / np.sin(
        np.radians(180 - f.neck_shaft_deg)) + 4)
    return start, tip


def add_cannulated_screws(canvas: Canvas, frame: Array, f: FemurShape,
                          rng: np.random.Generator) -> None:
    n = int(rng.choice([2, 3, 3]))
    spread = f.neck_r * rng.uniform(0.35, 0.55)
    offsets = [-spread, spread] if n == 2 else [-spread, rng.normal(0, 2), spread]
    r = rng.choice([3.25, 3.65])
    washer = rng.random() < 0.4
    for off in offsets:
        start, tip = _neck_line(f, rng.uniform(4, 8), off)
        _screw(canvas, frame, start, tip, r, rng.uniform(16, 32), head_r=r + 1.5, washer=washer)


def _side_plate(canvas: Canvas, frame: Array, f: FemurShape, geo: ViewGeometry, t0: float,
                n_holes: int, rng: np.random.Generator, spacing: float = 18.0) -> float:
    """Plate on the lateral femoral cortex from shaft position t0, cortical screws. Returns
    the distal end position."""
    face = geo.face
    lat = (1 - face) * (f.shaft_r + 2.8)
    half = 2.8 + face * 5.5
    t1 = t0 + spacing * (n_holes + 0.7)
    pts = [_pt(f.shaft_point(t0, lat)), _pt(f.shaft_point(t1, lat))]
    canvas.add("metal", frame, strip(pts, half), bbox_of(pts, half + 3), mu=MU_METAL * 6)
    for i in range(n_holes):
        if rng.random() < 0.12:
            continue
        t = t0 + spacing * (i + 1) + rng.normal(0, 1)
        outer = f.shaft_point(t, f.shaft_r + 6)
        inner = f.shaft_point(t, -f.shaft_r - rng.uniform(1, 4))
        if face < 0.7:
            w = 1 - face
            _screw(canvas, frame, outer, inner, 2.25 * w + 0.3, 40, head_r=4.0 * w + 0.5)
        if face > 0.3:
            c = _pt(f.shaft_point(t, 0))
            canvas.add("metal", frame, ellipsoid(c, 2.4, 2.4, depth=10 * face),
                       bbox_of([c], 4), mu=MU_METAL)
            canvas.add("metal", frame, shell(c, 4.2, 2.6), bbox_of([c], 6), mu=MU_METAL * face)
    return t1


def add_dynamic_hip_screw(canvas: Canvas, frame: Array, f: FemurShape, geo: ViewGeometry,
                          rng: np.random.Generator) -> None:
    start, tip = _neck_line(f, rng.uniform(6, 12), rng.normal(-2, 2))
    u = (tip - start) / np.hypot(*(tip - start))
    barrel_end = start + u * rng.uniform(34, 42)
    bb = bbox_of([_pt(start), _pt(tip)], 12)
    canvas.add("metal", frame, tube(_pt(start - u * 3), _pt(barrel_end), 6.3, cap=0.5), bb,
               MU_METAL)
    _screw(canvas, frame, start + u * 10, tip, 6.2, rng.uniform(20, 26))
    # plate starts where the barrel meets the lateral cortex
    t0 = float(np.dot(start - f.junction, f.shaft_dir)) - 6
    _side_plate(canvas, frame, f, geo, t0, int(rng.integers(2, 7)), rng)


def add_lateral_plate(canvas: Canvas, frame: Array, f: FemurShape, geo: ViewGeometry,
                      rng: np.random.Generator) -> None:
    """Proximal femoral locking plate with diverging head screws, or an angled blade plate."""
    lat = (1 - geo.face) * (f.shaft_r + 3)
    gt_top = f.gt_size[1] * 1.1
    if rng.random() < 0.6:
        pts = [_pt(f.shaft_point(-gt_top, lat * 0.9 + 4)), _pt(f.shaft_point(-gt_top * 0.4,
                                                                              lat + 6)),
               _pt(f.shaft_point(15, lat + 2)), _pt(f.shaft_point(40, lat))]
        half = 3.0 + geo.face * 8
        canvas.add("metal", frame, strip(pts, half), bbox_of(pts, half + 3), mu=MU_METAL * 6)
        for k in range(int(rng.integers(3, 5))):
            start, tip = _neck_line(f, rng.uniform(6, 10), 0.0)
            ang = np.radians(-10 + 8 * k + rng.normal(0, 2))
            rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
            origin = f.shaft_point(-gt_top * 0.55 + 14 * k, lat + 6)
            d = rot @ (tip - start) / np.hypot(*(tip - start))
            length = f.neck_len + f.head_r * 0.6 + 10 - 6 * abs(k - 1.5)
            _screw(canvas, frame, origin, origin + d * length, 2.5, length, head_r=3.5)
        _side_plate(canvas, frame, f, geo, 40, int(rng.integers(2, 6)), rng)
    else:
        start, tip = _neck_line(f, rng.uniform(10, 16), -f.neck_r * 0.3)
        half = 2.5 + 6 * geo.face
        blade = [_pt(start), _pt(tip)]
        canvas.add("metal", frame, strip(blade, half), bbox_of(blade, half + 3), mu=MU_METAL * 5)
        t0 = float(np.dot(start - f.junction, f.shaft_dir))
        corner = [_pt(start), _pt(f.shaft_point(t0 + 6, lat))]
        canvas.add("metal", frame, strip(corner, 3.0), bbox_of(corner, 6), mu=MU_METAL * 6)
        _side_plate(canvas, frame, f, geo, t0, int(rng.integers(3, 6)), rng)


def add_im_nail(canvas: Canvas, frame: Array, f: FemurShape, geo: ViewGeometry,
                rng: np.random.Generator) -> None:
    """Cephalomedullary nail from the greater trochanter with a lag screw or blade."""
    long_nail = rng.random() < 0.5
    length = rng.uniform(340, 420) if long_nail else rng.uniform(170, 240)
    entry = f.shaft_point(-f.gt_size[1] * 1.2, 6)
    bend = f.shaft_point(45, 0.5)
    end = f.shaft_point(length - 40, -0.5)
    r_prox, r_dist = rng.uniform(7.5, 8.5), rng.uniform(5, 6)
    bb = bbox_of([_pt(entry), _pt(end)], 12)
    canvas.add("metal", frame, tube(_pt(entry), _pt(bend), r_prox, r_prox * 0.95, cap=0.8), bb,
               MU_METAL)
    canvas.add("metal", frame, tube(_pt(bend), _pt(end), r_prox * 0.9, r_dist, round_end=True),
               bb, MU_METAL)
    start, tip = _neck_line(f, rng.uniform(8, 12), rng.normal(-1, 1.5))
    if rng.random() < 0.75:
        _screw(canvas, frame, start, tip, 5.3, rng.uniform(18, 26))
    else:
        blade = [_pt(start), _pt(tip)]
        canvas.add("metal", frame, strip(blade, 5.0 - 2 * geo.face), bbox_of(blade, 8),
                   mu=MU_METAL * 8)
        canvas.add("metal", frame, line([_pt(start), _pt(tip)], 1.0), bbox_of(blade, 4),
                   mu=MU_METAL * 3)
    for k in range(int(rng.integers(1, 3))):
        t = length - 40 - 15 - 14 * k
        outer, inner = f.shaft_point(t, f.shaft_r + 5), f.shaft_point(t, -f.shaft_r - 3)
        _screw(canvas, frame, outer, inner, 2.5, 50, head_r=4.0)


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
            pts = [_pt(a), _pt(b)]
            canvas.add("metal", frame, line(pts, rng.uniform(0.7, 1.1)), bbox_of(pts, 4),
                       mu=MU_METAL * 5)
            canvas.add("metal", frame, ellipsoid(_pt(a), 2.5, 2.0), bbox_of([_pt(a)], 4),
                       mu=MU_METAL)
    if kind in ("plate", "plate_cerclage"):
        t0 = rng.uniform(-15, 45)
        face = geo.face
        lat = (1 - face) * (f.shaft_r + 2.8)
        half = 2.8 + face * 5.5
        t1 = t0 + rng.uniform(120, 220)
        pts = [_pt(f.shaft_point(t0, lat)), _pt(f.shaft_point(t1, lat))]
        canvas.add("metal", frame, strip(pts, half), bbox_of(pts, half + 3), mu=MU_METAL * 6)
        for t in np.arange(t0 + 12, t1 - 5, 18.0):
            if t < stem_len + 8:
                for side in (-1, 1):
                    p = [_pt(f.shaft_point(t + side * 4, f.shaft_r + 3)),
                         _pt(f.shaft_point(t - side * 4, -f.shaft_r - 3))]
                    canvas.add("metal", frame, line(p, 0.8), bbox_of(p, 3), mu=MU_METAL * 5)
            else:
                _screw(canvas, frame, f.shaft_point(t, f.shaft_r + 6),
                       f.shaft_point(t, -f.shaft_r - 2), 2.25, 40, head_r=4.0)
    if kind == "trochanteric":
        top = f.shaft_point(-f.gt_size[1] * 1.3, 14)
        pts = [_pt(top), _pt(f.shaft_point(-f.gt_size[1] * 0.5, f.shaft_r + 8)),
               _pt(f.shaft_point(20, f.shaft_r + 4)), _pt(f.shaft_point(70, f.shaft_r + 3))]
        canvas.add("metal", frame, strip(pts, 2.6 + 5 * geo.face), bbox_of(pts, 10),
                   mu=MU_METAL * 6)
        for t in (-5.0, 25.0, 55.0):
            p = [_pt(f.shaft_point(t + 3, f.shaft_r + 4)),
                 _pt(f.shaft_point(t - 3, -f.shaft_r - 3))]
            canvas.add("metal", frame, line(p, 0.9), bbox_of(p, 3), mu=MU_METAL * 5)


def add_cement_spacer(canvas: Canvas, frame: Array, hemi: Array, f: FemurShape,
                      rng: np.random.Generator) -> None:
    """Antibiotic cement spacer: articulating ball-and-stem or an irregular block, beads."""
    sp = f.shaft_point
    if rng.random() < 0.55:
        r = f.head_r * rng.uniform(0.85, 1.05)
        lumps = [(0.0, 0.0, r)]
        length = rng.uniform(90, 150)
        core = [(0.0, 0.0), _pt(f.junction), _pt(sp(length - 10))]
        canvas.add("metal", frame, line(core, rng.uniform(1.5, 2.5)), bbox_of(core, 6),
                   mu=MU_METAL * 5)
    else:
        lumps = [(rng.normal(0, 5), rng.normal(-3, 5), rng.uniform(14, 24)) for _ in range(4)]
        length = rng.uniform(50, 110)
    for x, y, r in lumps:
        bumpy = _bumpy_blob((x, y), r, rng)
        _add_metal_polygon(canvas, frame, bumpy, r * 1.4, mu=MU_CEMENT * 1.3)
    dowel = [_pt(f.junction + 0.2 * f.neck_len * f.neck_dir), _pt(sp(length))]
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
                beads.append(_pt(p))
                heading += rng.normal(0, 0.35)
                p = p + 8.0 * np.array([np.cos(heading), np.sin(heading)])
            canvas.add("metal", hemi, line(beads, 0.5), bbox_of(beads, 3), mu=MU_METAL * 3)
            for b in beads:
                canvas.add("metal", hemi, sphere(b, 3.5), bbox_of([b], 5), mu=MU_CEMENT * 2.5)


def _bumpy_blob(c: Point, r: float, rng: np.random.Generator) -> Array:
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    rr = r * (1 + ndimage.gaussian_filter1d(rng.normal(0, 0.22, t.size), 1.5, mode="wrap"))
    return np.stack([c[0] + rr * np.cos(t), c[1] + rr * np.sin(t)], axis=1)


def add_hip_hardware(canvas: Canvas, hardware: str, femur_frame: Array, hemi: Array,
                     cup_centre: Point, f: FemurShape, geo: ViewGeometry,
                     rng: np.random.Generator) -> None:
    """Draw the implants of one hardware class (femur already drawn and resected)."""
    if hardware == "no_hardware":
        return
    if hardware in HAS_CUP:
        cup_r = f.head_r * rng.uniform(1.02, 1.18)
        add_cup(canvas, hemi, cup_centre, cup_r, geo, rng)
        add_head(canvas, femur_frame, float(rng.choice([14.0, 16.0, 18.0])))
        stem_len = add_stem(canvas, femur_frame, f, rng,
                            length=rng.uniform(160, 240) if hardware == "tha_with_fixation"
                            and rng.random() < 0.4 else None)
        if hardware == "tha_with_fixation":
            add_fixation_on_tha(canvas, femur_frame, f, geo, stem_len, rng)
    elif hardware == "hemiarthroplasty":
        add_head(canvas, femur_frame, f.head_r * rng.uniform(0.95, 1.03),
                 bipolar=rng.random() < 0.5)
        add_stem(canvas, femur_frame, f, rng, cemented=rng.random() < 0.7)
    elif hardware == "im_nail":
        add_im_nail(canvas, femur_frame, f, geo, rng)
    elif hardware == "cannulated_screws":
        add_cannulated_screws(canvas, femur_frame, f, rng)
    elif hardware == "dynamic_hip_screw":
        add_dynamic_hip_screw(canvas, femur_frame, f, geo, rng)
    elif hardware == "lateral_plate":
        add_lateral_plate(canvas, femur_frame, f, geo, rng)
    elif hardware == "post_infectious":
        add_cement_spacer(canvas, femur_frame, hemi, f, rng)
    else:
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
