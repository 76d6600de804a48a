"""Scenes of the synthetic views: where the patient's anatomy, findings and implants lie.

A `Patient` is sampled once per study: skeleton, habitus, bone quality for the age, and per
hip the geometry of its labels (joint findings, fracture, THA failure), each hip with its
own seed so every view of the study shows the same implant and the same finding.
`render_view` lays the scene out for one view and returns the attenuation image at working
resolution. The view's random generator is consumed the same way whatever the labels, so
changing one label changes the image only where that finding is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from hiprouter.synth.anatomy import (
    ACETABULUM_U,
    MU_CORTEX,
    MU_SOFT,
    Bone,
    Cut,
    FemurShape,
    Habitus,
    PelvisShape,
    Trabeculae,
    add_femur,
    add_hemipelvis,
    add_plate_bone,
    add_sacrum_spine,
    add_soft_tissue_ap,
    head_outline,
    jittered_ellipse,
)
from hiprouter.synth.canvas import Array, Canvas, affine, apply, bbox_of, line, smoothstep
from hiprouter.synth.failure import ThaFailure, add_failure
from hiprouter.synth.findings import (
    NativeJoint,
    add_acetabular_findings,
    add_head_findings,
    add_joint_space,
)
from hiprouter.synth.fixation import ViewGeometry
from hiprouter.synth.hardware import add_foreign_bodies, add_hip_hardware, resection_cut
from hiprouter.synth.labels import ARTHROPLASTY, SIDES, THA, VIEWS, HipSpec

_FRACTURE_STREAM = 31


@dataclass
class Patient:
    """Everything about one synthetic patient that stays the same across views."""

    scale: float
    pelvis: PelvisShape
    femur: dict[str, FemurShape]
    """Each femur as its hip's findings shape it (head collapse, dysplastic valgus)."""
    build: dict[str, FemurShape]
    """Each femur as sampled, before the findings: what the soft tissue follows."""
    habitus: Habitus
    hips: dict[str, HipSpec]
    hip_seeds: dict[str, int]
    age: float
    bone: Bone
    joints: dict[str, NativeJoint] = field(default_factory=dict)
    failures: dict[str, ThaFailure] = field(default_factory=dict)
    fracture_cuts: dict[str, Cut | None] = field(default_factory=dict)

    @classmethod
    def sample(cls, rng: np.random.Generator, hips: dict[str, HipSpec], age: float
               ) -> Patient:
        femur = {s: FemurShape.sample(rng) for s in SIDES}
        growth = 0.9 + 0.1 * float(np.clip((age - 12) / 6, 0, 1))  # adolescents are smaller
        p = cls(scale=float(rng.normal(1.0, 0.06)) * growth, pelvis=PelvisShape.sample(rng),
                femur=dict(femur), build=femur, habitus=Habitus.sample(rng), hips=hips,
                hip_seeds={s: int(rng.integers(2**31)) for s in SIDES}, age=age,
                bone=Bone.sample(rng, age))
        for s in SIDES:
            seed = p.hip_seeds[s]
            joint = NativeJoint.sample(hips[s], seed)
            p.joints[s] = joint
            p.femur[s] = joint.shape_head(femur[s])
            if hips[s].hardware in THA:
                p.failures[s] = ThaFailure.sample(hips[s].failure, p.femur[s], seed)
            p.fracture_cuts[s] = _fracture_cut(p.femur[s], hips[s],
                                               np.random.default_rng([seed, _FRACTURE_STREAM]))
        return p

    def head_offset(self, s: str) -> tuple[float, float, float]:
        """Head centre relative to the acetabular centre (lateral, distal mm) and the
        femur's extra rotation (degrees)."""
        if s in self.failures:
            fail = self.failures[s]
            return fail.head_offset[0], fail.head_offset[1], fail.head_rot_deg
        if self.hips[s].hardware in ARTHROPLASTY:
            return 0.0, 0.0, 0.0
        dx, dy = self.joints[s].offset
        return dx, dy, 0.0


