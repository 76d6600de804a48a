"""The proximal femur as a 3D solid model: cortex and marrow of each part, fragments of a
fracture, resection for arthroplasty, and the head's osteoarthritis and osteonecrosis.

The femur is built in its own frame (origin at the head centre, x lateral, y posterior, z
along the shaft towards the hip) and placed in the patient by a `Pose` (hip flexion,
abduction and rotation about the head centre). Implants use the same frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hiprouter.synth.alt.patient import Body
from hiprouter.synth.alt.raycast import (
    Convex,
    Layers,
    Solid,
    capsule_chain,
    ellipsoid,
    rotation,
    solid,
    sphere,
    unit,
)

Motion = tuple[np.ndarray, np.ndarray, np.ndarray]
"""(rotation, pivot, shift) of a rigid move."""
STILL: Motion = (np.eye(3), np.zeros(3), np.zeros(3))


@dataclass(frozen=True)
class Pose:
    """Femur frame -> patient frame: p_world = head + rot @ p_local."""

    rot: np.ndarray
    head: np.ndarray

    def point(self, p: np.ndarray) -> np.ndarray:
        return self.head + self.rot @ np.asarray(p, float)


def hip_pose(side: str, head: np.ndarray, flexion: float, abduction: float,
             rotation_int: float) -> Pose:
    """Pose of a femur: internal rotation about its axis, then hip flexion and abduction."""
    lat = 1.0 if side == "L" else -1.0
    mirror = np.diag([lat, 1.0, 1.0])
    neutral = rotation((0, 1, 0), lat * 7.0)
    rot = (rotation((0, 1, 0), -lat * abduction) @ rotation((1, 0, 0), -flexion) @ neutral
           @ mirror @ rotation((0, 0, 1), -rotation_int))
    return Pose(rot, np.asarray(head, float))


@dataclass(frozen=True)
class FemurFrame:
    """Landmarks in the femur's own frame."""

    head_r: float
    neck_dir: np.ndarray
    """Unit vector from the head centre towards the neck base."""
    junction: np.ndarray
    """Where the neck axis meets the shaft axis."""
    shaft_r: float
    canal_r: float
    """Medullary canal radius below the lesser trochanter."""
    gt_top: np.ndarray
    lt: np.ndarray

    def shaft_point(self, below: float) -> np.ndarray:
        """Point on the shaft axis `below` mm distal to the junction (anterior bow)."""
        return self.junction + np.array([0.0, -0.00015 * below**2, -below])


@dataclass
class Element:
    """One part of the bone: outer surface, endosteal surface, and what fills it."""

    outer: Convex | Solid
    inner: Convex | Solid
    core: str = "cancellous"
    canc: Convex | Solid | None = None
    """The cancellous part of a marrow-filled element (metaphyseal end of the shaft)."""


@dataclass
class Feature:
    """Extra material in one fragment (osteophyte cores, cysts, sclerosis, lucencies), or
    around an implant (fragment 'implant': placed with the femur frame, not the bone)."""

    material: str
    body: Solid
    weight: float
    fragment: str = "head"


@dataclass
class Fragment:
    name: str
    planes: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    """(normal, point): the fragment keeps (x - point).normal <= 0."""
    motion: Motion = STILL
    elements: list[str] | None = None
    """Names of the elements it holds (None: all)."""


@dataclass
class FemurModel:
    frame: FemurFrame
    elements: dict[str, Element]
    features: list[Feature] = field(default_factory=list)
    fragments: list[Fragment] = field(default_factory=lambda: [Fragment("whole")])
    cuts: list[tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]] = field(
        default_factory=list)
    """Resections (normal, point, elements they cut or None for all): keep (x-point).n <= 0."""
    bone_shift: np.ndarray = field(default_factory=lambda: np.zeros(3))
    """Shift of the bone relative to the frame (a subsided stem leaves the bone higher)."""
    head_fragment: str = "head"


