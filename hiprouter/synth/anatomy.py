"""Anatomy of synthetic pelvis/hip radiographs: soft tissue, pelvis, sacrum, spine, femora.

Coordinates are standard millimetres of an average adult. The pelvis frame has its origin
midway between the acetabular centres, x towards the image right (the patient's left on an
AP view) and y towards the feet; each hemipelvis is drawn in a mirrored frame where u points
laterally. Each femur has its own frame: origin at the femoral head centre, x lateral, y
distal. Fragments of a fractured femur are the same femur drawn twice through two frames,
each clipped to its side of the fracture line. Bone quality (osteopenia, open physes) comes
from the patient's age and is never a label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from hiprouter.synth.canvas import (
    Array,
    Canvas,
    Field,
    Point,
    affine,
    band_noise,
    bbox_of,
    ellipsoid,
    line,
    polyline_distance,
    shell,
    smooth_polygon,
    smoothstep,
    tube,
)

# Linear attenuation in arbitrary units per mm, added on top of the soft tissue they replace.
MU_SOFT = 0.020
MU_FAT = 0.016
MU_CANCELLOUS = 0.013
MU_CORTEX = 0.050
MU_METAL = 0.60
MU_CEMENT = 0.050

ACETABULUM_U = 95.0
"""Distance (mm) of each acetabular centre from the midline in the standard pelvis."""

# Right hemipelvis outline (u lateral, v distal), acetabular centre at (95, 0).
_HEMIPELVIS = [
    (40, -102), (52, -126), (78, -143), (108, -142), (134, -126), (148, -98), (151, -72),
    (141, -56), (139, -41), (126, -28), (121, -12), (115, 6), (106, 22), (97, 30), (99, 46),
    (106, 68), (104, 90), (92, 104), (76, 106), (62, 96), (50, 80), (33, 74), (15, 72),
    (3, 64), (3, 31), (20, 23), (45, 16), (66, 3), (66, -20), (57, -50), (46, -78),
]
_OBTURATOR = ((62.0, 55.0), 19.0, 26.0, 18.0)  # centre, semi-axes, angle (deg)
_SACRUM = [
    (-54, -108), (-28, -114), (0, -111), (28, -114), (54, -108), (47, -72), (33, -38),
    (16, -12), (0, -4), (-16, -12), (-33, -38), (-47, -72),
]


@dataclass
class Bone:
    """Bone quality of one patient: osteopenia and growth plates (from age, not a label)."""

    density: float
    """Trabecular density factor (1 normal, about 0.5 severely osteopenic)."""
    cortex: float
    """Cortical thickness factor."""
    trabecular: float
    """Contrast of the trabecular texture."""
    physes_open: bool
    """Capital femoral physis and trochanteric apophyses open (adolescent)."""
    triradiate_open: bool

    @classmethod
    def sample(cls, rng: np.random.Generator, age: float) -> Bone:
        loss = float(np.clip((age - 45) / 40, 0, 1))
        u = rng.uniform(0, 1, 5)
        density = (0.85 + 0.3 * u[0]) * (1 - loss * (0.15 + 0.4 * u[1]))
        cortex = (0.85 + 0.3 * u[2]) * (1 - loss * (0.1 + 0.4 * u[3]))
        return cls(density=density, cortex=cortex, trabecular=0.12 + 0.16 * u[4],
                   physes_open=age < 17, triradiate_open=age < 14)


@dataclass
class FemurShape:
    """Proximal femur of one side (standard mm, femur frame)."""

    head_r: float
    neck_len: float
    neck_r: float
    neck_shaft_deg: float
    shaft_tilt_deg: float
    shaft_r: float
    canal_r: float
    gt_size: tuple[float, float]
    lt_size: tuple[float, float]
    lt_offset: float
    gt_shift: float = 0.0
    """Greater trochanter moved medially over the neck (frog-leg, lateral views)."""
    head_flat: float = 0.0
    """Collapse (mm) of the weight-bearing dome of the head (osteonecrosis, arthritis)."""
    head_flat_deg: float = 20.0
    """Direction of the collapsed dome, degrees lateral of straight up."""

    @classmethod
    def sample(cls, rng: np.random.Generator) -> FemurShape:
        head_r = rng.uniform(21.5, 26.0)
        return cls(
            head_r=head_r,
            neck_len=rng.uniform(2.15, 2.55) * head_r,
            neck_r=rng.uniform(0.60, 0.70) * head_r,
            neck_shaft_deg=rng.uniform(122, 138),
            shaft_tilt_deg=rng.uniform(5, 11),
            shaft_r=rng.uniform(13.5, 16.5),
            canal_r=rng.uniform(0.50, 0.62),
            gt_size=(rng.uniform(12, 16), rng.uniform(18, 25)),
            lt_size=(rng.uniform(5, 8), rng.uniform(9, 13)),
            lt_offset=rng.uniform(0.8, 1.0),
        )

    # Landmarks in the femur frame.
    @property
    def shaft_dir(self) -> Array:
        t = np.radians(self.shaft_tilt_deg)
        return np.array([-np.sin(t), np.cos(t)])

    @property
    def lateral_dir(self) -> Array:
        t = np.radians(self.shaft_tilt_deg)
        return np.array([np.cos(t), np.sin(t)])

    @property
    def neck_dir(self) -> Array:
        """Unit vector from the neck base towards the head centre."""
        a = np.radians(90 + self.shaft_tilt_deg + self.neck_shaft_deg)
        return np.array([np.cos(a), np.sin(a)])

    @property
    def junction(self) -> Array:
        """Where the neck axis meets the shaft axis."""
        return -self.neck_len * self.neck_dir

    def shaft_point(self, dist: float, lateral: float = 0.0) -> Array:
        """Point `dist` mm distal of the junction along the shaft, `lateral` mm outwards."""
        return self.junction + dist * self.shaft_dir + lateral * self.lateral_dir

    @property
    def gt_centre(self) -> Array:
        return self.shaft_point(-self.gt_size[1] * 0.55, 20.0 - self.gt_shift)

    @property
    def lt_centre(self) -> Array:
        return self.shaft_point(35.0 * self.lt_offset, -self.shaft_r - 2.0)


def femur_outline(f: FemurShape) -> Array:
    """Outline (femur frame) of the neck, trochanters and shaft; the head is a sphere."""
    nd = f.neck_dir
    sup = np.array([nd[1], -nd[0]])
    if sup[1] > 0:
        sup = -sup

    def neck(t: float, w: float) -> Array:
        return -t * nd + w * sup

    gt, (ga, gb) = f.gt_centre, f.gt_size
    lt, (la, lb) = f.lt_centre, f.lt_size
    lt_t = float(np.dot(lt - f.junction, f.shaft_dir))
    sp = f.shaft_point
    pts = [
        neck(f.head_r * 0.55, f.neck_r * 1.15), neck(f.neck_len * 0.5, f.neck_r * 0.95),
        neck(f.neck_len * 0.8, f.neck_r * 1.05), gt + [-ga * 0.7, -gb * 0.75],
        gt + [-ga * 0.1, -gb * 1.0], gt + [ga * 0.6, -gb * 0.75], gt + [ga * 1.0, -gb * 0.1],
        sp(gb * 0.3, f.shaft_r * 1.35), sp(lt_t + 25, f.shaft_r * 1.02), sp(900, f.shaft_r),
        sp(900, -f.shaft_r), sp(lt_t + 20, -f.shaft_r * 1.02), lt + [-la * 0.4, lb * 0.9],
        lt + [-la * 1.0, lb * 0.1], lt + [-la * 0.5, -lb * 0.8],
        neck(f.neck_len * 0.85, -f.neck_r * 1.25), neck(f.neck_len * 0.5, -f.neck_r * 0.95),
        neck(f.head_r * 0.55, -f.neck_r * 1.15),
    ]
    return smooth_polygon([(float(x), float(y)) for x, y in pts], 3)


def head_field(f: FemurShape, x: Array, y: Array, shrink: float = 0.0) -> Array:
    """Projected thickness of the femoral head (a sphere, flattened by `f.head_flat`)."""
    r = f.head_r - shrink
    v = 2 * np.sqrt(np.clip(r * r - x * x - y * y, 0, None))
    if f.head_flat > 0:
        a = np.radians(f.head_flat_deg)
        proj = x * np.sin(a) - y * np.cos(a)
        across = x * np.cos(a) + y * np.sin(a)
        limit = r - f.head_flat * (1 - 0.3 * np.cos(across / f.head_r * 4.0))
        v = v * smoothstep(limit + 0.6, limit - 0.6, proj)
    return v


def head_outline(f: FemurShape, n: int = 72) -> Array:
    """Outline (femur frame) of the femoral head as drawn, flattening included."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pts = np.stack([f.head_r * np.cos(t), f.head_r * np.sin(t)], axis=1)
    if f.head_flat > 0:
        a = np.radians(f.head_flat_deg)
        d = np.array([np.sin(a), -np.cos(a)])
        across_dir = np.array([np.cos(a), np.sin(a)])
        proj = pts @ d
        across = pts @ across_dir
        limit = f.head_r - f.head_flat * (1 - 0.3 * np.cos(across / f.head_r * 4.0))
        over = proj > limit
        pts[over] = pts[over] - ((proj - limit)[over, None] * d)
    return pts


