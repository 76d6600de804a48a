"""Anatomy of synthetic pelvis/hip radiographs: soft tissue, pelvis, sacrum, spine, femora.

Coordinates are standard millimetres of an average adult. The pelvis frame has its origin
midway between the acetabular centres, x towards the image right (the patient's left on an
AP view) and y towards the feet; each hemipelvis is drawn in a mirrored frame where u points
laterally. Each femur has its own frame: origin at the femoral head centre, x lateral, y
distal. Fragments of a fractured femur are the same femur drawn twice through two frames,
each clipped to its side of the fracture line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from hiprouter.synth.canvas import (
    Array,
    Canvas,
    Point,
    affine,
    band_noise,
    bbox_of,
    ellipsoid,
    line,
    shell,
    smooth_polygon,
    smoothstep,
    sphere,
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


def femur_density(f: FemurShape, depth: Array, x: Array, y: Array,
                  texture: Array | None) -> Array:
    """Extra attenuation of a femur from its outline depth (mm) and local coordinates."""
    along = (x - f.junction[0]) * f.shaft_dir[0] + (y - f.junction[1]) * f.shaft_dir[1]
    diaphysis = smoothstep(30, 110, along)
    cortex_w = 1.4 + 3.2 * diaphysis
    inside = depth > 0
    in_head = smoothstep(f.head_r * 1.05, f.head_r * 0.9, np.sqrt(x * x + y * y))
    cortex = np.exp(-depth / cortex_w) * (1 + 0.8 * diaphysis) * inside * (1 - in_head)
    body = np.sqrt(np.clip(depth, 0, None) * 7 * f.shaft_r) * (1 - 0.55 * diaphysis)
    head = sphere((0.0, 0.0), f.head_r)(x, y)
    head_shell = head - sphere((0.0, 0.0), f.head_r - 1.8)(x, y)
    cancellous = np.maximum(body, 0.8 * head)
    if texture is not None:
        k = texture.shape[0]
        tex = texture[(y * 2.0).astype(np.int32) % k, (x * 2.0).astype(np.int32) % k]
        cancellous = cancellous * (1 + 0.16 * tex)
    return (MU_CANCELLOUS * cancellous + MU_CORTEX * (16 * cortex + 0.8 * head_shell))


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


def add_femur(canvas: Canvas, frame: Array, f: FemurShape, cut: Cut | None,
              texture: Array | None, layer: str = "bone") -> Array:
    """Draw a femur (with its fracture or resection); returns the distal fragment's frame."""
    outline = femur_outline(f)
    fragments: list[tuple[Array, float]] = [(frame, 0.0)]
    distal = frame
    if cut is not None:
        px, py = cut.point
        distal = (frame @ affine(tx=px, ty=py) @ affine(rot_deg=cut.distal_rot_deg)
                  @ affine(tx=-px + cut.distal_shift[0], ty=-py + cut.distal_shift[1]))
        g = cut.gap / 2 if cut.keep == "both" else 0.0
        fragments = [(distal, -1.0)] + ([(frame, 1.0)] if cut.keep == "both" else [])
    for fr, keep in fragments:
        reg = canvas.region(fr, np.vstack([outline, [[-f.head_r, -f.head_r], [f.head_r,
                                                                             f.head_r]]]))
        if reg is None:
            continue
        mask = reg.mask(fr, outline)
        x, y = reg.local(fr)
        depth = canvas.inside_depth(mask)
        v = femur_density(f, depth, x, y, texture)
        if cut is not None:
            side = cut.side(x, y)
            v = v * (smoothstep(g, g + 0.6, side) if keep > 0 else smoothstep(-g, -g - 0.6, side))
        reg.add(layer, v)
    return distal


# ---- pelvis ---------------------------------------------------------------------------


@dataclass
class PelvisShape:
    """Per-patient pelvis with independent jitter of each side."""

    outline: dict[str, Array]
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
            outline[side] = smooth_polygon(pts + jitter, 3)
            (cx, cy), a, b, ang = _OBTURATOR
            obt[side] = ((cx + rng.normal(0, 2), cy + rng.normal(0, 2)),
                         a * rng.uniform(0.85, 1.15), b * rng.uniform(0.85, 1.1),
                         ang + rng.normal(0, 5))
        sac = np.asarray(_SACRUM, float) + rng.normal(0, 2.5, (len(_SACRUM), 2))
        return cls(outline, obt, smooth_polygon(sac, 3), rng.normal(0, 2))


def hemipelvis_frame(pelvis_frame: Array, side: str, image_x_of_right: int) -> Array:
    """Frame of one hemipelvis: u lateral. image_x_of_right is -1 when the patient's right
    is on the image left."""
    lateral_sign = image_x_of_right if side == "R" else -image_x_of_right
    return pelvis_frame @ affine(mirror_x=lateral_sign < 0)


