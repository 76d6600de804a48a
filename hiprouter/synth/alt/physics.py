"""Image formation: polyenergetic beam through material path maps, scatter, detector.

The tube spectrum follows Kramers' law, filtered by aluminium (and sometimes copper);
every material attenuates with its own mass attenuation curve (approximate NIST XCOM values,
K-edges included), so metal and bone harden the beam. The detector absorbs with its own
phosphor (CR: BaFBr, with the barium K-edge; DR: CsI), integrates energy, adds scatter that
grows with water-equivalent thickness, blurs, and counts quanta (Poisson-like noise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

_E = np.array([10, 15, 20, 30, 33.1, 33.2, 37.3, 37.5, 40, 50, 60, 80, 100, 150], float)
# mass attenuation coefficients (cm^2/g) at _E, approximate
_MU = {
    "water": [5.33, 1.67, .810, .376, .340, .340, .300, .300, .268, .227, .206, .184, .171, .151],
    "adipose": [3.27, 1.11, .558, .295, .276, .276, .255, .255, .228, .201, .187, .170, .159,
                .141],
    "bone": [28.5, 9.03, 4.00, 1.33, 1.03, 1.03, .80, .80, .665, .424, .315, .223, .186, .148],
    "aluminium": [26.2, 7.96, 3.44, 1.13, .87, .87, .66, .66, .569, .368, .278, .202, .170,
                  .138],
    "titanium": [111, 36.9, 16.6, 5.58, 4.30, 4.30, 3.2, 3.2, 2.57, 1.43, .916, .490, .320, .183],
    "iron": [171, 57.1, 25.7, 8.18, 6.3, 6.3, 4.7, 4.7, 3.63, 1.96, 1.21, .595, .372, .196],
    "cobalt": [209, 69.6, 31.6, 10.1, 7.8, 7.8, 5.8, 5.8, 4.50, 2.42, 1.49, .722, .438, .220],
    "copper": [216, 74.1, 33.8, 10.9, 8.4, 8.4, 6.3, 6.3, 4.86, 2.61, 1.59, .763, .458, .222],
    "pmma": [3.36, 1.10, .566, .306, .280, .280, .255, .255, .237, .208, .193, .176, .165, .145],
    "barium": [224, 77, 37, 12.5, 9.6, 9.6, 7.1, 32.0, 29.9, 17.2, 10.9, 5.21, 2.96, 1.04],
    "zirconia": [90, 30, 27, 8.9, 6.9, 6.9, 5.1, 5.1, 4.0, 2.2, 1.35, .66, .40, .20],
    "csi": [160, 55, 26, 8.5, 6.6, 35.0, 28.0, 28.0, 22.9, 12.9, 8.1, 3.9, 2.2, .80],
    "bafbr": [150, 52, 25, 9.0, 7.0, 7.0, 5.3, 24.0, 22.0, 12.5, 7.9, 3.8, 2.2, .80],
}
# scene materials: (base curve(s) with mass fractions, density g/cm^3)
_MATERIALS: dict[str, tuple[tuple[tuple[str, float], ...], float]] = {
    "tissue": ((("water", 1.0),), 1.05),
    "fat": ((("adipose", 1.0),), 0.95),
    "gas": ((("water", 1.0),), -1.0),  # gas displaces tissue
    "marrow": ((("adipose", 0.6), ("water", 0.4)), 0.98),
    "cortical": ((("bone", 1.0),), 1.92),
    "titanium": ((("titanium", 1.0),), 4.5),
    "cocr": ((("cobalt", 1.0),), 8.3),
    "steel": ((("iron", 1.0),), 7.9),
    "cement": ((("pmma", 0.9), ("barium", 0.06), ("water", 0.04)), 1.25),
    "ceramic": ((("zirconia", 1.0),), 5.5),
    "lead": ((("cobalt", 3.0),), 11.3),
}
MATERIALS = (*_MATERIALS, "cancellous")
"""Materials a scene may hold ('cancellous' is bone volume of trabecular bone)."""


def mu_linear(material: str, energies: np.ndarray) -> np.ndarray:
    """Linear attenuation (1/mm) of a scene material or a base curve at energies (keV)."""
    if material in _MU:
        parts, rho = ((material, 1.0),), 1.0
    else:
        parts, rho = _MATERIALS[material]
    total = np.zeros_like(energies, dtype=float)
    for base, frac in parts:
        total += frac * np.exp(np.interp(np.log(energies), np.log(_E), np.log(_MU[base])))
    return total * rho / 10.0


@dataclass(frozen=True)
class Exposure:
    """Technique and detector of one exposure."""

    kvp: float
    mas: float
    filter_al_mm: float
    filter_cu_mm: float
    detector: str
    """'cr' (BaFBr plate) or 'dr' (CsI flat panel)."""
    grid: bool
    quanta_per_mm2: float
    """Detected quanta per mm^2 behind no object (sets the noise level)."""
    blur_mm: float
    heel: float
    """Relative intensity change from one detector edge to the other (anode heel)."""


def spectrum(kvp: float, al_mm: float, cu_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Energy bins (keV) and relative photon fluence per bin (Kramers, filtered)."""
    e = np.arange(16.0, kvp, 3.0) + 1.5
    n = (kvp - e) / e
    n *= np.exp(-mu_linear("aluminium", e) * al_mm * 2.7 - mu_linear("copper", e) * cu_mm * 8.96)
    return e, n / n.sum()