class Trabeculae:
    """Trabecular texture of one view: isotropic mottle and streaks along the main
    trabecular groups (the shaft axis; the neck from calcar to dome)."""

    def __init__(self, rng: np.random.Generator, size: int = 256) -> None:
        white = rng.standard_normal((size, size), dtype=np.float32)
        iso = ndimage.gaussian_filter(white, 0.7) - ndimage.gaussian_filter(white, 2.5)
        streak = (ndimage.gaussian_filter(white, (3.5, 0.6))
                  - ndimage.gaussian_filter(white, (7.0, 2.0)))
        self.iso = iso / (iso.std() + 1e-6)
        self.streak = streak / (streak.std() + 1e-6)

    def sample(self, f: FemurShape, x: Array, y: Array) -> Array:
        """Texture at femur-frame coordinates (mm), unit standard deviation."""
        k = self.iso.shape[0]
        iso = self.iso[(y * 2.0).astype(np.int32) % k, (x * 2.0).astype(np.int32) % k]
        sd, nd = f.shaft_dir, f.neck_dir
        # along-axis coordinate indexes the texture's rows (its streak direction)
        u_s, v_s = x * sd[0] + y * sd[1], -x * sd[1] + y * sd[0]
        u_n, v_n = x * nd[0] + y * nd[1], -x * nd[1] + y * nd[0]
        shaft = self.streak[(u_s * 2.0).astype(np.int32) % k, (v_s * 2.0).astype(np.int32) % k]
        neck = self.streak[(u_n * 2.0 + 97).astype(np.int32) % k,
                           (v_n * 2.0 + 31).astype(np.int32) % k]
        along = (x - f.junction[0]) * sd[0] + (y - f.junction[1]) * sd[1]
        w_neck = smoothstep(10, -15, along)
        return 0.6 * iso + 0.6 * (w_neck * neck + (1 - w_neck) * shaft)


