"""Train the anatomy check: is a whole image an adult hip or pelvis radiograph at all?

Every hip model reads per-hip crops, cut where the headers say the hips are. A chest film
whose headers claim a pelvis still yields two "hip" crops, and a hip model that has never
seen a chest answers something. The anatomy check looks at the whole image first
(inference/anatomy.py): a small classifier over ``ANATOMY_CLASSES``, trained on the
synthetic hip studies of both renderers (every view) and on `hiprouter synth-ood` images
(chest, child pelvis, knee, hand, shoulder, lumbar spine, skull, noise, blank, greyed
photographs).

Data: folders with a ``labels.csv`` as `hiprouter synth` and `hiprouter synth-ood` write
them; an image's class comes from its ``ood_kind`` (`OOD_KIND_CLASSES`), else it is a hip
study ("hip"). Each image is decoded once, letterboxed whole to the input size and cached
as uint8. Validation folders fit the temperature and choose ``min_probability``: the
probability of "hip" below which an image is not assessed, set so that a chosen fraction
(``keep``) of the validation hip images stays above it.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from hiprouter.inference.anatomy import HIP, HIP_CLASSES, LABEL_SET, PELVIS
from hiprouter.inference.decode import RADIOGRAPH_MODALITIES, RefusedImage, decode_file
from hiprouter.inference.models import (
    SYNTHETIC_DISCLAIMER,
    ModelCard,
    create_model,
    save_model,
    select_device,
)
from hiprouter.inference.preprocess import letterbox
from hiprouter.training.calibration import ece, fit_temperature, rounded, softmax
from hiprouter.training.dataset import cache_file, map_jobs
from hiprouter.training.train import TrainConfig, _Crops, _run_stage, augmentation, forward_arrays

ANATOMY_LABEL_SET = LABEL_SET
ANATOMY_CLASSES = (HIP, PELVIS, "child_pelvis", "chest", "knee", "hand", "shoulder",
                   "spine", "skull", "other")
"""HIP: a single-hip view of an adult (AP hip, frog-leg, cross-table lateral); PELVIS: an
adult AP pelvis. Together (HIP_CLASSES) what the hip models read: the check refuses on
P(hip) + P(pelvis), and names the view when the headers do not."""
HIP_IDS = [ANATOMY_CLASSES.index(c) for c in HIP_CLASSES]
OOD_KIND_CLASSES = {"chest_pa": "chest", "knee_ap": "knee", "hand_pa": "hand",
                    "child_pelvis": "child_pelvis", "noise": "other", "blank": "other",
                    "photo_mono": "other", "photo_rgb": "other", "shoulder_ap": "shoulder",
                    "spine_lat": "spine", "skull_lat": "skull"}
"""`hiprouter synth-ood` kinds -> anatomy classes (RGB photos are refused by decoding and
never reach the model; listed so that a folder of them is not mistaken for hips)."""
DEFAULT_WIDTHS = (32, 64, 128, 256)
"""Stage widths of the default resnet10t (a quarter of its parameters: 1.3 M)."""


def image_class(row: dict[str, str]) -> str:
    """The anatomy class of a labels.csv row (one per hip or per image)."""
    kind = (row.get("ood_kind") or "").strip()
    if kind:
        if kind not in OOD_KIND_CLASSES:
            raise ValueError(f"unknown ood_kind {kind!r}")
        return OOD_KIND_CLASSES[kind]
    return PELVIS if (row.get("view") or "").strip() == "ap_pelvis" else HIP


def hip_probability(probs: np.ndarray) -> np.ndarray:
    """P(an adult hip or pelvis radiograph) per row of class probabilities."""
    return probs[:, HIP_IDS].sum(axis=1)


def read_images(folders: Sequence[Path]) -> list[tuple[Path, str]]:
    """(image path, anatomy class) of every image listed in the folders' labels.csv."""
    out: dict[Path, str] = {}
    for folder in folders:
        labels = Path(folder) / "labels.csv"
        if not labels.is_file():
            raise ValueError(f"{folder}: no labels.csv")
        with labels.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                out.setdefault(Path(folder) / row["path"], image_class(row))
    return list(out.items())


def whole_image(ds_pixels: np.ndarray, size: int) -> np.ndarray:
    """The whole decoded image letterboxed to `size`, as uint8 (the cached training form)."""
    boxed, _ = letterbox(ds_pixels, size)
    return np.rint(boxed * 255).astype(np.uint8)


