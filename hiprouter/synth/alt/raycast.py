"""Cone-beam ray casting of convex solids: path length (mm) of every detector ray.

A `Convex` is a quadric (ellipsoid, elliptic cone frustum) and/or half-spaces in its own
frame; its chord along a ray is the length of one interval, found analytically. A `Solid`
is a union of convex pieces (chord = the largest piece's chord, a smooth-enough blend). A
`Sheet` is a thin plate with a thickness map, cut by each ray at its mid-plane. Geometry is
in millimetres in the DICOM patient frame (x left, y posterior, z head).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
from scipy import ndimage

Window = tuple[int, int, int, int]
"""(row0, row1, col0, col1), half-open."""


def unit(v: np.ndarray | tuple[float, ...] | list[float]) -> np.ndarray:
    """The unit vector along v."""
    a = np.asarray(v, dtype=float)
    return a / np.linalg.norm(a)


def rotation(axis: np.ndarray | tuple[float, ...], degrees: float) -> np.ndarray:
    """Right-handed rotation matrix about axis (Rodrigues)."""
    k = unit(axis)
    a = np.radians(degrees)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(a) * kx + (1 - np.cos(a)) * kx @ kx


def frame_from_axis(axis: np.ndarray, hint: np.ndarray | None = None) -> np.ndarray:
    """Orthonormal frame (columns) whose third column is axis, first as close to hint."""
    z = unit(axis)
    h = np.array([1.0, 0, 0]) if hint is None else np.asarray(hint, dtype=float)
    if abs(np.dot(unit(h), z)) > 0.95:
        h = np.array([0, 1.0, 0]) if abs(z[1]) < 0.9 else np.array([0, 0, 1.0])
    x = unit(h - np.dot(h, z) * z)
    return np.column_stack([x, np.cross(z, x), z])


@dataclass(frozen=True)
class Camera:
    """Point source and flat detector; pixel (row, col) centres span the detector."""

    source: np.ndarray
    center: np.ndarray
    u: np.ndarray
    """Unit vector along increasing column."""
    v: np.ndarray
    """Unit vector along increasing row."""
    pixel_mm: float
    shape: tuple[int, int]

    @cached_property
    def normal(self) -> np.ndarray:
        """Unit detector normal pointing away from the source (computed once: every
        projection asks for it)."""
        n = np.cross(self.u, self.v)
        return n * np.sign(np.dot(n, self.center - self.source))

    def resized(self, shape: tuple[int, int]) -> Camera:
        """The same detector sampled on another grid (pixel size follows)."""
        return replace(self, shape=shape, pixel_mm=self.pixel_mm * self.shape[1] / shape[1])

    def directions(self, window: Window) -> np.ndarray:
        """Unit ray directions (h, w, 3) for the pixels of window."""
        r0, r1, c0, c1 = window
        rows = (np.arange(r0, r1) - (self.shape[0] - 1) / 2) * self.pixel_mm
        cols = (np.arange(c0, c1) - (self.shape[1] - 1) / 2) * self.pixel_mm
        base = self.center - self.source
        d = (base[None, None, :] + rows[:, None, None] * self.v[None, None, :]
             + cols[None, :, None] * self.u[None, None, :])
        return d / np.linalg.norm(d, axis=-1, keepdims=True)

    def project(self, points: np.ndarray) -> np.ndarray:
        """(col, row) pixel coordinates of world points (..., 3)."""
        p = np.asarray(points, dtype=float)
        w = self.normal
        t = np.dot(self.center - self.source, w) / ((p - self.source) @ w)
        hit = self.source + t[..., None] * (p - self.source)
        rel = hit - self.center
        col = rel @ self.u / self.pixel_mm + (self.shape[1] - 1) / 2
        row = rel @ self.v / self.pixel_mm + (self.shape[0] - 1) / 2
        return np.stack([col, row], axis=-1)

    def magnification(self, point: np.ndarray) -> float:
        """Detector size of 1 mm at point (perpendicular to the central ray)."""
        w = self.normal
        return float(np.dot(self.center - self.source, w) / np.dot(point - self.source, w))

    def window(self, center: np.ndarray, radius: float) -> Window | None:
        """Pixels that a sphere may cover, or None when it misses the detector."""
        if np.dot(center - self.source, self.normal) <= radius:
            return None
        col, row = self.project(center)
        r = radius * self.magnification(center) / self.pixel_mm * 1.15 + 2
        r0, r1 = max(0, int(row - r)), min(self.shape[0], int(row + r) + 2)
        c0, c1 = max(0, int(col - r)), min(self.shape[1], int(col + r) + 2)
        if r0 >= r1 or c0 >= c1:
            return None
        return r0, r1, c0, c1


@dataclass(frozen=True)
class Convex:
    """{x: q.x^2 + l.x + c <= 0 (if q), n_i.x <= h_i} in a local frame x = R^T (w - o)."""

    rot: np.ndarray
    origin: np.ndarray
    quad: tuple[float, float, float] | None
    lin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    const: float = -1.0
    planes: tuple[tuple[tuple[float, float, float], float], ...] = ()
    bound: tuple[tuple[float, float, float], float] = ((0.0, 0.0, 0.0), 1.0)
    """Bounding sphere (centre in the local frame, radius)."""
    grow: tuple[str, tuple[float, ...]] = ("none", ())
    """How to rebuild the piece offset by a distance (kind, parameters)."""

    def clip(self, normal: np.ndarray, point: np.ndarray) -> Convex:
        """Keep the part where (w - point).normal <= 0 (world)."""
        n = self.rot.T @ unit(normal)
        h = float(np.dot(unit(normal), np.asarray(point, dtype=float) - self.origin))
        return replace(self, planes=self.planes + ((tuple(n), h),))

    def offset(self, delta: float) -> Convex:
        """The piece grown (delta > 0) or shrunk by delta mm; clip planes are kept."""
        kind, p = self.grow
        planes = self.planes[self._own_planes():]
        if kind == "ellipsoid":
            out = ellipsoid(self.origin, self.rot, tuple(max(r + delta, 0.05) for r in p))
        elif kind == "frustum":
            a0, b0, a1, b1, length = p
            s0, s1 = max(a0 + delta, 0.05) / a0, max(a1 + delta, 0.05) / a1
            out = _frustum_local(self.rot, self.origin, a0 * s0, b0 * s0, a1 * s1, b1 * s1,
                                 length)
        elif kind == "box":
            out = box(self.origin, self.rot, tuple(max(h + delta, 0.05) for h in p))
        elif kind == "polytope":
            own = self.planes[:int(p[0])]
            out = replace(self, planes=tuple((n, h + delta) for n, h in own),
                          bound=(self.bound[0], self.bound[1] + max(delta, 0)))
        else:
            raise ValueError(f"cannot offset a {kind} piece")
        return replace(out, planes=out.planes + planes)

    def moved(self, rot: np.ndarray, pivot: np.ndarray, shift: np.ndarray) -> Convex:
        """Rigidly moved: rotated by rot about pivot, then shifted (world)."""
        return replace(self, rot=rot @ self.rot, origin=rot @ (self.origin - pivot) + pivot + shift)

    def _own_planes(self) -> int:
        if self.grow[0] == "polytope":
            return int(self.grow[1][0])
        return {"frustum": 2, "box": 6}.get(self.grow[0], 0)

    def world_bound(self) -> tuple[np.ndarray, float]:
        c, r = self.bound
        return self.origin + self.rot @ np.asarray(c), r

    def chord(self, cam: Camera, window: Window, dirs: np.ndarray) -> np.ndarray:
        """Path length (mm) through the piece for rays dirs (h, w, 3) of window."""
        s = self.rot.T @ (cam.source - self.origin)
        d = dirs @ self.rot
        tc = -(d @ s)
        o = s[None, None, :] + tc[..., None] * d  # closest approach to the local origin
        lo = np.full(d.shape[:2], -np.inf)
        hi = np.full(d.shape[:2], np.inf)
        for n, h in self.planes:
            nd = d @ np.asarray(n)
            nd = np.where(nd == 0, 1e-12, nd)
            rhs = h - o @ np.asarray(n)
            with np.errstate(divide="ignore", invalid="ignore"):
                t = rhs / nd
            hi = np.where(nd > 1e-12, np.minimum(hi, t), hi)
            lo = np.where(nd < -1e-12, np.maximum(lo, t), lo)
            blocked = (np.abs(nd) <= 1e-12) & (rhs < 0)
            hi = np.where(blocked, -np.inf, hi)
        if self.quad is not None:
            q = np.asarray(self.quad)
            lv = np.asarray(self.lin)
            a = (d * d) @ q
            b = 2 * ((o * d) @ q) + d @ lv
            c = (o * o) @ q + o @ lv + self.const
            a = np.where(np.abs(a) < 1e-12, 1e-12, a)
            disc = b * b - 4 * a * c
            root = np.sqrt(np.maximum(disc, 0))
            t1 = (-b - root) / (2 * a)
            t2 = (-b + root) / (2 * a)
            ta, tb = np.minimum(t1, t2), np.maximum(t1, t2)
            convex = a > 0
            # a > 0: inside between the roots; a < 0 (cone seen along its axis): outside.
            lo_p = np.where(convex, np.maximum(lo, ta), lo)
            hi_p = np.where(convex, np.minimum(hi, tb), hi)
            concave = (~convex) & (disc > 0)
            lo_p = np.where(concave & (lo >= ta) & (lo < tb), np.maximum(lo, tb), lo_p)
            hi_p = np.where(concave & (lo < ta), np.minimum(hi, ta), hi_p)
            hi_p = np.where(convex & (disc <= 0), -np.inf, hi_p)
            lo, hi = lo_p, hi_p
        out = hi - lo
        return np.where(np.isfinite(out) & (out > 0), out, 0.0)


def ellipsoid(center: np.ndarray, rot: np.ndarray, radii: tuple[float, float, float]
              ) -> Convex:
    """Ellipsoid with semi-axes radii along the columns of rot."""
    r = np.asarray(radii, dtype=float)
    return Convex(np.asarray(rot, float), np.asarray(center, float), tuple(1 / r**2),
                  bound=((0.0, 0.0, 0.0), float(r.max())), grow=("ellipsoid", tuple(r)))


def sphere(center: np.ndarray, radius: float) -> Convex:
    return ellipsoid(center, np.eye(3), (radius, radius, radius))


def _frustum_local(rot: np.ndarray, origin: np.ndarray, a0: float, b0: float, a1: float,
                   b1: float, length: float) -> Convex:
    k = (a1 / a0 - 1) / length
    planes = (((0.0, 0.0, -1.0), 0.0), ((0.0, 0.0, 1.0), float(length)))
    rmax = max(a0, b0, a1, b1)
    return Convex(rot, origin, (1 / a0**2, 1 / b0**2, -k * k), (0.0, 0.0, -2 * k), -1.0,
                  planes, ((0.0, 0.0, length / 2), float(np.hypot(length / 2, rmax))),
                  ("frustum", (a0, b0, a1, b1, length)))


def frustum(p0: np.ndarray, p1: np.ndarray, r0: float, r1: float, *, ratio: float = 1.0,
            hint: np.ndarray | None = None) -> Convex:
    """Elliptic cone frustum from p0 (radius r0) to p1 (r1); ratio = minor/major radius,
    the major axis as close to hint as possible."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    rot = frame_from_axis(p1 - p0, hint)
    return _frustum_local(rot, p0, r0, r0 * ratio, r1, r1 * ratio,
                          float(np.linalg.norm(p1 - p0)))


