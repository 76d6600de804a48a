"""Findings of native hips: osteoarthritis (Kellgren-Lawrence grade), osteonecrosis of the
femoral head (grade 0-4) and developmental dysplasia, drawn on the anatomy.

`NativeJoint.sample` turns a hip's labels into geometry with randomised severity: where the
femoral head sits in its acetabulum (narrowing, subluxation), the shape of the acetabulum and
of the head (collapse), osteophytes, sclerosis, cysts, and the necrotic segment. Each finding
draws its randomness from its own stream of the hip's seed, so changing one label leaves the
rest of the image as it was. `add_acetabular_findings` draws in the hemipelvis frame,
`add_head_findings` in the femur frame (see anatomy).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from hiprouter.synth.anatomy import (
    ACETABULUM_U,
    MU_CANCELLOUS,
    Acetabulum,
    Bone,
    FemurShape,
    head_field,
)
from hiprouter.synth.canvas import (
    Array,
    Canvas,
    Field,
    Point,
    bbox_of,
    ellipsoid,
    line,
    smoothstep,
)
from hiprouter.synth.labels import HipSpec

_MU_SPUR = 0.022
"""Attenuation per mm of osteophyte (cortical rim and cancellous core)."""
_STREAM = {"acetabulum": 11, "oa": 12, "onfh": 13, "ddh": 14}


def finding_rng(seed: int, finding: str) -> np.random.Generator:
    """The random stream of one finding of one hip."""
    return np.random.default_rng([seed, _STREAM[finding]])


@dataclass
class Osteophyte:
    site: str
    """'rim' (acetabular edge), 'inferior' (inferior acetabulum), 'head_lateral',
    'head_medial' (head-neck junction)."""
    size: float
    angle: float
    """Degrees from straight up, lateral positive, around the head or acetabular centre."""


@dataclass
class Cyst:
    site: str
    """'roof' or 'head'."""
    angle: float
    depth: float
    """mm below the articular surface."""
    radius: float


@dataclass
class Arthritis:
    """Degenerative change of one joint (primary OA, or secondary to osteonecrosis)."""

    narrowing: float
    """Joint space lost superolaterally (mm)."""
    direction: float
    """Direction of the narrowing, degrees lateral of straight up."""
    osteophytes: list[Osteophyte] = field(default_factory=list)
    sclerosis: float = 0.0
    """Subchondral sclerosis of roof and dome, 0-1."""
    cysts: list[Cyst] = field(default_factory=list)
    deformity: float = 0.0
    """Flattening (mm) of the femoral head."""

    @classmethod
    def sample(cls, grade: int, joint_space: float, rng: np.random.Generator) -> Arthritis:
        u = rng.uniform(0, 1, 8)
        lost = {0: 0.0, 1: 0.5 * u[0], 2: 0.9 + 1.0 * u[0], 3: 1.9 + 1.2 * u[0],
                4: joint_space}[grade]
        a = cls(narrowing=min(lost, joint_space - 0.3), direction=15 + 25 * u[1])
        size = {0: 0.0, 1: 2.0, 2: 4.5, 3: 7.5, 4: 11.0}[grade] * (0.75 + 0.5 * u[2])
        if grade >= 1:
            sites = [("rim", 1.0), ("head_medial", 0.8 if grade >= 2 else 0.3),
                     ("head_lateral", 0.7 if grade >= 2 else 0.2),
                     ("inferior", 0.6 if grade >= 3 else 0.15)]
            for site, p in sites:
                if rng.random() < p:
                    angle = {"rim": 0.0, "inferior": 0.0, "head_lateral": rng.uniform(55, 80),
                             "head_medial": rng.uniform(-165, -140)}[site]
                    a.osteophytes.append(Osteophyte(site, size * rng.uniform(0.6, 1.2), angle))
        a.sclerosis = {0: 0.0, 1: 0.0, 2: 0.3, 3: 0.7, 4: 1.0}[grade] * (0.7 + 0.6 * u[3])
        n_cysts = int(rng.integers(0, 2)) if grade == 2 else (
            int(rng.integers(1, 4)) if grade >= 3 else 0)
        for _ in range(n_cysts):
            a.cysts.append(Cyst(str(rng.choice(["roof", "head"])), rng.uniform(-10, 45),
                                rng.uniform(1.5, 4.0), rng.uniform(2.5, 5.5)))
        a.deformity = rng.uniform(1.0, 3.5) if grade == 4 else 0.0
        return a


@dataclass
class Necrosis:
    """Osteonecrosis of the femoral head: the necrotic segment under the weight-bearing
    dome and what each grade shows there."""

    grade: int
    centre: float
    """Direction of the segment, degrees lateral of straight up."""
    half_width: float
    """Angular half-width of the segment (degrees)."""
    depth: float
    """Depth of the segment as a fraction of the head radius."""
    mottle: float
    """Amplitude of patchy density change (relative to the head's density)."""
    sclerosis: float
    """Mean density gain of the segment (sclerosis), relative."""
    rim: float
    """Strength of the sclerotic rim bounding the segment."""
    crescent: float
    """Strength of the subchondral crescent lucency (0: none)."""
    collapse: float
    """Flattening of the dome (mm)."""
    cysts: list[Cyst]
    texture_seed: int

    @classmethod
    def sample(cls, grade: int, rng: np.random.Generator) -> Necrosis:
        u = rng.uniform(0, 1, 10)
        n_cysts = {2: int(rng.integers(1, 4)), 3: int(rng.integers(0, 3)),
                   4: int(rng.integers(0, 2))}.get(grade, 0)
        cysts = [Cyst("head", rng.uniform(-30, 50), rng.uniform(3, 9), rng.uniform(1.6, 3.6))
                 for _ in range(n_cysts)]
        return cls(
            grade=grade, centre=5 + 25 * u[0], half_width=28 + 22 * u[1],
            depth=0.35 + 0.25 * u[2],
            mottle={1: 0.25, 2: 0.35, 3: 0.35, 4: 0.3}.get(grade, 0.0) * (0.8 + 0.4 * u[3]),
            sclerosis={1: 0.05, 2: 0.25, 3: 0.3, 4: 0.45}.get(grade, 0.0) * (0.7 + 0.6 * u[4]),
            rim={2: 0.5, 3: 0.6, 4: 0.4}.get(grade, 0.0) * (0.6 + 0.8 * u[5]),
            crescent={3: 1.0, 4: 0.6}.get(grade, 0.0) * (0.8 + 0.4 * u[6]),
            collapse={3: 0.8 + 1.2 * u[7], 4: 3.5 + 4.0 * u[7]}.get(grade, 0.0),
            cysts=cysts, texture_seed=int(rng.integers(2**31)))


@dataclass
class NativeJoint:
    """How one native hip looks: the head's place in the acetabulum and its disease."""

    acetabulum: Acetabulum
    offset: tuple[float, float]
    """Head centre minus acetabular centre (hemipelvis frame: lateral, distal; mm)."""
    neck_valgus: float = 0.0
    """Degrees added to the neck-shaft angle (dysplasia)."""
    arthritis: Arthritis | None = None
    necrosis: Necrosis | None = None

    @classmethod
    def sample(cls, hip: HipSpec, seed: int) -> NativeJoint:
        """The joint of a hip with native acetabulum (with or without its femoral head)."""
        acetabulum = Acetabulum.sample(finding_rng(seed, "acetabulum"))
        joint = cls(acetabulum, (0.0, 0.0))
        if hip.ddh:
            rng = finding_rng(seed, "ddh")
            u = rng.uniform(0, 1, 6)
            acetabulum.coverage_deg = -4 + 20 * u[0]
            acetabulum.roof_deg = 14 + 20 * u[1]
            acetabulum.wall = 0.5 + 0.3 * u[2]
            acetabulum.joint_space += 0.5 * u[3]
            joint.offset = (2.5 + 7.5 * u[4], -(0.5 + 6.0 * u[5] * u[4]))
            joint.neck_valgus = rng.uniform(4, 15)
        if not hip.native_head:
            return joint
        oa_grade = hip.oa_grade
        if hip.onfh_grade:
            joint.necrosis = Necrosis.sample(hip.onfh_grade, finding_rng(seed, "onfh"))
        if hip.onfh_grade == 4:  # collapse brings secondary arthritis
            oa_grade = max(oa_grade, 2 + int(finding_rng(seed, "onfh").integers(0, 2)))
        if oa_grade:
            arthritis = Arthritis.sample(oa_grade, acetabulum.joint_space,
                                         finding_rng(seed, "oa"))
            joint.arthritis = arthritis
            a = np.radians(arthritis.direction)
            joint.offset = (joint.offset[0] + arthritis.narrowing * np.sin(a),
                            joint.offset[1] - arthritis.narrowing * np.cos(a))
        return joint

    def shape_head(self, f: FemurShape) -> FemurShape:
        """The femur with this joint's head collapse and neck angle."""
        flat, flat_deg = 0.0, f.head_flat_deg
        if self.necrosis is not None and self.necrosis.collapse > 0:
            flat, flat_deg = self.necrosis.collapse, self.necrosis.centre
        if self.arthritis is not None and self.arthritis.deformity > flat:
            flat, flat_deg = self.arthritis.deformity, self.arthritis.direction
        return dataclasses.replace(f, head_flat=flat, head_flat_deg=flat_deg,
                                   neck_shaft_deg=min(f.neck_shaft_deg + self.neck_valgus, 160))


def _dir(deg: float) -> Array:
    """Unit vector `deg` degrees lateral of straight up (x lateral, y distal)."""
    t = np.radians(deg)
    return np.array([np.sin(t), -np.cos(t)])


def _angle_of(x: Array, y: Array) -> Array:
    """Direction of (x, y) in degrees lateral of straight up, in (-180, 180]."""
    return np.degrees(np.arctan2(x, -y))


def add_joint_space(canvas: Canvas, hemi: Array, joint: NativeJoint, head_r: float) -> None:
    """The radiolucent cartilage space between the head and the acetabular roof: only the
    thin acetabular walls overlap it. It narrows where the head has moved towards the roof
    (arthritis) and opens where the head is uncovered (dysplasia)."""
    c = np.array([ACETABULUM_U, 0.0])
    h = c + np.asarray(joint.offset)
    big_r = head_r + joint.acetabulum.joint_space
    half = 65.0 + joint.acetabulum.coverage_deg * 0.3

    def scale(x: Array, y: Array) -> Array:
        outside_head = smoothstep(head_r - 0.3, head_r + 0.7, np.hypot(x - h[0], y - h[1]))
        under_roof = smoothstep(big_r + 0.5, big_r - 0.7, np.hypot(x - c[0], y - c[1]))
        ang = np.abs(_angle_of(x - c[0], y - c[1]) - 10)
        return 1 - 0.6 * outside_head * under_roof * smoothstep(half, half - 15, ang)

    canvas.scale("bone", hemi, scale, bbox_of([c], big_r + 3))


def add_acetabular_findings(canvas: Canvas, hemi: Array, joint: NativeJoint,
                            head_r: float) -> None:
    """Arthritis on the acetabular side: roof sclerosis, rim and inferior osteophytes,
    subchondral cysts of the roof."""
    a = joint.arthritis
    if a is None:
        return
    acetabulum = joint.acetabulum
    roof = acetabulum.roof(head_r)
    c = np.array([ACETABULUM_U, 0.0])
    big_r = head_r + acetabulum.joint_space
    if a.sclerosis > 0:  # a thick dense band above the sourcil
        above = [(float(x + (x - c[0]) * 0.1), float(y + (y - c[1]) * 0.1)) for x, y in roof]
        canvas.add("bone", hemi, line(above, 2.0 + 3.0 * a.sclerosis), bbox_of(above, 12),
                   mu=0.4 * a.sclerosis)
    for o in a.osteophytes:
        if o.site == "rim":  # a beak continuing the roof laterally over the head
            e = np.array(roof[-1]) - c
            a0 = float(_angle_of(e[0], e[1]))
            field = _lune((float(c[0]), float(c[1])), float(np.hypot(*e)) - 1.0, a0 - 6,
                          a0 + 8 + 3.0 * o.size, o.size * 0.55, taper="end")
            canvas.add("bone", hemi, field, bbox_of([c], big_r + o.size + 4), mu=_MU_SPUR)
        elif o.site == "inferior":  # inferior acetabular osteophyte below the teardrop
            field = _lune((float(c[0]), float(c[1])), big_r - 1.0, -165 - 2.0 * o.size, -150,
                          o.size * 0.5, taper="start")
            canvas.add("bone", hemi, field, bbox_of([c], big_r + o.size + 4), mu=_MU_SPUR)
    for cyst in a.cysts:
        if cyst.site == "roof":
            p = c + (big_r + cyst.depth + cyst.radius) * _dir(cyst.angle)
            canvas.add("bone", hemi, _cyst(p, cyst.radius), bbox_of([p], cyst.radius + 3),
                       mu=1.0)


def add_head_findings(canvas: Canvas, frame: Array, f: FemurShape, joint: NativeJoint,
                      bone: Bone) -> None:
    """Findings inside and around the femoral head (femur frame of the head fragment):
    arthritic sclerosis, cysts and head-neck osteophytes; the necrotic segment."""
    r = f.head_r
    box = bbox_of([(0.0, 0.0)], r + 14)
    density = MU_CANCELLOUS * 0.8 * bone.density
    a = joint.arthritis
    if a is not None:
        if a.sclerosis > 0:
            canvas.add("bone", frame, _subchondral(f, a.direction, 55, 3.0 + 2.0 * a.sclerosis),
                       box, mu=density * 0.5 * a.sclerosis)
        for o in a.osteophytes:
            if o.site == "head_medial":  # drooping collar along the inferomedial junction
                field = _lune((0.0, 0.0), r - 1.0, o.angle - 10 - 2.0 * o.size, o.angle + 12,
                              o.size * 0.6, taper="start")
            elif o.site == "head_lateral":  # lip at the superolateral head-neck junction
                field = _lune((0.0, 0.0), r - 1.0, o.angle - 12, o.angle + 6 + 1.5 * o.size,
                              o.size * 0.45, taper="end")
            else:
                continue
            canvas.add("bone", frame, field, bbox_of([(0.0, 0.0)], r + o.size + 4),
                       mu=_MU_SPUR)
        for cyst in a.cysts:
            if cyst.site == "head":
                p = (r - cyst.depth - cyst.radius) * _dir(cyst.angle)
                canvas.add("bone", frame, _head_cyst(f, p, cyst.radius), box, mu=density)
    n = joint.necrosis
    if n is not None:
        canvas.add("bone", frame, _necrosis(f, n), box, mu=density)


def _lune(c: Point, r0: float, a0: float, a1: float, height: float, taper: str) -> Field:
    """Osteophyte hugging a joint surface: a crescent of bone outside radius r0 around c
    between angles a0 and a1 (degrees lateral of up), up to `height` mm thick, tapering
    towards its 'start' (a0) or 'end' (a1)."""

    def lune(x: Array, y: Array) -> Array:
        dx, dy = x - c[0], y - c[1]
        t = np.clip((_angle_of(dx, dy) - a0) / (a1 - a0), 0, 1)
        prof = np.sin(np.pi * t) ** 0.6 * (t if taper == "start" else 1 - t) ** 0.3
        outer = r0 + height * prof
        rad = np.hypot(dx, dy)
        band = smoothstep(r0 - 1.0, r0, rad) * smoothstep(outer + 0.6, outer - 0.6, rad)
        return band * (6.0 + 2.0 * height * prof) * (prof > 0.02)

    return lune


def _cyst(p: Array, radius: float) -> Field:
    """Subchondral cyst: a lucent hole with a thin sclerotic rim (pelvic bone)."""
    hole = ellipsoid((float(p[0]), float(p[1])), radius, radius * 0.85, depth=radius)
    rim = ellipsoid((float(p[0]), float(p[1])), radius + 1.2, radius * 0.85 + 1.2,
                    depth=radius + 1.2)

    def cyst(x: Array, y: Array) -> Array:
        return 0.025 * (rim(x, y) - hole(x, y)) - 0.045 * hole(x, y)

    return cyst


def _head_cyst(f: FemurShape, p: Array, radius: float) -> Field:
    """Cyst inside the femoral head: removes cancellous bone, sclerotic margin."""
    hole = ellipsoid((float(p[0]), float(p[1])), radius, radius, depth=radius)
    rim = ellipsoid((float(p[0]), float(p[1])), radius + 1.0, radius + 1.0, depth=radius + 1.0)

    def cyst(x: Array, y: Array) -> Array:
        inside = head_field(f, x, y) > 0
        return (0.8 * (rim(x, y) - hole(x, y)) - 2.5 * hole(x, y)) * inside

    return cyst


def _subchondral(f: FemurShape, direction: float, half_width: float, depth: float) -> Field:
    """Dense band under the articular surface of the head around `direction`."""

    def band(x: Array, y: Array) -> Array:
        rad = np.hypot(x, y)
        ang = np.abs(_angle_of(x, y) - direction)
        within = smoothstep(half_width, half_width * 0.6, ang)
        under = smoothstep(f.head_r - depth - 1.5, f.head_r - depth, rad)
        return head_field(f, x, y) * within * under

    return band


def _necrosis(f: FemurShape, n: Necrosis) -> Field:
    """Density change of the head by the necrotic segment, relative to the head's density:
    patchy mottle (1), sclerosis, cysts and a sclerotic rim (2), a subchondral crescent
    lucency (3), a dense collapsed segment (4)."""
    rng = np.random.default_rng(n.texture_seed)
    k = 96
    white = rng.standard_normal((k, k)).astype(np.float32)
    tex = ndimage.gaussian_filter(white, 2.5, mode="wrap")
    tex = tex / (tex.std() + 1e-6)
    r = f.head_r
    rim_r = r * (1 - n.depth)
    wobble = rng.uniform(0, 2 * np.pi)

    def necrosis(x: Array, y: Array) -> Array:
        head = head_field(f, x, y)
        rad = np.hypot(x, y)
        ang = _angle_of(x, y) - n.centre
        within = smoothstep(n.half_width, n.half_width * 0.7, np.abs(ang))
        boundary = rim_r + 1.5 * np.sin(np.radians(ang) * 5 + wobble)
        segment = within * smoothstep(boundary - 1.0, boundary + 1.0, rad)
        t = tex[(y * 1.2).astype(np.int32) % k, (x * 1.2).astype(np.int32) % k]
        v = segment * (n.sclerosis + n.mottle * t)
        v = v + n.rim * 0.9 * within * np.exp(-(((rad - boundary) / 1.3) ** 2))
        if n.crescent > 0:
            surface = r - n.collapse * (1 - 0.3 * np.cos(np.radians(ang) * 4.0))
            gap = np.exp(-(((rad - (surface - 3.0)) / 1.1) ** 2))
            v = v - n.crescent * within * gap * 2.0
        for c in n.cysts:
            p = (r - c.depth) * _dir(c.angle)
            d2 = (x - p[0]) ** 2 + (y - p[1]) ** 2
            hole = np.clip(1 - d2 / c.radius**2, 0, None)
            v = v - 0.6 * hole * within
        return np.clip(v, -0.95, None) * head

    return necrosis
