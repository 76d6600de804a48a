"""Osteonecrosis of the femoral head (seed 002): head segmentation, normative model, stage.

Per hip crop (display space, [0, 1]):

1. *locator* U-Net on the letterboxed crop (small input): a coarse head mask, whose largest
   component gives the head's centre and size;
2. *refiner* U-Net on a square window around it (``roi_scale`` x the coarse diameter):
   the head mask, mapped back to the crop's (and so the source image's) pixels with
   bilinear interpolation of the probability map at every pixel centre;
3. the *head patch*: a square of ``patch_scale`` x the head's diameter around the refined
   mask, intensities normalised inside the mask (median, standard deviation), outside set
   to 0, plus the mask as a second channel; mirrored so the lateral side is on the left
   (every head looks like a right hip on a standard AP display);
4. the *normative model*: the latent mean of a convolutional VAE trained on healthy heads;
   the Mahalanobis distance to the healthy heads' latent means (mean and Ledoit-Wolf
   covariance stored with the weights), its percentile among held-out healthy heads, and
   a stage band from distance thresholds calibrated on a labelled validation set.

Coordinates are continuous pixel coordinates (x = column, y = row) with a pixel's centre
at +0.5, as DICOM SCOORDs use them.

A model folder holds card.yaml and one safetensors file with every part (``locator.*``,
``refiner.*``, ``vae.*`` as float16, ``normative.*`` as float32), so the Device UID
changes whenever any part changes. A segmentation-only folder (card task
``segmentation``, from ``hiprouter train --label-set onfh --task segmentation``) has the
two U-Nets only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hiprouter.findings import ModelInfo
from hiprouter.inference.models import (
    ONFH_LABEL_SET,
    ModelCard,
    ModelError,
    read_card,
    select_device,
    sha256_file,
    verified_card,
)
from hiprouter.inference.preprocess import letterbox, normalise

ONFH_TASK = "onfh_normative"
"""card.task of a complete ONFH model (segmentation + normative model + stage thresholds)."""
SEGMENTATION_TASK = "head_segmentation"
"""card.task of a femoral-head segmentation model (the two U-Nets only)."""
LABEL_SET = ONFH_LABEL_SET

DEFAULT_PARAMETERS: dict[str, Any] = {
    "locator": {"size": 96, "widths": [8, 16, 32, 64]},
    "refiner": {"size": 96, "widths": [16, 32, 64, 128], "roi_scale": 2.0},
    "vae": {"patch_size": 64, "patch_scale": 1.0, "patch_offset": 0.25, "patch_highpass": 0.05,
            "latent_dim": 16,
            "widths": [16, 32, 64, 128], "channels": ["intensity", "mask"]},
    "weights_dtype": "float16",
}


# --- geometry -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Square:
    """A square window in an image's continuous pixel coordinates."""

    cx: float
    cy: float
    side: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        h = self.side / 2
        return self.cx - h, self.cy - h, self.cx + h, self.cy + h

    def to_window(self, x: np.ndarray, y: np.ndarray, size: int) -> tuple[np.ndarray,
                                                                           np.ndarray]:
        """Image coordinates -> window pixel-index coordinates (centres at integers)."""
        x0, y0, _, _ = self.box
        k = size / self.side
        return (np.asarray(x) - x0) * k - 0.5, (np.asarray(y) - y0) * k - 0.5

    def from_window(self, u: np.ndarray, v: np.ndarray, size: int) -> tuple[np.ndarray,
                                                                             np.ndarray]:
        """Window pixel-index coordinates -> image coordinates."""
        x0, y0, _, _ = self.box
        k = self.side / size
        return x0 + (np.asarray(u) + 0.5) * k, y0 + (np.asarray(v) + 0.5) * k


def resample(img: np.ndarray, square: Square, size: int) -> np.ndarray:
    """The window `square` of a float image as size x size (antialiased, zeros outside)."""
    x0, y0, x1, y1 = square.box
    rows, cols = img.shape
    c0, r0 = math.floor(x0) - 1, math.floor(y0) - 1
    c1, r1 = math.ceil(x1) + 1, math.ceil(y1) + 1
    part = np.zeros((r1 - r0, c1 - c0), np.float32)
    ir0, ir1, ic0, ic1 = max(r0, 0), min(r1, rows), max(c0, 0), min(c1, cols)
    if ir1 > ir0 and ic1 > ic0:
        part[ir0 - r0:ir1 - r0, ic0 - c0:ic1 - c0] = img[ir0:ir1, ic0:ic1]
    pil = Image.fromarray(part, mode="F")
    out = pil.resize((size, size), Image.Resampling.BILINEAR,
                     box=(x0 - c0, y0 - r0, x1 - c0, y1 - r0))
    return np.asarray(out, dtype=np.float32)


