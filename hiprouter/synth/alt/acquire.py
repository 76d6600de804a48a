"""From material paths to a stored "for presentation" image: exposure technique, collimation,
lead side marker, detector and console (randomised per image, independent of the labels)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from hiprouter.synth.alt import console, physics
from hiprouter.synth.alt.texture import modulate


@dataclass(frozen=True)
class Acquisition:
    modality: str
    exposure: physics.Exposure
    processing: console.Processing
    photometric: str
    bits: int
    margins: tuple[float, float, float, float]
    """Collimated fraction of the image at the top, bottom, left and right."""
    field_angle: float


def sample_acquisition(rng: np.random.Generator, view: str) -> Acquisition:
    dr = rng.random() < 0.55
    lateral = view == "cross_table_lateral"
    kvp = rng.uniform(80, 95) if lateral else rng.uniform(68, 85)
    exp = physics.Exposure(
        kvp=float(kvp), mas=float(rng.uniform(10, 40) * (2.5 if lateral else 1)),
        filter_al_mm=float(rng.uniform(2.5, 4.0)),
        filter_cu_mm=float(rng.choice([0.0, 0.1, 0.2], p=[0.5, 0.3, 0.2])),
        detector="dr" if dr else "cr", grid=bool(rng.random() < (0.6 if lateral else 0.9)),
        quanta_per_mm2=float(10 ** rng.uniform(6.3, 7.3)),
        blur_mm=float(rng.uniform(0.06, 0.12) if dr else rng.uniform(0.12, 0.22)),
        heel=float(rng.uniform(0.04, 0.14)))
    collimated = rng.random() < 0.6
    margins = tuple(float(rng.uniform(0.0, 0.09)) if collimated and rng.random() < 0.7 else 0.0
                    for _ in range(4))
    bits = int(rng.choice([12, 14, 15, 16], p=[0.4, 0.3, 0.1, 0.2]) if dr
               else rng.choice([10, 12], p=[0.6, 0.4]))
    return Acquisition("DX" if dr else "CR", exp, console.sample_processing(rng),
                       "MONOCHROME1" if rng.random() < (0.25 if dr else 0.5) else "MONOCHROME2",
                       bits, margins, float(rng.normal(0, 1.0) if collimated else 0.0))


def field_mask(shape: tuple[int, int], acq: Acquisition, pixel_mm: float) -> np.ndarray:
    """Exposed field (1 inside, 0 outside, a penumbra of ~1.5 mm)."""
    rows, cols = shape
    t, b, left, right = acq.margins
    yy, xx = np.mgrid[0:rows, 0:cols].astype(float)
    a = np.radians(acq.field_angle)
    cy, cx = rows / 2, cols / 2
    x = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a) + cx
    y = -(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a) + cy
    pen = max(1.5 / pixel_mm, 0.5)
    edges = [(y - t * rows), (rows * (1 - b) - y), (x - left * cols), (cols * (1 - right) - x)]
    inside = np.ones(shape)
    for e in edges:
        inside *= np.clip(0.5 + e / (2 * pen), 0, 1)
    return inside


def marker_mask(shape: tuple[int, int], letter: str, corner: tuple[float, float],
                height_px: float, mirrored: bool) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A lead letter near (row, col) fractions of the image; its mask and box (x0 y0 x1 y1)."""
    size = max(8, int(height_px))
    font = ImageFont.load_default(size=size)
    img = Image.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(img)
    x = int(corner[1] * shape[1])
    y = int(corner[0] * shape[0])
    box = draw.textbbox((x, y), letter, font=font, stroke_width=max(1, size // 12))
    draw.text((x, y), letter, fill=255, font=font, stroke_width=max(1, size // 12),
              stroke_fill=255)
    mask = np.asarray(img, dtype=float) / 255.0
    if mirrored:
        x0, y0, x1, y1 = box
        sub = mask[y0:y1, x0:x1].copy()
        mask[y0:y1, x0:x1] = sub[:, ::-1]
    x0, y0, x1, y1 = (int(v) for v in box)
    return mask, (max(x0, 0), max(y0, 0), min(x1, shape[1] - 1), min(y1, shape[0] - 1))


def form_image(maps: dict[str, np.ndarray], work_pixel: float, stored: tuple[int, int],
               acq: Acquisition, marker: np.ndarray | None, anode_vertical: bool,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Stored pixel values and the display image (0..1, bright = dense)."""
    maps = dict(maps)
    soft = 3.0 / work_pixel  # skin and fat surfaces are smooth; no kinks where volumes meet
    for key in ("tissue", "fat"):
        if key in maps:
            maps[key] = ndimage.gaussian_filter(maps[key], soft, mode="nearest")
    if "cancellous" in maps:
        maps["cancellous"] = modulate(maps["cancellous"], work_pixel, rng)
    paths = physics.displace(maps)
    exp = acq.exposure
    signal = physics.primary(paths, exp)
    signal = physics.add_scatter(signal, physics.water_equivalent(paths), work_pixel, exp, rng)
    signal = signal * physics.heel_ramp(signal.shape, exp.heel, anode_vertical)
    zoom = (stored[0] / signal.shape[0], stored[1] / signal.shape[1])
    pixel = work_pixel / zoom[1]
    if zoom != (1.0, 1.0):
        signal = ndimage.zoom(signal, zoom, order=1, mode="nearest")[:stored[0], :stored[1]]
    field = field_mask(stored, acq, pixel)
    low = ndimage.gaussian_filter(signal[::8, ::8], 12, mode="nearest")
    leak = ndimage.zoom(low, 8, order=1)[:stored[0], :stored[1]] * 0.02
    signal = signal * field + leak * (1 - field) + 1e-4
    if marker is not None:
        signal = signal * (1 - 0.97 * marker)
    detected = physics.detect(signal, pixel, exp, rng)
    log = np.log(detected)
    inside = field > 0.99
    lo, hi = console.anatomy_range(log, inside, float(np.log(signal.max())))
    span = hi - lo
    hi = lo + span * rng.uniform(0.75, 0.95)  # thin soft tissue falls towards black
    density = (hi - log) / (hi - lo)
    # metal and collimated borders: graded, not clipped, above the anatomy
    density = np.where(density > 1, 1 + 0.6 * np.tanh((density - 1) / 1.5), density)
    density = np.maximum(density, -0.2)
    roi = inside & (density > 0) & (density < 1.0)
    compressed = console.compress(density, acq.processing, pixel, roi)
    enhanced = console.enhance(compressed, acq.processing, pixel)
    display = console.tone(enhanced, acq.processing, roi)
    return console.store(display, acq.bits, acq.photometric, rng), display
