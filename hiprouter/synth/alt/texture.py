"""Trabecular texture: band-limited, partly oriented random fields that modulate the bone
volume of cancellous bone in projection (a 3D lattice seen through its thickness)."""

from __future__ import annotations

import numpy as np


def _spectrum(shape: tuple[int, int], pixel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    fy = np.fft.fftfreq(shape[0], d=pixel_mm)[:, None]
    fx = np.fft.rfftfreq(shape[1], d=pixel_mm)[None, :]
    return fy, fx


def trabecular(shape: tuple[int, int], pixel_mm: float, rng: np.random.Generator, *,
               spacing_mm: float, angle_deg: float, anisotropy: float) -> np.ndarray:
    """Zero-mean, unit-variance field with structures `spacing_mm` apart, elongated along
    angle_deg (image plane, 0 = along columns) by `anisotropy` (0 = isotropic)."""
    fy, fx = _spectrum(shape, pixel_mm)
    a = np.radians(angle_deg)
    along = fx * np.cos(a) + fy * np.sin(a)
    across = -fx * np.sin(a) + fy * np.cos(a)
    f0 = 1.0 / spacing_mm
    radial = np.hypot(along * (1 + 3 * anisotropy), across)
    gain = np.exp(-((radial - f0) ** 2) / (2 * (0.45 * f0) ** 2))
    noise = np.fft.rfft2(rng.standard_normal(shape))
    field = np.fft.irfft2(noise * gain, s=shape)
    return field / (field.std() + 1e-9)


def modulate(cancellous: np.ndarray, pixel_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Cancellous bone paths with trabecular texture and coarse density variation."""
    fine = trabecular(cancellous.shape, pixel_mm, rng, spacing_mm=rng.uniform(0.7, 1.1),
                      angle_deg=90 + rng.normal(0, 10), anisotropy=rng.uniform(1.0, 2.0))
    cross = trabecular(cancellous.shape, pixel_mm, rng, spacing_mm=rng.uniform(0.9, 1.4),
                       angle_deg=rng.uniform(20, 50), anisotropy=rng.uniform(0.8, 1.6))
    coarse = trabecular(cancellous.shape, pixel_mm, rng, spacing_mm=rng.uniform(5, 9),
                        angle_deg=0.0, anisotropy=0.0)
    amp = rng.uniform(0.15, 0.28)
    tex = 1 + amp * (0.65 * fine + 0.45 * cross) + 0.06 * coarse
    return np.clip(cancellous, 0, None) * np.clip(tex, 0.15, None)
