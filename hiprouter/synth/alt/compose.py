"""A patient in 3D (bones, joints, hardware, findings) built from the ground truth, and its
projection in one view as material path maps."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from hiprouter.synth.alt import femur as fm
from hiprouter.synth.alt.arthroplasty import plan_arthroplasty
from hiprouter.synth.alt.fixation import plan_fixation
from hiprouter.synth.alt.metalwork import Hardware, Part
from hiprouter.synth.alt.patient import Body, sample_body
from hiprouter.synth.alt.pelvis import (
    Socket,
    build_socket,
    draw_hemipelvis,
    draw_spine_and_sacrum,
)
from hiprouter.synth.alt.raycast import Layers, Solid, ellipsoid, rotation, solid, sphere, unit
from hiprouter.synth.alt.softtissue import Abdomen, draw_soft_tissue, sample_abdomen
from hiprouter.synth.alt.truth import ARTHROPLASTY, FIXATION, HipTruth, PatientTruth
from hiprouter.synth.alt.views import ViewGeometry

_JOINT_SPACE = {0: 4.6, 1: 3.9, 2: 3.0, 3: 1.8, 4: 0.5}
"""Superior joint space width (mm) by Kellgren-Lawrence grade."""


@dataclass
class Hip3D:
    truth: HipTruth
    socket: Socket
    femur: fm.FemurModel
    hardware: Hardware
    migration: np.ndarray
    """Native head centre minus socket centre (narrowing, subluxation)."""
    bone: list[Part] = field(default_factory=list)
    """Acetabular findings: rim osteophytes, roof cysts (patient frame)."""


@dataclass
class Patient3D:
    truth: PatientTruth
    body: Body
    abdomen: Abdomen
    hips: dict[str, Hip3D]


@dataclass
class Projection:
    """Material paths of one view, and where each hip's head is."""

    layers: Layers
    heads: dict[str, Solid | None]
    """Native femoral heads as placed (None: no native head)."""
    head_centres: dict[str, np.ndarray]
    """Centre of the (native or prosthetic) head, or the empty socket, per side."""


def build_patient(truth: PatientTruth, rng: np.random.Generator,
                  body: Body | None = None) -> Patient3D:
    """The 3D patient for a ground truth (anatomy randomised by rng)."""
    body = body or sample_body(rng, truth.age, truth.sex)
    abdomen = sample_abdomen(rng, body)
    hips = {side: _build_hip(t, body, side, rng) for side, t in truth.hips.items()}
    return Patient3D(truth, body, abdomen, hips)


def _build_hip(t: HipTruth, body: Body, side: str, rng: np.random.Generator) -> Hip3D:
    lat = 1.0 if side == "L" else -1.0
    s = body.size
    native = t.native_head
    oa = max(t.oa_grade, 3 if t.onfh_grade == 4 else 0, 1 if t.ddh and t.oa_grade else 0)
    oa = oa if native else 0
    model = fm.build_femur(body, side, valgus=rng.uniform(6, 14) if t.ddh else 0.0,
                           extra_av=rng.uniform(5, 15) if t.ddh else 0.0)
    ddh = bool(t.ddh) and native
    sock = build_socket(body, side, inclination=rng.uniform(63, 72) if ddh else None,
                        face=rng.uniform(-9, -4) if ddh else None,
                        shell=(2.0 + 0.7 * max(oa - 1, 0)) * s)
    migration = np.zeros(3)
    if native:
        narrowing = _JOINT_SPACE[0] - _JOINT_SPACE[oa]
        migration = unit(np.array([lat * 0.35, 0.1, 1.0])) * narrowing * s
        if ddh:
            migration = migration + np.array([lat * rng.uniform(3, 11), 0,
                                              rng.uniform(1, 7)]) * s
    bone: list[Part] = []
    if native:
        fm.add_osteoarthritis(model, oa, rng)
        fm.add_osteonecrosis(model, t.onfh_grade, rng)
        bone = _acetabular_oa(sock, oa, lat, body.bvtv, rng)
    if t.fracture != "none":
        fm.fracture(model, t.fracture, bool(t.fracture_displaced), t.hardware in FIXATION, rng)
    if t.hardware in ARTHROPLASTY:
        hw = plan_arthroplasty(t, model, sock, side, body, rng)
        if hw.socket_radius is not None:
            sock = replace(sock, radius=hw.socket_radius, shell=1.3 * s)
    elif t.hardware in FIXATION:
        hw = plan_fixation(t.device, model.frame, rng)
    else:
        hw = Hardware()
    return Hip3D(t, sock, model, hw, migration, bone)