def femur_density(f: FemurShape, depth: Array, cover: Array, x: Array, y: Array,
                  texture: Trabeculae | None, bone: Bone) -> Array:
    """Extra attenuation of a femur from its outline depth (mm), coverage of its outline
    and local coordinates."""
    along = (x - f.junction[0]) * f.shaft_dir[0] + (y - f.junction[1]) * f.shaft_dir[1]
    diaphysis = smoothstep(30, 110, along)
    cortex_w = (1.4 + 3.2 * diaphysis) * bone.cortex
    in_head = smoothstep(f.head_r * 1.05, f.head_r * 0.9, np.sqrt(x * x + y * y))
    cortex = np.exp(-depth / cortex_w) * (1 + 0.8 * diaphysis) * cover * (1 - in_head)
    canal = 0.55 + 0.3 * (1 - min(bone.density, 1.0))
    body = np.sqrt(np.clip(depth, 0, None) * 7 * f.shaft_r) * (1 - canal * diaphysis)
    head = head_field(f, x, y)
    head_shell = head - head_field(f, x, y, shrink=1.6 * bone.cortex)
    cancellous = np.maximum(body, 0.8 * head)
    # principal compressive group: calcar to the dome of the head, dense in every age
    calcar = f.junction + 0.6 * f.neck_len * f.neck_dir - f.neck_r * 0.8 * _up_of(f.neck_dir)
    dome = np.array([0.25, -0.75]) * f.head_r
    d = _segment_distance(x, y, calcar, dome)
    compressive = np.exp(-((d / (f.neck_r * 0.45)) ** 2))
    cancellous = cancellous * (bone.density + (1 - bone.density) * 0.8 * compressive)
    if texture is not None:
        cancellous = cancellous * (1 + bone.trabecular * texture.sample(f, x, y))
    if bone.physes_open:
        cancellous = cancellous * (1 - 0.55 * _physes(f, x, y))
    return MU_CANCELLOUS * cancellous + MU_CORTEX * (16 * cortex + 0.35 * head_shell)


def _up_of(nd: Array) -> Array:
    """Unit vector across the neck axis pointing superiorly."""
    sup = np.array([nd[1], -nd[0]])
    return -sup if sup[1] > 0 else sup


def _segment_distance(x: Array, y: Array, p0: Array, p1: Array) -> Array:
    d = p1 - p0
    length = float(np.hypot(*d)) or 1e-6
    u = d / length
    t = np.clip((x - p0[0]) * u[0] + (y - p0[1]) * u[1], 0, length)
    return np.hypot(x - p0[0] - t * u[0], y - p0[1] - t * u[1])


def _physes(f: FemurShape, x: Array, y: Array) -> Array:
    """Open growth plates: the capital physis (a wavy band across the head-neck junction,
    convex towards the head) and the greater trochanteric apophysis."""
    nd = f.neck_dir
    along = x * nd[0] + y * nd[1]
    across = -x * nd[1] + y * nd[0]
    plate = -0.35 * f.head_r + 0.006 * across**2 + 0.4 * np.sin(across * 0.2)
    capital = np.exp(-(((along - plate) / 1.3) ** 2)) * (np.abs(across) < f.head_r * 1.05)
    gt = f.gt_centre
    gt_line = (x - gt[0]) * 0.45 + (y - gt[1]) * 0.9 - f.gt_size[1] * 0.1
    near_gt = np.exp(-(((x - gt[0]) ** 2 + (y - gt[1]) ** 2) / (2 * (f.gt_size[1] * 0.9) ** 2)))
    return np.maximum(capital, np.exp(-((gt_line / 1.0) ** 2)) * near_gt)