def box(center: np.ndarray, rot: np.ndarray, half: tuple[float, float, float]) -> Convex:
    """Rectangular box with half sizes along the columns of rot."""
    h = tuple(float(x) for x in half)
    planes = tuple(((float(s) * (i == 0), float(s) * (i == 1), float(s) * (i == 2)), h[i])
                   for i in range(3) for s in (1, -1))
    return Convex(np.asarray(rot, float), np.asarray(center, float), None, planes=planes,
                  bound=((0.0, 0.0, 0.0), float(np.linalg.norm(h))), grow=("box", h))


BLEND = 6.0
"""Exponent of the soft union of overlapping pieces: (sum c^p)^(1/p), smooth where they meet."""


def polytope(planes: list[tuple[np.ndarray, np.ndarray]], center: np.ndarray, radius: float
             ) -> Convex:
    """Convex polyhedron {x: (x - point).normal <= 0 for each (normal, point)}; center and
    radius bound it."""
    c = np.asarray(center, float)
    local = tuple((tuple(unit(n)), float(np.dot(unit(n), np.asarray(p, float) - c)))
                  for n, p in planes)
    return Convex(np.eye(3), c, None, planes=local, bound=((0.0, 0.0, 0.0), float(radius)),
                  grow=("polytope", (float(len(local)),)))


