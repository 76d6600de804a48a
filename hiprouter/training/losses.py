"""Training losses: cross-entropy, focal loss and class-balanced focal loss (seed 001).

Class-balanced weights follow Cui et al. 2019 ("Class-Balanced Loss Based on Effective
Number of Samples"): the effective number of samples of a class with n samples is
``E_n = (1 - beta^n) / (1 - beta)``; its weight is ``1 / E_n``, normalised so that the
weights of the classes present sum to the number of those classes. Focal loss (Lin et al.
2017) down-weights easy examples: ``FL = -w_y (1 - p_y)^gamma log p_y``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

LOSSES = ("ce", "focal", "cb-focal", "cb-ce")


def class_balanced_weights(counts: Sequence[int], beta: float = 0.999) -> np.ndarray:
    """Effective-number weights per class; classes without samples get weight 0."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    n = np.asarray(counts, dtype=np.float64)
    present = n > 0
    weights = np.zeros_like(n)
    effective = (1.0 - np.power(beta, n[present])) / (1.0 - beta)
    weights[present] = 1.0 / effective
    total = weights.sum()
    if total > 0:
        weights *= present.sum() / total
    return weights


def make_loss(name: str, counts: Sequence[int] | None = None, gamma: float = 2.0,
              beta: float = 0.999, label_smoothing: float = 0.0) -> Any:
    """A torch loss module for logits (B, K) and integer targets (B,)."""
    import torch

    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
    weight = None
    if name.startswith("cb-"):
        if counts is None:
            raise ValueError(f"loss {name} needs the class counts")
        weight = torch.as_tensor(class_balanced_weights(counts, beta), dtype=torch.float32)
    if name in ("ce", "cb-ce"):
        return torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
    return FocalLoss(gamma=gamma, weight=weight)


def _focal_module() -> type:
    import torch

    class _FocalLoss(torch.nn.Module):
        """Mean over the batch of ``-w_y (1 - p_y)^gamma log p_y``."""

        def __init__(self, gamma: float = 2.0, weight: Any = None) -> None:
            super().__init__()
            self.gamma = float(gamma)
            self.register_buffer("weight", weight if weight is not None else None)

        def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            logp = torch.log_softmax(logits.float(), dim=1)
            logp_y = logp.gather(1, target[:, None]).squeeze(1)
            loss = -torch.pow(1.0 - logp_y.exp(), self.gamma) * logp_y
            if self.weight is not None:
                loss = loss * self.weight.to(loss.device)[target]
            return loss.mean()

    return _FocalLoss


def FocalLoss(gamma: float = 2.0, weight: Any = None) -> Any:  # noqa: N802 (a class factory)
    """Focal loss module (optionally class-weighted); torch is imported lazily."""
    return _focal_module()(gamma, weight)
