"""Scenes of the synthetic views: where the patient's anatomy and implants lie in the image.

A `Patient` is sampled once per study (skeleton, habitus, per-hip implants and fractures,
each with its own seed so every view of the study shows the same implant). `render_view`
lays the scene out for one view and returns the attenuation image at working resolution.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from hiprouter.synth.anatomy import (
    ACETABULUM_U,
    MU_CORTEX,
    MU_SOFT,
    Cut,
    FemurShape,
    Habitus,
    PelvisShape,
    add_femur,
    add_hemipelvis,
    add_plate_bone,
    add_sacrum_spine,
    add_soft_tissue_ap,
    jittered_ellipse,
)
from hiprouter.synth.canvas import (
    Array,
    Canvas,
    affine,
    apply,
    band_noise,
    bbox_of,
    line,
    smoothstep,
)
from hiprouter.synth.hardware import (
    ARTHROPLASTY,
    ViewGeometry,
    add_foreign_bodies,
    add_hip_hardware,
    resection_cut,
)

VIEWS = ("ap_pelvis", "ap_hip", "frog_leg", "cross_table_lateral")
FRACTURES = ("none", "femoral_neck_fracture", "intertrochanteric_fracture")
SIDES = ("R", "L")


@dataclass
class HipSpec:
    """Ground truth of one hip."""

    hardware: str = "no_hardware"
    fracture: str = "none"
    dislocated: bool = False


@dataclass
class Patient:
    """Everything about one synthetic patient that stays the same across views."""

    scale: float
    pelvis: PelvisShape
    femur: dict[str, FemurShape]
    habitus: Habitus
    hips: dict[str, HipSpec]
    hip_seeds: dict[str, int]
    fracture_cuts: dict[str, Cut | None] = field(default_factory=dict)
    dislocation: dict[str, tuple[float, float, float]] = field(default_factory=dict)

    @classmethod
    def sample(cls, rng: np.random.Generator, hips: dict[str, HipSpec]) -> Patient:
        femur = {s: FemurShape.sample(rng) for s in SIDES}
        p = cls(scale=float(rng.normal(1.0, 0.06)), pelvis=PelvisShape.sample(rng),
                femur=femur, habitus=Habitus.sample(rng), hips=hips,
                hip_seeds={s: int(rng.integers(2**31)) for s in SIDES})
        for s in SIDES:
            p.fracture_cuts[s] = _fracture_cut(femur[s], hips[s], rng)
            r = femur[s].head_r
            if hips[s].dislocated:
                if rng.random() < 0.85:  # posterior: head above and lateral of the cup
                    p.dislocation[s] = (rng.uniform(0.2, 0.9) * r, -rng.uniform(1.4, 2.4) * r,
                                        rng.uniform(4, 14))
                else:  # anterior/inferior
                    p.dislocation[s] = (-rng.uniform(0.3, 0.8) * r, rng.uniform(1.2, 2.0) * r,
                                        -rng.uniform(5, 15))
        return p


def _fracture_cut(f: FemurShape, hip: HipSpec, rng: np.random.Generator) -> Cut | None:
    fixed = hip.hardware != "no_hardware"
    nd = f.neck_dir
    neck_angle = float(np.degrees(np.arctan2(nd[1], nd[0])))
    if hip.fracture == "femoral_neck_fracture":
        p = f.junction + rng.uniform(0.5, 0.8) * f.neck_len * nd
        displaced = not fixed and rng.random() < 0.6
        # displaced: the shaft migrates proximally along the neck (shortening) and rotates
        along = rng.uniform(3, 9) if displaced else rng.uniform(-0.5, 1.5)
        shift = nd * along + np.array([0.0, -rng.uniform(0, 4) if displaced else 0.0])
        return Cut(point=(float(p[0]), float(p[1])), angle_deg=neck_angle + 90 + rng.normal(0, 15),
                   gap=rng.uniform(0.8, 2.0), wiggle=rng.uniform(0.4, 1.2),
                   distal_shift=(float(shift[0]), float(shift[1])),
                   distal_rot_deg=rng.uniform(3, 12) if displaced else rng.normal(0, 1.5))
    if hip.fracture == "intertrochanteric_fracture":
        a = f.shaft_point(-f.gt_size[1] * 0.5, 18)
        b = f.lt_centre
        ang = float(np.degrees(np.arctan2(b[1] - a[1], b[0] - a[0])))
        mid = (a + b) / 2
        displaced = not fixed and rng.random() < 0.6
        return Cut(point=(float(mid[0]), float(mid[1])), angle_deg=ang + rng.normal(0, 6),
                   gap=rng.uniform(0.8, 2.0), wiggle=rng.uniform(0.6, 1.6),
                   distal_shift=(-rng.uniform(2, 9), -rng.uniform(4, 12)) if displaced
                   else (rng.uniform(-1, 1), -rng.uniform(0, 2)),
                   distal_rot_deg=rng.uniform(3, 12) if displaced else rng.normal(0, 1.5))
    return None


@dataclass
class ViewScene:
    """Attenuation image of one view at working resolution, with what the tests need."""

    attenuation: Array
    implant: Array
    """Attenuation of implants only (metal and cement)."""
    pixel_mm: float
    right_on_image_left: bool | None
    """For AP projections: True when the patient's right is on the image left."""
    hip_centres: dict[str, tuple[float, float]]
    """Working-resolution (column, row) of the visible femoral heads."""
    foreign: Array
    """Attenuation of radiodense objects that are not implants (clothing, clips)."""
    orientation: tuple[str, str]
    """PatientOrientation: directions of the rows and of the columns."""