def add_hemipelvis(canvas: Canvas, frame: Array, p: PelvisShape, side: str, head_r: float,
                   rng: np.random.Generator) -> None:
    """One os coxae in AP projection: plate bone with cortical rims and thick columns."""
    reg = canvas.region(frame, p.outline[side])
    if reg is None:
        return
    mask = reg.mask(frame, p.outline[side])
    (cx, cy), a, b, ang = p.obturator[side]
    mask &= ~reg.mask(frame, _ellipse_pts((cx, cy), a, b, ang))
    depth = canvas.inside_depth(mask)
    u, v = reg.local(frame)
    bumps = (22 * _gauss(u, v, (ACETABULUM_U - 8, -16), 26)
             + 20 * _gauss(u, v, (ACETABULUM_U - 18, -48), 22)
             + 12 * _gauss(u, v, (55, -85), 18)
             + 16 * _gauss(u, v, (82, 92), 14)
             + 10 * _gauss(u, v, (12, 48), 12)
             + 8 * _gauss(u, v, (140, -74), 9)
             + 10 * _gauss(u, v, (70, 40), 10))
    plate = (2.5 + bumps) * smoothstep(0, 2.5, depth)
    tex = band_noise(rng, mask.shape, 0.6 / canvas.pixel_mm, 2.5 / canvas.pixel_mm)
    reg.add("bone", 2.2 * (MU_CANCELLOUS * plate * (1 + 0.12 * tex)
                           + MU_CORTEX * (2.2 * np.exp(-depth / 1.3)
                                          + 0.6 * np.exp(-depth / 5.0)) * mask))
    a_c = (ACETABULUM_U, 0.0)
    r = head_r + 2.5
    brim = [(42, -92), (57, -58), (67, -25), (70, 0), (60, 14), (36, 20), (12, 25)]
    sourcil = _arc(a_c, r, 205, 335)
    teardrop = [(ACETABULUM_U - 30, -4), (ACETABULUM_U - 35, 14), (ACETABULUM_U - 29, 24),
                (ACETABULUM_U - 24, 14), (ACETABULUM_U - 25, -2)]
    post_wall = _arc(a_c, r + 1, 300, 420, squash=0.75)
    ant_wall = _arc((ACETABULUM_U - 6, 2), r - 1, 320, 430, squash=0.55)
    ilioischial = [(66, -20), (70, 10), (78, 40), (88, 75)]
    joint = _arc(a_c, head_r + 1.0, 190, 350)
    canvas.add("bone", frame, line(joint, 1.1), bbox_of(joint, 5), mu=-0.12)
    for pts, width, strength in ((brim, 1.6, 0.16), (sourcil, 2.0, 0.45), (teardrop, 1.3, 0.14),
                                 (post_wall, 1.1, 0.10), (ant_wall, 1.0, 0.07),
                                 (ilioischial, 1.3, 0.10)):
        canvas.add("bone", frame, line(pts, width), bbox_of(pts, 6), mu=strength)


def add_sacrum_spine(canvas: Canvas, frame: Array, p: PelvisShape,
                     rng: np.random.Generator) -> None:
    """Sacrum with foramina, coccyx, and the lower lumbar vertebrae."""
    reg = canvas.region(frame, p.sacrum)
    if reg is not None:
        mask = reg.mask(frame, p.sacrum)
        holes = np.zeros(mask.shape, bool)
        for v, r in ((-88, 6.0), (-66, 5.2), (-46, 4.5), (-29, 3.8)):
            for u in (-22 + 0.1 * v * 0.1, 22 - 0.1 * v * 0.1):
                holes |= reg.mask(frame, _ellipse_pts((u * (1 + v / 400), v), r, r * 0.8, 0))
        depth = canvas.inside_depth(mask)
        hole_depth = canvas.inside_depth(holes)
        tex = band_noise(rng, mask.shape, 1.0, 5.0)
        body = MU_CANCELLOUS * 7 * smoothstep(0, 3, depth) * (1 + 0.15 * tex)
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
            vreg.add("bone", MU_CANCELLOUS * 14 * smoothstep(0, 2, d)
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
                   rng: np.random.Generator) -> None:
    """Flat bone outline with a cortical rim (pelvic bones of the lateral view)."""
    reg = canvas.region(frame, pts)
    if reg is None:
        return
    mask = reg.mask(frame, pts)
    depth = canvas.inside_depth(mask)
    tex = band_noise(rng, mask.shape, 0.6 / canvas.pixel_mm, 2.5 / canvas.pixel_mm)
    reg.add("bone", 2.0 * (MU_CANCELLOUS * thickness * smoothstep(0, 4, depth) * (1 + 0.12 * tex)
                           + MU_CORTEX * 2.0 * np.exp(-depth / 1.4) * mask))


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
        fat = rng.uniform(0.05, 0.35)
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
    for _ in range(int(rng.integers(0, 16))):
        c = (rng.uniform(-120, 120), rng.uniform(-190, 10))
        a, b = rng.uniform(6, 28), rng.uniform(5, 16)
        canvas.add("soft", frame, ellipsoid(c, a, b, rng.uniform(0, 180), depth=b),
                   bbox_of([c], a + 2), mu=-MU_SOFT * rng.uniform(0.4, 1.0))
