"""Class activation maps, mapped back onto the source radiograph.

For a global-average-pool + linear head, Grad-CAM on the last feature map equals CAM:
the map for class k is sum_c w[k, c] * F[c] and needs only the forward pass (the runner
returns F). For a generalized-mean (GeM) pool + linear head Grad-CAM has a closed form too
(`gem_grad_cam`), so it needs the forward pass and the head, not autograd: such models serve
from ONNX Runtime with their maps. Heads of any other form use Grad-CAM with autograd
(PyTorch only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hiprouter.inference.ood import GEM_EPS, pooled
from hiprouter.inference.preprocess import Letterbox


def linear_head(module: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(weight (K, C), bias (K,)) when the head is exactly a global pool + linear: average
    pooling, or generalized-mean pooling (a ``global_pool`` with exponent ``p``).

    Checked numerically on random features, so an architecture whose head does more
    (e.g. MobileNetV3's conv head after pooling) falls back to Grad-CAM with autograd.
    """
    import torch

    classifier = module.get_classifier() if hasattr(module, "get_classifier") else None
    if not isinstance(classifier, torch.nn.Linear):
        return None
    weight = classifier.weight.detach().float().cpu()
    bias = (classifier.bias.detach().float().cpu() if classifier.bias is not None
            else torch.zeros(weight.shape[0]))
    p = gem_exponent(module)
    try:
        was_training = module.training
        module.eval()
        param = next(module.parameters())
        feats = torch.rand(2, weight.shape[1], 5, 4, device=param.device, dtype=param.dtype)
        with torch.inference_mode():
            got = module.forward_head(feats).float().cpu()
        module.train(was_training)
    except Exception:
        return None
    features = feats.float().cpu().numpy()
    pooled_features = (pooled(features) if p is None else pooled(features, "gem", p))
    expected = pooled_features @ weight.numpy().T.astype(np.float64) + bias.numpy()
    if got.shape != expected.shape or not np.allclose(got.numpy(), expected, atol=1e-3,
                                                      rtol=1e-3):
        return None
    return weight.numpy(), bias.numpy()


def gem_exponent(module: Any) -> float | None:
    """The exponent p of a module's GeM global pool (clamped to >= 1 as in its forward pass),
    None when the pool is not GeM."""
    pool = getattr(module, "global_pool", None)
    param = getattr(pool, "p", None)
    if param is None or getattr(pool, "pool_type", None) != "gem":
        return None
    return float(param.detach().clamp(min=1.0).item())


PEAK_STEP = 4
"""`CropHeat.peak` looks for the maximum on a grid this many crop pixels apart."""


class CropHeat:
    """A crop's heat map kept as each ensemble member's model-space map and letterbox, and
    mapped onto the crop only at the size asked for: the full crop (`full`), an SC's
    scale (`at`), or coarsely to find its peak. Mapping a 5 x 5 map onto a full-size hip
    crop costs several milliseconds, and most maps of a job are never shown."""

    def __init__(self, parts: Sequence[tuple[np.ndarray, Letterbox]]) -> None:
        if not parts:
            raise ValueError("a crop heat map needs at least one model map")
        self.parts = list(parts)
        first = self.parts[0][1]
        self.shape: tuple[int, int] = (first.src_height, first.src_width)
        self._full: np.ndarray | None = None

    def at(self, rows: int, cols: int) -> np.ndarray:
        """The map over the crop resampled to (rows, cols): members summed, then
        `normalise_map` (as the full-size map, at that resolution)."""
        if (rows, cols) == self.shape:
            return self.full()
        return self._mapped((rows, cols))

    def full(self) -> np.ndarray:
        """The map in the crop's own geometry (computed once)."""
        if self._full is None:
            self._full = self._mapped(self.shape)
        return self._full

    def _mapped(self, shape: tuple[int, int]) -> np.ndarray:
        model_map, box = self.parts[0]
        acc = box.to_source(model_map, shape)
        for model_map, box in self.parts[1:]:
            acc += box.to_source(model_map, shape)
        return normalise_map(acc, inplace=True)

    def peak(self, step: int = PEAK_STEP) -> tuple[float, float] | None:
        """(column, row) of the map's maximum in continuous crop pixels, found on a grid
        `step` times coarser than the crop (a CAM is smooth at that scale), or None when
        nothing is positive."""
        rows, cols = self.shape
        small = (max(1, -(-rows // step)), max(1, -(-cols // step)))
        coarse = self._full if self._full is not None else self.at(*small)
        if float(coarse.max()) <= 0:
            return None
        r, c = np.unravel_index(int(coarse.argmax()), coarse.shape)
        return ((c + 0.5) * cols / coarse.shape[1], (r + 0.5) * rows / coarse.shape[0])


def normalise_map(raw: np.ndarray, inplace: bool = False) -> np.ndarray:
    """ReLU, then scale to [0, 1] (all zeros when nothing is positive). With `inplace`, a
    float32 `raw` is overwritten instead of copied (full-size maps of the caller's own)."""
    if inplace and raw.dtype == np.float32:
        pos = np.maximum(raw, 0.0, out=raw)
    else:
        pos = np.maximum(raw.astype(np.float32), 0.0)
    peak = float(pos.max()) if pos.size else 0.0
    if peak > 0:
        np.divide(pos, np.float32(peak), out=pos)
    return pos


def cam(features: np.ndarray, weight: np.ndarray, class_index: int) -> np.ndarray:
    """CAM of one image: features (C, h, w), head weight (K, C) -> (h, w) in [0, 1]."""
    raw = np.tensordot(weight[class_index], features, axes=([0], [0]))
    return normalise_map(raw)


def grad_cam(module: Any, batch: Any, class_index: int) -> np.ndarray:
    """Grad-CAM of one image (batch of 1, torch tensor) on the last feature map."""
    import torch

    module.eval()
    with torch.enable_grad():
        features = module.forward_features(batch)
        features.retain_grad()
        logits = module.forward_head(features)
        module.zero_grad(set_to_none=True)
        logits[0, class_index].backward()
        grads = features.grad[0]
        weights = grads.mean(dim=(1, 2))
        raw = torch.einsum("c,chw->hw", weights, features[0].detach())
    return normalise_map(raw.float().cpu().numpy())


def gem_grad_cam(features: np.ndarray, weight: np.ndarray, p: float,
                 class_index: int) -> np.ndarray:
    """Grad-CAM of one image for a GeM pool + linear head, in closed form (no autograd).

    With g_c = (mean_xy max(F_c, eps)^p)^(1/p) and logit_k = sum_c w[k, c] g_c + b_k, the
    gradient is d logit_k / d F_c(x, y) = w[k, c] g_c^(1-p) F_c(x, y)^(p-1) / N where F_c is
    above the clamp (0 elsewhere); Grad-CAM weighs each channel by its mean gradient:
    map = ReLU(sum_c alpha_c F_c), alpha_c = mean_xy of that gradient. Equal to `grad_cam` on
    the same model (tests/inference/test_cam_runtime.py).
    """
    f = np.asarray(features, dtype=np.float64)
    n = f.shape[1] * f.shape[2]
    g = pooled(f[None], "gem", p)[0]
    grad = np.where(f >= GEM_EPS, np.power(np.maximum(f, GEM_EPS), p - 1.0), 0.0)
    alpha = (np.asarray(weight[class_index], dtype=np.float64) * np.power(g, 1.0 - p)
             * grad.mean(axis=(1, 2)) / n)
    return normalise_map(np.tensordot(alpha, f, axes=([0], [0])))
