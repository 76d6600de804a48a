"""`hiprouter train --label-set onfh --task segmentation`: the femoral-head U-Nets.

Two U-Nets (hiprouter/inference/onfh.py): the *locator* on the letterboxed hip crop and the
*refiner* on a square window around the head. Training windows are cut around the
ground-truth head with random scale and shift, so the refiner learns to correct the
locator's error. Loss: Dice + binary cross-entropy; AdamW with a one-cycle learning rate;
flips, rotation, zoom, gamma, contrast, brightness and noise augmentation; the epoch with
the best validation Dice is kept. The held-out test split is then segmented end to end
(locator -> refiner, masks in the stored image's pixels) and its Dice goes into the card.

Arrays are cached per head (uint8 .npz), so epochs never decode DICOM again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from hiprouter.inference.models import SYNTHETIC_DISCLAIMER, ModelCard
from hiprouter.inference.onfh import (
    DEFAULT_PARAMETERS,
    LABEL_SET,
    SEGMENTATION_TASK,
    HeadSegmenter,
    Square,
    centroid,
    equivalent_diameter,
    resample,
    round_weights,
    save_onfh_model,
)
from hiprouter.inference.preprocess import letterbox
from hiprouter.training.onfh_data import (
    HeadImage,
    HeadRow,
    cache_key,
    dice,
    iterate_heads,
    read_head_labels,
    split_heads,
    write_split,
)


@dataclass
class SegmentationConfig:
    """A segmentation training run (recorded in the model card)."""

    locator_size: int = 96
    locator_widths: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    refiner_size: int = 96
    refiner_widths: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    roi_scale: float = 2.0
    """Refiner window side / head diameter."""
    windows_per_head: int = 4
    """Jittered refiner windows cached per head (plus the centred one)."""
    jitter_scale: tuple[float, float] = (0.8, 1.25)
    jitter_shift: float = 0.15
    """Window centre shift, as a fraction of the head diameter, per axis."""
    epochs: int = 12
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    max_steps: int | None = None
    """Stop each U-Net after this many optimiser steps (smoke tests)."""
    threads: int = 0
    """torch threads (0: torch's default, which OMP_NUM_THREADS sets)."""
    decode_workers: int = 1
    name: str = "onfh-segmentation"
    version: str = "0.1.0"
    training_data: str = ""
    synthetic_demo: bool = False
    device: str = "cpu"

    def parameters(self) -> dict[str, Any]:
        return {
            "locator": {"size": self.locator_size, "widths": list(self.locator_widths)},
            "refiner": {"size": self.refiner_size, "widths": list(self.refiner_widths),
                        "roi_scale": self.roi_scale},
            "weights_dtype": DEFAULT_PARAMETERS["weights_dtype"],
        }


def _u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)


def head_arrays(head: HeadImage, cfg: SegmentationConfig, seed: int) -> dict[str, np.ndarray]:
    """Locator input/target and refiner windows/targets of one head (uint8)."""
    boxed, _ = letterbox(head.crop, cfg.locator_size)
    mboxed, _ = letterbox(head.mask.astype(np.float32), cfg.locator_size)
    cx, cy = centroid(head.mask)
    d = equivalent_diameter(head.mask)
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for j in range(cfg.windows_per_head + 1):
        scale, dx, dy = 1.0, 0.0, 0.0
        if j:
            scale = float(rng.uniform(*cfg.jitter_scale))
            dx, dy = rng.uniform(-cfg.jitter_shift, cfg.jitter_shift, 2) * d
        sq = Square(cx + dx, cy + dy, cfg.roi_scale * scale * d)
        images.append(_u8(resample(head.crop, sq, cfg.refiner_size)))
        masks.append(_u8(resample(head.mask.astype(np.float32), sq, cfg.refiner_size)))
    return {"loc_img": _u8(boxed), "loc_mask": _u8(mboxed),
            "win_img": np.stack(images), "win_mask": np.stack(masks)}


def _arrays_job(head: HeadImage, cfg: SegmentationConfig) -> dict[str, np.ndarray]:
    import hashlib

    key = f"{head.row.path}|{head.row.laterality}".encode()
    return head_arrays(head, cfg, int(hashlib.sha1(key).hexdigest()[:8], 16))