def _fracture_cut(f: FemurShape, hip: HipSpec, rng: np.random.Generator) -> Cut | None:
    nd = f.neck_dir
    neck_angle = float(np.degrees(np.arctan2(nd[1], nd[0])))
    displaced = hip.fracture_displaced
    if hip.fracture == "femoral_neck_fracture":
        p = f.junction + rng.uniform(0.5, 0.8) * f.neck_len * nd
        # displaced: the shaft migrates proximally along the neck (shortening) and rotates;
        # undisplaced: a thin line, often slightly impacted
        along = rng.uniform(3, 9) if displaced else rng.uniform(0.0, 1.5)
        shift = nd * along + np.array([0.0, -rng.uniform(0, 4) if displaced else 0.0])
        return Cut(point=(float(p[0]), float(p[1])), angle_deg=neck_angle + 90 + rng.normal(0, 15),
                   gap=rng.uniform(1.0, 2.2) if displaced else rng.uniform(0.7, 1.4),
                   wiggle=rng.uniform(0.4, 1.2), distal_shift=(float(shift[0]), float(shift[1])),
                   distal_rot_deg=rng.uniform(3, 12) if displaced else rng.normal(0, 1.5))
    if hip.fracture == "intertrochanteric_fracture":
        a = f.shaft_point(-f.gt_size[1] * 0.5, 18)
        b = f.lt_centre
        ang = float(np.degrees(np.arctan2(b[1] - a[1], b[0] - a[0])))
        mid = (a + b) / 2
        return Cut(point=(float(mid[0]), float(mid[1])), angle_deg=ang + rng.normal(0, 6),
                   gap=rng.uniform(1.0, 2.2) if displaced else rng.uniform(0.7, 1.4),
                   wiggle=rng.uniform(0.6, 1.6),
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
    """Working-resolution (column, row) of the visible femoral (or prosthetic) heads."""
    head_outlines: dict[str, Array]
    """Working-resolution (column, row) outline of each native femoral head in the image."""
    foreign: Array
    """Attenuation of radiodense objects that are not implants (clothing, clips)."""
    orientation: tuple[str, str]
    """PatientOrientation: directions of the rows and of the columns."""
    hips: Array
    """Mask of the hip regions: acetabula and femora, where the labelled findings are."""


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


def _image_rotation(rng: np.random.Generator) -> float:
    """Rotation of the anatomy on the detector: mostly small, sometimes up to 20 degrees."""
    small, large = rng.normal(0, 2.5), rng.uniform(-20, 20)
    return float(large if rng.random() < 0.3 else small)


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
    rot = _image_rotation(rng)
    pixel_to_scene = (affine(tx=centre[0], ty=centre[1]) @ affine(rot_deg=rot, scale=px)
                      @ affine(tx=-cols / 2, ty=-rows / 2))
    canvas = Canvas(shape, pixel_to_scene)
    aniso = (k * rng.uniform(0.98, 1.02), k * rng.uniform(0.98, 1.02))
    pelvis_frame = affine(rot_deg=rng.normal(0, 1.5), scale=aniso)
    hemi = {s: pelvis_frame @ affine(mirror_x=(s == "R")) for s in SIDES}
    femur_frames: dict[str, Array] = {}
    shapes: dict[str, FemurShape] = {}
    thighs, nominal = [], {}
    for s in SIDES:
        f, abd = _femur_pose(view, s, side, patient.femur[s], rng)
        shapes[s] = f
        dx, dy, rot_f = patient.head_offset(s)
        femur_frames[s] = hemi[s] @ affine(tx=ACETABULUM_U + dx, ty=dy) @ affine(
            rot_deg=-abd + rot_f)
        # the thigh's soft tissue follows the leg's pose, not the hip's findings
        nominal[s] = (hemi[s] @ affine(tx=ACETABULUM_U) @ affine(rot_deg=-abd),
                      dataclasses.replace(f, neck_shaft_deg=patient.build[s].neck_shaft_deg))
        b = nominal[s][1]
        axis = apply(np.linalg.inv(pelvis_frame) @ nominal[s][0],
                     [b.shaft_point(30, -8), b.shaft_point(900, -8)])
        thighs.append((tuple(axis[0]), tuple(axis[1])))
    add_soft_tissue_ap(canvas, pelvis_frame, patient.habitus, thighs, rng)
    add_sacrum_spine(canvas, pelvis_frame, patient.pelvis, rng, patient.bone)
    texture = Trabeculae(rng)
    for s in SIDES:
        add_hemipelvis(canvas, hemi[s], patient.pelvis, s, patient.femur[s].head_r, rng,
                       patient.joints[s].acetabulum, patient.bone)
        _add_hip(canvas, patient, s, shapes[s], femur_frames[s], hemi[s],
                 ViewGeometry(face=0.45 if (view == "frog_leg" and s == side) else 0.0,
                              cup_opening_deg=90 - rng.uniform(30, 55)), texture)
    add_foreign_bodies(canvas, pelvis_frame, (-150, -150, 150, 150), rng)
    centres, outlines = _heads(canvas, patient, femur_frames, shapes)
    hips = _hip_regions(canvas, [nominal[s][0] for s in SIDES], [nominal[s][1] for s in SIDES],
                        55.0 * k)
    return ViewScene(canvas.total, canvas.layers["metal"].copy(), px, True, centres, outlines,
                     canvas.layers["foreign"].copy(), ("L", "F"), hips)


def _hip_regions(canvas: Canvas, frames: list[Array], shapes: list[FemurShape],
                 radius_mm: float) -> Array:
    """Where labelled findings can be: around each acetabulum and along its femur (in its
    nominal pose), `radius_mm` wide."""
    yy, xx = np.mgrid[: canvas.shape[0], : canvas.shape[1]].astype(np.float32)
    mask = np.zeros(canvas.shape, bool)
    for frame, f in zip(frames, shapes, strict=True):
        a, b = apply(canvas.s2p @ frame, [(0, 0), f.shaft_point(400)])
        d = b - a
        t = np.clip(((xx - a[0]) * d[0] + (yy - a[1]) * d[1]) / float(d @ d), 0, 1)
        mask |= np.hypot(xx - a[0] - t * d[0], yy - a[1] - t * d[1]) < radius_mm / canvas.pixel_mm
    return mask


def _heads(canvas: Canvas, patient: Patient, frames: dict[str, Array],
           shapes: dict[str, FemurShape]) -> tuple[dict[str, tuple[float, float]],
                                                    dict[str, Array]]:
    """Pixel centres of the heads inside the image, and outlines of the native ones."""
    rows, cols = canvas.shape
    centres, outlines = {}, {}
    for s, frame in frames.items():
        c = apply(canvas.s2p @ frame, [(0, 0)])[0]
        if not (0 <= c[0] < cols and 0 <= c[1] < rows):
            continue
        centres[s] = (float(c[0]), float(c[1]))
        if patient.hips[s].native_head:
            outlines[s] = apply(canvas.s2p @ frame, head_outline(shapes[s]))
    return centres, outlines


def _add_hip(canvas: Canvas, patient: Patient, s: str, f: FemurShape, frame: Array,
             hemi: Array, geo: ViewGeometry, texture: Trabeculae) -> None:
    """One hip: the femur (resected or fractured), native findings, implants, failure.
    frame: the femur frame with its origin at the (native or prosthetic) head centre."""
    hip = patient.hips[s]
    seed = patient.hip_seeds[s]
    hw_rng = np.random.default_rng(seed)
    joint = patient.joints[s]
    failure = patient.failures.get(s)
    if hip.hardware in ARTHROPLASTY:
        cuts = [resection_cut(f, hw_rng)]
        if failure is not None and failure.fracture is not None:
            cuts.append(failure.fracture)
        sink = failure.subsidence if failure is not None else 0.0
        bone_frame = frame @ affine(tx=-f.shaft_dir[0] * sink, ty=-f.shaft_dir[1] * sink)
        add_femur(canvas, bone_frame, f, cuts, texture, patient.bone)
        implant_frame = frame
    else:
        cut = patient.fracture_cuts[s]
        implant_frame = add_femur(canvas, frame, f, [cut] if cut else [], texture, patient.bone)
        add_joint_space(canvas, hemi, joint, f.head_r)
        add_head_findings(canvas, frame, f, joint, patient.bone)
        add_acetabular_findings(canvas, hemi, joint, f.head_r)
    implants = add_hip_hardware(canvas, hip.hardware, hip.device, implant_frame, hemi,
                                (ACETABULUM_U, 0.0), f, geo, hw_rng,
                                failure.cup_tilt_deg if failure is not None else 0.0)
    if failure is not None:
        add_failure(canvas, implant_frame, hemi, f, implants, failure)


def _render_cross_table(patient: Patient, side: str, shape: tuple[int, int],
                        fov_mm: tuple[float, float], rng: np.random.Generator) -> ViewScene:
    """Cross-table (horizontal beam) lateral: femur in profile, acetabulum and ischium."""
    rows, cols = shape
    px = fov_mm[0] / cols
    k = patient.scale
    centre = (rng.uniform(40, 90), rng.normal(0, 15))
    tilt = rng.normal(-8, 6)
    mirror = bool(rng.random() < 0.5)  # femoral shaft towards the image left or right
    pixel_to_scene = (affine(tx=centre[0], ty=centre[1]) @ affine(
        rot_deg=_image_rotation(rng), scale=px, mirror_x=mirror)
                      @ affine(tx=-cols / 2, ty=-rows / 2))
    canvas = Canvas(shape, pixel_to_scene)
    f0 = patient.femur[side]
    f = dataclasses.replace(f0, neck_shaft_deg=rng.uniform(160, 172), shaft_tilt_deg=0.0,
                            neck_len=f0.neck_len * rng.uniform(0.8, 0.95), gt_shift=20.0)
    scene = affine(scale=k)
    dx, dy, _ = patient.head_offset(side)
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
    r = f.head_r + patient.joints[side].acetabulum.joint_space - 1
    for c, a, b, ang, th in (((-35, 45), 24, 44, 15, 22), ((-20, -42), 34, 13, -25, 14),
                             ((-85, -5), 75, 48, 0, 12)):
        add_plate_bone(canvas, scene, jittered_ellipse(c, a, b, ang + rng.normal(0, 5), rng),
                       th, rng, patient.bone)
    arc = [(np.cos(a) * r, np.sin(a) * r) for a in np.radians(np.linspace(70, 290, 30))]
    canvas.add("bone", scene, line(arc, 2.0), bbox_of(arc, 6), mu=MU_CORTEX * 4)
    texture = Trabeculae(rng)
    _add_hip(canvas, patient, side, f, femur_frame, hemi,
             ViewGeometry(face=1.0, cup_opening_deg=rng.uniform(-35, -10)), texture)
    add_foreign_bodies(canvas, scene, (-150, -120, 150, 120), rng)
    centres, outlines = _heads(canvas, patient, {side: femur_frame}, {side: f})
    return ViewScene(canvas.total, canvas.layers["metal"].copy(), px, None, centres, outlines,
                     canvas.layers["foreign"].copy(), ("H" if mirror else "F", "P"),
                     _hip_regions(canvas, [scene @ affine(rot_deg=-90 + tilt)],
                                  [dataclasses.replace(f, neck_shaft_deg=166.0)], 55.0 * k))