@dataclass
class Cut:
    """A line across the femur (femur frame): fracture or resection."""

    point: Point
    angle_deg: float
    """Direction of the line."""
    keep: str = "both"
    """'distal' for a resection (head removed), 'both' for a fracture."""
    gap: float = 1.0
    wiggle: float = 1.2
    distal_shift: tuple[float, float] = (0.0, 0.0)
    distal_rot_deg: float = 0.0

    def side(self, x: Array, y: Array) -> Array:
        """Signed distance from the line, positive on the head side."""
        a = np.radians(self.angle_deg)
        ux, uy = np.cos(a), np.sin(a)
        rx, ry = x - self.point[0], y - self.point[1]
        along = rx * ux + ry * uy
        d = rx * -uy + ry * ux
        sign = -1.0 if (-self.point[0] * -uy + -self.point[1] * ux) < 0 else 1.0
        return sign * d + self.wiggle * (0.6 * np.sin(along * 0.22 + 1.3)
                                         + 0.4 * np.sin(along * 0.07))


def add_femur(canvas: Canvas, frame: Array, f: FemurShape, cuts: Sequence[Cut],
              texture: Trabeculae | None, bone: Bone, layer: str = "bone") -> Array:
    """Draw a femur with its resection and/or fracture; returns the distal fragment's frame.

    A cut with keep="distal" removes the head side (resection); at most one cut with
    keep="both" splits the femur into a proximal fragment (in `frame`) and a distal one
    moved by the cut's shift and rotation.
    """
    outline = femur_outline(f)
    split = next((c for c in cuts if c.keep == "both"), None)
    fragments: list[tuple[Array, float]] = [(frame, 0.0)]
    distal = frame
    if split is not None:
        px, py = split.point
        distal = (frame @ affine(tx=px, ty=py) @ affine(rot_deg=split.distal_rot_deg)
                  @ affine(tx=-px + split.distal_shift[0], ty=-py + split.distal_shift[1]))
        fragments = [(distal, -1.0), (frame, 1.0)]
    pts = np.vstack([outline, [[-f.head_r, -f.head_r], [f.head_r, f.head_r]]])
    for fr, keep in fragments:
        reg = canvas.region(fr, pts)
        if reg is None:
            continue
        cover = reg.coverage(fr, outline)
        x, y = reg.local(fr)
        depth = canvas.soft_depth(cover)
        v = femur_density(f, depth, cover, x, y, texture, bone)
        for cut in cuts:
            side = cut.side(x, y)
            if cut.keep == "distal":
                v = v * smoothstep(0.0, -0.6, side)
            else:
                g = cut.gap / 2
                v = v * (smoothstep(g, g + 0.6, side) if keep > 0
                         else smoothstep(-g, -g - 0.6, side))
        reg.add(layer, v)
    return distal


# ---- pelvis ---------------------------------------------------------------------------


@dataclass
class Acetabulum:
    """Shape of one acetabulum (hemipelvis frame, around the centre (ACETABULUM_U, 0))."""

    joint_space: float = 4.0
    """Radial gap (mm) between a centred femoral head and the acetabular roof."""
    coverage_deg: float = 32.0
    """Angle of the lateral acetabular edge from straight up (centre-edge angle)."""
    roof_deg: float = 0.0
    """Slope of the weight-bearing roof rising laterally (Toennis-like); >10 is dysplastic."""
    wall: float = 1.0
    """Lateral extent of the posterior wall over the head (1 normal)."""

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Acetabulum:
        """A normal acetabulum."""
        return cls(joint_space=rng.uniform(3.6, 5.0), coverage_deg=rng.uniform(26, 40),
                   roof_deg=rng.uniform(-4, 8), wall=rng.uniform(0.85, 1.05))

    def roof(self, head_r: float) -> list[Point]:
        """The sourcil: the dense weight-bearing roof, medial to lateral edge."""
        big_r = head_r + self.joint_space
        a_c = np.array([ACETABULUM_U, 0.0])
        medial = [_polar(a_c, big_r, t) for t in np.linspace(-62, -22, 8)]
        m = np.array(medial[-1])
        edge_u = a_c[0] + big_r * np.sin(np.radians(self.coverage_deg))
        if self.roof_deg <= 10:  # congruent: the arc reaches the lateral edge
            return medial + [_polar(a_c, big_r + 0.6, t)
                             for t in np.linspace(-18, self.coverage_deg, 8)]
        # dysplastic: a straight, steep roof from the medial sourcil to a high lateral edge
        rise = np.tan(np.radians(self.roof_deg))
        us = np.linspace(m[0], edge_u, 8)[1:]
        return medial + [(float(u), float(m[1] - (u - m[0]) * rise)) for u in us]

    def edge(self, head_r: float) -> Point:
        return self.roof(head_r)[-1]


def _polar(c: Array, r: float, deg_from_up: float) -> Point:
    t = np.radians(deg_from_up)
    return (float(c[0] + r * np.sin(t)), float(c[1] - r * np.cos(t)))


