"""Class activation maps, mapped back onto the source radiograph.

For a global-average-pool + linear head, Grad-CAM on the last feature map equals CAM:
the map for class k is sum_c w[k, c] * F[c] and needs only the forward pass (the runner
returns F). Heads that are not of that form use Grad-CAM with autograd (PyTorch only).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hiprouter.inference.preprocess import Letterbox


def linear_head(module: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(weight (K, C), bias (K,)) when the head is exactly global-average-pool + linear.

    Checked numerically on random features, so an architecture whose head does more
    (e.g. MobileNetV3's conv head after pooling) falls back to Grad-CAM.
    """
    import torch

    classifier = module.get_classifier() if hasattr(module, "get_classifier") else None
    if not isinstance(classifier, torch.nn.Linear):
        return None
    weight = classifier.weight.detach().float().cpu()
    bias = (classifier.bias.detach().float().cpu() if classifier.bias is not None
            else torch.zeros(weight.shape[0]))
    try:
        was_training = module.training
        module.eval()
        param = next(module.parameters())
        feats = torch.randn(2, weight.shape[1], 5, 4, device=param.device, dtype=param.dtype)
        with torch.inference_mode():
            got = module.forward_head(feats).float().cpu()
        module.train(was_training)
    except Exception:
        return None
    expected = feats.float().cpu().mean(dim=(2, 3)) @ weight.T + bias
    if got.shape != expected.shape or not torch.allclose(got, expected, atol=1e-3, rtol=1e-3):
        return None
    return weight.numpy(), bias.numpy()


def normalise_map(raw: np.ndarray) -> np.ndarray:
    """ReLU, then scale to [0, 1] (all zeros when nothing is positive)."""
    pos = np.maximum(raw.astype(np.float32), 0.0)
    peak = float(pos.max()) if pos.size else 0.0
    return pos / peak if peak > 0 else pos


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


def to_source(model_map: np.ndarray, letterbox: Letterbox, box: tuple[int, int, int, int],
              source_shape: tuple[int, int], into: np.ndarray | None = None) -> np.ndarray:
    """Place a model-space map into the source image geometry (Rows, Columns).

    `box` is the crop's (top, left, bottom, right) in source pixels. With `into`, the map is
    combined (maximum) into an existing full-size map, e.g. the other hip of an AP pelvis.
    """
    return place(letterbox.to_source(model_map), box, source_shape, into)


def place(crop_map: np.ndarray, box: tuple[int, int, int, int], source_shape: tuple[int, int],
          into: np.ndarray | None = None) -> np.ndarray:
    """Put a crop-geometry map at its box in a full-size map (maximum with what is there)."""
    top, left, bottom, right = box
    if crop_map.shape != (bottom - top, right - left):
        raise ValueError(f"crop map {crop_map.shape} does not fit box {box}")
    out = into if into is not None else np.zeros(source_shape, dtype=np.float32)
    region = out[top:bottom, left:right]
    np.maximum(region, np.clip(crop_map, 0.0, 1.0), out=region)
    return out