def paste(prob: np.ndarray, square: Square, shape: tuple[int, int]) -> tuple[np.ndarray,
                                                                              tuple[int, int]]:
    """A window's probability map sampled at the pixel centres of an image of `shape`.

    Returns (probabilities over the window's bounding box, (row0, col0) of that box).
    """
    from scipy.ndimage import map_coordinates

    size = prob.shape[0]
    x0, y0, x1, y1 = square.box
    c0, r0 = max(0, math.floor(x0)), max(0, math.floor(y0))
    c1, r1 = min(shape[1], math.ceil(x1)), min(shape[0], math.ceil(y1))
    if c1 <= c0 or r1 <= r0:
        return np.zeros((0, 0), np.float32), (r0, c0)
    cols = np.arange(c0, c1) + 0.5
    rows = np.arange(r0, r1) + 0.5
    u, v = square.to_window(cols, rows, size)
    vv, uu = np.meshgrid(v, u, indexing="ij")
    out = map_coordinates(prob.astype(np.float32), [vv, uu], order=1, mode="constant",
                          cval=0.0)
    return out.astype(np.float32), (r0, c0)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a boolean mask, holes filled."""
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    keep = labels == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(keep)


def centroid(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) of a mask's centroid in continuous pixel coordinates."""
    rows, cols = np.nonzero(mask)
    return float(cols.mean()) + 0.5, float(rows.mean()) + 0.5


def equivalent_diameter(mask: np.ndarray) -> float:
    """Diameter of the disc with the mask's area (pixels)."""
    return 2.0 * math.sqrt(float(mask.sum()) / math.pi)


def outline(prob: np.ndarray, square: Square, max_points: int = 64) -> np.ndarray:
    """The closed 0.5 contour of a window's probability map in image coordinates (N, 2).

    The longest contour line (the head), subsampled to at most `max_points` points.
    """
    import contourpy

    padded = np.pad(prob.astype(np.float64), 1)  # closes contours touching the border
    lines = contourpy.contour_generator(z=padded).lines(0.5)
    if not lines:
        return np.zeros((0, 2))
    line = max(lines, key=len)
    if len(line) > 1 and np.allclose(line[0], line[-1]):
        line = line[:-1]
    if len(line) > max_points:
        line = line[np.linspace(0, len(line), max_points, endpoint=False).astype(int)]
    x, y = square.from_window(line[:, 0] - 1.0, line[:, 1] - 1.0, prob.shape[0])
    return np.stack([x, y], axis=1)


SATURATED_LEVEL = 0.99
SATURATED_FRACTION = 0.5
"""A head more than half white in the display is not assessed (and not learned from)."""


def saturated_fraction(image: np.ndarray, prob: np.ndarray) -> float:
    """Share of a window's head pixels (prob > 0.5) at or above SATURATED_LEVEL."""
    mask = prob > 0.5
    return float((image[mask] >= SATURATED_LEVEL).mean()) if mask.any() else 0.0


def lateral_on_image_right(laterality: str, standard_display: bool) -> bool | None:
    """Whether a hip's lateral side is on the image's right (None: side unknown)."""
    if laterality not in ("R", "L"):
        return None
    return (laterality == "L") == standard_display