def _femur_pose(view: str, side: str, index_side: str | None, f: FemurShape,
                rng: np.random.Generator) -> tuple[FemurShape, float]:
    """Apparent femur shape and abduction for a view (frog-leg rotates the index hip)."""
    if view == "frog_leg" and side == index_side:
        g = dataclasses.replace(
            f, neck_shaft_deg=min(f.neck_shaft_deg + rng.uniform(15, 28), 168),
            neck_len=f.neck_len * rng.uniform(0.72, 0.85), gt_shift=rng.uniform(8, 14),
            lt_size=(f.lt_size[0] * 1.3, f.lt_size[1] * 1.2))
        return g, rng.uniform(35, 55)
    return f, rng.normal(0, 3)


def render_view(patient: Patient, view: str, side: str | None, shape: tuple[int, int],
                fov_mm: tuple[float, float], rng: np.random.Generator) -> ViewScene:
    """Render the attenuation of one view. side: the index hip of single-hip views."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}")
    if view == "cross_table_lateral":
        return _render_cross_table(patient, side or "R", shape, fov_mm, rng)
    k = patient.scale
    rows, cols = shape
    px = fov_mm[0] / cols
    # scene: pelvis frame in mm; image centre chosen by the view
    if view == "ap_pelvis":
        centre = (rng.normal(0, 12), rng.uniform(-15, 25))
    else:
        sx = -1 if side == "R" else 1
        centre = (sx * k * (ACETABULUM_U - rng.uniform(5, 35)),
                  rng.uniform(25, 60) if view == "ap_hip" else rng.uniform(30, 70))
    rot = rng.normal(0, 2.5)
    pixel_to_scene = (affine(tx=centre[0], ty=centre[1]) @ affine(rot_deg=rot, scale=px)
                      @ affine(tx=-cols / 2, ty=-rows / 2))
    canvas = Canvas(shape, pixel_to_scene)
    aniso = (k * rng.uniform(0.98, 1.02), k * rng.uniform(0.98, 1.02))
    pelvis_frame = affine(rot_deg=rng.normal(0, 1.5), scale=aniso)
    hemi = {s: pelvis_frame @ affine(mirror_x=(s == "R")) for s in SIDES}
    femur_frames: dict[str, Array] = {}
    shapes: dict[str, FemurShape] = {}
    for s in SIDES:
        f, abd = _femur_pose(view, s, side, patient.femur[s], rng)
        shapes[s] = f
        dx, dy, rot_f = patient.dislocation.get(s, (0.0, 0.0, 0.0))
        femur_frames[s] = hemi[s] @ affine(tx=ACETABULUM_U + dx, ty=dy) @ affine(
            rot_deg=-abd + rot_f)
    thighs = []
    for s in SIDES:
        f = shapes[s]
        axis = apply(np.linalg.inv(pelvis_frame) @ femur_frames[s],
                     [f.shaft_point(30, -8), f.shaft_point(900, -8)])
        thighs.append((tuple(axis[0]), tuple(axis[1])))
    add_soft_tissue_ap(canvas, pelvis_frame, patient.habitus, thighs, rng)
    add_sacrum_spine(canvas, pelvis_frame, patient.pelvis, rng)
    texture = band_noise(rng, (256, 256), 0.7, 2.5)
    for s in SIDES:
        add_hemipelvis(canvas, hemi[s], patient.pelvis, s, patient.femur[s].head_r, rng)
        _add_hip(canvas, patient, s, shapes[s], femur_frames[s], hemi[s],
                 ViewGeometry(face=0.45 if (view == "frog_leg" and s == side) else 0.0,
                              cup_opening_deg=90 - rng.uniform(35, 50)), texture)
    centres = {}
    for s in SIDES:
        c = apply(canvas.s2p @ femur_frames[s], [(0, 0)])[0]
        if 0 <= c[0] < cols and 0 <= c[1] < rows:
            centres[s] = (float(c[0]), float(c[1]))
    add_foreign_bodies(canvas, pelvis_frame, (-150, -150, 150, 150), rng)
    return ViewScene(canvas.total, canvas.layers["metal"].copy(), px, True, centres,
                     canvas.layers["foreign"].copy(), ("L", "F"))


def _add_hip(canvas: Canvas, patient: Patient, s: str, f: FemurShape, frame: Array,
             hemi: Array, geo: ViewGeometry, texture: Array) -> None:
    hip = patient.hips[s]
    hw_rng = np.random.default_rng(patient.hip_seeds[s])
    cut = resection_cut(f, hw_rng) if hip.hardware in ARTHROPLASTY else patient.fracture_cuts[s]
    distal = add_femur(canvas, frame, f, cut, texture)
    implant_frame = frame if hip.hardware in ARTHROPLASTY else distal
    add_hip_hardware(canvas, hip.hardware, implant_frame, hemi, (ACETABULUM_U, 0.0), f, geo,
                     hw_rng)


def _render_cross_table(patient: Patient, side: str, shape: tuple[int, int],
                        fov_mm: tuple[float, float], rng: np.random.Generator) -> ViewScene:
    """Cross-table (horizontal beam) lateral: femur in profile, acetabulum and ischium."""
    rows, cols = shape
    px = fov_mm[0] / cols
    k = patient.scale
    centre = (rng.uniform(40, 90), rng.normal(0, 15))
    tilt = rng.normal(-8, 6)
    mirror = bool(rng.random() < 0.5)  # femoral shaft towards the image left or right
    pixel_to_scene = (affine(tx=centre[0], ty=centre[1]) @ affine(rot_deg=rng.normal(0, 3),
                                                                  scale=px, mirror_x=mirror)
                      @ affine(tx=-cols / 2, ty=-rows / 2))
    canvas = Canvas(shape, pixel_to_scene)
    f0 = patient.femur[side]
    f = dataclasses.replace(f0, neck_shaft_deg=rng.uniform(160, 172), shaft_tilt_deg=0.0,
                            neck_len=f0.neck_len * rng.uniform(0.8, 0.95), gt_shift=20.0)
    scene = affine(scale=k)
    dx, dy, _ = patient.dislocation.get(side, (0.0, 0.0, 0.0))
    femur_frame = scene @ affine(tx=-abs(dy) * 0.3, ty=dx) @ affine(rot_deg=-90 + tilt)
    hemi = scene @ affine(tx=-ACETABULUM_U)
    hab = patient.habitus
    depth = hab.half_width * rng.uniform(0.9, 1.2)
    skin_front = rng.uniform(-190, -110)
    skin_back = rng.uniform(110, 190)
    bump = (rng.uniform(-150, -60), rng.choice([-1.0, 1.0]) * rng.uniform(40, 120))

    def body(x: Array, y: Array) -> Array:
        envelope = smoothstep(skin_front, skin_front + 45, y) * smoothstep(skin_back,
                                                                           skin_back - 45, y)
        buttock = 0.25 * np.exp(-((x - bump[0]) ** 2 + (y - bump[1]) ** 2) / (2 * 90.0**2))
        return depth * envelope * (0.8 + buttock + 0.1 * smoothstep(0, -150, x))

    canvas.add("soft", scene, body, mu=MU_SOFT)
    r = f.head_r
    for c, a, b, ang, th in (((-35, 45), 24, 44, 15, 22), ((-20, -42), 34, 13, -25, 14),
                             ((-85, -5), 75, 48, 0, 12)):
        add_plate_bone(canvas, scene, jittered_ellipse(c, a, b, ang + rng.normal(0, 5), rng),
                       th, rng)
    arc = [(np.cos(a) * (r + 3), np.sin(a) * (r + 3)) for a in np.radians(np.linspace(70, 290, 30))]
    canvas.add("bone", scene, line(arc, 2.0), bbox_of(arc, 6), mu=MU_CORTEX * 4)
    texture = band_noise(rng, (256, 256), 0.7, 2.5)
    _add_hip(canvas, patient, side, f, femur_frame, hemi,
             ViewGeometry(face=1.0, cup_opening_deg=rng.uniform(-35, -10)), texture)
    add_foreign_bodies(canvas, scene, (-150, -120, 150, 120), rng)
    c = apply(canvas.s2p @ femur_frame, [(0, 0)])[0]
    return ViewScene(canvas.total, canvas.layers["metal"].copy(), px, None,
                     {side: (float(c[0]), float(c[1]))}, canvas.layers["foreign"].copy(),
                     ("H" if mirror else "F", "P"))