@dataclass(frozen=True)
class Solid:
    """Union of convex pieces or solids: their chords are blended by a p-norm (a smooth
    maximum), or added when the pieces are disjoint (a mitred tube, power 1)."""

    pieces: tuple[Convex | Solid, ...]
    power: float = BLEND
    """Exponent of the blend; 1 adds the chords (disjoint pieces), large is a plain maximum."""

    def offset(self, delta: float) -> Solid:
        return Solid(tuple(p.offset(delta) for p in self.pieces), self.power)

    def clip(self, normal: np.ndarray, point: np.ndarray) -> Solid:
        return Solid(tuple(p.clip(normal, point) for p in self.pieces), self.power)

    def moved(self, rot: np.ndarray, pivot: np.ndarray, shift: np.ndarray) -> Solid:
        """Rigidly moved: rotated by rot about pivot, then shifted (world)."""
        return Solid(tuple(p.moved(rot, pivot, shift) for p in self.pieces), self.power)


def solid(*pieces: Convex | Solid, power: float = BLEND) -> Solid:
    """Blended union of pieces and solids."""
    return Solid(tuple(pieces), power)


def smooth_path(points: np.ndarray, radii: np.ndarray, per_segment: int = 4
                ) -> tuple[np.ndarray, np.ndarray]:
    """Catmull-Rom curve through points, with radii interpolated along it."""
    p = np.asarray(points, dtype=float)
    r = np.asarray(radii, dtype=float)
    if len(p) < 3:
        return p, r
    ext = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    out, rad = [], []
    for i in range(len(p) - 1):
        p0, p1, p2, p3 = ext[i:i + 4]
        for t in np.linspace(0, 1, per_segment, endpoint=False):
            out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                              + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3))
            rad.append(r[i] + (r[i + 1] - r[i]) * t)
    out.append(p[-1])
    rad.append(r[-1])
    return np.array(out), np.array(rad)


