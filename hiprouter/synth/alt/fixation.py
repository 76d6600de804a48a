"""Internal fixation of the proximal femur, one builder per device design of the catalogue
(docs/synthetic-data.md): cephalomedullary nails (helical blade, lag screw, two screws),
sliding hip screw with a barrel side plate, three cannulated screws, and a femoral neck
system (bolt, anti-rotation screw, short plate). All in the femur's frame."""

from __future__ import annotations

import numpy as np

from hiprouter.synth.alt.femur import FemurFrame
from hiprouter.synth.alt.metalwork import Hardware, plate, rod, screw
from hiprouter.synth.alt.raycast import box, capsule_chain, frustum, rotation, unit


def _head_line(f: FemurFrame, angle: float, rng: np.random.Generator, low: float = 0.0
               ) -> tuple[np.ndarray, np.ndarray, float]:
    """Tip in the head, unit direction from the head towards the lateral cortex, and the
    distance from the tip to the lateral cortex, for an implant at `angle` to the shaft."""
    horiz = unit(np.array([f.neck_dir[0], f.neck_dir[1], 0.0]))
    phi = np.radians(180 - angle)
    v = unit(horiz * np.sin(phi) - np.array([0, 0, 1.0]) * np.cos(phi))
    tip = -v * (f.head_r - rng.uniform(7, 12)) + np.array([0, rng.normal(0, 1.5), -low])
    lateral_x = f.junction[0] + 1.02 * f.shaft_r
    dist = float((lateral_x - tip[0]) / v[0])
    return tip, v, dist


def _nail(f: FemurFrame, hw: Hardware, device: str, rng: np.random.Generator) -> None:
    metal = str(rng.choice(["titanium", "steel"], p=[0.7, 0.3]))
    top = f.gt_top + np.array([-4.0, 0, 6.0])
    bend = f.shaft_point(rng.uniform(40, 60))
    length = rng.choice([rng.uniform(170, 240), rng.uniform(340, 420)], p=[0.7, 0.3])
    end = f.shaft_point(length)
    rp, rd = rng.uniform(7.8, 8.6), rng.uniform(5.0, 6.0)
    axis_pts = np.array([top, bend, bend + unit(end - bend) * 15, end])
    hw.add(metal, capsule_chain(axis_pts, [rp, rp, rd, rd * 0.9]))
    hw.add(metal, capsule_chain(axis_pts, [2.3] * 4, caps=False), weight=-1)  # cannulation
    hw.add(metal, frustum(top, top + unit(top - bend) * 4, rp, rp))  # end cap
    angle = rng.uniform(125, 135)
    tip, v, dist = _head_line(f, angle, rng, low=rng.uniform(0, 4))
    out = tip + v * (dist + rng.uniform(4, 12))
    if device == "cmn_lag_screw":
        s, _ = screw(out, tip, 5.0, 6.4, rng.uniform(22, 28), pitch=3.2)
        hw.add(metal, s)
    elif device == "cmn_helical_blade":
        hw.add(metal, rod(out, tip + v * 30, 5.4))
        twist0 = rng.uniform(0, 180)
        rot0 = np.column_stack([unit(np.cross(v, [0, 1.0, 0])), [0, 1.0, 0], v])
        rot0[:, 1] = np.cross(rot0[:, 2], rot0[:, 0])
        for k in range(10):
            c = tip + v * (1.5 + 3 * k)
            r = rotation(v, twist0 + 9 * k) @ rot0
            hw.add(metal, box(c, r, (5.2, 1.6, 1.8)))
        hw.add(metal, rod(tip + v * 2, tip + v * 30, 2.2))
    else:  # two integrated screws, one above the other
        up = unit(np.cross(v, np.cross(np.array([0, 0, 1.0]), v)))
        up = up if up[2] > 0 else -up
        lower, _ = screw(out - up * 3, tip - up * 3, 4.2, 5.4, 20, pitch=2.8)
        upper, _ = screw(out + up * 6, tip + up * 6 + v * 4, 2.6, 3.4, 16, pitch=2.2)
        hw.add(metal, lower)
        hw.add(metal, upper)
    for k in range(int(rng.integers(1, 3))):
        c = f.shaft_point(length - rng.uniform(25, 40) - 15 * k)
        lock, _ = screw(c + np.array([25.0, 0, 0]), c - np.array([25.0, 0, 0]), 2.3, 2.6, 30,
                        pitch=1.8, head=3.5)
        hw.add(metal, lock)


