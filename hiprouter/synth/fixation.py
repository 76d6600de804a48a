"""Internal fixation of the proximal femur: the six catalogue device designs
(labels.DEVICES) and the designs outside the catalogue, drawn as metal in the femur frame.

Each design has its own geometry, so a model can tell them apart: a cephalomedullary nail
with a helical blade, with one lag screw, or with two integrated parallel screws; a sliding
hip screw with its barrel side plate; three parallel cannulated screws; a femoral neck
system (short plate, bolt and anti-rotation screw). Sizes and positions vary per hip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hiprouter.synth.anatomy import MU_METAL, FemurShape
from hiprouter.synth.canvas import (
    Array,
    Canvas,
    Field,
    Point,
    bbox_of,
    ellipsoid,
    shell,
    smoothstep,
    strip,
    tube,
)


@dataclass
class ViewGeometry:
    """How a view projects the implants."""

    face: float = 0.0
    """0: lateral plates seen edge-on (AP); 1: face-on (cross-table lateral)."""
    cup_opening_deg: float = 50.0
    """Direction (hemipelvis frame) the open face of an acetabular cup points to."""


def pt(a: Array) -> Point:
    return (float(a[0]), float(a[1]))


def screw(canvas: Canvas, frame: Array, head_end: Array, tip: Array, r: float,
          thread_len: float, *, head_r: float = 0.0, washer: bool = False,
          pitch: float = 2.6, mu: float = MU_METAL) -> None:
    """Partially threaded screw from head_end (outside) to tip."""
    axis = tip - head_end
    length = float(np.hypot(*axis))
    u = axis / length
    split = tip - u * min(thread_len, length)
    bb = bbox_of([pt(head_end), pt(tip)], r + 8)
    if thread_len < length:
        canvas.add("metal", frame, tube(pt(head_end), pt(split), r * 0.72, cap=0.3), bb, mu)
    canvas.add("metal", frame, tube(pt(split), pt(tip), r, r * 0.8, thread=(pitch, r * 0.35),
                                    round_end=True, cap=0.3), bb, mu)
    if head_r:
        canvas.add("metal", frame, tube(pt(head_end - u * 4), pt(head_end), head_r, cap=0.3),
                   bb, mu)
    if washer:
        n = np.array([-u[1], u[0]])
        w = [pt(head_end + n * (r + 4)), pt(head_end - n * (r + 4))]
        canvas.add("metal", frame, strip(w, 0.8, 0.3), bbox_of(w, 3), mu=mu * 12)


def neck_line(f: FemurShape, tip_depth: float, offset: float, tilt_deg: float = 0.0
              ) -> tuple[Array, Array]:
    """A line along the neck, `offset` mm across its axis (positive: superior), ending
    `tip_depth` mm inside the head surface: (start at the lateral cortex, tip)."""
    a = np.radians(tilt_deg)
    nd0 = f.neck_dir
    nd = np.array([nd0[0] * np.cos(a) - nd0[1] * np.sin(a),
                   nd0[0] * np.sin(a) + nd0[1] * np.cos(a)])
    perp = np.array([-nd0[1], nd0[0]])
    tip = nd * (f.head_r - tip_depth) + perp * offset
    start = tip - nd * (f.head_r - tip_depth + f.neck_len + f.shaft_r / np.sin(
        np.radians(180 - f.neck_shaft_deg)) + 4)
    return start, tip


def side_plate(canvas: Canvas, frame: Array, f: FemurShape, geo: ViewGeometry, t0: float,
               n_holes: int, rng: np.random.Generator, spacing: float = 18.0,
               half_width: float = 2.8) -> float:
    """Plate on the lateral femoral cortex from shaft position t0 with cortical screws.
    Returns the distal end position."""
    face = geo.face
    lat = (1 - face) * (f.shaft_r + 2.8)
    half = half_width + face * 5.5
    t1 = t0 + spacing * (n_holes + 0.7)
    pts = [pt(f.shaft_point(t0, lat)), pt(f.shaft_point(t1, lat))]
    canvas.add("metal", frame, strip(pts, half), bbox_of(pts, half + 3), mu=MU_METAL * 6)
    for i in range(n_holes):
        if rng.random() < 0.12:
            continue
        t = t0 + spacing * (i + 1) + rng.normal(0, 1)
        outer = f.shaft_point(t, f.shaft_r + 6)
        inner = f.shaft_point(t, -f.shaft_r - rng.uniform(1, 4))
        if face < 0.7:
            w = 1 - face
            screw(canvas, frame, outer, inner, 2.25 * w + 0.3, 40, head_r=4.0 * w + 0.5)
        if face > 0.3:
            c = pt(f.shaft_point(t, 0))
            canvas.add("metal", frame, ellipsoid(c, 2.4, 2.4, depth=10 * face),
                       bbox_of([c], 4), mu=MU_METAL)
            canvas.add("metal", frame, shell(c, 4.2, 2.6), bbox_of([c], 6), mu=MU_METAL * face)
    return t1


# ---- the catalogue designs -------------------------------------------------------------


def _nail(canvas: Canvas, frame: Array, f: FemurShape, rng: np.random.Generator,
          r_prox: float) -> float:
    """Cephalomedullary nail from the tip of the greater trochanter; returns its length."""
    length = rng.uniform(340, 420) if rng.random() < 0.45 else rng.uniform(170, 240)
    entry = f.shaft_point(-f.gt_size[1] * 1.2, rng.uniform(4, 8))
    bend = f.shaft_point(rng.uniform(35, 55), 0.5)
    end = f.shaft_point(length - 40, -0.5)
    r_dist = rng.uniform(5, 6)
    bb = bbox_of([pt(entry), pt(end)], 14)
    canvas.add("metal", frame, tube(pt(entry), pt(bend), r_prox, r_prox * 0.95, cap=0.8), bb,
               MU_METAL)
    canvas.add("metal", frame, tube(pt(bend), pt(end), r_prox * 0.85, r_dist, round_end=True),
               bb, MU_METAL)
    for k in range(int(rng.integers(1, 3))):  # distal locking screws
        t = length - 40 - rng.uniform(12, 20) - 14 * k
        outer, inner = f.shaft_point(t, f.shaft_r + 5), f.shaft_point(t, -f.shaft_r - 3)
        screw(canvas, frame, outer, inner, 2.5, 50, head_r=4.0)
    return length


def _helical_blade(start: Array, tip: Array, half: float, pitch: float) -> Field:
    """Broad unthreaded blade with oblique helical flutes and a chisel tip."""
    p0, p1 = np.asarray(start, float), np.asarray(tip, float)
    axis = p1 - p0
    length = float(np.hypot(*axis))
    u = axis / length

    def blade(x: Array, y: Array) -> Array:
        t = (x - p0[0]) * u[0] + (y - p0[1]) * u[1]
        d = -(x - p0[0]) * u[1] + (y - p0[1]) * u[0]
        w = half * np.clip((length - t) / (1.6 * half), 0.25, 1.0)  # tapered tip
        body = smoothstep(w + 0.5, w - 0.5, np.abs(d)) * smoothstep(-0.5, 0.5, t) * (t < length)
        flutes = 1 + 0.35 * np.sin(2 * np.pi * (t + 0.8 * d) / pitch)
        return body * flutes * 2 * np.sqrt(np.clip(w * w - d * d, 0, None) + 1.0)

    return blade


def add_cmn(canvas: Canvas, frame: Array, f: FemurShape, geo: ViewGeometry, design: str,
            rng: np.random.Generator) -> None:
    """Cephalomedullary nail with its head element: helical blade, lag screw or two screws."""
    tip_depth = rng.uniform(7, 13)
    offset = rng.normal(-1.0, 1.5)
    if design == "cmn_dual_screw":
        _nail(canvas, frame, f, rng, r_prox=rng.uniform(8.5, 9.5))
        gap = rng.uniform(9, 13)
        start, tip = neck_line(f, tip_depth, offset + gap * 0.45)
        screw(canvas, frame, start - (tip - start) * 0.04, tip, rng.uniform(5.0, 5.5),
              rng.uniform(20, 26), pitch=3.2)
        start2, tip2 = neck_line(f, tip_depth + rng.uniform(6, 12), offset - gap * 0.55)
        screw(canvas, frame, start2, tip2, rng.uniform(3.1, 3.6), rng.uniform(14, 20))
        return
    _nail(canvas, frame, f, rng, r_prox=rng.uniform(7.5, 8.5))
    start, tip = neck_line(f, tip_depth, offset)
    u = (tip - start) / np.hypot(*(tip - start))
    start = start - u * rng.uniform(2, 10)  # protrudes beyond the lateral cortex
    if design == "cmn_helical_blade":  # a wide blade on a shaft, its sleeve standing out
        half = rng.uniform(5.8, 6.6) * (1 - 0.35 * geo.face)
        blade_start = start + u * rng.uniform(25, 35)
        canvas.add("metal", frame, _helical_blade(blade_start, tip, half, rng.uniform(14, 22)),
                   bbox_of([pt(blade_start), pt(tip)], 10), mu=MU_METAL)
        shaft = [pt(start - u * rng.uniform(4, 10)), pt(blade_start + u * 2)]
        canvas.add("metal", frame, tube(shaft[0], shaft[1], rng.uniform(4.2, 4.8)),
                   bbox_of(shaft, 10), MU_METAL)
    elif design == "cmn_lag_screw":
        screw(canvas, frame, start, tip, rng.uniform(5.1, 5.6), rng.uniform(20, 28),
              pitch=rng.uniform(3.0, 4.0))
    else:
        raise ValueError(f"not a cephalomedullary nail design: {design!r}")


def add_sliding_hip_screw(canvas: Canvas, frame: Array, f: FemurShape, geo: ViewGeometry,
                          rng: np.random.Generator) -> None:
    """Lag screw gliding in the barrel of a side plate, with cortical screws."""
    start, tip = neck_line(f, rng.uniform(6, 12), rng.normal(-1.0, 2.0))
    u = (tip - start) / np.hypot(*(tip - start))
    barrel_end = start + u * rng.uniform(34, 42)
    bb = bbox_of([pt(start), pt(tip)], 12)
    canvas.add("metal", frame, tube(pt(start - u * 3), pt(barrel_end), rng.uniform(6.0, 6.6),
                                    cap=0.5), bb, MU_METAL)
    screw(canvas, frame, start + u * rng.uniform(4, 14), tip, rng.uniform(5.9, 6.4),
          rng.uniform(20, 26), pitch=3.0)
    if rng.random() < 0.4:  # compression screw at the barrel's end
        screw(canvas, frame, start - u * 4, start + u * 14, 2.2, 10, head_r=3.5)
    t0 = float(np.dot(start - f.junction, f.shaft_dir)) - 6
    side_plate(canvas, frame, f, geo, t0, int(rng.integers(2, 7)), rng,
               half_width=rng.uniform(2.6, 3.2))


def add_cannulated_screws(canvas: Canvas, frame: Array, f: FemurShape,
                          rng: np.random.Generator, count: int) -> None:
    """Parallel partially threaded screws across the neck: 3 as an inverted triangle (one
    along the calcar, two superior ones, anterior and posterior), 2, or 4."""
    spread = f.neck_r * rng.uniform(0.4, 0.6)
    if count == 3:  # the leg's rotation separates the two superior screws on an AP view
        sup = f.neck_r * rng.uniform(0.5, 0.65)
        offsets = [-sup, sup, sup - rng.uniform(7.0, 10.0)]
    elif count == 2:
        offsets = [spread, -spread]
    else:
        offsets = [spread, -spread, rng.uniform(-2, 2), rng.uniform(-2, 2) + 3]
    r = rng.choice([3.25, 3.65])
    washer = rng.random() < 0.4
    thread = rng.choice([16.0, 32.0])
    tilt = rng.normal(0, 3)
    for off in offsets:
        start, tip = neck_line(f, rng.uniform(4, 8), off, tilt)
        screw(canvas, frame, start, tip, r, thread, head_r=r + 1.5, washer=washer)


def add_neck_system(canvas: Canvas, frame: Array, f: FemurShape, geo: ViewGeometry,
                    rng: np.random.Generator) -> None:
    """Femoral neck system: a smooth bolt along the neck, an anti-rotation screw through it
    diverging superiorly into the head, and a short locking plate with one or two screws."""
    start, tip = neck_line(f, rng.uniform(6, 11), -rng.uniform(0.5, 3.5))
    u = (tip - start) / np.hypot(*(tip - start))
    bb = bbox_of([pt(start), pt(tip)], 14)
    bolt_r = rng.uniform(4.8, 5.2)
    canvas.add("metal", frame, tube(pt(start + u * rng.uniform(-2, 6)), pt(tip), bolt_r,
                                    round_end=True, cap=0.5), bb, MU_METAL)
    canvas.add("metal", frame, tube(pt(start - u * 2), pt(start + u * 12), bolt_r + 1.6,
                                    cap=0.5), bb, MU_METAL)
    ang = np.radians(-rng.uniform(6.5, 8.5))  # diverges superiorly (towards the dome)
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    v = rot @ u
    if v[1] > u[1]:
        v = np.linalg.inv(rot) @ u
    up = np.array([-u[1], u[0]])  # across the bolt, towards the dome
    if up[1] > 0:
        up = -up
    s0 = start + u * rng.uniform(14, 22) + up * (bolt_r + rng.uniform(0.5, 2.0))
    length = float(np.hypot(*(tip - s0))) + rng.uniform(-4, 1)
    screw(canvas, frame, s0, s0 + v * length, rng.uniform(3.0, 3.4), 14)
    t0 = float(np.dot(start - f.junction, f.shaft_dir)) - 8
    side_plate(canvas, frame, f, geo, t0, int(rng.integers(1, 3)), rng,
               spacing=rng.uniform(14, 18), half_width=rng.uniform(3.0, 3.6))


def add_locking_plate(canvas: Canvas, frame: Array, f: FemurShape, geo: ViewGeometry,
                      rng: np.random.Generator) -> None:
    """Proximal femoral locking plate with diverging head screws (outside the catalogue)."""
    lat = (1 - geo.face) * (f.shaft_r + 3)
    gt_top = f.gt_size[1] * 1.1
    pts = [pt(f.shaft_point(-gt_top, lat * 0.9 + 4)), pt(f.shaft_point(-gt_top * 0.4, lat + 6)),
           pt(f.shaft_point(15, lat + 2)), pt(f.shaft_point(40, lat))]
    half = 3.0 + geo.face * 8
    canvas.add("metal", frame, strip(pts, half), bbox_of(pts, half + 3), mu=MU_METAL * 6)
    for k in range(int(rng.integers(3, 5))):
        start, tip = neck_line(f, rng.uniform(6, 10), 0.0)
        ang = np.radians(-10 + 8 * k + rng.normal(0, 2))
        rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
        origin = f.shaft_point(-gt_top * 0.55 + 14 * k, lat + 6)
        d = rot @ (tip - start) / np.hypot(*(tip - start))
        length = f.neck_len + f.head_r * 0.6 + 10 - 6 * abs(k - 1.5)
        screw(canvas, frame, origin, origin + d * length, 2.5, length, head_r=3.5)
    side_plate(canvas, frame, f, geo, 40, int(rng.integers(2, 6)), rng)


def add_blade_plate(canvas: Canvas, frame: Array, f: FemurShape, geo: ViewGeometry,
                    rng: np.random.Generator) -> None:
    """Angled blade plate (outside the catalogue)."""
    lat = (1 - geo.face) * (f.shaft_r + 3)
    start, tip = neck_line(f, rng.uniform(10, 16), -f.neck_r * 0.3)
    half = 2.5 + 6 * geo.face
    blade = [pt(start), pt(tip)]
    canvas.add("metal", frame, strip(blade, half), bbox_of(blade, half + 3), mu=MU_METAL * 5)
    t0 = float(np.dot(start - f.junction, f.shaft_dir))
    corner = [pt(start), pt(f.shaft_point(t0 + 6, lat))]
    canvas.add("metal", frame, strip(corner, 3.0), bbox_of(corner, 6), mu=MU_METAL * 6)
    side_plate(canvas, frame, f, geo, t0, int(rng.integers(3, 6)), rng)


def add_fixation(canvas: Canvas, frame: Array, f: FemurShape, geo: ViewGeometry,
                 hardware: str, device: str, rng: np.random.Generator) -> None:
    """Draw the internal fixation of one hip: its catalogue device, or (device empty) a
    design of its hardware class outside the catalogue."""
    if device.startswith("cmn_"):
        add_cmn(canvas, frame, f, geo, device, rng)
    elif device == "sliding_hip_screw":
        add_sliding_hip_screw(canvas, frame, f, geo, rng)
    elif device == "cannulated_screws_3":
        add_cannulated_screws(canvas, frame, f, rng, 3)
    elif device == "neck_system_plate_bolt":
        add_neck_system(canvas, frame, f, geo, rng)
    elif device:
        raise ValueError(f"unknown device {device!r}")
    elif hardware == "cannulated_screws":
        add_cannulated_screws(canvas, frame, f, rng, 2 if rng.random() < 0.7 else 4)
    elif hardware == "lateral_plate":
        (add_locking_plate if rng.random() < 0.6 else add_blade_plate)(canvas, frame, f, geo,
                                                                         rng)
    else:
        raise ValueError(f"{hardware} needs a catalogue device")
