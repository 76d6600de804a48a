"""Attenuation canvas and geometric primitives for synthetic radiographs.

A scene is built in millimetres. Each object lives in its own local frame (a 3x3 affine
matrix local -> scene); the canvas maps its pixels back into that frame and evaluates the
object's projected thickness there, only inside the object's bounding box. Values are
line integrals of attenuation (arbitrary units, water ~ 0.02 per mm), accumulated in layers
(soft tissue, bone, metal) so that the image former and the tests can tell them apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

Array = np.ndarray
Point = tuple[float, float]
Field = Callable[[Array, Array], Array]

LAYERS = ("soft", "bone", "metal", "foreign")
"""Implants are in "metal"; unrelated radiodense objects (clothing, clips) in "foreign"."""


def affine(
    rot_deg: float = 0.0,
    scale: float | tuple[float, float] = 1.0,
    tx: float = 0.0,
    ty: float = 0.0,
    mirror_x: bool = False,
) -> Array:
    """Local -> parent matrix: scale (and mirror), then rotate, then translate."""
    sx, sy = (scale, scale) if np.isscalar(scale) else scale  # type: ignore[misc]
    if mirror_x:
        sx = -sx
    c, s = np.cos(np.radians(rot_deg)), np.sin(np.radians(rot_deg))
    return np.array([[c * sx, -s * sy, tx], [s * sx, c * sy, ty], [0.0, 0.0, 1.0]])


def apply(m: Array, pts: Sequence[Point] | Array) -> Array:
    """Transform an (N, 2) array of points with a 3x3 affine matrix."""
    p = np.asarray(pts, dtype=float).reshape(-1, 2)
    return p @ m[:2, :2].T + m[:2, 2]


class Canvas:
    """Pixel grid at working resolution with one attenuation image per layer."""

    def __init__(self, shape: tuple[int, int], pixel_to_scene: Array) -> None:
        self.shape = shape
        self.p2s = pixel_to_scene
        self.s2p = np.linalg.inv(pixel_to_scene)
        self.pixel_mm = float(np.sqrt(abs(np.linalg.det(pixel_to_scene[:2, :2]))))
        self.layers = {name: np.zeros(shape, np.float32) for name in LAYERS}

    def _window(self, frame: Array, bbox: tuple[float, float, float, float] | None):
        h, w = self.shape
        if bbox is None:
            return 0, h, 0, w
        x0, y0, x1, y1 = bbox
        corners = apply(self.s2p @ frame, [(x0, y0), (x1, y0), (x0, y1), (x1, y1)])
        c0, r0 = np.floor(corners.min(axis=0)).astype(int) - 1
        c1, r1 = np.ceil(corners.max(axis=0)).astype(int) + 2
        return max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)

    def local_grid(self, frame: Array, bbox=None) -> tuple[tuple[slice, slice], Array, Array]:
        """Local coordinates of the pixels inside bbox (local mm), and their slices."""
        r0, r1, c0, c1 = self._window(frame, bbox)
        if r1 <= r0 or c1 <= c0:
            empty = np.zeros((0, 0), np.float32)
            return (slice(0, 0), slice(0, 0)), empty, empty
        m = np.linalg.inv(frame) @ self.p2s
        cc = np.arange(c0, c1, dtype=np.float32)[None, :]
        rr = np.arange(r0, r1, dtype=np.float32)[:, None]
        x = m[0, 0] * cc + m[0, 1] * rr + m[0, 2]
        y = m[1, 0] * cc + m[1, 1] * rr + m[1, 2]
        return (slice(r0, r1), slice(c0, c1)), x.astype(np.float32), y.astype(np.float32)

    def add(self, layer: str, frame: Array, field: Field, bbox=None, mu: float = 1.0) -> None:
        """Add mu * field(x, y) (evaluated in the frame's local mm) to a layer."""
        sl, x, y = self.local_grid(frame, bbox)
        if x.size:
            self.layers[layer][sl] += mu * field(x, y)

    def scale(self, layer: str, frame: Array, field: Field, bbox) -> None:
        """Multiply a layer by field(x, y) inside bbox: lucencies (bone loss) and fills."""
        sl, x, y = self.local_grid(frame, bbox)
        if x.size:
            self.layers[layer][sl] *= field(x, y)

    def region(self, frame: Array, pts: Sequence[Point] | Array, pad_mm: float = 6.0
               ) -> Region | None:
        """The part of the canvas around a local-mm outline (None when it is off-canvas)."""
        r0, r1, c0, c1 = self._window(frame, bbox_of(pts, pad_mm))
        if r1 <= r0 or c1 <= c0:
            return None
        return Region(self, (slice(r0, r1), slice(c0, c1)))

    def polygon_mask(self, frame: Array, pts: Sequence[Point] | Array) -> Array:
        """Boolean mask (whole canvas) of a polygon given in local mm."""
        return Region(self, (slice(0, self.shape[0]), slice(0, self.shape[1]))).mask(frame, pts)

    def inside_depth(self, mask: Array) -> Array:
        """Distance (mm) from each pixel inside mask to the mask's edge."""
        return ndimage.distance_transform_edt(mask).astype(np.float32) * self.pixel_mm

    def soft_depth(self, cover: Array) -> Array:
        """Depth (mm) inside an anti-aliased coverage map: the distance to the edge, rising
        smoothly through the partly covered edge pixels."""
        edt = ndimage.distance_transform_edt(cover >= 0.5).astype(np.float32)
        return (np.clip(edt - 0.5, 0, None) + 0.5 * cover) * self.pixel_mm

    @property
    def total(self) -> Array:
        return sum((self.layers[k] for k in LAYERS[1:]), self.layers["soft"].copy())


class Region:
    """A rectangular window of a canvas, for the outline-based (rasterised) objects."""

    def __init__(self, canvas: Canvas, sl: tuple[slice, slice]) -> None:
        self.canvas = canvas
        self.sl = sl
        self.shape = (sl[0].stop - sl[0].start, sl[1].stop - sl[1].start)

    def mask(self, frame: Array, pts: Sequence[Point] | Array) -> Array:
        """Boolean mask of a polygon (local mm) inside the window."""
        pix = apply(self.canvas.s2p @ frame, pts) - [self.sl[1].start, self.sl[0].start]
        img = Image.new("L", (self.shape[1], self.shape[0]), 0)
        ImageDraw.Draw(img).polygon([tuple(p) for p in pix], fill=1)
        return np.asarray(img, dtype=bool)

    def coverage(self, frame: Array, pts: Sequence[Point] | Array, k: int = 3) -> Array:
        """Anti-aliased polygon (local mm): the fraction of each pixel inside, from a k-times
        supersampled rasterisation."""
        pix = (apply(self.canvas.s2p @ frame, pts) - [self.sl[1].start, self.sl[0].start]
               + 0.5) * k - 0.5
        img = Image.new("L", (self.shape[1] * k, self.shape[0] * k), 0)
        ImageDraw.Draw(img).polygon([tuple(p) for p in pix], fill=1)
        fine = np.asarray(img, dtype=np.float32)
        return fine.reshape(self.shape[0], k, self.shape[1], k).mean(axis=(1, 3))

    def local(self, frame: Array) -> tuple[Array, Array]:
        """Local coordinates (mm) of the window's pixels."""
        m = np.linalg.inv(frame) @ self.canvas.p2s
        cc = np.arange(self.sl[1].start, self.sl[1].stop, dtype=np.float32)[None, :]
        rr = np.arange(self.sl[0].start, self.sl[0].stop, dtype=np.float32)[:, None]
        x = m[0, 0] * cc + m[0, 1] * rr + m[0, 2]
        y = m[1, 0] * cc + m[1, 1] * rr + m[1, 2]
        return x.astype(np.float32), y.astype(np.float32)

    def add(self, layer: str, values: Array) -> None:
        self.canvas.layers[layer][self.sl] += values


# ---- projected thickness of simple solids (mm of path length) -------------------------


def smooth_polygon(pts: Sequence[Point], iterations: int = 3) -> Array:
    """Chaikin corner cutting: a closed polygon with rounded corners."""
    p = np.asarray(pts, dtype=float)
    for _ in range(iterations):
        q = np.roll(p, -1, axis=0)
        p = np.stack([0.75 * p + 0.25 * q, 0.25 * p + 0.75 * q], axis=1).reshape(-1, 2)
    return p


def _segment(x: Array, y: Array, p0: Point, p1: Point) -> tuple[Array, Array, float]:
    """Position along (mm from p0) and signed distance across the segment p0 -> p1."""
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    length = float(np.hypot(dx, dy)) or 1e-6
    ux, uy = dx / length, dy / length
    rx, ry = x - p0[0], y - p0[1]
    return rx * ux + ry * uy, rx * -uy + ry * ux, length


def smoothstep(e0: float, e1: float, x: Array) -> Array:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def tube(
    p0: Point, p1: Point, r0: float, r1: float | None = None, *, cap: float = 1.0,
    thread: tuple[float, float] | None = None, round_end: bool = False,
) -> Field:
    """Cylinder (or cone) from p0 to p1 seen from the side: chord length across it.

    thread = (pitch, depth) ripples the radius like a screw thread; round_end closes the
    p1 end with a half sphere (screw tip, nail tip).
    """
    r1 = r0 if r1 is None else r1

    def field(x: Array, y: Array) -> Array:
        t, d, length = _segment(x, y, p0, p1)
        if length < 1e-3:
            return np.zeros_like(x)
        r = r0 + (r1 - r0) * np.clip(t / length, 0, 1)
        if thread is not None:
            r = r - thread[1] * (0.5 + 0.5 * np.sin(2 * np.pi * t / thread[0]))
        chord = 2 * np.sqrt(np.clip(r * r - d * d, 0, None))
        ends = smoothstep(-cap, 0, t) * smoothstep(length + cap, length, t)
        if round_end:
            tip = 2 * np.sqrt(np.clip(r1 * r1 - (t - length) ** 2 - d * d, 0, None))
            return np.where(t > length, tip, chord * smoothstep(-cap, 0, t))
        return chord * ends

    return field


def sphere(c: Point, r: float) -> Field:
    def field(x: Array, y: Array) -> Array:
        return 2 * np.sqrt(np.clip(r * r - (x - c[0]) ** 2 - (y - c[1]) ** 2, 0, None))

    return field


def shell(c: Point, r_out: float, r_in: float, opening: float | None = None,
          rim: float = 0.0) -> Field:
    """Hollow sphere; with `opening` (deg, direction of the open face) a hemisphere shell."""

    def field(x: Array, y: Array) -> Array:
        d2 = (x - c[0]) ** 2 + (y - c[1]) ** 2
        out = 2 * np.sqrt(np.clip(r_out**2 - d2, 0, None))
        inner = 2 * np.sqrt(np.clip(r_in**2 - d2, 0, None))
        v = out - inner
        if opening is not None:
            ox, oy = np.cos(np.radians(opening)), np.sin(np.radians(opening))
            along = (x - c[0]) * ox + (y - c[1]) * oy
            v = 0.5 * v * smoothstep(1.0, -1.0, along)
            if rim:
                v = v + rim * np.exp(-(along / 1.2) ** 2) * (d2 < r_out**2)
        return v

    return field


def ellipsoid(c: Point, a: float, b: float, angle: float = 0.0, depth: float | None = None
              ) -> Field:
    """Ellipsoid with semi-axes a, b (in-plane) and half-depth `depth` (default b)."""
    depth = b if depth is None else depth
    ca, sa = np.cos(np.radians(angle)), np.sin(np.radians(angle))

    def field(x: Array, y: Array) -> Array:
        u = ((x - c[0]) * ca + (y - c[1]) * sa) / a
        v = (-(x - c[0]) * sa + (y - c[1]) * ca) / b
        return 2 * depth * np.sqrt(np.clip(1 - u * u - v * v, 0, None))

    return field


def polyline_distance(x: Array, y: Array, pts: Sequence[Point]) -> Array:
    """Distance from each point to an open polyline."""
    best = np.full(x.shape, np.inf, np.float32)
    for p0, p1 in zip(pts[:-1], pts[1:], strict=False):
        t, d, length = _segment(x, y, p0, p1)
        tc = np.clip(t, 0, length)
        along = t - tc
        best = np.minimum(best, np.sqrt(along * along + d * d))
    return best


def line(pts: Sequence[Point], width: float) -> Field:
    """Soft dense line (cortical outline, wire) along a polyline: Gaussian cross-section."""

    def field(x: Array, y: Array) -> Array:
        d = polyline_distance(x, y, pts)
        return np.exp(-((d / width) ** 2))

    return field


def strip(pts: Sequence[Point], half_width: float, edge: float = 0.6) -> Field:
    """Flat band of constant thickness 1 along a polyline (a plate seen face-on or edge-on)."""

    def field(x: Array, y: Array) -> Array:
        d = polyline_distance(x, y, pts)
        return smoothstep(half_width + edge, half_width - edge, d)

    return field


def bbox_of(pts: Sequence[Point] | Array, margin: float) -> tuple[float, float, float, float]:
    p = np.asarray(pts, dtype=float).reshape(-1, 2)
    return (p[:, 0].min() - margin, p[:, 1].min() - margin,
            p[:, 0].max() + margin, p[:, 1].max() + margin)


def band_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_small: float,
               sigma_large: float) -> Array:
    """Band-pass filtered white noise, unit standard deviation (trabecular texture, mottle)."""
    white = rng.standard_normal(shape, dtype=np.float32)
    v = ndimage.gaussian_filter(white, sigma_small) - ndimage.gaussian_filter(white, sigma_large)
    return v / (v.std() + 1e-6)
