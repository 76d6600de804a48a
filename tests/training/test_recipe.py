"""Seed 001's recipe (CBAM, GeM, class-balanced focal loss), calibration, abstention and
triage thresholds, on fixed examples."""

from __future__ import annotations

import numpy as np
import pytest

from hiprouter.training.calibration import (
    choose_min_confidence,
    ece,
    fit_temperature,
    nll,
    plot_reliability,
    softmax,
    triage_threshold,
    triage_thresholds,
)
from hiprouter.training.losses import class_balanced_weights, make_loss


def test_class_balanced_weights_follow_the_effective_number() -> None:
    counts = [1000, 100, 10, 0]
    beta = 0.99
    w = class_balanced_weights(counts, beta)
    effective = [(1 - beta**n) / (1 - beta) for n in counts[:3]]
    raw = np.array([1 / e for e in effective])
    np.testing.assert_allclose(w[:3], raw / raw.sum() * 3)
    assert w[3] == 0.0 and w[:3].sum() == pytest.approx(3.0)
    assert w[2] > w[1] > w[0]
    # beta -> 0: no re-weighting; beta -> 1: inverse class frequency
    np.testing.assert_allclose(class_balanced_weights([5, 50], 0.0), [1.0, 1.0])
    inv = class_balanced_weights([5, 50], 0.999999)
    assert inv[0] / inv[1] == pytest.approx(10.0, rel=1e-3)


def test_focal_loss_matches_its_formula() -> None:
    import torch

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.1, 0.2, 0.3], [-1.0, 3.0, 0.0]])
    target = torch.tensor([0, 2, 1])
    loss = make_loss("cb-focal", counts=[10, 5, 1], gamma=2.0, beta=0.9)
    w = class_balanced_weights([10, 5, 1], 0.9)
    p = torch.softmax(logits, 1)[torch.arange(3), target].numpy()
    expected = np.mean(w[target.numpy()] * (1 - p) ** 2 * -np.log(p))
    assert float(loss(logits, target)) == pytest.approx(expected, rel=1e-5)
    ce = make_loss("ce")
    focal0 = make_loss("focal", gamma=0.0)
    assert float(focal0(logits, target)) == pytest.approx(float(ce(logits, target)), rel=1e-5)


def test_cbam_gem_resnet50_with_cb_focal_loss_trains() -> None:
    """ResNet-50 + CBAM in every block + GeM pooling + class-balanced focal loss: a few
    optimiser steps on a fixed batch lower the loss."""
    import torch

    from hiprouter.inference.layers import GeMPool
    from hiprouter.inference.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet50", 3, in_chans=2, attention="cbam", pool="gem")
    assert isinstance(model.global_pool, GeMPool)
    assert type(model.layer1[0].se).__name__ == "CbamModule"
    x = torch.randn(6, 2, 32, 32)
    y = torch.tensor([0, 1, 2, 0, 1, 0])
    loss_fn = make_loss("cb-focal", counts=[3, 2, 1])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(8):
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses
    assert model.global_pool.p.grad is not None  # GeM's exponent is learned


def test_grad_cam_of_a_cbam_gem_model_peaks_on_the_finding(tmp_path) -> None:
    """Trained to find a bright blob, the CBAM + GeM model's map (Grad-CAM, in closed form
    for the GeM + linear head) peaks on the blob, through CropClassifier on both runtimes."""
    import torch

    from hiprouter.inference import cam
    from hiprouter.inference.classifier import CropClassifier
    from hiprouter.inference.models import ModelCard, create_model, save_model

    rng = np.random.default_rng(0)
    size = 48

    def image(blob: tuple[int, int] | None) -> np.ndarray:
        img = rng.normal(0.35, 0.05, (size, size))
        if blob is not None:
            yy, xx = np.mgrid[:size, :size]
            img[(yy - blob[0]) ** 2 + (xx - blob[1]) ** 2 <= 16] = 0.95
        return img.clip(0, 1).astype(np.float32)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        ys = rng.integers(0, 2, n)
        imgs = [image(tuple(rng.integers(8, size - 8, 2)) if c else None) for c in ys]
        return (torch.from_numpy(np.stack(imgs))[:, None] - 0.5) / 0.25, torch.from_numpy(ys)

    torch.manual_seed(0)
    model = create_model("resnet10t", 2, attention="cbam", pool="gem")
    assert cam.linear_head(model) is not None  # GeM + linear: Grad-CAM in closed form
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        x, y = batch(24)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    card = ModelCard(name="blob", version="0", architecture="resnet10t", input_size=size,
                     parameters={"channels": ["grey"], "attention": "cbam", "pool": "gem"},
                     classes=["no_hardware", "tha"], training_data="blobs")
    save_model(model.eval(), card, tmp_path / "m")
    hits = 0
    centres = [(12, 12), (34, 36), (36, 12), (12, 34)]
    for runtime in ("torch", "onnx"):
        clf = CropClassifier.from_dirs([tmp_path / "m"], "cpu", runtime)
        preds = clf.predict([image(c) for c in centres])
        for c, pred in zip(centres, preds, strict=True):
            heat = pred.heatmap
            assert heat.shape == (size, size)
            # the last feature map is 2 x 2 at this size: the map must be high at the blob
            # and low in the opposite quadrant
            opposite = heat[size - 1 - c[0], size - 1 - c[1]]
            hits += int(pred.probabilities[1] > 0.5 and heat[c] >= 0.7 * heat.max()
                        and heat[c] > opposite + 0.2)
    assert hits >= 7, hits