def capsule_chain(points: np.ndarray, radii: np.ndarray | list[float], *,
                  ratio: float = 1.0, hint: np.ndarray | None = None,
                  caps: bool = True, smooth: bool = False) -> Solid:
    """Tube through points with the given radii: frusta mitred at the joints (disjoint, so
    their chords add up exactly) and half-sphere caps; smooth: along a Catmull-Rom curve."""
    pts = np.asarray(points, dtype=float)
    rr = np.asarray(radii, dtype=float)
    if smooth:
        pts, rr = smooth_path(pts, rr)
    keep = np.concatenate([[True], np.linalg.norm(np.diff(pts, axis=0), axis=1) > 1e-6])
    pts, rr = pts[keep], rr[keep]
    axes = [unit(pts[i + 1] - pts[i]) for i in range(len(pts) - 1)]
    pieces: list[Convex | Solid] = []
    for i, axis in enumerate(axes):
        a, b = pts[i], pts[i + 1]
        length = float(np.linalg.norm(b - a))
        slope = (rr[i + 1] - rr[i]) / length
        e0 = e1 = 0.0
        if i > 0:
            e0 = 1.0 + max(rr[i], rr[i + 1]) * _half_bend(axes[i - 1], axis)
        if i < len(axes) - 1:
            e1 = 1.0 + max(rr[i], rr[i + 1]) * _half_bend(axis, axes[i + 1])
        piece = frustum(a - e0 * axis, b + e1 * axis, max(rr[i] - slope * e0, 0.05),
                        max(rr[i + 1] + slope * e1, 0.05), ratio=ratio, hint=hint)
        if i > 0:
            piece = piece.clip(-unit(axes[i - 1] + axis), a)
        if i < len(axes) - 1:
            piece = piece.clip(unit(axis + axes[i + 1]), b)
        pieces.append(piece)
    if caps and axes:
        for p, r, axis in ((pts[0], rr[0], -axes[0]), (pts[-1], rr[-1], axes[-1])):
            cap = ellipsoid(p, frame_from_axis(axis, hint), (r, r * ratio, r))
            pieces.append(cap.clip(-axis, p))
    return Solid(tuple(pieces), 1.0)


def _half_bend(a: np.ndarray, b: np.ndarray) -> float:
    """tan of half the angle between two unit vectors (how far a mitre reaches)."""
    c = float(np.clip(np.dot(a, b), -1, 1))
    return float(np.tan(np.arccos(c) / 2)) if c > -0.9 else 10.0


@dataclass(frozen=True)
class Sheet:
    """A thin plate: thickness maps (mm, per material) on a grid in its mid-plane."""

    origin: np.ndarray
    e1: np.ndarray
    e2: np.ndarray
    step: float
    maps: dict[str, np.ndarray] = field(hash=False)
    max_path: float = 30.0

    def paths(self, cam: Camera, dirs: np.ndarray) -> dict[str, np.ndarray] | None:
        """Path (mm) per material for rays dirs of the whole grid, or None when missed."""
        n = unit(np.cross(self.e1, self.e2))
        nd = dirs @ n
        safe = np.where(np.abs(nd) < 1e-3, 1e-3, nd)
        t = np.dot(self.origin - cam.source, n) / safe
        hit = cam.source + t[..., None] * dirs - self.origin
        u = hit @ self.e1 / self.step
        v = hit @ self.e2 / self.step
        shape = next(iter(self.maps.values())).shape
        inside = (u >= 0) & (v >= 0) & (u <= shape[1] - 1) & (v <= shape[0] - 1)
        if not inside.any():
            return None
        scale = np.minimum(1 / np.abs(safe), 8.0)
        out = {}
        for material, thick in self.maps.items():
            val = ndimage.map_coordinates(thick, [v, u], order=1, mode="constant", cval=0.0)
            out[material] = np.minimum(val * scale, self.max_path)
        return out


