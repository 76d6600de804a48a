"""Image formation of synthetic radiographs: exposure, scatter, detector noise and
artefacts, anti-scatter grid lines, console processing, collimation, lossy degradation and
quantisation to stored pixel values.

The attenuation image (working resolution) becomes detector counts with scatter haze,
heel-effect shading, quantum and electronic noise and a detector texture at full
resolution; it is log-transformed and processed the way CR/DX consoles do (large-kernel
dynamic range compression, edge enhancement, a tone curve from `tone`), collimated, and
optionally degraded (low resolution, JPEG) before it is quantised to BitsStored.
MONOCHROME1 stores the inverted values. Nothing here depends on the labels.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from hiprouter.synth.canvas import Array
from hiprouter.synth.tone import ToneCurve


@dataclass
class Grid:
    """Lines of an anti-scatter grid: spatial frequency (cycles/pixel of the stored image,
    aliased), direction and amplitude."""

    frequency: float
    angle_deg: float
    amplitude: float


@dataclass
class Acquisition:
    """Per-image acquisition and processing parameters (none of them is a label)."""

    contrast: float
    dose: float
    electronic_noise: float
    blur_mm: float
    scatter: float
    """Scatter-to-primary ratio behind the body (haze)."""
    heel: tuple[float, float]
    """Heel-effect shading: strength and direction (degrees)."""
    texture: str
    """Detector texture: 'none', 'phosphor' (CR plate grain), 'lines' (DR row/column
    offsets), 'scratches'."""
    texture_amount: float
    equalisation: float
    edge_gain: float
    tone: ToneCurve
    bits_stored: int
    photometric: str
    fill: float
    """Fraction of the stored range the image uses."""
    collimation: tuple[float, float, float, float]
    """Fraction cut off at top, bottom, left, right (0: no shutter on that side)."""
    collimation_deg: float
    """Rotation of the collimator."""
    collimation_level: float
    """Display level outside the shutters (white, black or grey)."""
    collimation_leak: float
    """How much of the anatomy shows through outside the shutters."""
    grid: Grid | None
    metal_range: float
    """Top fraction of the display range kept for what is denser than the anatomy (metal
    shows inner detail); 0: metal saturates white."""
    metal_scale: float
    black_percentile: float
    """Percentile of the anatomy mapped to black (the rest of the body is brighter)."""
    soft_lift: float
    """How far below that percentile black lies, as a fraction of the display range."""
    low_res: int
    """Long side (pixels) of a low-resolution step the image went through (0: none)."""
    jpeg_quality: int
    """Quality of a lossy JPEG step (0: none)."""

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Acquisition:
        coll = tuple(float(x) if rng.random() < 0.6 else 0.0 for x in rng.uniform(0.01, 0.1, 4))
        u = rng.uniform(0, 1, 16)
        grid = None
        if u[0] < 0.25:
            angle = rng.choice([0.0, 90.0]) + rng.normal(0, 1.5) if u[1] < 0.8 else \
                rng.uniform(0, 180)
            grid = Grid(rng.uniform(0.05, 0.49), float(angle), rng.uniform(0.003, 0.03))
        level = float(rng.choice([0.97, 0.02, rng.uniform(0.4, 0.85)], p=[0.6, 0.25, 0.15]))
        return cls(
            contrast=rng.uniform(0.5, 1.05),
            dose=10 ** rng.uniform(2.7, 3.8),
            electronic_noise=rng.uniform(0.5, 5.0),
            blur_mm=rng.uniform(0.15, 0.7),
            scatter=rng.uniform(0.0, 1.5) * u[2],
            heel=(rng.uniform(0, 0.25), rng.uniform(0, 360)),
            texture=str(rng.choice(["none", "phosphor", "lines", "scratches"],
                                   p=[0.45, 0.25, 0.2, 0.1])),
            texture_amount=rng.uniform(0.3, 1.0),
            equalisation=rng.uniform(0.3, 0.9),
            edge_gain=rng.uniform(0.0, 1.2),
            tone=ToneCurve.sample(rng),
            bits_stored=int(rng.choice([10, 12, 12, 12, 14, 15, 16])),
            photometric=str(rng.choice(["MONOCHROME1", "MONOCHROME2"], p=[0.35, 0.65])),
            fill=rng.uniform(0.7, 1.0),
            collimation=coll,  # type: ignore[arg-type]
            collimation_deg=float(rng.normal(0, 6)) if u[3] < 0.4 else 0.0,
            collimation_level=level,
            collimation_leak=rng.uniform(0, 0.35) * (u[4] < 0.5),
            grid=grid,
            metal_range=rng.uniform(0.05, 0.2) if u[7] < 0.6 else 0.0,
            metal_scale=rng.uniform(1.0, 6.0),
            black_percentile=rng.uniform(0.0, 6.0),
            soft_lift=rng.uniform(0.0, 0.35),
            low_res=int(rng.integers(384, 900)) if u[5] < 0.12 else 0,
            jpeg_quality=int(rng.integers(12, 70)) if u[6] < 0.2 else 0,
        )


def plain(acq: Acquisition) -> Acquisition:
    """The same acquisition with neutral processing: moderate dose and contrast, a mild
    gamma, no scatter, shading, detector texture, grid lines, collimation or degradation
    (figures and tests)."""
    return dataclasses.replace(
        acq, contrast=0.85, dose=2000.0, electronic_noise=1.0, scatter=0.0, heel=(0.0, 0.0),
        texture="none", equalisation=0.5, edge_gain=0.8, tone=ToneCurve.gamma(1.25),
        fill=0.9, collimation=(0.0, 0.0, 0.0, 0.0), collimation_deg=0.0, grid=None,
        metal_range=0.15, metal_scale=4.0,
        black_percentile=2.0, soft_lift=0.1, low_res=0, jpeg_quality=0)


def _resize(a: Array, shape: tuple[int, int]) -> Array:
    """Bicubic resize of a float image to (rows, cols)."""
    return np.array(Image.fromarray(a.astype(np.float32), mode="F").resize(
        (shape[1], shape[0]), Image.Resampling.BICUBIC))


def _smooth(a: Array, sigma_px: float) -> Array:
    """Gaussian filter; a wide one runs on a down-sampled copy (same result, much faster)."""
    k = int(sigma_px // 4)
    if k < 2:
        return ndimage.gaussian_filter(a, sigma_px)
    small = a[: a.shape[0] // k * k, : a.shape[1] // k * k]
    small = small.reshape(small.shape[0] // k, k, small.shape[1] // k, k).mean(axis=(1, 3))
    return _resize(ndimage.gaussian_filter(small, sigma_px / k, mode="nearest"), a.shape)


def _wave(shape: tuple[int, int], frequency: float, angle_deg: float) -> Array:
    """cos(2 pi f (x cos a + y sin a)) from two outer products (no full-size trig)."""
    a = np.radians(angle_deg)
    kx = float(2 * np.pi * frequency * np.cos(a))
    ky = float(2 * np.pi * frequency * np.sin(a))
    x = np.arange(shape[1], dtype=np.float32) * kx
    y = np.arange(shape[0], dtype=np.float32) * ky
    return np.cos(y)[:, None] * np.cos(x)[None, :] - np.sin(y)[:, None] * np.sin(x)[None, :]


def _detector_texture(acq: Acquisition, shape: tuple[int, int], rng: np.random.Generator
                      ) -> Array:
    """Additive detector pattern in log units (CR grain, DR line offsets, plate scratches)."""
    rows, cols = shape
    amount = acq.texture_amount
    if acq.texture == "phosphor":
        grain = rng.standard_normal((rows // 3 + 1, cols // 3 + 1), dtype=np.float32)
        return 0.012 * amount * _resize(ndimage.gaussian_filter(grain, 0.7), shape)
    if acq.texture == "lines":
        lines_r = rng.standard_normal(rows).astype(np.float32)
        lines_c = rng.standard_normal(cols).astype(np.float32)
        return 0.006 * amount * (lines_r[:, None] + 0.5 * lines_c[None, :])
    if acq.texture == "scratches":
        img = Image.new("F", (cols, rows), 0.0)
        draw = ImageDraw.Draw(img)
        for x0, y0, length, sign in rng.uniform(0, 1, (6, 4)):
            x, y = x0 * cols, y0 * rows
            draw.line([(x, y), (x + (length - 0.5) * cols * 0.3, y + rows * 0.2)],
                      fill=float(0.05 * (sign - 0.5) * amount), width=1)
        return np.asarray(img)
    return np.zeros(shape, np.float32)


def _exposed(shape: tuple[int, int], acq: Acquisition) -> Array:
    """Mask of the exposed field inside the (possibly rotated) collimator shutters."""
    rows, cols = shape
    t, b, lft, r = acq.collimation
    box = np.array([[lft * cols, t * rows], [cols * (1 - r), t * rows],
                    [cols * (1 - r), rows * (1 - b)], [lft * cols, rows * (1 - b)]])
    # a shutter that is absent lies beyond the image edge whatever the rotation
    far = 0.5 * max(rows, cols)
    box[:, 1] = np.where(box[:, 1] == 0, -far, box[:, 1])
    box[:, 1] = np.where(box[:, 1] == rows, rows + far, box[:, 1])
    box[:, 0] = np.where(box[:, 0] == 0, -far, box[:, 0])
    box[:, 0] = np.where(box[:, 0] == cols, cols + far, box[:, 0])
    c = np.array([cols / 2, rows / 2])
    a = np.radians(acq.collimation_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    pts = (box - c) @ rot.T + c
    img = Image.new("L", (cols, rows), 0)
    ImageDraw.Draw(img).polygon([tuple(p) for p in pts], fill=1)
    return np.asarray(img, bool)


def form_image(attenuation: Array, implant: Array, pixel_mm: float, out_shape: tuple[int, int],
               acq: Acquisition, rng: np.random.Generator,
               marker: tuple[Array, float] | None = None,
               unmetered: Array | None = None) -> Array:
    """Display image in [0, 1] (bright = dense) at out_shape, before degradation.

    The tone curve is metered on the anatomy without implants, so metal is the brightest;
    `unmetered` (working resolution) marks regions left out too (the hips and femora), so
    that a finding changes its own pixels and not the whole image's tone.
    """
    metal = implant
    if marker is not None:
        metal = implant + marker[0] * marker[1]
    contrast = float(acq.contrast)
    a = ndimage.gaussian_filter((attenuation - implant + metal) * contrast,
                                acq.blur_mm / pixel_mm)
    # the console's dynamic range compression follows the anatomy: air (direct exposure)
    # is clipped to the thinnest body part first, and metal stays white
    region = np.ones(a.shape, bool) if unmetered is None else ~unmetered
    thick = region & (a > 0.3 * float(np.percentile(a[region] if region.any() else a, 90)))
    floor = float(np.percentile(a[thick], 5)) if thick.any() else 0.0
    low = _smooth(np.maximum(a, floor) - (metal - np.minimum(metal, 1.5)) * contrast,
                  30.0 / pixel_mm)
    anat_a = a - ndimage.gaussian_filter(metal * contrast, acq.blur_mm / pixel_mm)
    mid = ndimage.gaussian_filter(anat_a, 1.2 / pixel_mm)
    # automatic exposure control: the dose reaches the detector behind the median body part
    a_ref = float(np.median(a[thick])) if thick.any() else 3.5
    primary = np.exp(-np.clip(a - a_ref, -a_ref, 12))
    rows, cols_n = out_shape
    h = np.radians(acq.heel[1])
    yy = np.linspace(-0.5, 0.5, primary.shape[0], dtype=np.float32)[:, None]
    xx = np.linspace(-0.5, 0.5, primary.shape[1], dtype=np.float32)[None, :]
    heel = 1 + float(acq.heel[0]) * (xx * float(np.cos(h)) + yy * float(np.sin(h)))
    # scatter comes from where the beam is attenuated: about `scatter` times the primary
    # behind the body, spread over centimetres, little of it outside the body
    p_body = float(np.median(primary[thick])) if thick.any() else 0.0
    absorbed = 1 - np.exp(-np.clip(a, 0, None))  # fraction of the beam the body removes
    scatter = _smooth(absorbed, 25.0 / pixel_mm) * (float(acq.scatter) * p_body)
    exposure = (primary + scatter) * heel
    # the console's processing is computed at working resolution, applied at full size
    console = -float(acq.equalisation) * low + float(acq.edge_gain) * (anat_a - mid)
    counts = _resize(exposure * float(acq.dose), out_shape)
    noise = rng.standard_normal(out_shape, dtype=np.float32)
    noise *= 0.6
    noise += _resize(0.8 * rng.standard_normal((rows // 2, cols_n // 2), dtype=np.float32),
                     out_shape)
    spread = np.clip(counts, 0, None)
    spread += float(acq.electronic_noise) ** 2
    np.sqrt(spread, out=spread)
    spread *= noise
    counts += spread
    np.clip(counts, 0.5, None, out=counts)
    proc = np.log(counts, out=counts)
    np.subtract(float(np.log(acq.dose)), proc, out=proc)
    if acq.texture != "none":
        proc += _detector_texture(acq, out_shape, rng)
    proc += _resize(console, out_shape)
    if acq.grid is not None:
        proc += float(acq.grid.amplitude) * _wave(out_shape, acq.grid.frequency,
                                                  acq.grid.angle_deg)
    exposed = _exposed(out_shape, acq)
    # tone curve spans the patient's anatomy: air may clip black, metal is brightest
    # (robust statistics of the smoothed image: a finding barely moves them)
    no_metal = ndimage.maximum_filter(metal, 5) < 0.3
    metered = no_metal if unmetered is None else no_metal & ~unmetered
    body = metered & thick
    sub_shape = (len(range(0, rows, 4)), len(range(0, cols_n, 4)))
    anatomy = np.asarray(Image.fromarray(body.astype(np.uint8)).resize(
        (sub_shape[1], sub_shape[0]), Image.Resampling.NEAREST), bool)
    sub = proc[::4, ::4]
    keep = anatomy & exposed[::4, ::4]
    values = sub[keep] if keep.sum() > 100 else sub.ravel()
    sigma = 6.0 / (pixel_mm * 4 * rows / primary.shape[0])
    if keep.sum() > 100:  # smoothed over the metered pixels only
        weight = ndimage.gaussian_filter(keep.astype(np.float32), sigma)
        smooth = ndimage.gaussian_filter(np.where(keep, sub, 0), sigma)
        smooth_values = smooth[keep] / np.maximum(weight[keep], 1e-3)
    else:
        smooth_values = ndimage.gaussian_filter(sub, sigma).ravel()
    lo = np.percentile(values, acq.black_percentile)
    p50, hi = np.percentile(smooth_values, [50, 99.5])
    hi = hi + 0.25 * (hi - p50)  # headroom for the (unmetered) hip joints
    lo = float(lo - acq.soft_lift * (hi - lo))  # soft tissue grey rather than black
    scale = float(1.0 / max(hi - lo, 1e-6))
    tone = acq.tone.fit((values - lo) * scale)
    proc -= lo
    proc *= scale
    disp = tone(proc)
    if acq.metal_range > 0:  # highlight roll-off: metal keeps some gradation
        dense = np.clip(proc - 1, 0, None)
        dense *= -1 / float(acq.metal_scale)
        np.exp(dense, out=dense)
        disp *= 1 - float(acq.metal_range)
        disp += float(acq.metal_range) * (1 - dense)
    if not exposed.all():
        inside = ndimage.uniform_filter(exposed.astype(np.float32), 5)  # shutter penumbra
        leak = float(acq.collimation_leak)
        noise *= 0.01
        noise += float(acq.collimation_level) * (1 - leak)
        outside = np.clip(noise + leak * disp, 0, 1)
        disp = outside + inside * (disp - outside)
    return disp


def degrade(display: Array, acq: Acquisition) -> Array:
    """A low-resolution step and/or a lossy JPEG round trip (8 bits), as images that went
    through old digitisers, teleradiology or secondary capture."""
    rows, cols = display.shape
    factor = max(rows, cols) / acq.low_res if acq.low_res else 1.0
    if factor > 1.2:
        small = (max(8, int(rows / factor)), max(8, int(cols / factor)))
        img = Image.fromarray(display.astype(np.float32), mode="F").resize(
            (small[1], small[0]), Image.Resampling.BOX)
        display = np.asarray(img.resize((cols, rows), Image.Resampling.BILINEAR))
    if acq.jpeg_quality:
        buf = io.BytesIO()
        Image.fromarray(np.round(np.clip(display, 0, 1) * 255).astype(np.uint8)).save(
            buf, format="JPEG", quality=acq.jpeg_quality)
        display = np.asarray(Image.open(io.BytesIO(buf.getvalue())), np.float32) / 255.0
    return np.clip(display, 0, 1).astype(np.float32)


def quantise(display: Array, acq: Acquisition) -> Array:
    """Stored pixel values (uint16) of a display image in [0, 1]."""
    maxval = 2**acq.bits_stored - 1
    offset = (1 - acq.fill) * 0.5
    stored = np.round((offset + acq.fill * display) * maxval)
    if acq.photometric == "MONOCHROME1":
        stored = maxval - stored
    return stored.astype(np.uint16)
