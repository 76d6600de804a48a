"""Arthroplasty hardware: total hip (cup, liner, head, stem designs), hemiarthroplasty
(unipolar, bipolar), cement spacers and beads after infection, additional femoral fixation
(cerclage, trochanteric plate, long plate), and the five THA failure modes.

Femoral components are built in the femur's frame; cups and acetabular screws in the
patient's frame. Bone changes (resection, lucencies, periosteal reaction, subsidence,
fractures) are written into the `FemurModel` or returned as negative-bone parts.
"""

from __future__ import annotations

import numpy as np

from hiprouter.synth.alt.femur import Feature, FemurModel, Fragment, resect
from hiprouter.synth.alt.metalwork import Hardware, plate, rod, screw, wedge, wire_loop
from hiprouter.synth.alt.patient import Body
from hiprouter.synth.alt.pelvis import Socket, socket_axis
from hiprouter.synth.alt.raycast import (
    Convex,
    Solid,
    capsule_chain,
    ellipsoid,
    frustum,
    rotation,
    solid,
    sphere,
    unit,
)
from hiprouter.synth.alt.truth import HipTruth

STEMS = ("wedge", "cemented_taper", "cylinder", "short", "anatomic")


def _stem(model: FemurModel, design: str, rng: np.random.Generator, hw: Hardware, *,
          long: bool = False) -> tuple[Solid, Solid]:
    """Add a femoral stem with its neck and taper; returns (body in the canal, whole stem)."""
    f = model.frame
    nd = unit(rotation((0, 1, 0), rng.normal(0, 3)) @ f.neck_dir)
    j, rs = f.junction, f.shaft_r
    neck_len = float(np.linalg.norm(j))
    h = hw.head_local
    base = h + nd * 0.62 * neck_len
    top = j + np.array([0, 0, 14.0])
    x, y = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    length = rng.uniform(120, 150) * (1.5 if long else 1.0)
    tip = f.shaft_point(length)
    metal = {"wedge": "titanium", "short": "titanium", "anatomic": "titanium",
             "cemented_taper": str(rng.choice(["cocr", "steel"])), "cylinder": "cocr"}[design]
    k = 0.85 if design == "cemented_taper" else 1.0
    calcar = j + np.array([-0.5 * rs, 0, -22])
    tip_end = tip + np.array([0, 0, 6.0])
    if design == "short":
        pts = np.array([base, calcar, j + np.array([-0.2 * rs, 0, -55]),
                        j + np.array([0.05 * rs, 0, -95])])
        canal = capsule_chain(pts, [9.0, 8.5, 6.5, 4.5], ratio=0.62, hint=x, smooth=True)
    else:
        mid = j + np.array([-0.12 * rs, 0, -0.45 * length])
        r_mid = min(f.canal_r, 8.0) if design == "cylinder" else 6.5 * k
        r_tip = r_mid * 0.95 if design == "cylinder" else 4.2 * k
        if design == "anatomic":
            mid = mid + np.array([0, -3.0, 0])
        medial = capsule_chain(np.array([base, calcar, mid, tip_end]),
                               [8.5 * k, 9.5 * k, r_mid, r_tip], ratio=0.68, hint=x,
                               smooth=True)
        shoulder = wedge(top + np.array([0.15 * rs, 0, 0]), j + np.array([0, 0, -0.55 * length]),
                         x, y, (0.5 * rs * k, 0.85 * rs, 6.5 * k), (r_mid * 0.8, 2.0, 5.0 * k))
        canal = solid(medial, shoulder, power=12.0)
    taper = frustum(base, h + nd * 4.0, 6.8, 5.6)
    parts: list[Convex | Solid] = [canal, taper]
    if design in ("wedge", "anatomic") and rng.random() < 0.4:
        parts.append(frustum(base + nd * 2, base - nd * 1.5, 13.0, 13.0, ratio=0.8))
    whole = solid(*parts)
    hw.add(metal, whole)
    return canal, whole


def _cement(hw: Hardware, canal: Solid, rng: np.random.Generator, tip: np.ndarray) -> Solid:
    mantle = solid(canal.offset(rng.uniform(2.0, 4.0)),
                   sphere(tip + np.array([0, 0, 2.0]), rng.uniform(6, 8)))
    hw.add("cement", mantle)
    hw.add("cement", canal, weight=-1.0)
    return mantle