def load_arrays(rows: Sequence[HeadRow], data_dir: Path, cfg: SegmentationConfig,
                cache_dir: Path, log: Callable[[str], None] = print
                ) -> tuple[dict[int, dict[str, np.ndarray]], dict[int, str]]:
    """Cached arrays per row index, and the reason for every row that could not be used."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    params = (cfg.locator_size, cfg.refiner_size, cfg.roi_scale, cfg.windows_per_head,
              cfg.jitter_scale, cfg.jitter_shift, "v1")
    files = {i: cache_dir / f"seg-{cache_key(r, data_dir, *params)}.npz"
             for i, r in enumerate(rows)}
    out: dict[int, dict[str, np.ndarray]] = {}
    refused: dict[int, str] = {}
    todo = [i for i, f in files.items() if not f.is_file()]
    if todo:
        from tqdm import tqdm

        job = partial(_arrays_job, cfg=cfg)
        for k, result in iterate_heads([rows[i] for i in todo], data_dir, cfg.decode_workers,
                                       job, lambda it: tqdm(it, total=len(todo), leave=False,
                                                            desc="decode + cut heads")):
            i = todo[k]
            if isinstance(result, str):
                refused[i] = result
                continue
            tmp = files[i].with_suffix(".tmp.npz")
            np.savez(tmp, **result)  # type: ignore[arg-type]
            tmp.replace(files[i])
    for i, f in files.items():
        if i in refused:
            continue
        with np.load(f) as npz:
            out[i] = {k: npz[k] for k in npz.files}
    for i, reason in refused.items():
        log(f"skipped {rows[i].path} {rows[i].laterality}: {reason}")
    return out, refused


# --- training -----------------------------------------------------------------------------

def augment(x: Any, y: Any, gen: Any, rotate_deg: float = 10.0, zoom: float = 0.1) -> tuple[
        Any, Any]:
    """Random flips, rotation and zoom (image and mask alike), then gamma, contrast,
    brightness and noise (image only). x, y: (B, 1, S, S) float in [0, 1]."""
    import torch
    from torch.nn import functional as F  # noqa: N812

    b = x.shape[0]
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    y = torch.where(flip[:, None, None, None], y.flip(-1), y)
    angle = (torch.rand(b, generator=gen) * 2 - 1) * np.deg2rad(rotate_deg)
    scale = 1.0 + (torch.rand(b, generator=gen) * 2 - 1) * zoom
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros(b)], 1),
                         torch.stack([sin, cos, torch.zeros(b)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    gamma = torch.exp((torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * 0.4)
    x = x.clamp(0, 1) ** gamma
    contrast = 0.75 + torch.rand(b, 1, 1, 1, generator=gen) * 0.55
    bright = (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * 0.1
    x = (x - 0.5) * contrast + 0.5 + bright
    x = x + torch.randn(x.shape, generator=gen) * torch.rand(b, 1, 1, 1, generator=gen) * 0.03
    return x.clamp(0, 1), y


def dice_bce_loss(logits: Any, target: Any) -> Any:
    """Soft Dice loss (per sample, averaged) + binary cross-entropy."""
    import torch
    from torch.nn import functional as F  # noqa: N812

    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum((1, 2, 3))
    soft = 1.0 - (2 * inter + 1.0) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1.0)
    return soft.mean() + bce


def _to_input(x: Any) -> Any:
    from hiprouter.inference.preprocess import INPUT_MEAN, INPUT_STD

    return (x - INPUT_MEAN) / INPUT_STD


def batch_dice(net: Any, images: np.ndarray, masks: np.ndarray, batch_size: int = 64
               ) -> float:
    """Mean Dice of thresholded predictions over uint8 (N, S, S) images and masks."""
    import torch

    net.eval()
    scores = []
    with torch.inference_mode():
        for s in range(0, len(images), batch_size):
            x = torch.from_numpy(images[s:s + batch_size]).float().div_(255.0)[:, None]
            pred = (net(_to_input(x)) > 0).numpy()[:, 0]
            truth = masks[s:s + batch_size] > 127
            scores += [dice(p, t) for p, t in zip(pred, truth, strict=True)]
    return float(np.mean(scores)) if scores else float("nan")


def train_unet(name: str, widths: Sequence[int], images: Callable[[Any], tuple[np.ndarray,
               np.ndarray]], n_train: int, val: tuple[np.ndarray, np.ndarray],
               cfg: SegmentationConfig, log: Callable[[str], None]) -> tuple[Any, list[dict]]:
    """Train one U-Net; ``images(rng)`` gives one epoch's (images, masks) uint8 arrays."""
    import torch

    from hiprouter.inference.onfh_nets import UNet

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    net = UNet(tuple(widths))
    prior = float(np.clip(np.mean(val[1] > 127), 1e-3, 0.5)) if len(val[1]) else 0.1
    with torch.no_grad():  # start at the foreground prior: BCE does not dominate early steps
        net.head.bias.fill_(float(np.log(prior / (1 - prior))))
    steps_per_epoch = max(1, -(-n_train // cfg.batch_size))
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(1, total))
    best, best_state, history, steps = -1.0, None, [], 0
    started = time.time()
    for epoch in range(1, cfg.epochs + 1):
        x_all, y_all = images(rng)
        order = rng.permutation(len(x_all))
        net.train()
        running = 0.0
        n = 0
        for s in range(0, len(order), cfg.batch_size):
            idx = order[s:s + cfg.batch_size]
            if len(idx) < 2:
                continue
            x = torch.from_numpy(x_all[idx]).float().div_(255.0)[:, None]
            y = torch.from_numpy(y_all[idx]).float().div_(255.0)[:, None]
            x, y = augment(x, y, gen)
            loss = dice_bce_loss(net(_to_input(x)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            if steps < total:
                sched.step()
            running += float(loss.item())
            n += 1
            if steps >= total:
                break
        val_dice = batch_dice(net, *val)
        history.append({"epoch": epoch, "train_loss": running / max(1, n), "val_dice": val_dice})
        log(f"{name} epoch {epoch}: loss {running / max(1, n):.4f}, val Dice {val_dice:.4f} "
            f"({time.time() - started:.0f} s)")
        if val_dice > best:
            best = val_dice
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        if steps >= total:
            break
    if best_state is not None:
        net.load_state_dict(best_state)
    return net.eval(), history


def segmentation_dice(segmenter: HeadSegmenter, rows: Sequence[HeadRow], data_dir: Path,
                      workers: int = 1) -> list[dict[str, Any]]:
    """End-to-end Dice per head (locator -> refiner -> mask over the stored image's crop)."""
    from tqdm import tqdm

    out: list[dict[str, Any]] = []
    for i, head in iterate_heads(rows, data_dir, workers,
                                 progress=lambda it: tqdm(it, total=len(rows), leave=False,
                                                          desc="segment")):
        row = rows[i]
        rec: dict[str, Any] = {"path": row.path, "laterality": row.laterality,
                               "view": row.view, "grade": row.grade}
        if isinstance(head, str):
            rec["refused"] = head
        else:
            assert isinstance(head, HeadImage)
            seg = segmenter.segment(head.crop)
            pred = seg.crop_mask(head.crop.shape) if seg is not None else \
                np.zeros_like(head.mask)
            rec["dice"] = dice(pred, head.mask)
            rec["found"] = seg is not None
        out.append(rec)
    return out


def dice_summary(records: Sequence[dict[str, Any]], n_boot: int = 1000,
                 seed: int = 0) -> dict[str, Any]:
    """Mean/median Dice with a bootstrap 95 % CI of the mean, overall and per view."""
    scores = np.array([r["dice"] for r in records if "dice" in r], dtype=np.float64)
    if not len(scores):
        return {"n": 0}
    rng = np.random.default_rng(seed)
    boots = [float(scores[rng.integers(0, len(scores), len(scores))].mean())
             for _ in range(n_boot)] if len(scores) > 1 else []
    summary: dict[str, Any] = {
        "n": int(len(scores)),
        "dice_mean": round(float(scores.mean()), 4),
        "dice_mean_ci95": [round(float(v), 4) for v in np.percentile(boots, [2.5, 97.5])]
        if boots else None,
        "dice_median": round(float(np.median(scores)), 4),
        "dice_p05": round(float(np.percentile(scores, 5)), 4),
        "not_found": int(sum(1 for r in records if r.get("found") is False)),
        "refused": int(sum(1 for r in records if "refused" in r)),
    }
    views = sorted({r["view"] for r in records if "dice" in r})
    summary["dice_mean_by_view"] = {
        v: round(float(np.mean([r["dice"] for r in records
                                if r.get("view") == v and "dice" in r])), 4) for v in views}
    return summary


def train_segmentation(data_dir: Path, labels_csv: Path, out_dir: Path,
                       cfg: SegmentationConfig, cache_dir: Path | None = None,
                       log: Callable[[str], None] = print) -> ModelCard:
    """Train both U-Nets, evaluate end to end on the test split, write the model folder."""
    import torch

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, skipped = read_head_labels(labels_csv)
    for reason, count in skipped.items():
        log(f"skipped {count} rows: {reason}")
    split = split_heads(rows, cfg.seed)
    write_split(out_dir / "split.csv", rows, split)
    log("split (heads): " + ", ".join(f"{k} {len(v)}" for k, v in split.items()))
    arrays, refused = load_arrays(rows, data_dir, cfg, cache_dir or out_dir / "cache", log)
    train_idx = [i for i in split["train"] if i in arrays]
    val_idx = [i for i in split["val"] if i in arrays]
    if not train_idx:
        raise ValueError("no usable training heads")
    started = time.time()

    loc_x = np.stack([arrays[i]["loc_img"] for i in train_idx])
    loc_y = np.stack([arrays[i]["loc_mask"] for i in train_idx])
    loc_val = (np.stack([arrays[i]["loc_img"] for i in val_idx]),
               np.stack([arrays[i]["loc_mask"] for i in val_idx]))
    locator, loc_hist = train_unet("locator", cfg.locator_widths, lambda rng: (loc_x, loc_y),
                                   len(train_idx), loc_val, cfg, log)

    win_x = np.stack([arrays[i]["win_img"] for i in train_idx])
    win_y = np.stack([arrays[i]["win_mask"] for i in train_idx])

    def windows(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        pick = rng.integers(0, win_x.shape[1], len(win_x))
        k = np.arange(len(win_x))
        return win_x[k, pick], win_y[k, pick]

    ref_val = (np.concatenate([arrays[i]["win_img"] for i in val_idx]),
               np.concatenate([arrays[i]["win_mask"] for i in val_idx]))
    refiner, ref_hist = train_unet("refiner", cfg.refiner_widths, windows, len(train_idx),
                                   ref_val, cfg, log)

    params = cfg.parameters()
    round_weights(locator, params["weights_dtype"])
    round_weights(refiner, params["weights_dtype"])
    segmenter = HeadSegmenter(locator, refiner, params)
    test_rows = [rows[i] for i in split["test"]]
    records = segmentation_dice(segmenter, test_rows, data_dir, cfg.decode_workers)
    figures = dice_summary(records, seed=cfg.seed)
    log(f"test split: Dice {figures.get('dice_mean')} (median {figures.get('dice_median')}, "
        f"n {figures.get('n')})")
    dataset_name = cfg.training_data or f"{Path(data_dir).name} (labels {Path(labels_csv).name})"
    note = SYNTHETIC_DISCLAIMER if cfg.synthetic_demo else ""
    card = ModelCard(
        name=cfg.name, version=cfg.version,
        architecture=f"U-Net locator {cfg.locator_widths} + U-Net refiner {cfg.refiner_widths}",
        input_size=cfg.refiner_size, task=SEGMENTATION_TASK, parameters=params,
        label_set=LABEL_SET, classes=["femoral_head"], training_data=dataset_name,
        synthetic_demo=cfg.synthetic_demo, limitations=note,
        intended_use="Segment the femoral heads of AP hip and pelvis radiographs for the "
                     "ONFH normative model; a radiologist verifies every result.",
        training={**{k: v for k, v in asdict(cfg).items()
                     if k not in ("name", "version", "training_data", "synthetic_demo")},
                  "split": {k: len(v) for k, v in split.items()},
                  "refused": len(refused),
                  "loss": "soft Dice + binary cross-entropy; AdamW, one-cycle LR",
                  "seconds": round(time.time() - started, 1),
                  "history": {"locator": loc_hist, "refiner": ref_hist}},
        evaluation={"test_split": {"dataset": f"test split of {dataset_name}",
                                   "unit": "femoral head on one image, Dice in the stored "
                                           "image's pixels", **figures}},
    )
    card = save_onfh_model(card, out_dir, {"locator": locator, "refiner": refiner})
    (out_dir / "segmentation_test.json").write_text(json.dumps(records, indent=1))
    return card