@dataclass
class PelvisShape:
    """Per-patient pelvis with independent jitter of each side."""

    outline: dict[str, Array]
    """Unsmoothed outline points of each hemipelvis (the acetabular ones are replaced by
    the acetabulum's shape when drawn)."""
    obturator: dict[str, tuple[Point, float, float, float]]
    sacrum: Array
    lumbar_tilt: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> PelvisShape:
        outline, obt = {}, {}
        base = np.asarray(_HEMIPELVIS, float)
        for side in ("R", "L"):
            jitter = ndimage.gaussian_filter1d(rng.normal(0, 5.0, base.shape), 1.5, axis=0,
                                               mode="wrap")
            flare = np.array([1.08 + rng.normal(0, 0.04), 1 + rng.normal(0, 0.03)])
            pts = base.copy()
            upper = pts[:, 1] < -30
            pts[upper] = (pts[upper] - [ACETABULUM_U, 0]) * flare + [ACETABULUM_U, 0]
            outline[side] = pts + jitter
            (cx, cy), a, b, ang = _OBTURATOR
            obt[side] = ((cx + rng.normal(0, 2), cy + rng.normal(0, 2)),
                         a * rng.uniform(0.85, 1.15), b * rng.uniform(0.85, 1.1),
                         ang + rng.normal(0, 5))
        sac = np.asarray(_SACRUM, float) + rng.normal(0, 2.5, (len(_SACRUM), 2))
        return cls(outline, obt, smooth_polygon(sac, 3), rng.normal(0, 2))

    def hemipelvis(self, side: str, head_r: float, acetabulum: Acetabulum) -> Array:
        """Smoothed outline of one hemipelvis around its acetabulum."""
        pts = self.outline[side].copy()
        big_r = head_r + acetabulum.joint_space
        w = acetabulum.wall
        a_c = np.array([ACETABULUM_U, 0.0])
        pts[_EDGE] = acetabulum.edge(head_r)
        pts[_EDGE + 1] = a_c + [w * 0.8 * big_r, -0.3 * big_r]
        pts[_EDGE + 2] = a_c + [w * 0.62 * big_r, 0.25 * big_r]
        pts[_EDGE + 3] = a_c + [w * 0.32 * big_r, 0.78 * big_r]
        return smooth_polygon(pts, 3)


_EDGE = 9
"""Index of the lateral acetabular edge in _HEMIPELVIS (then the posterior wall)."""


def add_hemipelvis(canvas: Canvas, frame: Array, p: PelvisShape, side: str, head_r: float,
                   rng: np.random.Generator, acetabulum: Acetabulum, bone: Bone) -> None:
    """One os coxae in AP projection: plate bone with cortical rims and thick columns, a
    thin-walled acetabulum with its dense roof, teardrop and (in children) growth plates."""
    outline = p.hemipelvis(side, head_r, acetabulum)
    reg = canvas.region(frame, outline)
    if reg is None:
        return
    (cx, cy), a, b, ang = p.obturator[side]
    mask = reg.coverage(frame, outline) * (1 - reg.coverage(frame, _ellipse_pts((cx, cy), a, b,
                                                                               ang)))
    depth = canvas.soft_depth(mask)
    u, v = reg.local(frame)
    big_r = head_r + acetabulum.joint_space
    bumps = (16 * _gauss(u, v, (ACETABULUM_U - 10, -big_r - 12), 18)
             + 20 * _gauss(u, v, (ACETABULUM_U - 18, -52), 22)
             + 12 * _gauss(u, v, (55, -85), 18)
             + 16 * _gauss(u, v, (82, 92), 14)
             + 10 * _gauss(u, v, (12, 48), 12)
             + 8 * _gauss(u, v, (140, -74), 9)
             + 10 * _gauss(u, v, (70, 40), 10))
    fossa = smoothstep(big_r + 2, big_r - 4, np.hypot(u - ACETABULUM_U, v))
    plate = (2.5 + bumps) * smoothstep(0, 2.5, depth) * (1 - 0.45 * fossa)
    tex = band_noise(rng, mask.shape, 0.6 / canvas.pixel_mm, 2.5 / canvas.pixel_mm)
    reg.add("bone", 2.2 * (MU_CANCELLOUS * bone.density * plate * (1 + 0.12 * tex)
                           + MU_CORTEX * bone.cortex * (2.2 * np.exp(-depth / 1.3)
                                                        + 0.6 * np.exp(-depth / 5.0)) * mask))
    a_c = (ACETABULUM_U, 0.0)
    brim = [(42, -92), (57, -58), (67, -25), (70, 0), (60, 14), (36, 20), (12, 25)]
    teardrop = [(ACETABULUM_U - 30, -4), (ACETABULUM_U - 35, 14), (ACETABULUM_U - 29, 24),
                (ACETABULUM_U - 24, 14), (ACETABULUM_U - 25, -2)]
    post_wall = _arc(a_c, big_r - 1, 300, 420, squash=0.75 * acetabulum.wall)
    ant_wall = _arc((ACETABULUM_U - 6, 2), big_r - 3, 320, 430, squash=0.55 * acetabulum.wall)
    ilioischial = [(66, -20), (70, 10), (78, 40), (88, 75)]
    roof = acetabulum.roof(head_r)
    for pts, width, strength in ((brim, 1.6, 0.16), (roof, 2.0, 0.5), (teardrop, 1.3, 0.14),
                                 (post_wall, 1.1, 0.10), (ant_wall, 1.0, 0.07),
                                 (ilioischial, 1.3, 0.10)):
        canvas.add("bone", frame, line(pts, width), bbox_of(pts, 6), mu=strength)
    if bone.triradiate_open:  # Y-shaped cartilage in the acetabular floor
        c = np.array([ACETABULUM_U - 0.7 * big_r, 2.0])
        for d in ((-0.15, -1.0), (-0.75, 0.65), (0.2, 1.0)):
            arm = [(float(c[0]), float(c[1])),
                   (float(c[0] + 0.7 * big_r * d[0]), float(c[1] + 0.7 * big_r * d[1]))]
            canvas.add("bone", frame, line(arm, 1.1), bbox_of(arm, 4), mu=-0.14)
    if bone.physes_open:  # ossifying iliac crest apophysis beyond a lucent gap
        crest = [tuple(q) for q in outline[_crest_slice(outline)]]
        centre = np.mean(crest, axis=0)
        out = [(float(x + 3.0 * (x - centre[0]) / max(np.hypot(x - centre[0], y - centre[1]),
                                                       1e-6)),
                float(y + 3.0 * (y - centre[1]) / max(np.hypot(x - centre[0], y - centre[1]),
                                                      1e-6))) for x, y in crest]
        canvas.add("bone", frame, line(out, 1.2), bbox_of(out, 5), mu=0.12)