def build_femur(body: Body, side: str, *, valgus: float = 0.0, extra_av: float = 0.0
                ) -> FemurModel:
    """The native proximal femur of one side."""
    s = body.size
    r = body.head_r
    nsa = np.radians(body.side(body.neck_shaft, side) + valgus)
    av = np.radians(body.side(body.anteversion, side) + extra_av)
    nd = unit([np.sin(nsa) * np.cos(av), np.sin(nsa) * np.sin(av), np.cos(nsa)])
    length = body.neck_len
    j = length * nd
    rs = body.shaft_r
    c = body.cortex
    up = np.array([0.0, 0, 1])
    el: dict[str, Element] = {}
    head = sphere(np.zeros(3), r * (0.8 if body.child else 1.0))
    if body.child:
        head = ellipsoid(np.zeros(3) + up * 0.1 * r, np.eye(3), (0.8 * r, 0.8 * r, 0.55 * r))
    el["head"] = Element(head, head.offset(-1.2 * s))
    # the neck as one mitred tube from inside the head to the trochanteric region
    neck_pts = np.array([0.0 * nd, 1.05 * r * nd, (length + 0.1 * rs) * nd])
    neck = capsule_chain(neck_pts, [0.6 * r, 0.68 * r, 1.0 * r], ratio=0.8, hint=up,
                         caps=False)
    neck_in = capsule_chain(neck_pts, [0.6 * r - 1.5 * s, 0.68 * r - 1.5 * s, r - 1.6 * s],
                            ratio=0.8, hint=up, caps=False)
    if body.child:  # physis: the metaphysis stops short of the ossific nucleus
        neck, neck_in = neck.clip(-nd, 0.62 * r * nd), neck_in.clip(-nd, 0.62 * r * nd)
    el["neck"] = Element(neck, neck_in)
    gt_c = np.array([j[0] + 0.4 * rs, j[1] + 6 * s, -24 * s])
    gt_r = (1.0 * rs, 1.1 * rs, 21 * s)
    if body.child:
        gt_c = gt_c + np.array([3 * s, 0, 4 * s])
        gt_r = tuple(0.6 * x for x in gt_r)
    gt = ellipsoid(gt_c, rotation((0, 1, 0), 14.0), gt_r)
    el["gt"] = Element(gt, gt.offset(-0.8 * s))
    meta = ellipsoid(j + np.array([-0.05 * rs, 3 * s, -28 * s]), np.eye(3),
                     (1.22 * rs, 1.05 * rs, 45 * s))
    el["meta"] = Element(meta, meta.offset(-1.5 * s))
    lt_c = j + np.array([-rs - 1 * s, 9 * s, -40 * s])
    lt = ellipsoid(lt_c, rotation((0, 1, 0), -35.0), (6.5 * s, 7 * s, 12 * s))
    el["lt"] = Element(lt, lt.offset(-1.2 * s))
    below = np.array([-22, 10, 45, 80, 130, 200, 300, 430]) * s
    radius = rs * np.array([0.45, 1.18, 1.05, 1.0, 0.96, 0.94, 0.95, 1.0])
    cortex = np.array([0.8 * s, 1.8 * s, 2.6 * s, 0.7 * c, c, c, 0.95 * c, 0.8 * c])
    pts = np.array([j + np.array([0.0, -0.00015 * bb**2, -bb]) for bb in below])
    outer = capsule_chain(pts, radius, caps=False)
    inner = capsule_chain(pts, radius - cortex, caps=False)
    el["shaft"] = Element(outer, inner, "marrow")
    frame = FemurFrame(r, nd, j, rs, rs - c, gt_c + np.array([0, 0, gt_r[2] * 0.95]), lt_c)
    model = FemurModel(frame, el)
    if not body.child:
        down = unit(-up - np.dot(-up, nd) * nd)
        calcar = capsule_chain(np.array([0.9 * r * nd + 0.45 * r * down,
                                         j + np.array([-rs + 2.5 * s, 4 * s, -30 * s])]),
                               [2.0 * s, 2.4 * s])
        model.features += [Feature("cortical", calcar, 0.8, "distal"),
                           Feature("cancellous", calcar, -0.25, "distal")]
    return model


