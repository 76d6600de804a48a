"""Network parts the model card can ask for on top of a timm backbone (seed 001's recipe).

- `GeMPool`: generalized-mean pooling (Radenovic et al. 2018), ``(mean(x^p))^(1/p)`` with a
  learnable p; p = 1 is average pooling, p -> inf max pooling. It replaces the backbone's
  global average pool; class maps of a GeM + linear head are Grad-CAM in closed form
  (cam.gem_grad_cam; cam.linear_head checks the head's form numerically).
- the convolutional block attention module (CBAM, Woo et al. 2018) is timm's `CbamModule`,
  placed in every residual block of a ResNet through ``block_args={"attn_layer": "cbam"}``.

Imports torch at module level: import this module lazily (models.create_model does).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hiprouter.inference.ood import GEM_EPS

POOLS = ("avg", "gem")
ATTENTIONS = ("none", "cbam", "se", "eca")


class GeMPool(nn.Module):
    """Global generalized-mean pooling to (B, C), the flattening pool of a timm head."""

    def __init__(self, p: float = 3.0, eps: float = GEM_EPS) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.full((1,), float(p)))
        self.eps = eps
        self.flatten = nn.Flatten(1)  # timm heads read `global_pool.flatten`
        self.pool_type = "gem"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp(min=1.0)
        return x.clamp(min=self.eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)

    def is_identity(self) -> bool:  # timm's SelectAdaptivePool2d interface
        return False

    def feat_mult(self) -> int:
        return 1


def set_global_pool(module: Any, pool: str) -> Any:
    """Replace the timm model's global pool (``global_pool`` attribute) by `pool`."""
    if pool in ("", "avg", None):
        return module
    if pool != "gem":
        raise ValueError(f"unknown pool {pool!r}; choose from {', '.join(POOLS)}")
    current = getattr(module, "global_pool", None)
    if not isinstance(current, nn.Module):
        raise ValueError(f"{type(module).__name__} has no global_pool to replace with GeM")
    module.global_pool = GeMPool()
    return module