def _crest_slice(outline: Array) -> slice:
    """The iliac crest: the top part of a smoothed hemipelvis outline."""
    top = outline[:, 1] < outline[:, 1].min() + 35
    idx = np.nonzero(top)[0]
    return slice(int(idx.min()), int(idx.max()) + 1)


def add_sacrum_spine(canvas: Canvas, frame: Array, p: PelvisShape,
                     rng: np.random.Generator, bone: Bone) -> None:
    """Sacrum with foramina, coccyx, and the lower lumbar vertebrae."""
    reg = canvas.region(frame, p.sacrum)
    if reg is not None:
        mask = reg.coverage(frame, p.sacrum)
        holes = np.zeros(mask.shape, bool)
        for v, r in ((-88, 6.0), (-66, 5.2), (-46, 4.5), (-29, 3.8)):
            for u in (-22 + 0.1 * v * 0.1, 22 - 0.1 * v * 0.1):
                holes |= reg.mask(frame, _ellipse_pts((u * (1 + v / 400), v), r, r * 0.8, 0))
        depth = canvas.soft_depth(mask)
        hole_depth = canvas.inside_depth(holes)
        tex = band_noise(rng, mask.shape, 1.0, 5.0)
        body = MU_CANCELLOUS * 7 * bone.density * smoothstep(0, 3, depth) * (1 + 0.15 * tex)
        body = body * (1 - 0.55 * smoothstep(0, 2.0, hole_depth))
        rims = np.exp(-depth / 1.2) * mask + 0.5 * np.exp(-hole_depth / 0.8) * holes
        reg.add("bone", 2.0 * (body + MU_CORTEX * 1.2 * rims))
    canvas.add("bone", frame, line([(0, -108), (0, -20)], 2.0), (-6, -112, 6, -15), mu=0.05)
    canvas.add("bone", frame, ellipsoid((0, 8), 5, 9), (-8, -4, 8, 20), mu=MU_CANCELLOUS * 1.5)
    spine = frame @ affine(rot_deg=p.lumbar_tilt, tx=0, ty=-116)
    for i, top in enumerate((0.0, -38.0, -76.0)):
        w = 26 - 1.5 * i
        body = smooth_polygon([(-w, top - 30), (w, top - 30), (w + 2, top - 2), (-w - 2, top - 2)],
                              2)
        vreg = canvas.region(spine, body)
        if vreg is not None:
            m = vreg.mask(spine, body)
            d = canvas.inside_depth(m)
            vreg.add("bone", MU_CANCELLOUS * 14 * bone.density * smoothstep(0, 2, d)
                     + MU_CORTEX * 1.6 * np.exp(-d / 1.0) * m)
        for sx in (-1, 1):
            ped = shell((sx * (w - 8), top - 20), 6.5, 4.5)
            canvas.add("bone", spine, ped, (sx * (w - 8) - 8, top - 30, sx * (w - 8) + 8, top - 10),
                       mu=MU_CORTEX * 0.7)
            tp = [(sx * (w - 4), top - 16), (sx * (w + 26), top - 20 + 3 * i)]
            canvas.add("bone", spine, tube(tp[0], tp[1], 5.0, 3.5), bbox_of(tp, 8),
                       mu=MU_CANCELLOUS * 1.5)
        sp = ellipsoid((0, top - 12), 5, 11)
        canvas.add("bone", spine, sp, (-8, top - 26, 8, top), mu=MU_CORTEX * 0.4)


