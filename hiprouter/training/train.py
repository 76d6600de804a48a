"""`hiprouter train`: the seed's recipe on a folder of DICOM files plus a labels CSV.

Patient-level class-stratified 70/10/20 split (saved as split.csv), head-only epochs then
full fine-tuning, each with a one-cycle learning rate; contrast, brightness, zoom, warp
(affine + perspective), rotation and flip augmentation (torchvision transforms v2); tqdm
progress bars; a checkpoint per epoch; the best epoch on the validation split is exported
as safetensors + card.yaml with the test split's figures.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hiprouter.inference.models import (
    SYNTHETIC_DISCLAIMER,
    ModelCard,
    create_model,
    load_model,
    save_model,
    select_device,
)
from hiprouter.inference.preprocess import INPUT_MEAN, INPUT_STD
from hiprouter.training.dataset import (
    LabelledHip,
    label_spec,
    load_crops,
    read_labels,
    split_patients,
)
from hiprouter.training.evaluate import card_figures, compute_metrics, fuse_hips, write_report


@dataclass
class TrainConfig:
    """Everything that defines a training run (recorded in the model card)."""

    arch: str = "efficientnet_b4"
    input_size: int = 380
    epochs_head: int = 4
    epochs: int = 50
    batch_size: int = 16
    lr_head: float = 2e-3
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    label_set: str = "hardware"
    """Classes to learn: a classifier pipeline kind (hardware, fracture, ...)."""
    label_column: str = ""
    """Labels CSV column; empty: the kind's column (its name)."""
    max_steps: int | None = None
    """Stop after this many optimiser steps in total (smoke tests)."""
    balance: bool = False
    """Draw training hips with class-balanced probabilities (rare classes, e.g. fractures)."""
    workers: int = 1
    """DataLoader worker processes for augmentation (they run single-threaded, which also
    keeps per-sample transforms from fighting the training threads for the cores)."""
    decode_workers: int = 1
    """Processes decoding DICOM into the crop cache."""
    name: str = "hardware"
    version: str = "0.1.0"
    training_data: str = ""
    synthetic_demo: bool = False
    device: str = "auto"
    init_from: str | None = None
    """Model directory whose weights start the run: same arch; with other classes (another
    label set) only the backbone is taken and the classifier head starts fresh."""
    augment: dict[str, float] = field(default_factory=lambda: {
        "rotation_deg": 10.0, "zoom": 0.1, "translate": 0.05, "perspective": 0.2,
        "brightness": 0.2, "contrast": 0.2, "flip_p": 0.5})