def _cached_whole(args: tuple[Path, int, Path | None]) -> np.ndarray | str:
    path, size, cache_dir = args
    # the crop cache's key, as a file of its own: <key>-<size>.whole.npy
    cached = cache_file(cache_dir, path, size).with_suffix(".whole.npy") if cache_dir else None
    if cached is not None and cached.is_file():
        return np.load(cached)
    try:
        _, decoded = decode_file(path, RADIOGRAPH_MODALITIES)
    except (RefusedImage, OSError) as exc:
        return getattr(exc, "reason", None) or str(exc)
    image = whole_image(decoded.pixels, size)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp.npy")
        np.save(tmp, image)
        tmp.replace(cached)
    return image


def load_images(items: Sequence[tuple[Path, str]], size: int, cache_dir: Path | None,
                workers: int = 1, progress: Callable | None = None
                ) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """uint8 (N, size, size) images, their class indices, and refusals by path."""
    jobs = [(path, size, cache_dir) for path, _ in items]
    images, labels, refused = [], [], {}
    stream = map_jobs(_cached_whole, jobs, workers)
    for (path, cls), image in zip(items, progress(stream) if progress else stream,
                                  strict=True):
        if isinstance(image, str):
            refused[str(path)] = image
            continue
        images.append(image)
        labels.append(ANATOMY_CLASSES.index(cls))
    stacked = np.stack(images) if images else np.zeros((0, size, size), np.uint8)
    return stacked, np.asarray(labels, dtype=np.int64), refused


MAX_MIN_PROBABILITY = 0.2
"""The threshold never exceeds this: only an image the model finds clearly more like
something else is refused (a hip image from another source may look less familiar than
the validation hips; a refused hip is a lost report). 0.1.0 and 0.3.0 use 0.2, 0.2.0 used
0.1; docs/validation.md, "Anatomy check", says how each was chosen."""


def choose_min_probability(p_hip: np.ndarray, keep: float = 0.995,
                           cap: float = MAX_MIN_PROBABILITY) -> float:
    """The "hip" probability below which an image is not assessed: the (1 - keep) quantile
    of the validation hip images' probabilities, never above `cap`."""
    if len(p_hip) == 0:
        return cap
    return float(min(cap, np.quantile(np.asarray(p_hip, dtype=np.float64), 1.0 - keep)))


def refusal_rates(probs: np.ndarray, labels: np.ndarray, min_probability: float
                  ) -> dict[str, dict[str, float | int]]:
    """Per true class: images, the fraction not assessed (P(hip) + P(pelvis) below the
    threshold) and the accuracy of the arg-max class."""
    p_hip = hip_probability(probs)
    out: dict[str, dict[str, float | int]] = {}
    for k, name in enumerate(ANATOMY_CLASSES):
        sel = labels == k
        if not sel.any():
            continue
        out[name] = {"images": int(sel.sum()),
                     "not_assessed": round(float((p_hip[sel] < min_probability).mean()), 4),
                     "accuracy": round(float((probs[sel].argmax(1) == k).mean()), 4)}
    return out