def _sliding_hip_screw(f: FemurFrame, hw: Hardware, rng: np.random.Generator) -> None:
    metal = "steel"
    angle = rng.choice([130.0, 135.0, 140.0])
    tip, v, dist = _head_line(f, angle, rng, low=rng.uniform(0, 3))
    outside = tip + v * (dist + 6)
    lag_end = tip + v * (dist - rng.uniform(8, 20))
    s, _ = screw(lag_end, tip, 4.0, 6.3, rng.uniform(22, 28), pitch=3.0)
    hw.add(metal, s)
    barrel_in = outside - v * 38
    hw.add(metal, rod(outside, barrel_in, 6.5))
    hw.add(metal, rod(outside + v * 1, barrel_in - v * 1, 4.3), weight=-1)
    hw.add(metal, rod(lag_end, lag_end + v * 4, 4.0))
    holes = int(rng.choice([2, 4, 5, 6]))
    start = outside + np.array([0, 0, -4.0])
    stop = np.array([f.junction[0] + f.shaft_r, f.junction[1], start[2] - 20 - 16 * holes])
    body, centers = plate(start, stop, np.array([1.0, 0, 0]), rng.uniform(16, 19), 5.5,
                          holes + 1)
    hw.add(metal, body)
    for c in centers[1:]:
        s, _ = screw(c + np.array([7.0, 0, 0]), c - np.array([2 * f.shaft_r + 3, 0, 0]), 1.9,
                     2.3, 2 * f.shaft_r, pitch=1.75, head=4.0)
        hw.add(metal, s)


def _cannulated(f: FemurFrame, hw: Hardware, rng: np.random.Generator) -> None:
    metal = str(rng.choice(["titanium", "steel"]))
    nd = f.neck_dir
    e_up = unit(np.array([0, 0, 1.0]) - nd[2] * nd)
    e_ant = unit(np.cross(nd, e_up))
    e_ant = e_ant if e_ant[1] < 0 else -e_ant
    r = f.head_r
    offsets = [-0.42 * r * e_up, 0.3 * r * e_up + 0.33 * r * e_ant,
               0.3 * r * e_up - 0.33 * r * e_ant]
    core = rng.choice([3.25, 3.65])
    thread = rng.choice([16.0, 32.0])
    tilt = rotation((0, 1, 0), rng.uniform(-6, 6))
    v = unit(tilt @ nd)
    lateral_x = f.junction[0] + 1.02 * f.shaft_r
    washers = rng.random() < 0.4
    for off in offsets:
        tip = off * 0.9 - v * (r - rng.uniform(5, 8)) + rng.normal(0, 0.8, 3)
        dist = (lateral_x - tip[0]) / v[0]
        end = tip + v * (dist + rng.uniform(2, 7))
        s, hollow = screw(end, tip, core, core + 0.9, thread, pitch=2.7, cannula=1.45,
                          head=4.2)
        hw.add(metal, s)
        hw.add(metal, hollow, weight=-1)
        if washers:
            hw.add(metal, frustum(end - v * 1.5, end, 6.5, 6.5))
            hw.add(metal, frustum(end - v * 1.6, end + v * 0.1, 3.6, 3.6), weight=-1)


def _neck_system(f: FemurFrame, hw: Hardware, rng: np.random.Generator) -> None:
    metal = "titanium"
    tip, v, dist = _head_line(f, 130.0, rng, low=rng.uniform(0, 3))
    outside = tip + v * (dist + 5)
    hw.add(metal, rod(outside, tip, 5.0))
    bolt_thread, _ = screw(tip + v * 14, tip, 5.0, 5.4, 12, pitch=3.0)
    hw.add(metal, bolt_thread)
    up = unit(np.cross(v, np.cross(np.array([0, 0, 1.0]), v)))
    up = up if up[2] > 0 else -up
    v_ar = unit(rotation(np.cross(v, up), 7.5) @ v)
    ar_tip = tip + up * 8 + v * 3
    ar, _ = screw(ar_tip + v_ar * (dist + 2), ar_tip, 3.2, 3.7, 14, pitch=2.2)
    hw.add(metal, ar)
    hw.add(metal, rod(outside, outside - v * 20, 7.0))
    holes = int(rng.choice([1, 2]))
    stop = np.array([f.junction[0] + f.shaft_r, f.junction[1],
                     outside[2] - 30 - 14 * holes])
    body, centers = plate(outside + np.array([0, 0, 6.0]), stop, np.array([1.0, 0, 0]), 13.0,
                          4.5, holes + 1)
    hw.add(metal, body)
    lock_dir = unit(np.array([-1.0, 0, 0.45]))
    c = centers[-1]
    lock, _ = screw(c + np.array([6.0, 0, 0]), c + lock_dir * 40, 2.2, 2.6, 30, pitch=1.8,
                    head=4.0)
    hw.add(metal, lock)


def plan_fixation(device: str, frame: FemurFrame, rng: np.random.Generator) -> Hardware:
    """Hardware of an internal fixation device (keys of truth.DEVICES)."""
    hw = Hardware()
    if device.startswith("cmn_"):
        _nail(frame, hw, device, rng)
    elif device == "sliding_hip_screw":
        _sliding_hip_screw(frame, hw, rng)
    elif device == "cannulated_screws_3":
        _cannulated(frame, hw, rng)
    elif device == "neck_system_plate_bolt":
        _neck_system(frame, hw, rng)
    else:
        raise ValueError(f"unknown fixation device {device!r}")
    return hw
