"""The bony pelvis and lower lumbar spine in 3D.

Tubular bones (iliac crest, pelvic brim, rami, columns, processes) are chains of cone
frusta with a cortical shell; the iliac wings and the sacrum are plates with a thickness
map (thin fossa, thick buttresses and rims, sacral foramina); the acetabulum is a spherical
socket in a cancellous block whose subchondral shell gives the sourcil and the walls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from hiprouter.synth.alt.patient import Body
from hiprouter.synth.alt.raycast import (
    Convex,
    Layers,
    Sheet,
    Solid,
    capsule_chain,
    ellipsoid,
    frustum,
    rotation,
    smooth_path,
    solid,
    sphere,
    unit,
)


@dataclass(frozen=True)
class Socket:
    """The acetabulum of one side."""

    center: np.ndarray
    axis: np.ndarray
    """Unit vector out of the socket (lateral, inferior, anterior)."""
    radius: float
    """Radius of the bony socket (head radius plus joint space)."""
    face: float
    """Offset of the rim plane from the centre along axis (coverage)."""
    shell: float
    """Subchondral bone thickness (grows with sclerosis)."""


def socket_axis(side: str, inclination: float, anteversion: float) -> np.ndarray:
    """Unit acetabular axis from radiographic inclination and anteversion."""
    lat = 1.0 if side == "L" else -1.0
    i, a = np.radians(inclination), np.radians(anteversion)
    return unit([lat * np.sin(i) * np.cos(a), -np.sin(a), -np.cos(i) * np.cos(a)])


Pair = tuple[Convex | Solid, Convex | Solid]
"""Outer and endosteal surface of a bone piece."""


def add_bone(layers: Layers, pairs: list[Pair], bvtv: float,
             core: str = "cancellous") -> None:
    """One bone: union of (outer, inner) pieces; cortex between, cancellous inside."""
    if not pairs:
        return
    outer = Solid(tuple(p[0] for p in pairs))
    inner = Solid(tuple(p[1] for p in pairs))
    layers.add_shell(outer, inner, "cortical", None)
    layers.add(core, inner, bvtv if core == "cancellous" else 1.0)


def _tube(points: list[tuple[float, float, float]], radii: list[float], cortex: float,
          ratio: float = 1.0, hint: tuple[float, float, float] | None = None) -> list[Pair]:
    pts = np.asarray(points, float)
    rr = np.asarray(radii, float)
    h = None if hint is None else np.asarray(hint, float)
    out = capsule_chain(pts, rr, ratio=ratio, hint=h, smooth=True)
    inn = capsule_chain(pts, np.maximum(rr - cortex, 0.3), ratio=ratio, hint=h, smooth=True)
    return [(out, inn)]


def _blob(center: tuple[float, float, float], radii: tuple[float, float, float], cortex: float,
          rot: np.ndarray | None = None) -> Pair:
    e = ellipsoid(np.asarray(center, float), np.eye(3) if rot is None else rot, radii)
    return e, e.offset(-cortex)


def plate(outline: np.ndarray, origin: np.ndarray, e1: np.ndarray, e2: np.ndarray, *,
          base: float, rim: float, cortex: float, bvtv: float,
          spots: list[tuple[np.ndarray, float, float]] = (),
          holes: list[tuple[np.ndarray, float]] = (), step: float = 0.8) -> Sheet:
    """A bony plate from an outline in its plane (u, v mm): thickness base + rim at the
    edges + gaussian spots (centre uv, sigma, height); holes (centre uv, radius) with rims."""
    lo = outline.min(axis=0) - 4
    hi = outline.max(axis=0) + 4
    w, h = (np.ceil((hi - lo) / step)).astype(int) + 1
    img = Image.new("L", (int(w), int(h)), 0)
    draw = ImageDraw.Draw(img)
    draw.polygon([tuple((p - lo) / step) for p in outline], fill=255)
    mask = np.asarray(img) > 127
    hole_img = Image.new("L", (int(w), int(h)), 0)
    hdraw = ImageDraw.Draw(hole_img)
    for c, r in holes:
        q = (np.asarray(c) - lo) / step
        hdraw.ellipse([q[0] - r / step, q[1] - r / step, q[0] + r / step, q[1] + r / step],
                      fill=255)
    hole = np.asarray(hole_img) > 127
    dist = ndimage.distance_transform_edt(mask) * step
    hole_dist = ndimage.distance_transform_edt(~hole) * step
    vv, uu = np.mgrid[0:h, 0:w] * step
    uu, vv = uu + lo[0], vv + lo[1]
    thick = base + rim * np.exp(-dist / 4.0)
    for c, sigma, height in spots:
        thick += height * np.exp(-((uu - c[0]) ** 2 + (vv - c[1]) ** 2) / (2 * sigma**2))
    thick *= np.clip(dist / 1.2, 0, 1) ** 0.5 * mask
    if holes:  # foramina: a canal through part of the plate, with a dense margin
        thick *= 1 - 0.55 * hole + 0.5 * np.exp(-hole_dist / 1.2) * ~hole
    cort = np.minimum(thick, 2 * cortex + 1.5 * cortex * np.exp(-dist / 2.5))
    canc = (thick - cort) * bvtv
    o = np.asarray(origin, float) + lo[0] * e1 + lo[1] * e2
    return Sheet(o, unit(e1), unit(e2), step, {"cortical": cort, "cancellous": canc})


def _plane_frame(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - c)
    e1 = vt[0] if vt[0][2] >= 0 else -vt[0]
    n = vt[2]
    return c, e1, unit(np.cross(n, e1))


def _iliac_wing(body: Body, lat: float, bvtv: float) -> tuple[Sheet, np.ndarray]:
    """The wing as a plate through its outline; returns it and the crest line."""
    s, f, h = body.size, body.flare, body.hip_half
    ch = body.crest_height / (130 * s)
    crest = np.array([
        (lat * (h + 30 * f * s), -40 * s, 62 * s),
        (lat * (h + 43 * f * s), -24 * s, 92 * s * ch),
        (lat * (h + 42 * f * s), -4 * s, 112 * s * ch),
        (lat * (h + 28 * f * s), 20 * s, 126 * s * ch),
        (lat * (h + 2 * f * s), 44 * s, 131 * s * ch),
        (lat * 60 * s, 60 * s, 118 * s * ch),
        (lat * 48 * s, 70 * s, 96 * s),
    ])
    rest = np.array([
        (lat * 43 * s, 68 * s, 72 * s),
        (lat * 47 * s, 60 * s, 55 * s),
        (lat * (h - 24 * s), 50 * s, 36 * s),
        (lat * (h - 16 * s), 30 * s, 20 * s),
        (lat * (h + 0 * s), 6 * s, 18 * s),
        (lat * (h + 17 * s), -30 * s, 34 * s),
    ])
    pts, _ = smooth_path(np.vstack([crest, rest, crest[:1]]), np.zeros(len(crest) + len(rest) + 1))
    c, e1, e2 = _plane_frame(pts)
    uv = np.column_stack([(pts - c) @ e1, (pts - c) @ e2])

    def at(p: tuple[float, float, float]) -> np.ndarray:
        q = np.asarray(p) - c
        return np.array([q @ e1, q @ e2])

    spots = [(at((lat * (h - 2 * s), 10 * s, 30 * s)), 14 * s, 11.0),
             (at((lat * 55 * s, 60 * s, 90 * s)), 12 * s, 12.0),
             (at((lat * (h - 14 * s), 34 * s, 58 * s)), 11 * s, 7.0),
             (at((lat * (h + 24 * s), -28 * s, 50 * s)), 7 * s, 4.0)]
    wing = plate(uv, c, e1, e2, base=3.6 * s, rim=3.0, cortex=0.9 * s, bvtv=bvtv, spots=spots)
    return wing, crest


def build_socket(body: Body, side: str, *, inclination: float | None = None,
                 face: float | None = None, joint: float = 4.5, shell: float = 2.2) -> Socket:
    lat = 1.0 if side == "L" else -1.0
    incl = body.side(body.cup_incl, side) if inclination is None else inclination
    axis = socket_axis(side, incl, body.side(body.cup_av, side))
    return Socket(np.array([lat * body.hip_half, 0.0, 0.0]), axis,
                  body.head_r + joint * body.size, 1.5 if face is None else face, shell)


def _acetabulum(sock: Socket, lat: float, s: float, child: bool
                ) -> tuple[list[Pair], Solid, Solid, Solid]:
    """Cancellous block around the socket (pieces), subchondral shell (outer, inner), and
    the cavity the block must not fill."""
    a, c, r = sock.axis, sock.center, sock.radius
    face_point = c + a * sock.face
    block = ellipsoid(c + np.array([-lat * 3 * s, 3 * s, 6 * s]), np.eye(3),
                      (r + 4.5 * s, r + 3 * s, r + 8.5 * s)).clip(a, face_point)
    # the lunate subchondral shell is open at the acetabular notch (inferiorly)
    notch = unit(np.array([-lat * 0.25, 0.1, -1.0]))
    outer = sphere(c, r + sock.shell).clip(a, face_point).clip(notch, c + notch * 0.55 * r)
    inner = sphere(c, r).clip(a, face_point).clip(notch, c + notch * 0.55 * r)
    pieces = [(block, block)]
    cavity = solid(sphere(c, r + sock.shell).clip(a, face_point))
    if child:  # triradiate cartilage: ilium above, ischium behind, pubis in front
        cuts = [[(np.array([0, 0, -1.0]), c + np.array([0, 0, 2.5 * s]))],
                [(np.array([0, 0, 1.0]), c - np.array([0, 0, 2.5 * s])),
                 (np.array([0, -1.0, 0]), c + np.array([0, 2.5 * s, 0]))],
                [(np.array([0, 0, 1.0]), c - np.array([0, 0, 2.5 * s])),
                 (np.array([0, 1.0, 0]), c - np.array([0, 2.5 * s, 0]))]]
        pieces, outs, ins = [], [], []
        for planes in cuts:
            b, o, i = block, outer, inner
            for n, p in planes:
                b, o, i = b.clip(n, p), o.clip(n, p), i.clip(n, p)
            pieces.append((b, b))
            outs.append(o)
            ins.append(i)
        return pieces, Solid(tuple(outs)), Solid(tuple(ins)), cavity
    return pieces, solid(outer), solid(inner), cavity


def draw_hemipelvis(layers: Layers, body: Body, side: str, sock: Socket, bvtv: float,
                    *, resorbed: float = 0.0) -> None:
    """One innominate bone; `resorbed` (0..1) thins the acetabular block (osteolysis)."""
    lat = 1.0 if side == "L" else -1.0
    s, h = body.size, body.hip_half
    pa = body.pubic_arch
    wing, crest = _iliac_wing(body, lat, bvtv)
    layers.add_sheet(wing)
    add_bone(layers, _tube(list(map(tuple, crest)), [3.2 * s] * 2 + [4.2 * s] * 3 + [3.6 * s] * 2,
                           0.9 * s), bvtv)
    add_bone(layers, _tube([(lat * 50 * s, 50 * s, 82 * s), (lat * 58 * s, 32 * s, 56 * s),
                            (lat * (h - 36 * s), 4 * s, 20 * s),
                            (lat * (h - 42 * s), -22 * s, -2 * s),
                            (lat * 30 * s, -42 * s, -16 * s), (lat * 16 * s, -46 * s, -23 * s)],
                           [3.6 * s, 3.6 * s, 3.4 * s, 3.6 * s, 4.5 * s, 5 * s], 1.3 * s), bvtv)
    low: list[Pair] = []
    low += _tube([(lat * (h - 32 * s), 38 * s, 48 * s), (lat * (h - 31 * s), 30 * s, 0.0),
                  (lat * (h - 25 * s), 28 * s, -42 * s)], [5 * s, 10 * s, 11 * s], 1.5 * s,
                 ratio=0.8, hint=(1.0, 0, 0))
    low.append(_blob((lat * (h - 20 * s), 27 * s, -62 * s), (11 * s, 14 * s, 16 * s), 1.6 * s))
    low += _tube([(lat * (h - 22 * s), 20 * s, -72 * s), (lat * (h - 44 * s), -6 * s, -80 * s),
                  (lat * 26 * pa * s, -30 * s, -70 * s), (lat * 11 * s, -42 * s, -55 * s)],
                 [7 * s, 6 * s, 6 * s, 7 * s], 1.5 * s, ratio=0.7, hint=(0, 1.0, 0))
    low += _tube([(lat * (h - 26 * s), -12 * s, 2 * s), (lat * (h - 38 * s), -32 * s, -15 * s),
                  (lat * 26 * s, -44 * s, -25 * s), (lat * 13 * s, -46 * s, -34 * s)],
                 [9 * s, 8.5 * s, 8 * s, 8 * s], 1.4 * s, ratio=0.75, hint=(0, 0, 1.0))
    low.append(_blob((lat * 13 * s, -45 * s, -43 * s), (10.5 * s, 9 * s, 17 * s), 1.6 * s))
    low.append(_blob((lat * (h - 40 * s), 45 * s, 0.0), (9 * s, 5 * s, 4 * s), 1.2 * s))
    if body.child:  # ischiopubic synchondrosis: no bone at the inferior ramus midpoint
        gap = np.array([lat * (h - 44 * s), -6 * s, -80 * s])
        cut = unit([lat * -1.0, -1.0, 0.2])
        low = [(o.clip(cut, gap - 2 * cut), i.clip(cut, gap - 2 * cut)) for o, i in low]
    pieces, shell_out, shell_in, cavity = _acetabulum(sock, lat, s, body.child)
    add_bone(layers, low, bvtv)
    block = Solid(tuple(p for p, _ in pieces))
    layers.add_difference("cancellous", block, cavity, 0.7 * bvtv * (1 - 0.6 * resorbed))
    layers.add_shell(shell_out, shell_in, "cortical", None)
    tear = _tube([(lat * (h - 31 * s), -3 * s, -2 * s), (lat * (h - 33 * s), -3 * s, -17 * s),
                  (lat * (h - 27 * s), -3 * s, -22 * s), (lat * (h - 22 * s), -3 * s, -10 * s)],
                 [2.2 * s] * 4, 2.2 * s)
    add_bone(layers, tear, bvtv)


def _vertebra(c: np.ndarray, tilt: float, w: float, d: float, hh: float, tp: float, s: float
              ) -> list[list[Pair]]:
    """Body, and posterior elements, of one lumbar vertebra (two bones' pieces)."""
    rot = rotation((1, 0, 0), tilt)
    up = rot @ np.array([0, 0, 1.0])
    post = rot @ np.array([0, 1.0, 0])
    x = np.array([1.0, 0, 0])
    body_out = frustum(c - hh * up, c + hh * up, w, w * 0.98, ratio=d / w, hint=x)
    k = 1.1 * s
    body_in = frustum(c - (hh - k) * up, c + (hh - k) * up, w - k, (w - k) * 0.98,
                      ratio=(d - k) / (w - k), hint=x)
    arch: list[Pair] = []
    back = c + post * (d + 2 * s)
    spin0 = back + post * 20 * s + up * 2 * s
    spin1 = back + post * 48 * s - up * 12 * s
    arch += _tube([tuple(spin0), tuple(spin1)], [6.5 * s, 5 * s], 1.4 * s, ratio=0.45,
                  hint=tuple(up))
    for lat in (-1.0, 1.0):
        p0 = c + x * lat * 0.62 * w + post * 0.8 * d + up * 0.25 * hh
        p1 = p0 + post * 16 * s
        arch += _tube([tuple(p0), tuple(p1)], [5.5 * s, 5.5 * s], 1.3 * s, ratio=0.65,
                      hint=tuple(up))
        arch += _tube([tuple(p1), tuple(spin0)], [4.5 * s, 5 * s], 1.3 * s)
        arch += _tube([tuple(p1 - post * 4 * s),
                       tuple(p1 + x * lat * (14 + 12 * tp) * s + up * (4 * s) * tp)],
                      [5.5 * s, 3.5 * s + 1.5 * s * (tp < 0.6)], 1.3 * s)
        for sgn in (-1.0, 1.0):
            arch.append(_blob(tuple(p1 + post * 4 * s + x * lat * 2 * s + up * sgn * 13 * s),
                              (5 * s, 6 * s, 7 * s), 1.2 * s))
    return [[(body_out, body_in)], arch]


def _sacrum(body: Body, bvtv: float) -> tuple[Sheet, np.ndarray, np.ndarray]:
    """Sacral plate (alae, fused bodies, foramina); returns it, S1 top and the axis down."""
    s = body.size
    top = np.array([0.0, 40 * s, 106 * s])
    slope = np.radians(body.sacral_slope + 20)
    down = unit([0.0, np.sin(slope), -np.cos(slope)])
    e1 = np.array([1.0, 0, 0])
    corners = np.array([(-50, 6), (-56, 22), (-49, 44), (-31, 70), (-17, 95), (-10, 112),
                        (10, 112), (17, 95), (31, 70), (49, 44), (56, 22), (50, 6), (26, -1),
                        (-26, -1), (-50, 6)], float) * s
    outline = smooth_path(np.column_stack([corners, np.zeros(len(corners))]),
                          np.zeros(len(corners)))[0][:, :2]
    holes = []
    spots = []
    for k, (u, v, r) in enumerate([(22, 24, 6.0), (20, 46, 5.2), (17, 66, 4.3), (13, 84, 3.4)]):
        for sgn in (-1, 1):
            holes.append((np.array([sgn * u * s, v * s]), r * s))
        spots.append((np.array([0.0, v * s]), 9 * s, 12.0 - 2.5 * k))
    if body.child:
        outline = outline * 0.95
    sheet = plate(outline, top, e1, down, base=9 * s, rim=4.0, cortex=1.0 * s, bvtv=bvtv,
                  spots=spots, holes=holes)
    return sheet, top, down


def draw_spine_and_sacrum(layers: Layers, body: Body, bvtv: float) -> None:
    s = body.size
    sheet, top, down = _sacrum(body, bvtv)
    layers.add_sheet(sheet)
    coccyx = [top + down * (116 + 9 * k) * s for k in range(4)]
    add_bone(layers, _tube(list(map(tuple, coccyx)), [6 * s, 5 * s, 4 * s, 3 * s], 1.2 * s),
             bvtv)
    lord = body.lordosis / 45.0
    levels = [  # (height above S1 of the centre, posterior shift, tilt, width, tp length)
        (27, -14, 20, 26, 0.4), (64, -22, 8, 25, 0.8), (101, -25, 0, 24, 1.2),
        (138, -23, -6, 23, 0.9), (174, -18, -10, 22, 0.6),
    ]
    for k, (dz, dy, tilt, w, tp) in enumerate(levels):
        c = top + np.array([0, dy * s * lord, (dz + 2) * s])
        hh = (13.5 - 0.6 * k) * s * (0.8 if body.child else 1.0)
        for pieces in _vertebra(c, tilt * lord, w * s, (w * 0.68) * s, hh, tp, s):
            add_bone(layers, pieces, bvtv)