def head_patch(image: np.ndarray, prob: np.ndarray, size: int, scale: float, mirror: bool,
               offset: float = 0.0, highpass: float = 0.0) -> np.ndarray | None:
    """The normalised 2-channel head patch (intensity inside the mask, mask) of a window.

    ``image`` and ``prob`` are the refiner's window (same geometry). The patch is a square
    of ``scale`` x the head's diameter, centred ``offset`` x the diameter above the head's
    centroid (towards the weight-bearing dome, where osteonecrosis shows). ``highpass``
    > 0 subtracts a Gaussian blur of that many diameters (shading from the acetabulum and
    the tone curve) before the intensities are normalised inside the mask (median,
    standard deviation, clipped at 3). None when the mask is empty.
    """
    from scipy import ndimage

    mask = largest_component(prob > 0.5)
    if mask.sum() < 16:
        return None
    cx, cy = centroid(mask)
    d = equivalent_diameter(mask)
    square = Square(cx, cy - offset * d, scale * d)
    img = resample(image, square, size)
    m = resample(mask.astype(np.float32), square, size) > 0.5
    if m.sum() < 16:
        return None
    if highpass > 0:
        img = img - ndimage.gaussian_filter(img, highpass * size / scale, mode="nearest")
    values = img[m]
    centre = float(np.median(values))
    spread = float(values.std())
    z = np.clip((img - centre) / max(spread, 1e-3), -3.0, 3.0) / 3.0
    patch = np.stack([np.where(m, z, 0.0), m.astype(np.float32)]).astype(np.float32)
    return patch[:, :, ::-1].copy() if mirror else patch


# --- statistics ---------------------------------------------------------------------------

