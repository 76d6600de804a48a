"""Building blocks of implants: threaded and cannulated screws, wire loops, tapered wedges,
plates with screw holes, and the `Part`/`Hardware` records the renderer draws."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hiprouter.synth.alt.raycast import (
    Convex,
    Solid,
    box,
    capsule_chain,
    frame_from_axis,
    frustum,
    polytope,
    solid,
    unit,
)


@dataclass
class Part:
    """Material of an implant in the femur's frame (moves with it), the patient's ('pelvis')
    or the patient's frame centred on the acetabulum ('socket')."""

    material: str
    body: Solid
    frame: str = "femur"
    weight: float = 1.0


@dataclass
class Hardware:
    """Everything a hip's hardware adds, and how it changes the joint."""

    parts: list[Part] = field(default_factory=list)
    head_local: np.ndarray = field(default_factory=lambda: np.zeros(3))
    """Centre of the (prosthetic) head in the femur frame."""
    head_offset: np.ndarray = field(default_factory=lambda: np.zeros(3))
    """Head centre minus socket centre (patient frame): wear, dislocation, migration."""
    socket_radius: float | None = None
    """Reamed acetabular radius (cup outer radius), or None for the native socket."""
    extra_pose: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Added (flexion, abduction, internal rotation) of the leg (e.g. a dislocated hip)."""
    pelvis_resorb: float = 0.0

    def add(self, material: str, *bodies: Convex | Solid, frame: str = "femur",
            weight: float = 1.0) -> None:
        self.parts.append(Part(material, solid(*bodies), frame, weight))


def rod(p0: np.ndarray, p1: np.ndarray, r0: float, r1: float | None = None) -> Solid:
    """Round-ended cylinder (or taper)."""
    return capsule_chain(np.array([p0, p1]), [r0, r0 if r1 is None else r1])


def screw(head_end: np.ndarray, tip: np.ndarray, core: float, outer: float, thread_len: float,
          *, pitch: float = 2.8, cannula: float = 0.0, head: float = 0.0) -> tuple[Solid, Solid]:
    """A screw: smooth shank, threaded tip (saw-tooth profile), optional head.

    Returns (metal, hollow): the cannula to subtract (empty when not cannulated)."""
    head_end, tip = np.asarray(head_end, float), np.asarray(tip, float)
    axis = unit(tip - head_end)
    length = float(np.linalg.norm(tip - head_end))
    thread_len = min(thread_len, length - 1)
    start = tip - axis * thread_len
    n = max(2, int(thread_len / (pitch / 2)))
    pts = [head_end, start] + [start + axis * thread_len * k / n for k in range(1, n + 1)]
    radii = [core, core] + [outer if k % 2 else core for k in range(1, n + 1)]
    radii[-1] = core * 0.6
    parts: list[Convex | Solid] = [capsule_chain(np.array(pts), radii)]
    if head > 0:
        parts.append(frustum(head_end - axis * head * 0.6, head_end + axis * 0.4, head,
                             head * 0.8))
    hollow = capsule_chain(np.array([head_end - axis * 2, tip + axis]), [cannula] * 2) \
        if cannula > 0 else Solid(())
    return solid(*parts), hollow


def wire_loop(center: np.ndarray, normal: np.ndarray, radius: float, wire: float,
              segments: int = 20) -> Solid:
    """A closed loop of wire (cerclage) around centre in the plane with the given normal."""
    f = frame_from_axis(normal)
    t = np.linspace(0, 2 * np.pi, segments + 1)
    pts = center + radius * (np.cos(t)[:, None] * f[:, 0] + np.sin(t)[:, None] * f[:, 1])
    return capsule_chain(pts, [wire] * len(pts), caps=False)


def wedge(top: np.ndarray, bottom: np.ndarray, lateral: np.ndarray, ap: np.ndarray,
          top_half: tuple[float, float, float], bottom_half: tuple[float, float, float]
          ) -> Convex:
    """Tapered block between two centres: half widths (lateral, medial, antero-posterior)
    at the top and the bottom; lateral and ap are unit directions across it."""
    top, bottom = np.asarray(top, float), np.asarray(bottom, float)
    up = unit(top - bottom)
    lat = unit(lateral - np.dot(lateral, up) * up)
    apd = unit(np.cross(up, lat)) * np.sign(np.dot(np.cross(up, lat), ap))
    planes = [(up, top), (-up, bottom)]
    for direction, k in ((lat, 0), (-lat, 1), (apd, 2), (-apd, 2)):
        pt, pb = top + direction * top_half[k], bottom + direction * bottom_half[k]
        across = apd if k < 2 else lat
        n = unit(np.cross(pt - pb, across))
        if np.dot(n, direction) < 0:
            n = -n
        planes.append((n, pt))
    radius = float(np.linalg.norm(top - bottom) / 2 + max(top_half + bottom_half) * 1.5)
    return polytope(planes, (top + bottom) / 2, radius)


def plate(start: np.ndarray, end: np.ndarray, normal: np.ndarray, width: float,
          thickness: float, holes: int) -> tuple[Solid, list[np.ndarray]]:
    """A straight plate from start to end lying on a bone surface facing `normal`; returns
    it (holes subtracted later by screws' heads) and the hole centres on the bone side."""
    start, end = np.asarray(start, float), np.asarray(end, float)
    axis = unit(end - start)
    n = unit(normal - np.dot(normal, axis) * axis)
    rot = np.column_stack([axis, unit(np.cross(n, axis)), n])
    length = float(np.linalg.norm(end - start))
    body = box((start + end) / 2 + n * thickness / 2, rot, (length / 2, width / 2,
                                                             thickness / 2))
    centers = [start + axis * length * (k + 0.5) / holes for k in range(holes)]
    return solid(body), centers