def displace(maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Paths with bone, marrow and implants taking the place of soft tissue (all >= 0)."""
    out = {m: np.clip(p, 0, None) for m, p in maps.items() if m != "tissue"}
    taken = sum(p for m, p in out.items() if m not in ("fat", "gas", "lead"))
    tissue = maps.get("tissue", np.zeros_like(taken)) - taken - out.pop("gas", 0.0)
    out["tissue"] = np.clip(tissue, 0, None)
    return out


def primary(paths: dict[str, np.ndarray], exp: Exposure) -> np.ndarray:
    """Detected energy behind the object relative to no object (per pixel)."""
    e, n = spectrum(exp.kvp, exp.filter_al_mm, exp.filter_cu_mm)
    phosphor = "bafbr" if exp.detector == "cr" else "csi"
    thick = 0.18 if exp.detector == "cr" else 0.5
    absorbed = 1 - np.exp(-mu_linear(phosphor, e) * thick * 4.5)
    weight = n * absorbed * e
    weight /= weight.sum()
    shape = next(iter(paths.values())).shape
    out = np.zeros(shape)
    mus = {m: mu_linear("cortical" if m == "cancellous" else m, e) for m in paths}
    for i in range(len(e)):
        line = np.zeros(shape)
        for m, p in paths.items():
            line += mus[m][i] * p
        out += weight[i] * np.exp(-line)
    return out


def water_equivalent(paths: dict[str, np.ndarray]) -> np.ndarray:
    """Water-equivalent thickness (mm) at 60 keV, for scatter."""
    e = np.array([60.0])
    ref = mu_linear("water", e)[0]
    total = sum(mu_linear("cortical" if m == "cancellous" else m, e)[0] * p
                for m, p in paths.items())
    return np.clip(total / ref, 0, None)


def add_scatter(signal: np.ndarray, water_mm: np.ndarray, pixel_mm: float, exp: Exposure,
                rng: np.random.Generator) -> np.ndarray:
    """Primary plus a broad scatter halo; the scatter-to-primary ratio grows with thickness."""
    k = (0.3 if exp.grid else 1.2) * rng.uniform(0.7, 1.3)
    spr = k * (1 - np.exp(-water_mm / 180.0)) * (water_mm / 150.0) ** 0.5
    scat = signal * spr
    step = max(1, int(round(4.0 / pixel_mm)))
    small = scat[::step, ::step]
    small = ndimage.gaussian_filter(small, sigma=rng.uniform(10, 22) / (pixel_mm * step),
                                    mode="nearest")
    zoom = (signal.shape[0] / small.shape[0], signal.shape[1] / small.shape[1])
    return signal + ndimage.zoom(small, zoom, order=1, mode="nearest")[:signal.shape[0],
                                                                       :signal.shape[1]]


def heel_ramp(shape: tuple[int, int], heel: float, vertical: bool) -> np.ndarray:
    """Anode heel: intensity falls along the anode-cathode axis."""
    n = shape[0] if vertical else shape[1]
    ramp = 1 + heel * (np.linspace(0.5, -0.5, n) + 0.15 * np.linspace(-1, 1, n) ** 2)
    return ramp[:, None] if vertical else ramp[None, :]


def detect(signal: np.ndarray, pixel_mm: float, exp: Exposure, rng: np.random.Generator
           ) -> np.ndarray:
    """Quantum noise, detector blur and structured detector noise on the stored grid."""
    quanta = exp.quanta_per_mm2 * pixel_mm**2
    noisy = signal + rng.standard_normal(signal.shape) * np.sqrt(np.maximum(signal, 1e-6)
                                                                 / quanta)
    noisy = ndimage.gaussian_filter(noisy, exp.blur_mm / pixel_mm)
    if exp.detector == "cr":
        glare = ndimage.gaussian_filter(noisy[::4, ::4], 6.0 / (pixel_mm * 4))
        noisy = 0.94 * noisy + 0.06 * ndimage.zoom(glare, 4, order=1)[:noisy.shape[0],
                                                                        :noisy.shape[1]]
        lines = 1 + rng.normal(0, 0.004, (noisy.shape[0], 1))  # laser scan line gain
        noisy = noisy * lines
    else:
        tiles = rng.integers(1, 3)
        gains = 1 + rng.normal(0, 0.003, (1, tiles))
        cols = np.minimum(np.arange(noisy.shape[1]) * tiles // noisy.shape[1], tiles - 1)
        noisy = noisy * gains[:, cols] * (1 + rng.normal(0, 0.002, (1, noisy.shape[1])))
    electronic = rng.standard_normal(signal.shape) * (0.6 / quanta)
    return np.maximum(noisy + electronic, 1e-5)