def init_weights(module: Any, state: dict[str, Any], same_classes: bool) -> str:
    """Load another model's weights; with other classes, everything but the classifier.

    Transfer between label sets (e.g. a fracture model started from the hardware model's
    backbone) keeps the new model's freshly initialised head. Returns what was loaded.
    """
    if same_classes:
        module.load_state_dict(state)
        return "all layers"
    head = module.pretrained_cfg.get("classifier") or ""
    prefix = f"{head}." if head else ""
    backbone = {k: v for k, v in state.items() if not (prefix and k.startswith(prefix))}
    missing, unexpected = module.load_state_dict(backbone, strict=False)
    if unexpected or any(not k.startswith(prefix) for k in missing) or not prefix:
        raise ValueError(f"cannot transfer the backbone: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return f"backbone only, new {head!r} head for other classes"


def augmentation(cfg: TrainConfig) -> Any:
    """torchvision v2 pipeline on (1, S, S) float tensors in [0, 1]."""
    from torchvision.transforms import v2

    a = cfg.augment
    return v2.Compose([
        v2.RandomHorizontalFlip(p=a["flip_p"]),
        v2.RandomAffine(degrees=a["rotation_deg"], translate=(a["translate"], a["translate"]),
                        scale=(1.0 - a["zoom"], 1.0 + a["zoom"])),
        v2.RandomPerspective(distortion_scale=a["perspective"], p=0.5),
        v2.ColorJitter(brightness=a["brightness"], contrast=a["contrast"]),
    ])


class _Crops:
    """torch Dataset over cached uint8 crops."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Any = None) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        import torch

        x = torch.from_numpy(self.images[i]).float().div_(255.0)[None]
        if self.transform is not None:
            x = self.transform(x).clamp_(0.0, 1.0)
        return (x - INPUT_MEAN) / INPUT_STD, int(self.labels[i])


def predict_arrays(module: Any, images: np.ndarray, device: Any,
                   batch_size: int = 32) -> np.ndarray:
    """Softmax probabilities for cached uint8 crops (no augmentation)."""
    import torch

    module.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start : start + batch_size]).float().div_(255.0)[:, None]
            logits = module(((x - INPUT_MEAN) / INPUT_STD).to(device))
            out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    k = module.get_classifier().out_features
    return np.concatenate(out) if out else np.zeros((0, k))


def _write_split(path: Path, rows: Sequence[LabelledHip], split: dict[str, list[int]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["split", "path", "study_uid", "patient_id", "laterality", "label"])
        for name, idx in split.items():
            for i in idx:
                r = rows[i]
                w.writerow([name, r.path, r.study_uid, r.patient_id, r.laterality, r.label])


def _run_stage(module: Any, loader: Any, epochs: int, max_lr: float, cfg: TrainConfig,
               device: Any, stage: str, state: dict[str, Any], on_epoch: Any) -> None:
    import torch
    from tqdm import tqdm

    params = [p for p in module.parameters() if p.requires_grad]
    if epochs <= 0 or not params:
        return
    opt = torch.optim.AdamW(params, lr=max_lr, weight_decay=cfg.weight_decay)
    total = epochs * len(loader)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=max(1, total))
    loss_fn = torch.nn.CrossEntropyLoss()
    for epoch in range(epochs):
        module.train()
        bar = tqdm(loader, desc=f"{stage} {epoch + 1}/{epochs}", unit="batch", leave=False,
                   dynamic_ncols=True)
        running = 0.0
        for n, (x, y) in enumerate(bar, start=1):
            x, y = x.to(device), y.to(device)
            loss = loss_fn(module(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched.last_epoch + 1 < total:  # OneCycleLR refuses steps past its total
                sched.step()
            state["steps"] += 1
            running += loss.item()
            bar.set_postfix(loss=f"{running / n:.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
            if cfg.max_steps is not None and state["steps"] >= cfg.max_steps:
                break
        bar.close()
        on_epoch(stage, epoch + 1, running / max(1, n))
        if cfg.max_steps is not None and state["steps"] >= cfg.max_steps:
            return


def train(data_dir: Path, labels_csv: Path, out_dir: Path, cfg: TrainConfig,
          cache_dir: Path | None = None, log: Any = print) -> ModelCard:
    """Run the whole recipe; returns the written model card."""
    import torch
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = label_spec(cfg.label_set)
    classes = spec.classes
    column = cfg.label_column or spec.column
    rows = read_labels(labels_csv, classes, column, spec.aliases)
    images, used, refused = load_crops(
        rows, data_dir, cfg.input_size, cache_dir or out_dir / "cache",
        progress=lambda it: tqdm(it, desc="decode + crop", unit="image", leave=False),
        workers=cfg.decode_workers)
    for path, reason in refused.items():
        log(f"skipped {path}: {reason}")
    if not used:
        raise ValueError("no usable labelled images")
    rows = [rows[i] for i in used]
    labels = np.array([classes.index(r.label) for r in rows])
    split = split_patients(rows, cfg.seed)
    _write_split(out_dir / "split.csv", rows, split)
    log("split (hips): " + ", ".join(f"{k} {len(v)}" for k, v in split.items()))

    device = select_device(cfg.device)
    module = create_model(cfg.arch, len(classes))
    if cfg.init_from:
        start = load_model(Path(cfg.init_from))
        if start.card.architecture != cfg.arch:
            raise ValueError(f"--init-from {cfg.init_from}: architecture differs "
                             f"({start.card.architecture} vs {cfg.arch})")
        what = init_weights(module, start.module.state_dict(),
                            same_classes=start.card.classes == classes)
        log(f"starting from the weights of {cfg.init_from} ({what}; "
            f"{start.card.weights_sha256[:12]}...)")
    module = module.to(device)
    train_set = _Crops(images[split["train"]], labels[split["train"]], augmentation(cfg))
    sampler = None
    if cfg.balance:
        counts = np.bincount(train_set.labels, minlength=len(classes))
        sampler = torch.utils.data.WeightedRandomSampler(
            torch.as_tensor(1.0 / counts[train_set.labels], dtype=torch.double),
            num_samples=len(train_set), replacement=True,
            generator=torch.Generator().manual_seed(cfg.seed))
    loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch_size,
                                         shuffle=sampler is None, sampler=sampler,
                                         num_workers=cfg.workers, drop_last=False,
                                         persistent_workers=cfg.workers > 0)
    ckpt_dir = out_dir / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    val_x, val_y = images[split["val"]], labels[split["val"]]
    state: dict[str, Any] = {"steps": 0, "best": (-1.0, -np.inf), "history": []}
    started = time.time()

    def on_epoch(stage: str, epoch: int, train_loss: float) -> None:
        probs = predict_arrays(module, val_x, device)
        acc = float((probs.argmax(1) == val_y).mean()) if len(val_y) else 0.0
        nll = float(-np.log(probs[np.arange(len(val_y)), val_y] + 1e-9).mean()) \
            if len(val_y) else 0.0
        state["history"].append({"stage": stage, "epoch": epoch, "train_loss": train_loss,
                                 "val_accuracy": acc, "val_loss": nll})
        log(f"{stage} epoch {epoch}: train loss {train_loss:.4f}, val loss {nll:.4f}, "
            f"val accuracy {acc:.3f} ({time.time() - started:.0f} s)")
        torch.save({"model": module.state_dict(), "stage": stage, "epoch": epoch,
                    "config": asdict(cfg)}, ckpt_dir / "last.pt")
        if (acc, -nll) > state["best"]:
            state["best"] = (acc, -nll)
            torch.save(module.state_dict(), ckpt_dir / "best.pt")

    # Stage 1: head only.
    for p in module.parameters():
        p.requires_grad = False
    for p in module.get_classifier().parameters():
        p.requires_grad = True
    _run_stage(module, loader, cfg.epochs_head, cfg.lr_head, cfg, device, "head", state,
               on_epoch)
    # Stage 2: everything.
    for p in module.parameters():
        p.requires_grad = True
    if cfg.max_steps is None or state["steps"] < cfg.max_steps:
        _run_stage(module, loader, cfg.epochs, cfg.lr, cfg, device, "full", state, on_epoch)
    if (ckpt_dir / "best.pt").is_file():
        module.load_state_dict(torch.load(ckpt_dir / "best.pt", map_location=device))

    test = split["test"]
    probs = predict_arrays(module, images[test], device)
    keys = [(rows[i].study_uid, rows[i].laterality) for i in test]
    y_hip, p_hip = fuse_hips(keys, labels[test].tolist(), probs)
    metrics = compute_metrics(y_hip, p_hip, classes, seed=cfg.seed)
    dataset_name = cfg.training_data or f"{Path(data_dir).name} (labels {Path(labels_csv).name})"
    note = SYNTHETIC_DISCLAIMER if cfg.synthetic_demo else ""
    write_report(metrics, y_hip, p_hip, out_dir / "evaluation",
                 f"{cfg.name} {cfg.version}: test split of {dataset_name}", note)
    card = ModelCard(
        name=cfg.name, version=cfg.version, architecture=cfg.arch, input_size=cfg.input_size,
        label_set=cfg.label_set, classes=classes, training_data=dataset_name,
        synthetic_demo=cfg.synthetic_demo, limitations=note,
        training={**{k: v for k, v in asdict(cfg).items()
                     if k not in ("name", "version", "training_data", "synthetic_demo")},
                  "label_column": column, "split": {k: len(v) for k, v in split.items()},
                  "optimiser": "AdamW, OneCycleLR per stage, cross-entropy",
                  "steps": state["steps"], "seconds": round(time.time() - started, 1),
                  "history": state["history"]},
        evaluation={"test_split": card_figures(metrics, f"test split of {dataset_name}")},
    )
    card = save_model(module.cpu(), card, out_dir)
    (out_dir / "history.json").write_text(json.dumps(state["history"], indent=2))
    return card