def _cup(hw: Hardware, sock: Socket, side: str, body: Body, rng: np.random.Generator,
         kind: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Acetabular component; returns its centre, axis and outer radius."""
    incl, av = rng.uniform(35, 52), rng.uniform(8, 25)
    axis = socket_axis(side, incl, av)
    lat = 1.0 if side == "L" else -1.0
    c = sock.center + np.array([-lat * rng.uniform(0, 4), 0, rng.uniform(0, 4)])
    outer = body.head_r + rng.uniform(1.5, 4.0)
    half = [(axis, c)]
    if kind == "cemented_pe":
        mantle = sphere(c, outer + rng.uniform(2, 4)).clip(axis, c + axis * 1.0)
        hw.add("cement", mantle, frame="pelvis")
        hw.add("cement", sphere(c, outer).clip(axis, c + axis * 1.0), frame="pelvis", weight=-1)
        hw.add("steel", wire_loop(c + axis * -1.0, axis, outer - 2.0, 0.5), frame="pelvis")
        if rng.random() < 0.5:
            arc_n = unit(np.cross(axis, [0, 1.0, 0]))
            hw.add("steel", wire_loop(c, arc_n, outer - 3.0, 0.45).clip(*half[0]),
                   frame="pelvis")
        return c, axis, outer + 3.0
    shell = 3.5 if kind != "dual_mobility" else 3.0
    metal = "titanium" if kind != "dual_mobility" else "cocr"
    hw.add(metal, sphere(c, outer).clip(*half[0]), frame="pelvis")
    hw.add(metal, sphere(c, outer - shell).clip(*half[0]), frame="pelvis", weight=-1)
    if kind == "ceramic_liner":
        hw.add("ceramic", sphere(c, outer - shell).clip(*half[0]), frame="pelvis")
        hw.add("ceramic", sphere(c, outer - shell - 5).clip(*half[0]), frame="pelvis", weight=-1)
    if kind == "porous" and rng.random() < 0.6:
        for _ in range(int(rng.integers(1, 4))):
            d = unit(-axis + np.array([lat * rng.uniform(-0.3, 0.2), rng.uniform(0, 0.5),
                                       rng.uniform(0.3, 0.8)]))
            start = c + d * (outer - shell - 1)
            metal_s, _ = screw(start, start + d * rng.uniform(20, 35), 2.2, 3.2,
                               rng.uniform(15, 25))
            hw.add("titanium", metal_s, frame="pelvis")
    return c, axis, outer


def _head(hw: Hardware, radius: float, rng: np.random.Generator,
          opening: np.ndarray | None = None) -> None:
    """Prosthetic head; with `opening` (towards the neck) a bipolar head's shell and inner
    head."""
    h = hw.head_local
    if opening is not None:
        shell = rng.uniform(3.0, 4.0)
        hw.add("cocr", sphere(h, radius).clip(opening, h + opening * 4.0))
        hw.add("cocr", sphere(h, radius - shell).clip(opening, h + opening * 4.0), weight=-1)
        hw.add("cocr", sphere(h + rng.normal(0, 0.6, 3), float(rng.choice([11.0, 14.0]))))
        return
    material = "ceramic" if rng.random() < 0.3 else "cocr"
    hw.add(material, sphere(h, radius))


def _extra_fixation(model: FemurModel, hw: Hardware, rng: np.random.Generator, tip_below: float
                    ) -> None:
    """Cerclage wires or cables, a trochanteric grip plate, or a long lateral plate."""
    f = model.frame
    kind = rng.choice(["cerclage", "grip", "long_plate"], p=[0.5, 0.2, 0.3])
    metal = str(rng.choice(["steel", "cocr"]))
    axis = np.array([0, 0, 1.0])
    if kind in ("cerclage", "grip"):
        levels = np.sort(rng.uniform(45, max(60, tip_below * 0.9), int(rng.integers(2, 5))))
        for b in levels:
            wire = rng.uniform(0.5, 1.0)
            hw.add(metal, wire_loop(f.shaft_point(b), axis, f.shaft_r + wire + 0.3, wire))
            if wire > 0.75:  # a cable's crimp sleeve
                hw.add(metal, rod(f.shaft_point(b) + np.array([f.shaft_r + 2, 0, -3]),
                                  f.shaft_point(b) + np.array([f.shaft_r + 2, 0, 3]), 1.6))
    if kind == "grip":
        gt = f.gt_top
        hw.add(metal, wedge(gt + np.array([4.0, 0, 4]), gt + np.array([6.0, 0, -70]),
                            np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), (1.2, 1.2, 9.0),
                            (1.2, 1.2, 7.0)))
        for dz in (-10.0, -40.0):
            hw.add(metal, wire_loop(gt + np.array([-8.0, 0, dz]), axis, f.shaft_r + 6, 0.8))
    if kind == "long_plate":
        top = f.shaft_point(30) + np.array([f.shaft_r, 0, 0])
        end = f.shaft_point(tip_below + rng.uniform(60, 120)) + np.array([f.shaft_r, 0, 0])
        body, holes = plate(top, end, np.array([1.0, 0, 0]), 15.0, 4.5, int(rng.integers(6, 10)))
        hw.add(metal, body)
        for k, c in enumerate(holes):
            below = float(np.dot(f.junction - c, axis))
            if below > tip_below + 10:
                s, _ = screw(c + np.array([6.0, 0, 0]), c - np.array([2 * f.shaft_r + 2, 0, 0]),
                             1.8, 2.3, 40, pitch=1.8, head=3.8)
                hw.add(metal, s)
            elif k % 2 == 0:
                hw.add(metal, wire_loop(c - np.array([f.shaft_r, 0, 0]), axis,
                                        f.shaft_r + 5.5, 0.8))


def _lucency(model: FemurModel, around: Solid, width: float, rng: np.random.Generator) -> None:
    """A radiolucent zone of `width` mm around a component (membrane instead of bone)."""
    grown, tight = around.offset(width), around.offset(0.3)
    for material, w in (("cancellous", -1.0), ("cortical", -0.5)):
        model.features.append(Feature(material, grown, w, "implant"))
        model.features.append(Feature(material, tight, -w, "implant"))


def _infection(model: FemurModel, hw: Hardware, around: Solid, cup: tuple, bvtv: float,
               rng: np.random.Generator) -> None:
    """Osteolysis around the components and lamellar periosteal new bone on the shaft."""
    f = model.frame
    _lucency(model, around, rng.uniform(1.5, 3.0), rng)
    for _ in range(int(rng.integers(3, 7))):
        c = f.shaft_point(rng.uniform(20, 110)) + np.array(
            [rng.choice([-1, 1]) * f.canal_r * rng.uniform(0.6, 1.1), rng.normal(0, 4), 0])
        blob = solid(ellipsoid(c, rotation((0, 1, 0), rng.uniform(0, 180)),
                               (rng.uniform(3, 7), rng.uniform(3, 6), rng.uniform(5, 12))))
        model.features.append(Feature("cancellous", blob, -1.0, "implant"))
        model.features.append(Feature("cortical", blob, -0.7, "implant"))
    top, length = rng.uniform(40, 80), rng.uniform(50, 110)
    for layer in range(int(rng.integers(1, 4))):
        gap = 1.5 + 1.8 * layer + rng.uniform(0, 0.8)
        r0 = f.shaft_r + gap
        a, b = f.shaft_point(top), f.shaft_point(top + length)
        outer = solid(frustum(a, b, r0 + 0.9, r0 + 0.9))
        inner = solid(frustum(a, b, r0, r0))
        model.features.append(Feature("cortical", outer, 0.8, "distal"))
        model.features.append(Feature("cortical", inner, -0.8, "distal"))
    c, axis, outer = cup
    for _ in range(int(rng.integers(1, 4))):
        d = unit(-axis + rng.normal(0, 0.5, 3))
        hw.add("cancellous", sphere(c + d * (outer + rng.uniform(2, 6)), rng.uniform(4, 9)),
               frame="pelvis", weight=-bvtv)
    hw.pelvis_resorb = rng.uniform(0.2, 0.5)


def _periprosthetic_fracture(model: FemurModel, tip_below: float, rng: np.random.Generator
                             ) -> None:
    f = model.frame
    point = f.shaft_point(rng.uniform(0.5, 1.05) * tip_below)
    normal = unit(rotation((0, 1, 0), rng.uniform(30, 60) * rng.choice([-1, 1]))
                  @ rotation((1, 0, 0), rng.uniform(-20, 20)) @ np.array([0, 0, 1.0]))
    gap = rng.uniform(0.8, 2.5)
    motion = (rotation((0, 1, 0), rng.uniform(-12, 12)) @ rotation((0, 0, 1), rng.uniform(-20, 20)),
              point, np.array([rng.uniform(-8, 8), rng.uniform(-4, 4), rng.uniform(0, 15)]))
    if rng.random() < 0.35:  # undisplaced
        motion = (np.eye(3), point, np.zeros(3))
    model.fragments = [Fragment("proximal", [(-normal, point + normal * gap / 2)]),
                       Fragment("distal", [(normal, point - normal * gap / 2)], motion)]


def plan_arthroplasty(truth: HipTruth, model: FemurModel, sock: Socket, side: str, body: Body,
                      rng: np.random.Generator) -> Hardware:
    """Hardware and bone changes of an arthroplasty hip (THA, hemi, spacer)."""
    hw = Hardware()
    if truth.hardware == "post_infectious":
        return _spacer(model, sock, side, body, rng, hw)
    resect(model, rng.uniform(0.55, 0.8) * model.frame.shaft_r)
    hw.head_local = rng.normal(0, 1.5, 3) * np.array([1, 0.5, 1])
    tha = truth.hardware in ("tha", "tha_with_fixation")
    long_stem = truth.hardware == "tha_with_fixation" and rng.random() < 0.6
    if tha:
        design = str(rng.choice(STEMS, p=[0.32, 0.28, 0.14, 0.12, 0.14]))
    else:
        design = str(rng.choice(["cemented_taper", "wedge", "austin_moore", "thompson"]))
    mono = design in ("austin_moore", "thompson")
    canal, whole = _stem(model, "wedge" if design == "austin_moore" else
                         "cemented_taper" if design == "thompson" else design, rng, hw,
                         long=long_stem)
    tip_below = float(np.dot(model.frame.junction - _lowest(canal), [0, 0, 1.0]))
    cemented = design in ("cemented_taper", "thompson") or (design == "cylinder"
                                                             and rng.random() < 0.2)
    around = canal
    if cemented:
        around = _cement(hw, canal, rng, model.frame.shaft_point(tip_below))
    if design == "austin_moore":
        f = model.frame
        for dz in (-5.0, -30.0):
            c = f.junction + np.array([-0.05 * f.shaft_r, 0, dz])
            hw.add("titanium", frustum(c - np.array([0, 12.0, 0]), c + np.array([0, 12.0, 0]),
                                       5.5, 5.5), weight=-1)
    if tha:
        kind = str(rng.choice(["porous", "cemented_pe", "dual_mobility", "ceramic_liner"],
                              p=[0.5, 0.2, 0.15, 0.15]))
        c, axis, outer = _cup(hw, sock, side, body, rng, kind)
        head_r = float(rng.choice([11.0, 14.0, 16.0, 18.0], p=[0.1, 0.3, 0.35, 0.25]))
        if kind == "dual_mobility":
            head_r = float(rng.choice([11.0, 14.0]))
        head_r = min(head_r, outer - 6.5)
        _head(hw, head_r, rng)
        hw.socket_radius = outer
        hw.head_offset = c - sock.center
        _failure(truth.failure, model, hw, around, (c, axis, outer), side, body, rng, tip_below)
        if truth.hardware == "tha_with_fixation":
            _extra_fixation(model, hw, rng, tip_below)
    else:
        bipolar = not mono and rng.random() < 0.55
        _head(hw, body.head_r + rng.uniform(-0.5, 0.8), rng,
              model.frame.neck_dir if bipolar else None)
    return hw


def _lowest(body: Solid) -> np.ndarray:
    """The lowest bounding-sphere point of a solid's pieces (stem tip estimate)."""
    pts = []
    for p in body.pieces:
        if isinstance(p, Solid):
            pts.append(_lowest(p))
        else:
            c, r = p.world_bound()
            pts.append(c - np.array([0, 0, r * 0.5]))
    return min(pts, key=lambda q: q[2])


def _failure(failure: str, model: FemurModel, hw: Hardware, around: Solid, cup: tuple,
             side: str, body: Body, rng: np.random.Generator, tip_below: float) -> None:
    lat = 1.0 if side == "L" else -1.0
    c, axis, outer = cup
    if failure == "wear":
        d = unit(np.array([lat * 0.45, rng.uniform(-0.2, 0.3), 1.0]))
        hw.head_offset = hw.head_offset + d * rng.uniform(1.8, 4.5)
    elif failure == "loosening":
        where = rng.choice(["stem", "cup", "both"], p=[0.5, 0.3, 0.2])
        if where in ("stem", "both"):
            _lucency(model, around, rng.uniform(1.8, 3.5), rng)
            model.bone_shift = np.array([0, 0, rng.uniform(4, 12)])
        if where in ("cup", "both"):
            hw.add("cancellous", sphere(c, outer + rng.uniform(2, 3.5)).clip(axis, c),
                   frame="pelvis", weight=-body.bvtv)
            hw.add("cancellous", sphere(c, outer + 0.3).clip(axis, c), frame="pelvis",
                   weight=body.bvtv)
    elif failure == "dislocation":
        hw.head_offset = hw.head_offset + np.array(
            [lat * rng.uniform(5, 18), rng.uniform(10, 30), rng.uniform(22, 42)])
        hw.extra_pose = (rng.uniform(0, 12), -rng.uniform(5, 15), rng.uniform(10, 25))
    elif failure == "periprosthetic_fracture":
        _periprosthetic_fracture(model, tip_below, rng)
    elif failure == "infection":
        _infection(model, hw, around, cup, body.bvtv, rng)


def _spacer(model: FemurModel, sock: Socket, side: str, body: Body, rng: np.random.Generator,
            hw: Hardware) -> Hardware:
    """Post-infectious hip: resection, cement spacer (articulating or static), beads."""
    f = model.frame
    resect(model, rng.uniform(-0.2, 0.5) * f.shaft_r)
    kind = rng.choice(["articulating", "static", "resection"], p=[0.55, 0.25, 0.2])
    lat = 1.0 if side == "L" else -1.0
    if kind == "articulating":
        r = body.head_r + rng.uniform(-1, 2)
        hw.add("cement", sphere(np.zeros(3), r))
        pts = np.array([f.neck_dir * r * 0.6, f.junction + np.array([-0.2 * f.shaft_r, 0, -20]),
                        f.shaft_point(rng.uniform(100, 160))])
        hw.add("cement", capsule_chain(pts, [r * 0.45, f.canal_r * 0.95, f.canal_r * 0.8],
                                       smooth=True))
        if rng.random() < 0.7:  # metal endoskeleton
            hw.add("steel", capsule_chain(pts, [2.5, 2.5, 2.5], smooth=True))
    elif kind == "static":
        blobs = [ellipsoid(rng.normal(0, 5, 3), rotation((0, 1, 0), rng.uniform(0, 180)),
                           tuple(rng.uniform(12, 22, 3))) for _ in range(int(rng.integers(2, 4)))]
        hw.add("cement", *blobs, frame="socket")
        core = np.array([f.junction + np.array([0, 0, 10.0]), f.shaft_point(120)])
        hw.add("cement", capsule_chain(core, [f.canal_r] * 2))
        hw.add("steel", capsule_chain(core, [2.0, 2.0]))
        hw.head_offset = np.array([lat * rng.uniform(5, 15), 0, rng.uniform(5, 20)])
    else:
        hw.head_offset = np.array([lat * rng.uniform(5, 15), rng.uniform(0, 10),
                                   rng.uniform(15, 35)])
    if kind != "articulating" or rng.random() < 0.35:
        for _ in range(int(rng.integers(1, 4))):
            start = np.array([rng.uniform(-10, 40), rng.uniform(-20, 20), rng.uniform(-60, 20)])
            step = unit(rng.normal(0, 1, 3)) * 9.0
            beads = []
            for k in range(int(rng.integers(6, 20))):
                step = unit(step + rng.normal(0, 0.35, 3)) * 9.0
                beads.append(start + step * k)
            beads_arr = np.array(beads)
            hw.add("cement", *(sphere(b, 3.3) for b in beads_arr))
            hw.add("steel", capsule_chain(beads_arr, [0.35] * len(beads_arr), caps=False))
    hw.pelvis_resorb = rng.uniform(0.1, 0.4)
    return hw