def mahalanobis(z: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Mahalanobis distance of each row of `z` from `mean` under a precision matrix."""
    d = np.atleast_2d(np.asarray(z, dtype=np.float64)) - np.asarray(mean, dtype=np.float64)
    q = np.einsum("ij,jk,ik->i", d, np.asarray(precision, dtype=np.float64), d)
    return np.sqrt(np.maximum(q, 0.0))


def percentile_of(distance: float, reference: np.ndarray) -> float:
    """Percentage of the (sorted) healthy reference distances at or below `distance`."""
    if len(reference) == 0:
        return float("nan")
    return 100.0 * float(np.searchsorted(reference, distance, side="right")) / len(reference)


@dataclass(frozen=True)
class Staging:
    """Stage bands from distance thresholds (calibrated on a labelled validation set)."""

    bands: list[tuple[str, tuple[int, ...]]]
    """(class key, grades) per band, lowest first, e.g. ("onfh_0_1", (0, 1))."""
    thresholds: list[float]
    """Distance at which each band after the first begins (len(bands) - 1, ascending)."""
    grade_log_distance: dict[int, tuple[float, float]] = field(default_factory=dict)
    """Grade -> (mean, std) of log distance on the validation set, for probabilities."""

    @classmethod
    def from_card(cls, card: ModelCard) -> Staging:
        cal = card.calibration
        try:
            bands = [(str(b["key"]), tuple(int(g) for g in b["grades"]))
                     for b in cal["stage_bands"]]
            thresholds = [float(t) for t in cal["stage_thresholds"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"model {card.name}: calibration lacks stage_bands / "
                             f"stage_thresholds ({exc})") from exc
        if len(thresholds) != len(bands) - 1 or thresholds != sorted(thresholds):
            raise ModelError(f"model {card.name}: need {len(bands) - 1} ascending stage "
                             f"thresholds, card has {thresholds}")
        logd = {int(g): (float(v["mean"]), float(v["std"]))
                for g, v in (cal.get("grade_log_distance") or {}).items()}
        return cls(bands, thresholds, logd)

    @property
    def keys(self) -> list[str]:
        return [k for k, _ in self.bands]

    def band(self, distance: float) -> int:
        return int(np.searchsorted(np.asarray(self.thresholds), distance, side="right"))

    def probabilities(self, distance: float) -> dict[str, float]:
        """P(band | distance): per-grade normal densities of log distance, equal priors.

        Without grade statistics, the band the thresholds give has probability 1.
        """
        keys = self.keys
        if not self.grade_log_distance:
            chosen = self.band(distance)
            return {k: float(i == chosen) for i, k in enumerate(keys)}
        x = math.log(max(distance, 1e-6))
        dens = {}
        for g, (mu, sd) in self.grade_log_distance.items():
            sd = max(sd, 1e-3)
            dens[g] = math.exp(-0.5 * ((x - mu) / sd) ** 2) / sd
        total = sum(dens.values())
        if total <= 0 or not math.isfinite(total):
            chosen = self.band(distance)
            return {k: float(i == chosen) for i, k in enumerate(keys)}
        return {k: sum(dens.get(g, 0.0) for g in grades) / total for k, grades in self.bands}


# --- the model ----------------------------------------------------------------------------

@dataclass
class HeadSegmentation:
    """The refined head of one crop, in crop coordinates."""

    window: Square
    image: np.ndarray
    """The refiner's input window (display space, size x size)."""
    prob: np.ndarray
    """Head probability over the window."""
    coarse_diameter: float
    diameter: float
    """Equivalent diameter of the refined mask in crop pixels."""

    def crop_mask(self, shape: tuple[int, int]) -> np.ndarray:
        """Boolean head mask over a crop of `shape`."""
        full = np.zeros(shape, dtype=bool)
        probs, (r0, c0) = paste(self.prob, self.window, shape)
        if probs.size:
            # every head pixel lies in the window's box: its components (and their holes)
            # are the same there as in the whole crop, at a fraction of the pixels
            window = probs > 0.5
            if window.any():
                full[r0:r0 + probs.shape[0], c0:c0 + probs.shape[1]] = \
                    largest_component(window)
        return full

    def crop_outline(self) -> np.ndarray:
        return outline(self.prob, self.window)

    def saturated_fraction(self) -> float:
        """Share of the head's pixels (refiner window) white in the display."""
        return saturated_fraction(self.image, self.prob)


def _unet(params: dict[str, Any]) -> Any:
    from hiprouter.inference.onfh_nets import UNet

    return UNet(tuple(params["widths"]))


def _vae(params: dict[str, Any]) -> Any:
    from hiprouter.inference.onfh_nets import ConvVAE

    return ConvVAE(int(params["patch_size"]), int(params["latent_dim"]),
                   len(params.get("channels", ["intensity", "mask"])), tuple(params["widths"]))


class OnnxNet:
    """One of the model's networks as an ONNX Runtime session (CPU): same call as `_forward`."""

    def __init__(self, path: Path) -> None:
        from hiprouter.inference.runtime import cpu_session

        self.session = cpu_session(path)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input": np.ascontiguousarray(batch, np.float32)})[0]


def _forward(net: Any, batch: np.ndarray, device: Any) -> np.ndarray:
    if isinstance(net, OnnxNet):
        return net.run(batch)
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(device)
        return net(x).float().cpu().numpy()


class HeadSegmenter:
    """The two U-Nets: crop -> refined head (or the reason there is none)."""

    def __init__(self, locator: Any, refiner: Any, params: dict[str, Any],
                 device: Any = "cpu") -> None:
        self.locator, self.refiner = locator, refiner  # torch modules in eval mode or OnnxNet
        self.params = params
        self.device = device
        self.locator_size = int(params["locator"]["size"])
        self.refiner_size = int(params["refiner"]["size"])
        self.roi_scale = float(params["refiner"]["roi_scale"])

    def locate(self, crop: np.ndarray) -> tuple[float, float, float] | None:
        """(x, y, diameter) of the head in crop coordinates from the locator, or None."""
        boxed, lb = letterbox(crop, self.locator_size)
        logits = _forward(self.locator, normalise(boxed)[None, None], self.device)[0, 0]
        mask = largest_component(logits > 0.0)
        if mask.sum() < 4:
            return None
        u, v = centroid(mask)
        sx, sy = lb.width / lb.src_width, lb.height / lb.src_height
        x, y = (u - lb.left) / sx, (v - lb.top) / sy
        return x, y, equivalent_diameter(mask) / ((sx + sy) / 2)

    def refine(self, crop: np.ndarray, x: float, y: float,
               diameter: float) -> HeadSegmentation | None:
        window = Square(x, y, self.roi_scale * diameter)
        image = resample(crop, window, self.refiner_size)
        logits = _forward(self.refiner, normalise(image)[None, None], self.device)[0, 0]
        prob = 1.0 / (1.0 + np.exp(-logits))
        mask = largest_component(prob > 0.5)
        if mask.sum() < 16:
            return None
        d = equivalent_diameter(mask) * window.side / self.refiner_size
        return HeadSegmentation(window, image, prob.astype(np.float32), diameter, d)

    def segment(self, crop: np.ndarray, refine_passes: int = 2) -> HeadSegmentation | None:
        """Locate, then refine; a second pass re-centres the window on the refined head."""
        found = self.locate(crop)
        if found is None:
            return None
        seg = self.refine(crop, *found)
        for _ in range(refine_passes - 1):
            if seg is None:
                break
            m = largest_component(seg.prob > 0.5)
            u, v = centroid(m)
            x, y = seg.window.from_window(np.array(u - 0.5), np.array(v - 0.5),
                                          self.refiner_size)
            again = self.refine(crop, float(x), float(y), seg.diameter)
            if again is None:
                break
            again.coarse_diameter = seg.coarse_diameter
            seg = again
        return seg


class NormativeModel:
    """VAE encoder + the healthy heads' latent distribution + the stage calibration."""

    def __init__(self, vae: Any, mean: np.ndarray, covariance: np.ndarray,
                 precision: np.ndarray, reference: np.ndarray, staging: Staging | None,
                 params: dict[str, Any], device: Any = "cpu",
                 encoder: OnnxNet | None = None) -> None:
        self.vae = vae.eval() if vae is not None else None
        self.encoder = encoder
        """The latent mean as an ONNX Runtime session (None: the torch VAE)."""
        self.mean = np.asarray(mean, np.float64)
        self.covariance = np.asarray(covariance, np.float64)
        self.precision = np.asarray(precision, np.float64)
        self.reference = np.sort(np.asarray(reference, np.float64))
        self.staging = staging
        self.params = params
        self.device = device
        self.patch_size = int(params["patch_size"])
        self.patch_scale = float(params["patch_scale"])
        self.patch_offset = float(params.get("patch_offset", 0.0))
        self.patch_highpass = float(params.get("patch_highpass", 0.0))

    def patch(self, image: np.ndarray, prob: np.ndarray, mirror: bool) -> np.ndarray | None:
        """The head patch of a refiner window, as this model was trained on it."""
        return head_patch(image, prob, self.patch_size, self.patch_scale, mirror,
                          self.patch_offset, self.patch_highpass)

    def latent(self, patches: np.ndarray) -> np.ndarray:
        """Latent means (N, latent_dim) of (N, 2, P, P) patches."""
        if self.encoder is not None:
            return self.encoder.run(patches)
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32))
            mu, _ = self.vae.encode(x.to(self.device))
            return mu.float().cpu().numpy()

    def distance(self, patches: np.ndarray) -> np.ndarray:
        return mahalanobis(self.latent(patches), self.mean, self.precision)

    def percentile(self, distance: float) -> float:
        return percentile_of(distance, self.reference)