def add_plate_bone(canvas: Canvas, frame: Array, pts: Array, thickness: float,
                   rng: np.random.Generator, bone: Bone) -> None:
    """Flat bone outline with a cortical rim (pelvic bones of the lateral view)."""
    reg = canvas.region(frame, pts)
    if reg is None:
        return
    mask = reg.coverage(frame, pts)
    depth = canvas.soft_depth(mask)
    tex = band_noise(rng, mask.shape, 0.6 / canvas.pixel_mm, 2.5 / canvas.pixel_mm)
    reg.add("bone", 2.0 * (MU_CANCELLOUS * bone.density * thickness * smoothstep(0, 4, depth)
                           * (1 + 0.12 * tex)
                           + MU_CORTEX * bone.cortex * 2.0 * np.exp(-depth / 1.4) * mask))


def jittered_ellipse(c: Point, a: float, b: float, angle: float, rng: np.random.Generator
                     ) -> Array:
    """Ellipse outline with smooth random bumps."""
    pts = _ellipse_pts(c, a, b, angle, 40)
    bumps = ndimage.gaussian_filter1d(rng.normal(0, 0.08, 40), 2, mode="wrap")
    return c + (pts - np.asarray(c)) * (1 + bumps)[:, None]


def _gauss(u: Array, v: Array, c: Point, s: float) -> Array:
    return np.exp(-((u - c[0]) ** 2 + (v - c[1]) ** 2) / (2 * s * s))


def _ellipse_pts(c: Point, a: float, b: float, angle: float, n: int = 48) -> Array:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ca, sa = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    x, y = a * np.cos(t), b * np.sin(t)
    return np.stack([c[0] + x * ca - y * sa, c[1] + x * sa + y * ca], axis=1)


def _arc(c: Point, r: float, a0: float, a1: float, n: int = 24, squash: float = 1.0
         ) -> list[Point]:
    t = np.radians(np.linspace(a0, a1, n))
    return [(c[0] + r * np.cos(a) * squash, c[1] + r * np.sin(a)) for a in t]


# ---- soft tissue ----------------------------------------------------------------------


@dataclass
class Habitus:
    """Body size, independent of the skeleton's size."""

    half_width: float
    depth: float
    fat: float
    thigh_r: float
    squareness: float = 2.0

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Habitus:
        fat = 0.7 * rng.beta(1.5, 3.0)  # thin to obese
        thigh_r = rng.uniform(70, 95) * (1 + fat * 0.5)
        # at the hips the body is at least as wide as both thighs
        half_width = max(rng.uniform(165, 225) * (1 + fat * 0.5),
                         (ACETABULUM_U + 35 + thigh_r) * rng.uniform(0.97, 1.08))
        return cls(half_width=half_width, depth=rng.uniform(170, 260) * (1 + fat * 0.6),
                   fat=fat, thigh_r=thigh_r, squareness=rng.uniform(2.5, 4.0))


def add_soft_tissue_ap(canvas: Canvas, frame: Array, h: Habitus,
                       thighs: list[tuple[Point, Point]], rng: np.random.Generator) -> None:
    """Trunk with curved gluteal folds merging into the thighs (AP projection), bowel gas.

    thighs: axis of each thigh (pelvis frame), from the hip downwards."""
    hw, d = h.half_width, h.depth
    thigh_fields = [tube(p0, p1, h.thigh_r, cap=90) for p0, p1 in thighs]

    def body(x: Array, y: Array) -> Array:
        # the hips are the widest part of the body: a flattened (super-elliptic) section
        q = np.clip(1 - np.abs(x / hw) ** h.squareness, 0, None)
        q_in = np.clip(1 - np.abs(x / (hw * (1 - h.fat * 0.6))) ** h.squareness, 0, None)
        fold = 90 + 60 * np.abs(x) / hw
        fade = smoothstep(fold + 50, fold - 20, y)
        trunk = (MU_FAT * np.sqrt(q) + (MU_SOFT - MU_FAT) * (1 - h.fat) * np.sqrt(q_in)) * d
        legs = [MU_SOFT * 0.95 * d / (2 * h.thigh_r) * t(x, y) for t in thigh_fields]
        return np.maximum.reduce([trunk * fade, *legs])

    canvas.add("soft", frame, body)
    add_bowel(canvas, frame, rng)
    add_fat_planes(canvas, frame, h, rng)


