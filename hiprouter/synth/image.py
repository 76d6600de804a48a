"""Image formation of synthetic radiographs: exposure, noise, processing, collimation,
lead side markers, and quantisation to stored pixel values.

The attenuation image (working resolution) becomes detector counts with quantum and
electronic noise at full resolution, is log-transformed and processed the way CR/DX
consoles do (large-kernel dynamic range compression, edge enhancement, tone curve), then
quantised to BitsStored. MONOCHROME1 stores the inverted values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from hiprouter.synth.canvas import Array


@dataclass
class Acquisition:
    """Per-image acquisition and processing parameters (none of them is a label)."""

    contrast: float
    dose: float
    electronic_noise: float
    blur_mm: float
    equalisation: float
    edge_gain: float
    gamma: float
    bits_stored: int
    photometric: str
    fill: float
    """Fraction of the stored range the image uses."""
    collimation: tuple[float, float, float, float]
    """Fraction cut off at top, bottom, left, right."""
    collimation_white: bool
    grid_lines: bool
    black_percentile: float
    """Percentile of the anatomy mapped to black (the rest of the body is brighter)."""
    soft_lift: float
    """How far below that percentile black lies, as a fraction of the display range."""

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Acquisition:
        coll = tuple(float(x) if rng.random() < 0.6 else 0.0 for x in rng.uniform(0.01, 0.09, 4))
        return cls(
            contrast=rng.uniform(0.55, 1.0),
            dose=10 ** rng.uniform(2.6, 3.6),
            electronic_noise=rng.uniform(0.5, 4.0),
            blur_mm=rng.uniform(0.15, 0.6),
            equalisation=rng.uniform(0.4, 0.85),
            edge_gain=rng.uniform(0.0, 0.9),
            gamma=rng.uniform(0.75, 1.35),
            bits_stored=int(rng.choice([10, 12, 12, 12, 14, 15, 16])),
            photometric=str(rng.choice(["MONOCHROME1", "MONOCHROME2"], p=[0.35, 0.65])),
            fill=rng.uniform(0.7, 1.0),
            collimation=coll,  # type: ignore[arg-type]
            collimation_white=rng.random() < 0.7,
            grid_lines=rng.random() < 0.25,
            black_percentile=rng.uniform(0.0, 6.0),
            soft_lift=rng.uniform(0.0, 0.35),
        )


_FONT_CACHE: dict[int, ImageFont.FreeTypeFont | ImageFont.ImageFont] = {}


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if size not in _FONT_CACHE:
        _FONT_CACHE[size] = ImageFont.load_default(size=size)
    return _FONT_CACHE[size]


def marker_mask(shape: tuple[int, int], text: str, corner: str, size_px: int, margin_px: int,
                boxed: bool) -> tuple[Array, tuple[int, int, int, int]]:
    """Mask of a lead letter marker in a corner ('tl', 'tr', 'bl', 'br'); and its box
    (x0, y0, x1, y1) in pixels."""
    img = Image.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(img)
    font = _font(size_px)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + size_px // 2, bottom - top + size_px // 2
    x0 = margin_px if corner[1] == "l" else shape[1] - margin_px - w
    y0 = margin_px if corner[0] == "t" else shape[0] - margin_px - h
    if boxed:
        draw.rectangle([x0, y0, x0 + w, y0 + h], outline=255, width=max(1, size_px // 10))
    draw.text((x0 + size_px // 4 - left, y0 + size_px // 4 - top), text, font=font, fill=255)
    return np.asarray(img, np.float32) / 255.0, (x0, y0, x0 + w + 1, y0 + h + 1)


def _resize(a: Array, shape: tuple[int, int]) -> Array:
    """Bicubic resize of a float image to (rows, cols)."""
    return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize(
        (shape[1], shape[0]), Image.Resampling.BICUBIC))


def form_image(attenuation: Array, implant: Array, pixel_mm: float, out_shape: tuple[int, int],
               acq: Acquisition, rng: np.random.Generator,
               marker: tuple[Array, float] | None = None) -> tuple[Array, Array]:
    """Stored pixel values (uint16) and the display image in [0, 1] (bright = dense).

    The tone curve is set from the anatomy (implants excluded), so metal saturates white.
    """
    metal = implant
    if marker is not None:
        metal = implant + marker[0] * marker[1]
    a = ndimage.gaussian_filter((attenuation - implant + metal) * acq.contrast,
                                acq.blur_mm / pixel_mm)
    # the console's dynamic range compression follows the anatomy; metal stays white
    low = ndimage.gaussian_filter(a - (metal - np.minimum(metal, 1.5)) * acq.contrast,
                                  30.0 / pixel_mm)
    anat_a = a - ndimage.gaussian_filter(metal * acq.contrast, acq.blur_mm / pixel_mm)
    mid = ndimage.gaussian_filter(anat_a, 1.2 / pixel_mm)
    full = _resize(a, out_shape)
    counts = acq.dose * np.exp(-np.clip(full - 3.5, -3.5, 12))
    noise = rng.standard_normal(out_shape, dtype=np.float32)
    half = rng.standard_normal((out_shape[0] // 2, out_shape[1] // 2), dtype=np.float32)
    noise = 0.6 * noise + 0.8 * _resize(half, out_shape)
    counts = counts + noise * np.sqrt(counts + acq.electronic_noise**2)
    logv = -np.log(np.clip(counts, 0.5, None) / acq.dose)
    detail = _resize(anat_a - mid, out_shape)
    proc = logv - acq.equalisation * _resize(low, out_shape) + acq.edge_gain * detail
    if acq.grid_lines:
        cols = np.arange(out_shape[1], dtype=np.float32)
        proc = proc + 0.01 * np.sin(cols * 2.1)[None, :]
    rows, cols_n = out_shape
    t, b, lft, r = (int(f * n) for f, n in zip(acq.collimation, (rows, rows, cols_n, cols_n),
                                               strict=True))
    sub = proc[t: rows - b: 4, lft: cols_n - r: 4]
    # tone curve spans the patient's anatomy: air may clip black, metal clips white
    anat = attenuation - implant
    no_metal = ndimage.maximum_filter(metal, 5) < 0.3
    body = no_metal & (anat > 0.35 * float(np.percentile(anat, 99)))
    anatomy = Image.fromarray(body.astype(np.uint8)).resize((cols_n, rows),
                                                            Image.Resampling.NEAREST)
    keep = np.asarray(anatomy, bool)[t: rows - b: 4, lft: cols_n - r: 4]
    values = sub[keep] if keep.sum() > 100 else sub
    lo, hi = np.percentile(values, [acq.black_percentile, 99.8])
    lo = lo - acq.soft_lift * (hi - lo)  # soft tissue grey rather than black
    disp = np.clip((proc - lo) / max(hi - lo, 1e-6), 0, 1) ** acq.gamma
    edge = np.ones(out_shape, bool)
    edge[t: rows - b, lft: cols_n - r] = False
    if edge.any():
        band = 0.96 if acq.collimation_white else 0.02
        disp[edge] = np.clip(band + 0.01 * rng.standard_normal(int(edge.sum())), 0, 1)
    maxval = 2**acq.bits_stored - 1
    offset = (1 - acq.fill) * 0.5
    stored = np.round((offset + acq.fill * disp) * maxval)
    if acq.photometric == "MONOCHROME1":
        stored = maxval - stored
    return stored.astype(np.uint16), disp.astype(np.float32)
