"""Colour photograph-like images: a rendered outdoor scene, or a phone photo of a monitor
(sub-pixel stripes, moire, glare, perspective) showing a user interface."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def scene(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Sky, sun, hills, a house and trees (RGB uint8, height x width x 3)."""
    w, h = size
    img = Image.new("RGB", (w, h))
    px = np.zeros((h, w, 3))
    top, bottom = rng.uniform([40, 90, 170], [90, 150, 230]), rng.uniform([170, 200, 230],
                                                                          [220, 230, 250])
    t = np.linspace(0, 1, h)[:, None, None]
    px[:] = top * (1 - t) + bottom * t
    img = Image.fromarray(px.astype(np.uint8))
    d = ImageDraw.Draw(img)
    sx, sy, sr = rng.uniform(0.1, 0.9) * w, rng.uniform(0.05, 0.3) * h, rng.uniform(0.04, 0.08) * w
    d.ellipse([sx - sr, sy - sr, sx + sr, sy + sr], fill=(255, 240, 180))
    for k in range(3):
        base = h * rng.uniform(0.45, 0.75)
        amp, freq, phase = h * rng.uniform(0.03, 0.1), rng.uniform(1, 4), rng.uniform(0, 6)
        xs = np.linspace(0, w, 64)
        ys = base + amp * np.sin(freq * xs / w * 2 * np.pi + phase) + k * h * 0.06
        green = tuple(int(v) for v in rng.uniform([30, 90, 20], [90, 170, 70]))
        d.polygon([(0, h)] + list(zip(xs, ys, strict=True)) + [(w, h)], fill=green)
    hx, hy, hw = rng.uniform(0.2, 0.6) * w, rng.uniform(0.6, 0.75) * h, rng.uniform(0.12, 0.2) * w
    wall = tuple(int(v) for v in rng.uniform(150, 240, 3))
    d.rectangle([hx, hy - hw * 0.6, hx + hw, hy], fill=wall)
    d.polygon([(hx - hw * 0.1, hy - hw * 0.6), (hx + hw / 2, hy - hw), (hx + hw * 1.1,
                                                                         hy - hw * 0.6)],
              fill=(150, 40, 30))
    d.rectangle([hx + hw * 0.4, hy - hw * 0.3, hx + hw * 0.6, hy], fill=(90, 60, 30))
    for _ in range(int(rng.integers(2, 6))):
        tx, ty = rng.uniform(0, w), rng.uniform(0.65, 0.9) * h
        tr = rng.uniform(0.03, 0.07) * w
        d.rectangle([tx - tr * 0.15, ty, tx + tr * 0.15, ty + tr * 1.5], fill=(80, 50, 20))
        d.ellipse([tx - tr, ty - tr * 1.6, tx + tr, ty + tr * 0.3], fill=(20, 100, 30))
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
    out = np.asarray(img, dtype=float) + rng.normal(0, 4, (h, w, 3))
    return np.clip(out, 0, 255).astype(np.uint8)


def screen_photo(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A monitor photographed with a phone: UI, RGB sub-pixel stripes beating into moire."""
    w, h = size
    ui = Image.new("RGB", (w, h), tuple(int(v) for v in rng.uniform(20, 60, 3)))
    d = ImageDraw.Draw(ui)
    d.rectangle([0, 0, w, h * 0.07], fill=(60, 70, 90))
    d.rectangle([w * 0.05, h * 0.12, w * 0.62, h * 0.9], fill=(10, 10, 10))
    for k in range(int(rng.integers(6, 14))):  # text lines and buttons
        y = h * (0.14 + 0.05 * k)
        d.rectangle([w * 0.67, y, w * rng.uniform(0.75, 0.95), y + h * 0.015],
                    fill=(200, 200, 200))
    cx, cy = w * 0.33, h * 0.5
    for r in np.linspace(0.3, 0.05, 6):  # a blurry round object on the viewer
        g = int(80 + 150 * (1 - r / 0.3))
        d.ellipse([cx - r * w, cy - r * h, cx + r * w, cy + r * h], fill=(g, g, g))
    px = np.asarray(ui, dtype=float)
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    a = np.radians(rng.uniform(-8, 8))
    period = rng.uniform(2.6, 3.4)
    u = (xx * np.cos(a) + yy * np.sin(a)) / period
    for ch in range(3):  # stripes of one colour each, sampled below their frequency
        px[..., ch] *= 0.55 + 0.45 * np.cos(2 * np.pi * (u - ch / 3)) ** 2
    beat = 1 + 0.18 * np.cos(2 * np.pi * (xx * rng.uniform(0.004, 0.02)
                                          + yy * rng.uniform(0.004, 0.02)))
    glare = 1 + 0.5 * np.exp(-(((xx - w * rng.uniform(0.2, 0.8)) / (0.25 * w)) ** 2
                               + ((yy - h * rng.uniform(0.2, 0.8)) / (0.25 * h)) ** 2))
    px = px * beat[..., None] * glare[..., None] + rng.normal(0, 5, px.shape)
    img = Image.fromarray(np.clip(px, 0, 255).astype(np.uint8))
    k = rng.uniform(0.02, 0.08)
    img = img.transform((w, h), Image.Transform.QUAD,
                        (w * k, 0, 0, h, w, h * (1 - k), w * (1 - k), 0),
                        Image.Resampling.BILINEAR)
    return np.asarray(img.filter(ImageFilter.GaussianBlur(0.7)))
