"""Fixtures for the inference tests: a small random-weight model directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from hiprouter.inference.models import ModelCard, create_model, save_model
from hiprouter.pipelines.hardware import HARDWARE as HARDWARE_CLASSES


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet10t at 64 px with random weights (timing and plumbing only)."""
    import torch

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-model")
    card = ModelCard(name="tiny", version="0.0.1", architecture="resnet10t", input_size=64,
                     classes=[c.key for c in HARDWARE_CLASSES], training_data="none (random)",
                     synthetic_demo=True)
    save_model(create_model("resnet10t", len(HARDWARE_CLASSES)), card, out)
    return out