def test_temperature_scaling_lowers_the_calibration_error(tmp_path) -> None:
    rng = np.random.default_rng(0)
    n, k = 2000, 4
    y = rng.integers(0, k, n)
    true_logits = rng.normal(0, 1.0, (n, k))
    true_logits[np.arange(n), y] += 1.5
    overconfident = 4.0 * true_logits  # a model that is far too sure of itself
    # the Bayes posterior here is softmax(1.5 * true_logits) (unit-variance Gaussians, class
    # shifted by 1.5), so the right temperature for 4 * true_logits is 4 / 1.5 = 2.67
    t = fit_temperature(overconfident[:1000], y[:1000])
    assert 2.2 < t < 3.2
    before = ece(softmax(overconfident[1000:]), y[1000:])
    after = ece(softmax(overconfident[1000:], t), y[1000:])
    assert after < 0.5 * before and after < 0.05
    assert nll(overconfident[1000:], y[1000:], t) < nll(overconfident[1000:], y[1000:])
    png = plot_reliability(softmax(overconfident[1000:], t), y[1000:], tmp_path / "rel.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_ece_on_a_hand_computed_example() -> None:
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 1, 0, 1])
    # bins: 0.9 (2 hips, accuracy 0.5), 0.6 (1, accuracy 1), 0.7 (1, accuracy 1)
    expected = 2 / 4 * abs(0.5 - 0.9) + 1 / 4 * abs(1 - 0.6) + 1 / 4 * abs(1 - 0.7)
    assert ece(probs, y) == pytest.approx(expected)


def test_min_confidence_reaches_the_target_accuracy() -> None:
    conf = np.array([0.99, 0.97, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5])
    correct = np.array([1, 1, 1, 1, 0, 1, 0, 0], bool)
    probs = np.stack([conf, 1 - conf], 1)
    y = np.where(correct, 0, 1)
    choice = choose_min_confidence(probs, y, target=0.8)
    # accepted top-k accuracies: 1, 1, 1, 1, .8, .83, .71, .63 -> largest k reaching 0.8 is 6
    assert choice["min_confidence"] == pytest.approx(0.7)
    assert choice["val_coverage"] == pytest.approx(6 / 8) and choice["reached"]
    assert choose_min_confidence(probs[:4], y[:4], 0.95)["min_confidence"] == 0.0


def test_triage_threshold_keeps_the_target_sensitivity() -> None:
    rng = np.random.default_rng(3)
    positive = rng.random(400) < 0.2
    score = np.where(positive, rng.beta(5, 2, 400), rng.beta(2, 5, 400))
    t = triage_threshold(score, positive, 0.95)
    sens = (score[positive] >= t).mean()
    assert sens >= 0.95 and (score[positive] >= t + 1e-6).mean() < 0.95 + 1 / positive.sum()
    probs = np.stack([1 - score, score], 1)
    out = triage_thresholds(probs, positive.astype(int), ["none", "fracture"], ["fracture"],
                            0.95)
    assert out["fracture"]["val_sensitivity"] >= 0.95
    assert out["fracture"]["threshold"] <= t
    assert triage_threshold(score, np.zeros(400, bool)) is None


def test_float16_weights_are_half_the_size_and_load_as_float32(tmp_path) -> None:
    import torch

    from hiprouter.inference.models import ModelCard, create_model, load_model, save_model

    torch.manual_seed(0)
    model = create_model("resnet10t", 3, in_chans=2).eval()
    card = ModelCard(name="half", version="0", architecture="resnet10t", input_size=64,
                     in_chans=2, parameters={"channels": ["grey", "metal"]},
                     classes=["no_hardware", "tha", "hemiarthroplasty"], training_data="none")
    save_model(model, card, tmp_path / "f32")
    save_model(model, card, tmp_path / "f16", dtype="float16")
    size32 = (tmp_path / "f32" / "model.safetensors").stat().st_size
    size16 = (tmp_path / "f16" / "model.safetensors").stat().st_size
    assert size16 < 0.55 * size32
    loaded = load_model(tmp_path / "f16")
    assert all(p.dtype == torch.float32 for p in loaded.module.parameters())
    x = torch.rand(4, 2, 64, 64)
    with torch.inference_mode():
        np.testing.assert_allclose(loaded.module(x).numpy(), model(x).numpy(), atol=0.05)


def test_the_same_weights_save_to_the_same_bytes(tmp_path) -> None:
    """A model saved again is the same file: same sha256, same Device UID in the card."""
    import torch

    from hiprouter.inference.models import ModelCard, create_model, save_model

    torch.manual_seed(0)
    model = create_model("resnet10t", 3, in_chans=1).eval()
    card = ModelCard(name="again", version="1", architecture="resnet10t", input_size=64,
                     classes=["no_hardware", "tha", "hemiarthroplasty"], training_data="none",
                     created="2026-01-01T00:00:00Z")
    cards = [save_model(model, card, tmp_path / str(i), dtype="float16") for i in range(8)]
    assert len({c.weights_sha256 for c in cards}) == 1
    assert len({c.device_uid for c in cards}) == 1
    assert len({(tmp_path / str(i) / "card.yaml").read_bytes() for i in range(8)}) == 1