@dataclass
class HeadAssessment:
    """What the model says about one head on one crop."""

    segmentation: HeadSegmentation
    distance: float
    percentile: float
    band: int
    probabilities: dict[str, float]
    mirrored: bool | None


def _split_state(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _load_module(module: Any, state: dict[str, Any], what: str, weights: Path) -> Any:
    import torch

    ref = module.state_dict()
    cast = {k: (v.to(ref[k].dtype) if k in ref and torch.is_floating_point(v) else v)
            for k, v in state.items()}
    try:
        module.load_state_dict(cast)
    except RuntimeError as exc:
        raise ModelError(f"{weights}: {what} weights do not fit the card's parameters: "
                         f"{exc}") from exc
    return module.eval()


class OnfhModel:
    """A complete ONFH model folder (or a segmentation-only one) loaded for inference."""

    def __init__(self, card: ModelCard, model_dir: Path, segmenter: HeadSegmenter,
                 normative: NormativeModel | None) -> None:
        self.card = card
        self.model_dir = model_dir
        self.segmenter = segmenter
        self.normative = normative

    @classmethod
    def load(cls, model_dir: Path, device: str = "auto",
             need_normative: bool = True, runtime: str = "torch") -> OnfhModel:
        """Load and check a model folder; `runtime` auto or onnx runs the networks with
        ONNX Runtime when the device is the CPU (3-10x faster than eager PyTorch for these
        small networks, docs/performance.md), torch keeps PyTorch."""
        model_dir = Path(model_dir)
        card = read_card(model_dir)
        if card.label_set != LABEL_SET or card.task not in (ONFH_TASK, SEGMENTATION_TASK):
            raise ModelError(f"{model_dir}: {card.name} is a {card.label_set!r} model for task "
                             f"{card.task!r}; the onfh kind needs an {LABEL_SET!r} model "
                             f"({ONFH_TASK})")
        if need_normative and card.task != ONFH_TASK:
            raise ModelError(f"{model_dir}: {card.name} is a segmentation model only; train "
                             f"the normative model on it (hiprouter train --label-set onfh "
                             f"--task normative --segmentation {model_dir})")
        card = verified_card(model_dir, card)
        from hiprouter.inference.bundle import BundleUnavailable
        from hiprouter.inference.runtime import cpu_without_torch

        if runtime in ("auto", "onnx") and cpu_without_torch(device):
            try:
                return cls._load_onnx(model_dir, card)
            except BundleUnavailable:  # e.g. no writable cache: torch, as before
                if runtime == "onnx":
                    raise
        if runtime == "onnx":
            raise ModelError(f"{model_dir}: runtime onnx runs on the CPU only (device {device})")
        from safetensors.torch import load_file

        weights = model_dir / card.weights_file
        dev = select_device(device)
        state = load_file(str(weights))
        params = {**DEFAULT_PARAMETERS, **card.parameters}
        locator = _load_module(_unet(params["locator"]), _split_state(state, "locator."),
                               "locator", weights).to(dev)
        refiner = _load_module(_unet(params["refiner"]), _split_state(state, "refiner."),
                               "refiner", weights).to(dev)
        segmenter = HeadSegmenter(locator, refiner, params, dev)
        normative = None
        if card.task == ONFH_TASK:
            vae = _load_module(_vae(params["vae"]), _split_state(state, "vae."), "VAE",
                               weights).to(dev)
            norm = {k: state[f"normative.{k}"].double().numpy()
                    for k in ("mean", "covariance", "precision", "reference")}
            normative = NormativeModel(vae, norm["mean"], norm["covariance"],
                                       norm["precision"], norm["reference"],
                                       Staging.from_card(card), params["vae"], dev)
        return cls(card, model_dir, segmenter, normative)

    @classmethod
    def _load_onnx(cls, model_dir: Path, card: ModelCard) -> OnfhModel:
        """The networks from the folder's ONNX bundle (no torch in this process); `card`
        has been checked against the weights."""
        from safetensors.numpy import load_file

        from hiprouter.inference.bundle import ensure_bundle

        folder, _ = ensure_bundle(model_dir, card)
        params = {**DEFAULT_PARAMETERS, **card.parameters}
        segmenter = HeadSegmenter(OnnxNet(folder / "locator.onnx"),
                                  OnnxNet(folder / "refiner.onnx"), params)
        normative = None
        if card.task == ONFH_TASK:
            state = load_file(str(model_dir / card.weights_file))
            norm = {k: state[f"normative.{k}"].astype(np.float64)
                    for k in ("mean", "covariance", "precision", "reference")}
            normative = NormativeModel(None, norm["mean"], norm["covariance"],
                                       norm["precision"], norm["reference"],
                                       Staging.from_card(card), params["vae"],
                                       encoder=OnnxNet(folder / "vae-mean.onnx"))
        return cls(card, model_dir, segmenter, normative)

    @property
    def info(self) -> ModelInfo:
        card = self.card
        return ModelInfo(name=card.name, version=card.version,
                         architecture=card.architecture, device_uid=card.device_uid,
                         synthetic_demo=card.synthetic_demo)

    def patch(self, seg: HeadSegmentation, mirror: bool) -> np.ndarray | None:
        assert self.normative is not None
        return self.normative.patch(seg.image, seg.prob, mirror)

    def assess(self, crop: np.ndarray, lateral_right: bool | None,
               max_saturated: float | None = SATURATED_FRACTION) -> HeadAssessment | str:
        """Segment and assess one crop; a string says why there is no assessment.

        `lateral_right`: whether the hip's lateral side is on the image's right (mirrored
        to the left for the normative model); None (side unknown): both orientations, the
        smaller distance. A head with more than `max_saturated` of its pixels white in
        the display (metal, or a window that clips bone) is not assessed.
        """
        return self.assess_segmentation(self.segmenter.segment(crop), lateral_right,
                                        max_saturated)

    def assess_segmentation(self, seg: HeadSegmentation | None, lateral_right: bool | None,
                            max_saturated: float | None = SATURATED_FRACTION
                            ) -> HeadAssessment | str:
        """`assess` of a head already segmented (None: no head found)."""
        if self.normative is None or self.normative.staging is None:
            raise ModelError(f"{self.card.name}: no normative model")
        if seg is None:
            return "no femoral head found"
        if max_saturated is not None:
            white = seg.saturated_fraction()
            if white > max_saturated:
                return (f"femoral head white in the display ({100 * white:.0f} % of its pixels:"
                        " metal, or a window that clips bone)")
        flips = [lateral_right] if lateral_right is not None else [False, True]
        patches = [self.patch(seg, bool(f)) for f in flips]
        if any(p is None for p in patches):
            return "femoral head segmentation too small to assess"
        dist = self.normative.distance(np.stack(patches))  # type: ignore[arg-type]
        best = int(np.argmin(dist))
        d = float(dist[best])
        staging = self.normative.staging
        return HeadAssessment(seg, d, self.normative.percentile(d), staging.band(d),
                              staging.probabilities(d),
                              flips[best] if lateral_right is not None else None)


def export_networks(model: OnfhModel, out: Path) -> list[str]:
    """Write the model's networks as ONNX graphs into `out` (export.py's onfh bundle)."""
    import torch

    from hiprouter.inference.onfh_nets import VaeMean
    from hiprouter.inference.runtime import write_onnx

    seg = model.segmenter
    written = []
    for name, net, size in (("locator", seg.locator, seg.locator_size),
                            ("refiner", seg.refiner, seg.refiner_size)):
        write_onnx(net.float().eval(), torch.zeros(1, 1, size, size), out / f"{name}.onnx",
                   ["output"])
        written.append(f"{name}.onnx")
    if model.normative is not None and model.normative.vae is not None:
        p = model.normative.params
        shape = (1, len(p.get("channels", ["intensity", "mask"])), int(p["patch_size"]),
                 int(p["patch_size"]))
        write_onnx(VaeMean(model.normative.vae).float().eval(), torch.zeros(*shape),
                   out / "vae-mean.onnx", ["output"])
        written.append("vae-mean.onnx")
    return written


def round_weights(module: Any, dtype: str = "float16") -> Any:
    """Round a module's floating-point tensors through `dtype` (as they will be stored), so
    figures computed afterwards are those of the shipped weights."""
    import torch

    target = getattr(torch, dtype)
    with torch.no_grad():
        for v in module.state_dict().values():
            if torch.is_floating_point(v):
                v.copy_(v.to(target).to(v.dtype))
    return module


def save_onfh_model(card: ModelCard, model_dir: Path, modules: dict[str, Any],
                    arrays: dict[str, np.ndarray] | None = None,
                    dtype: str = "float16") -> ModelCard:
    """Write the model file (modules' tensors as `dtype`, arrays as float32) and the card.

    ``modules`` maps a prefix (locator, refiner, vae) to a torch module. The card gets the
    weights' sha256 and the Device UID derived from it.
    """
    from datetime import UTC, datetime

    import torch
    from safetensors.torch import save_file

    from hiprouter.inference.models import device_uid_for, write_card

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    target = getattr(torch, dtype)
    state: dict[str, Any] = {}
    for prefix, module in modules.items():
        for k, v in module.state_dict().items():
            v = v.detach().cpu()
            state[f"{prefix}.{k}"] = (v.to(target) if torch.is_floating_point(v) else v
                                      ).contiguous()
    for k, a in (arrays or {}).items():
        state[f"normative.{k}"] = torch.from_numpy(np.ascontiguousarray(a, np.float32))
    weights = model_dir / card.weights_file
    save_file(state, str(weights), metadata={"architecture": card.architecture,
                                             "name": card.name, "version": card.version})
    sha = sha256_file(weights)
    card = card.model_copy(update={
        "weights_sha256": sha, "device_uid": device_uid_for(sha),
        "created": card.created or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")})
    write_card(model_dir, card)
    return card


def load_state(model_dir: Path) -> tuple[ModelCard, dict[str, Any]]:
    """Card and raw tensors of a model folder (for training on top of a segmentation)."""
    from safetensors.torch import load_file

    card = read_card(model_dir)
    weights = Path(model_dir) / card.weights_file
    if sha256_file(weights) != card.weights_sha256:
        raise ModelError(f"{weights}: sha256 does not match the model card")
    return card, load_file(str(weights))