def add_bowel(canvas: Canvas, frame: Array, rng: np.random.Generator) -> None:
    """Bowel gas over the pelvis: loose gas bubbles, gas-filled loops with haustral folds,
    and mottled faeces in the colon (ascending, descending, sigmoid, rectum)."""
    for _ in range(int(rng.integers(0, 14))):
        c = (rng.uniform(-130, 130), rng.uniform(-200, 10))
        a, b = rng.uniform(5, 26), rng.uniform(4, 15)
        canvas.add("soft", frame, ellipsoid(c, a, b, rng.uniform(0, 180), depth=b),
                   bbox_of([c], a + 2), mu=-MU_SOFT * rng.uniform(0.4, 1.0))
    for _ in range(int(rng.integers(0, 4))):  # gas-filled loops with haustra
        p0 = np.array([rng.uniform(-130, 130), rng.uniform(-210, -20)])
        heading = rng.uniform(0, 2 * np.pi)
        pts = []
        for _k in range(int(rng.integers(4, 9))):
            pts.append((float(p0[0]), float(p0[1])))
            heading += rng.normal(0, 0.5)
            p0 = p0 + 14.0 * np.array([np.cos(heading), np.sin(heading)])
        r = rng.uniform(9, 20)
        pitch = rng.uniform(10, 18)
        canvas.add("soft", frame, _haustral_loop(pts, r, pitch), bbox_of(pts, r + 3),
                   mu=-MU_SOFT * rng.uniform(0.5, 0.9))
    tex = band_noise(rng, (128, 128), 0.8, 3.0)
    for _ in range(int(rng.integers(0, 4))):  # faeces: bubbly lucencies in a soft blob
        c = (rng.choice([-1.0, 1.0]) * rng.uniform(40, 120), rng.uniform(-190, 20))
        a, b = rng.uniform(18, 40), rng.uniform(14, 30)
        ang = rng.uniform(0, 180)
        canvas.add("soft", frame, _mottle(c, a, b, ang, tex, rng.uniform(0.3, 0.9)),
                   bbox_of([c], a + 2), mu=-MU_SOFT)


def _haustral_loop(pts: list[Point], r: float, pitch: float) -> Field:
    """Gas column of a bowel loop whose wall is indented by folds every `pitch` mm."""

    def field(x: Array, y: Array) -> Array:
        d = polyline_distance(x, y, pts)
        along = np.hypot(x - pts[0][0], y - pts[0][1])
        rr = r * (1 - 0.25 * np.abs(np.sin(np.pi * along / pitch)) ** 8)
        return 2 * np.sqrt(np.clip(rr * rr - d * d, 0, None)) * 0.6

    return field


def _mottle(c: Point, a: float, b: float, angle: float, tex: Array, amount: float) -> Field:
    """Gas bubbles of a few mm scattered through a faecal mass (projected gas depth)."""
    blob = ellipsoid(c, a, b, angle, depth=0.5)

    def field(x: Array, y: Array) -> Array:
        k = tex.shape[0]
        t = tex[(y * 0.9).astype(np.int32) % k, (x * 0.9).astype(np.int32) % k]
        return np.clip(blob(x, y), 0, 1) * 8.0 * amount * np.clip(t - 0.5, 0, 1.2)

    return field


def add_fat_planes(canvas: Canvas, frame: Array, h: Habitus, rng: np.random.Generator) -> None:
    """Fat stripes (gluteal, obturator internus), and an abdominal fold in obese patients."""
    for sx in (-1.0, 1.0):
        if rng.random() < 0.7:  # gluteal fat stripe lateral of the hip
            u0 = ACETABULUM_U + rng.uniform(30, 50)
            pts = [(sx * (u0 + 8 * np.sin(t)), -60 + 45 * t) for t in np.linspace(0, 2.5, 8)]
            canvas.add("soft", frame, line(pts, rng.uniform(1.5, 3.0)), bbox_of(pts, 8),
                       mu=-MU_SOFT * rng.uniform(1.5, 4.0))
        if rng.random() < 0.5:  # obturator internus fat plane along the pelvic inlet
            pts = [(sx * (60 - 6 * t), -20 + 18 * t) for t in np.linspace(0, 3, 6)]
            canvas.add("soft", frame, line(pts, 1.5), bbox_of(pts, 6),
                       mu=-MU_SOFT * rng.uniform(1.0, 3.0))
    if h.fat > 0.2 and rng.random() < 0.25:  # pannus: an abdominal fold hanging over the pelvis
        y0, sag, tilt = rng.uniform(-40, 60), rng.uniform(20, 60), rng.normal(0, 0.1)
        depth = h.depth * rng.uniform(0.02, 0.06)
        width = h.half_width * rng.uniform(0.6, 0.9)

        def fold(x: Array, y: Array) -> Array:
            edge = y0 + sag * (1 - (x / width) ** 2) + tilt * x
            band = smoothstep(edge + 2, edge - 2, y) * smoothstep(edge - 140, edge - 50, y)
            return depth * band * smoothstep(width, width * 0.7, np.abs(x))

        canvas.add("soft", frame, fold, mu=MU_FAT)