def _perp_frame(nd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors perpendicular to the neck axis: superior-ish and anterior-ish."""
    e1 = unit(np.array([0, 0, 1.0]) - nd[2] * nd)
    e2 = np.cross(nd, e1)
    return e1, e2 if e2[1] < 0 else -e2


def add_osteoarthritis(model: FemurModel, grade: int, rng: np.random.Generator) -> None:
    """Osteophytes at the head-neck junction, subchondral sclerosis, cysts, flattening."""
    if grade <= 0:
        return
    f = model.frame
    r = f.head_r
    e1, e2 = _perp_frame(f.neck_dir)
    n = {1: 2, 2: 4, 3: 6, 4: 9}[grade]
    for k in range(n):
        theta = rng.choice([rng.uniform(-0.9, 0.9), rng.uniform(2.4, 3.9)])
        size = (0.8 + 0.9 * grade) * rng.uniform(0.7, 1.3)
        pos = (0.72 * r * f.neck_dir + 0.7 * r * (np.cos(theta) * e1 + np.sin(theta) * e2))
        rot = np.column_stack(_tangent_frame(f.neck_dir, np.cos(theta) * e1 + np.sin(theta) * e2))
        spur = ellipsoid(pos, rot, (size * 0.9, size * 1.6, size * 1.2))
        model.elements[f"osteophyte{k}"] = Element(spur, spur.offset(-0.7))
    if grade >= 3:  # inferomedial "capital drop" osteophyte
        pos = 0.55 * r * f.neck_dir - 0.85 * r * e1
        drop = ellipsoid(pos, np.eye(3), (4 + grade, 3 + grade, 3 + grade))
        model.elements["osteophyte_drop"] = Element(drop, drop.offset(-0.8))
    top = unit(np.array([0.35, 0, 1.0]))
    if grade >= 2:  # subchondral sclerosis under the weight-bearing dome
        cap = solid(ellipsoid(top * 0.68 * r, np.column_stack(_tangent_frame(top, e2)),
                              (0.28 * r, 0.55 * r, 0.55 * r)))
        model.features.append(Feature("cortical", cap, 0.1 * grade))
        model.features.append(Feature("cancellous", cap, 0.1 * grade))
    if grade >= 3:
        for _ in range(int(rng.integers(1, 4))):
            c = top * r * rng.uniform(0.5, 0.75) + rng.normal(0, 0.15 * r, 3)
            model.features.append(Feature("cancellous", solid(sphere(c, rng.uniform(2, 4))),
                                          -0.35))
    if grade == 4:
        _flatten(model, top, rng.uniform(2.5, 5.0))


def _tangent_frame(nd: np.ndarray, radial: np.ndarray) -> tuple[np.ndarray, ...]:
    t = np.cross(nd, radial)
    return radial, t, np.cross(radial, t)


def _flatten(model: FemurModel, direction: np.ndarray, depth: float) -> None:
    """Collapse of the head surface facing `direction` by `depth` mm (dense flat surface)."""
    head = model.elements["head"]
    r = model.frame.head_r
    plane = (r - depth) * direction
    model.elements["head"] = Element(head.outer.clip(direction, plane),
                                     head.inner.clip(direction, plane - 1.8 * direction),
                                     head.core)


def add_osteonecrosis(model: FemurModel, grade: int, rng: np.random.Generator) -> None:
    """Necrotic anterosuperior segment: mottling, sclerotic rim and cysts, crescent, collapse."""
    if grade <= 0 or "head" not in model.elements:
        return
    r = model.frame.head_r
    d = unit(np.array([0.3, -0.35, 0.9]) + rng.normal(0, 0.08, 3))
    alpha = np.radians(rng.uniform(38, 58) if grade >= 2 else rng.uniform(30, 45))
    h = r * np.cos(alpha)
    inner = model.elements["head"].inner
    cap = solid(inner.clip(-d, h * d))
    mottle = [sphere(d * r * rng.uniform(0.55, 0.9) + rng.normal(0, 0.2 * r, 3),
                     rng.uniform(1.2, 2.6)) for _ in range(int(rng.integers(4, 9)))]
    model.features.append(Feature("cancellous", cap, (0.05, 0.08, 0.12, 0.15)[grade - 1]))
    model.features.append(Feature("cortical", solid(*mottle), 0.15 if grade == 1 else 0.25))
    if grade >= 2:
        band = solid(inner.clip(-d, (h - 1.3) * d).clip(d, (h + 1.3) * d))
        model.features.append(Feature("cortical", band, 0.45))
        cysts = [sphere(d * r * rng.uniform(0.55, 0.8) + rng.normal(0, 0.15 * r, 3),
                        rng.uniform(1.5, 3.5)) for _ in range(int(rng.integers(1, 4)))]
        model.features.append(Feature("cancellous", solid(*cysts), -0.4))
    if grade >= 3:
        outer_c = sphere(np.zeros(3), r - 1.4).clip(-d, h * d)
        inner_c = sphere(np.zeros(3), r - 2.6).clip(-d, h * d)
        model.features.append(Feature("cancellous", solid(outer_c), -0.6))
        model.features.append(Feature("cancellous", solid(inner_c), 0.6))
        _flatten(model, d, rng.uniform(1.0, 2.0) if grade == 3 else rng.uniform(3.0, 6.0))
    if grade == 4:
        model.features.append(Feature("cancellous", cap, 0.2))


def fracture(model: FemurModel, kind: str, displaced: bool, reduced: bool,
             rng: np.random.Generator) -> None:
    """Split the femur into fragments along a fracture plane; displace them if asked."""
    f = model.frame
    nd = f.neck_dir
    if kind == "femoral_neck_fracture":
        point = nd * rng.uniform(0.95 * f.head_r, 0.55 * np.linalg.norm(f.junction))
        normal = rotation((0, 1, 0), rng.uniform(-10, 25)) @ rotation(
            (0, 0, 1), rng.uniform(-10, 10)) @ nd
    else:
        p0 = f.junction + np.array([0.9 * f.shaft_r, 4.0, 6.0])
        p1 = f.lt + np.array([2.0, 0, 8.0])
        normal = unit(np.cross(p1 - p0, np.array([0, 1.0, 0])))
        if np.dot(normal, -nd) > 0:
            normal = -normal
        normal = rotation((1, 0, 0), rng.uniform(-8, 8)) @ normal
        point = (p0 + p1) / 2
    normal = unit(normal)
    if np.dot(normal, nd) < 0:  # the distal side is positive
        normal = -normal
    gap = rng.uniform(0.6, 1.3) if (not displaced or reduced) else rng.uniform(1.0, 3.0)
    if not displaced and rng.random() < 0.35:
        gap = -rng.uniform(0.8, 2.0)  # impaction: fragments overlap in a dense band
    head_planes = [(normal, point - normal * gap / 2)]
    distal_planes = [(-normal, point + normal * gap / 2)]
    head_motion, distal_motion = STILL, STILL
    if displaced:
        k = 0.25 if reduced else 1.0
        head_motion = (rotation((0, 1, 0), -k * rng.uniform(8, 25)) @ rotation(
            (0, 0, 1), k * rng.uniform(-10, 10)), np.zeros(3), np.zeros(3))
        shift = k * np.array([rng.uniform(2, 8), rng.uniform(-4, 4), rng.uniform(6, 18)])
        distal_motion = (rotation((0, 0, 1), k * rng.uniform(12, 35)), f.junction, shift)
    model.fragments = [Fragment("head", head_planes, head_motion),
                       Fragment("distal", distal_planes, distal_motion)]
    if kind == "intertrochanteric_fracture" and displaced and not reduced and rng.random() < 0.6:
        lt_shift = np.array([-rng.uniform(4, 10), 0, rng.uniform(4, 12)])
        model.fragments[1].elements = [n for n in model.elements if n != "lt"]
        model.fragments.append(Fragment("lt", [], (np.eye(3), f.lt, lt_shift), ["lt"]))


def resect(model: FemurModel, level: float) -> None:
    """Neck osteotomy `level` mm from the junction towards the head (removes head and neck)."""
    f = model.frame
    nd = f.neck_dir
    others = tuple(n for n in model.elements if n != "gt")
    model.cuts.append((-nd, f.junction - nd * level, others))
    # the greater trochanter is kept lateral to the osteotomy's vertical limb
    model.cuts.append((np.array([-1.0, 0, 0]), f.junction - np.array([0.15 * f.shaft_r, 0, 0]),
                       ("gt",)))
    model.elements.pop("head", None)
    model.features = [ft for ft in model.features if ft.fragment != "head"]


def _place(p: Convex | Solid, steps: list[Motion]) -> Convex | Solid:
    for rot, pivot, shift in steps:
        p = p.moved(rot, pivot, shift)
    return p


def draw_femur(layers: Layers, model: FemurModel, pose: Pose, bvtv: float) -> Solid | None:
    """Add the femur's cortex, cancellous bone and marrow; returns the placed head (or None)."""
    world: Motion = (pose.rot, np.zeros(3), pose.head)
    shift: Motion = (np.eye(3), np.zeros(3), model.bone_shift)
    head_world = None
    for frag in model.fragments:
        names = frag.elements if frag.elements is not None else list(model.elements)
        steps = [frag.motion, shift, world]
        outer, inner, canc = [], [], []
        for name in names:
            el = model.elements[name]
            o, i, k = el.outer, el.inner, el.inner if el.core == "cancellous" else el.canc
            planes = frag.planes + [(n, p) for n, p, only in model.cuts
                                    if only is None or name in only]
            for normal, point in planes:
                o, i = o.clip(normal, point), i.clip(normal, point)
                k = None if k is None else k.clip(normal, point)
            outer.append(_place(o, steps))
            inner.append(_place(i, steps))
            if k is not None:
                canc.append(_place(k, steps))
            if name == "head" and frag.name in (model.head_fragment, "whole"):
                head_world = solid(outer[-1])
        if not outer:
            continue
        so, si, sc = Solid(tuple(outer)), Solid(tuple(inner)), Solid(tuple(canc))
        layers.add_shell(so, si, "cortical", None)
        layers.add("cancellous", sc, bvtv)
        layers.add("marrow", si, 1.0)
        layers.add("marrow", sc, -1.0)
        for ft in model.features:
            if ft.fragment == "implant" or (ft.fragment != frag.name and frag.name != "whole"):
                continue
            body = ft.body
            for normal, point in frag.planes + [(n, p) for n, p, _ in model.cuts[:1]]:
                body = body.clip(normal, point)
            placed = _place(body, steps)
            layers.add(ft.material, placed, ft.weight * (bvtv if ft.material == "cancellous"
                                                         else 1.0))
    for ft in model.features:
        if ft.fragment == "implant":
            layers.add(ft.material, _place(ft.body, [world]),
                       ft.weight * (bvtv if ft.material == "cancellous" else 1.0))
    return head_world