def _acetabular_oa(sock: Socket, grade: int, lat: float, bvtv: float,
                   rng: np.random.Generator) -> list[Part]:
    """Rim osteophytes and subchondral cysts of the acetabular roof."""
    parts: list[Part] = []
    if grade < 2:
        return parts
    up = unit(np.array([lat * 0.45, 0, 1.0]))
    rim_dir = unit(up - np.dot(up, sock.axis) * sock.axis)
    rim = sock.center + sock.axis * sock.face + rim_dir * (sock.radius + 1.5)
    size = 1.5 + 1.6 * (grade - 1)
    spur = ellipsoid(rim + sock.axis * size * 0.6, rotation((0, 1, 0), lat * 30),
                     (size, size * 1.4, size * 0.8))
    parts.append(Part("cortical", solid(spur), "pelvis", 0.55))
    parts.append(Part("cancellous", solid(spur), "pelvis", 0.5 * bvtv))
    low = sock.center + unit(np.array([-lat * 0.6, -0.2, -0.8])) * (sock.radius + 2)
    parts.append(Part("cortical", solid(ellipsoid(low, np.eye(3), (size, size, size * 1.3))),
                      "pelvis", 0.5))
    if grade >= 3:
        for _ in range(int(rng.integers(1, 4))):
            c = sock.center + unit(np.array([lat * rng.uniform(0, 0.6), rng.normal(0, 0.2), 1.0])
                                   ) * (sock.radius + rng.uniform(5, 10))
            parts.append(Part("cancellous", solid(sphere(c, rng.uniform(2.5, 5))), "pelvis",
                              -bvtv))
    return parts


def _place(part: Part, pose: fm.Pose, sock: Socket) -> Solid:
    if part.frame == "femur":
        return part.body.moved(pose.rot, np.zeros(3), pose.head)
    if part.frame == "socket":
        return part.body.moved(np.eye(3), np.zeros(3), sock.center)
    return part.body


def project(patient: Patient3D, geom: ViewGeometry, shape: tuple[int, int],
            rng: np.random.Generator) -> Projection:
    """Material path maps of the patient in one view, on a grid of `shape`."""
    cam = geom.camera.resized(shape)
    layers = Layers(cam)
    body = patient.body
    poses: dict[str, fm.Pose] = {}
    heads: dict[str, Solid | None] = {}
    centres: dict[str, np.ndarray] = {}
    for side, hip in patient.hips.items():
        leg = geom.legs[side]
        hw = hip.hardware
        ef, ea, er = hw.extra_pose
        centre = hip.socket.center + hw.head_offset + hip.migration
        rot = fm.hip_pose(side, np.zeros(3), leg.flexion + ef, leg.abduction + ea,
                          leg.rotation + er).rot
        pose = fm.Pose(rot, centre - rot @ hw.head_local)
        poses[side] = pose
        centres[side] = centre
        draw_hemipelvis(layers, body, side, hip.socket, body.bvtv, resorbed=hw.pelvis_resorb)
        heads[side] = fm.draw_femur(layers, hip.femur, pose, body.bvtv)
        for part in hw.parts + hip.bone:
            layers.add(part.material, _place(part, pose, hip.socket), part.weight)
    draw_spine_and_sacrum(layers, body, body.bvtv)
    draw_soft_tissue(layers, body, {k: h.femur.frame for k, h in patient.hips.items()}, poses,
                     patient.abdomen, rng)
    return Projection(layers, heads, centres)