def calibrate(logits: np.ndarray, labels: np.ndarray, keep: float = 0.995,
              cap: float = MAX_MIN_PROBABILITY
              ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The card's calibration and abstention from validation logits, and the validation
    rates at that threshold."""
    fitted = fit_temperature(logits, labels)
    # never sharpen: a validation set the model separates perfectly drives the fitted
    # temperature to its lower bound, which says nothing about images from elsewhere
    temperature = max(1.0, fitted)
    probs = softmax(logits, temperature)
    is_hip = np.isin(labels, HIP_IDS)
    min_probability = choose_min_probability(hip_probability(probs)[is_hip], keep, cap)
    calibration = {"temperature": round(temperature, 4), "fitted_temperature": round(fitted, 4),
                   "rule": "max(1, temperature fitted on validation)",
                   "ece_before": rounded(ece(softmax(logits), labels)),
                   "ece_after": rounded(ece(probs, labels))}
    abstention = {"min_probability": round(min_probability, 4), "keep": keep,
                  "max_min_probability": cap}
    return calibration, abstention, refusal_rates(probs, labels, min_probability)


def train_anatomy(train_dirs: Sequence[Path], val_dirs: Sequence[Path], out_dir: Path,
                  cfg: TrainConfig, widths: Sequence[int] = DEFAULT_WIDTHS, keep: float = 0.995,
                  cache_dir: Path | None = None, log: Callable[[str], Any] = print,
                  cap: float = MAX_MIN_PROBABILITY) -> ModelCard:
    """Train, calibrate and write the anatomy check model (card + weights) to `out_dir`."""
    import torch
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = cache_dir or out_dir / "cache"

    def load(folders: Sequence[Path], what: str) -> tuple[np.ndarray, np.ndarray]:
        items = read_images(folders)
        x, y, refused = load_images(
            items, cfg.input_size, cache, cfg.decode_workers,
            progress=lambda it: tqdm(it, total=len(items), desc=f"decode {what}",
                                     unit="image", leave=False))
        log(f"{what}: {len(y)} images ("
            + ", ".join(f"{c} {int((y == k).sum())}" for k, c in enumerate(ANATOMY_CLASSES))
            + f"); {len(refused)} not decodable as radiographs (skipped)")
        return x, y

    train_x, train_y = load(train_dirs, "training")
    val_x, val_y = load(val_dirs, "validation")
    if not len(train_y) or not np.isin(train_y, HIP_IDS).any():
        raise ValueError("no hip images to train on")
    device = select_device(cfg.device)
    module = create_model(cfg.arch, len(ANATOMY_CLASSES), 1, widths=widths).to(device)
    counts = np.bincount(train_y, minlength=len(ANATOMY_CLASSES))
    # every class about equally often: the rare kinds are what the check exists for
    sampler = torch.utils.data.WeightedRandomSampler(
        torch.as_tensor(1.0 / np.maximum(counts[train_y], 1), dtype=torch.double),
        num_samples=len(train_y), replacement=True,
        generator=torch.Generator().manual_seed(cfg.seed))
    loader = torch.utils.data.DataLoader(
        _Crops(train_x, train_y, augmentation(cfg)), batch_size=cfg.batch_size,
        sampler=sampler, num_workers=cfg.workers, persistent_workers=cfg.workers > 0)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    state: dict[str, Any] = {"steps": 0, "losses": [], "history": []}
    started = time.time()

    def on_epoch(stage: str, epoch: int, train_loss: float) -> None:
        logits, _ = forward_arrays(module, val_x, device)
        acc = float((logits.argmax(1) == val_y).mean()) if len(val_y) else 0.0
        state["history"].append({"epoch": epoch, "train_loss": round(train_loss, 4),
                                 "val_accuracy": round(acc, 4)})
        log(f"epoch {epoch}: train loss {train_loss:.4f}, val accuracy {acc:.3f} "
            f"({time.time() - started:.0f} s)")

    _run_stage(module, loader, cfg.epochs, cfg.lr, cfg, device, "full", state, on_epoch,
               loss_fn)
    train_seconds = round(time.time() - started, 1)

    logits, _ = forward_arrays(module, val_x, device)
    calibration, abstention, rates = calibrate(logits, val_y, keep, cap)
    log(f"temperature {calibration['temperature']:.3f} (fitted "
        f"{calibration['fitted_temperature']:.3f}); min_probability "
        f"{abstention['min_probability']:.4f}; validation: " + json.dumps(rates))
    params = {"widths": list(widths), "channels": ["grey"], "input": "whole image"}
    card = ModelCard(
        name=f"{cfg.name}", version=cfg.version, architecture=cfg.arch,
        input_size=cfg.input_size, in_chans=1, parameters=params,
        label_set=ANATOMY_LABEL_SET, classes=list(ANATOMY_CLASSES),
        training_data=cfg.training_data, synthetic_demo=cfg.synthetic_demo,
        intended_use="Decide whether an image is an adult hip or pelvis radiograph before "
                     "any hip model reads it; images that are not are reported as not "
                     "assessed.",
        limitations=(SYNTHETIC_DISCLAIMER + " " if cfg.synthetic_demo else "")
        + "Knows only the classes it was trained on; an unusual hip radiograph may be "
          "refused (not assessed) and an unusual non-hip image may pass.",
        training={**{k: v for k, v in asdict(cfg).items()
                     if k in ("arch", "input_size", "epochs", "batch_size", "lr",
                              "weight_decay", "seed", "augment_preset", "label_smoothing")},
                  "train_folders": [str(Path(d).name) for d in train_dirs],
                  "val_folders": [str(Path(d).name) for d in val_dirs],
                  "train_images": {c: int(counts[k]) for k, c in enumerate(ANATOMY_CLASSES)},
                  "seconds": train_seconds, "history": state["history"]},
        evaluation={"validation": rates}, calibration=calibration, abstention=abstention,
    )
    return save_model(module.cpu(), card, out_dir, dtype=cfg.weights_dtype)