class Layers:
    """Accumulated path length (mm) per material on a camera's grid."""

    def __init__(self, cam: Camera) -> None:
        self.cam = cam
        self.maps: dict[str, np.ndarray] = {}
        self._cache: dict[int, tuple[Window, np.ndarray] | None] = {}
        self._keep: list[Solid | Convex] = []

    def map(self, material: str) -> np.ndarray:
        if material not in self.maps:
            self.maps[material] = np.zeros(self.cam.shape)
        return self.maps[material]

    def chord(self, body: Solid | Convex) -> tuple[Window, np.ndarray] | None:
        """Chord of a solid in its window (cached for the lifetime of the layers)."""
        key = id(body)
        if key in self._cache:
            return self._cache[key]
        self._keep.append(body)  # ids stay unique while cached
        if isinstance(body, Convex):
            c, r = body.world_bound()
            win = self.cam.window(c, r)
            result = None
            if win is not None:
                result = (win, body.chord(self.cam, win, self.cam.directions(win)))
            self._cache[key] = result
            return result
        parts = [res for res in map(self.chord, body.pieces) if res is not None]
        result = None
        if parts:
            win = (min(w[0] for w, _ in parts), max(w[1] for w, _ in parts),
                   min(w[2] for w, _ in parts), max(w[3] for w, _ in parts))
            acc = np.zeros((win[1] - win[0], win[3] - win[2]))
            scale = max(float(ch.max()) for _, ch in parts) + 1e-9
            for (r0, r1, c0, c1), ch in parts:
                acc[r0 - win[0]:r1 - win[0], c0 - win[2]:c1 - win[2]] += (ch / scale) ** body.power
            result = (win, scale * acc ** (1 / body.power))
        self._cache[key] = result
        return result

    def add(self, material: str, body: Solid, weight: float = 1.0) -> None:
        """Add weight x the chord of body to the material's map."""
        res = self.chord(body)
        if res is None:
            return
        (r0, r1, c0, c1), acc = res
        self.map(material)[r0:r1, c0:c1] += weight * acc

    def add_shell(self, outer: Solid, inner: Solid, shell: str, core: str | None,
                  weight: float = 1.0) -> None:
        """outer - inner into shell, inner into core (cortex and marrow of a bone)."""
        self.add(shell, outer, weight)
        self.add(shell, inner, -weight)
        if core is not None:
            self.add(core, inner, weight)

    def add_difference(self, material: str, outer: Solid, inner: Solid, weight: float = 1.0
                       ) -> None:
        """Add weight x the chord of outer beyond that of inner (never negative): bone
        around a cavity that is not entirely inside it."""
        res = self.chord(outer)
        if res is None:
            return
        (r0, r1, c0, c1), acc = res
        out = acc.copy()
        sub = self.chord(inner)
        if sub is not None:
            (s0, s1, d0, d1), cut = sub
            a0, a1, b0, b1 = max(r0, s0), min(r1, s1), max(c0, d0), min(c1, d1)
            if a0 < a1 and b0 < b1:
                out[a0 - r0:a1 - r0, b0 - c0:b1 - c0] -= cut[a0 - s0:a1 - s0, b0 - d0:b1 - d0]
        self.map(material)[r0:r1, c0:c1] += weight * np.maximum(out, 0)

    def add_sheet(self, sheet: Sheet, weight: float = 1.0) -> None:
        paths = sheet.paths(self.cam, self.cam.directions((0, self.cam.shape[0], 0,
                                                           self.cam.shape[1])))
        for material, p in (paths or {}).items():
            self.map(material)[...] += weight * p

    def mask(self, body: Solid) -> np.ndarray:
        """Pixels whose ray crosses the solid."""
        out = np.zeros(self.cam.shape, dtype=bool)
        res = self.chord(body)
        if res is not None:
            (r0, r1, c0, c1), acc = res
            out[r0:r1, c0:c1] = acc > 0
        return out
