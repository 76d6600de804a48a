"""`hiprouter train`: the seed papers' recipe on folders of DICOM files plus labels CSVs.

Patient-level class-stratified 70/10/20 split (saved as split.csv), head-only epochs then
full fine-tuning, each with a one-cycle learning rate; augmentation (augment.py: the seed's
contrast/brightness/zoom/warp/rotation/flip, or `strong` for transfer to other image
sources); a checkpoint per epoch; the best epoch on the validation split is exported as
safetensors + card.yaml. Then, on the validation split: temperature scaling (calibration),
the confidence below which a hip is indeterminate (abstention) and triage thresholds at a
target sensitivity; on the training split: the out-of-distribution threshold. The card
holds all of them and the test split's figures (evaluate.py).

Seed 001's options: ``--arch resnet50 --attention cbam --pool gem --loss cb-focal``.
Seed 003's: ``--arch efficientnet_b4 --input-size 380`` (the defaults).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hiprouter.inference.decode import RADIOGRAPH_MODALITIES, RefusedImage, decode, read_dataset
from hiprouter.inference.models import (
    SYNTHETIC_DISCLAIMER,
    ModelCard,
    create_model,
    load_model,
    save_model,
    select_device,
    sha256_file,
)
from hiprouter.inference.ood import STATS_FILE, Mahalanobis, energy, pooled, threshold_at
from hiprouter.inference.preprocess import check_channels, metal_channel, model_input
from hiprouter.synth.ood import claim_ap_pelvis
from hiprouter.training.augment import Augment, preset
from hiprouter.training.calibration import (
    choose_min_confidence,
    ece,
    fit_temperature,
    rounded,
    softmax,
    triage_thresholds,
)
from hiprouter.training.dataset import (
    LabelledHip,
    label_spec,
    letterboxed_crops,
    load_crops,
    read_sources,
    split_patients,
)
from hiprouter.training.evaluate import (
    card_figures,
    compute_metrics,
    fuse_hips,
    ood_folder,
    selective_figures,
    write_report,
)
from hiprouter.training.losses import make_loss

MIN_OOD_VALIDATION = 50
"""Validation crops needed to take the OOD threshold from the validation split alone."""


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
    classes: list[str] | None = None
    """Class keys in output order, for a label set that is not an installed kind."""
    max_steps: int | None = None
    """Stop after this many optimiser steps in total (smoke tests)."""
    balance: bool = False
    """Draw training hips with class-balanced probabilities (rare classes, e.g. fractures)."""
    workers: int = 1
    """DataLoader worker processes for augmentation (they run single-threaded, which also
    keeps per-sample transforms from fighting the training threads for the cores)."""
    decode_workers: int = 1
    """Processes decoding DICOM into the crop cache."""
    threads: int | None = None
    """torch CPU threads (None: torch's default)."""
    name: str = "hardware"
    version: str = "0.1.0"
    training_data: str = ""
    synthetic_demo: bool = False
    device: str = "auto"
    init_from: str | None = None
    """Model directory whose weights start the run: same arch; with other classes (another
    label set) only the backbone is taken and the classifier head starts fresh."""
    channels: list[str] = field(default_factory=lambda: ["grey"])
    """Input channels (preprocess.CHANNELS): grey, metal."""
    attention: str = "none"
    """Attention module in every residual block (cbam, se, eca; ResNet family)."""
    pool: str = "avg"
    """Global pooling: avg or gem (generalized mean)."""
    loss: str = "ce"
    """ce, focal, cb-focal (class-balanced focal, seed 001) or cb-ce."""
    focal_gamma: float = 2.0
    cb_beta: float = 0.999
    label_smoothing: float = 0.0
    augment_preset: str = "basic"
    augment: dict[str, float] = field(default_factory=dict)
    """Augmentation parameters (default: the preset's)."""
    tta: list[str] = field(default_factory=list)
    """Test-time augmentation applied at run time (hflip: mean of the logits of the crop
    and its mirror image)."""
    calibrate: bool = True
    """Fit the temperature on the validation split."""
    abstain_accuracy: float | None = 0.95
    """Target accuracy of validation hips above the card's min_confidence (None: none)."""
    ood_method: str = "energy"
    """energy or mahalanobis."""
    ood_tpr: float | None = 0.99
    """Fraction of in-distribution crops below the OOD threshold (None: no OOD threshold)."""
    ood_threshold_on: str = "validation"
    """Where the threshold's in-distribution crops come from: validation (held out; with
    fewer than MIN_OOD_VALIDATION crops, training + validation) or training."""
    triage_sensitivity: float | None = None
    """Choose per-class triage thresholds at this validation sensitivity."""
    triage_classes: list[str] | None = None
    """Classes to choose triage thresholds for (default: the kind's triage classes)."""
    outliers: list[str] = field(default_factory=list)
    """Folders of images the model must not assess (e.g. `hiprouter synth-ood`): their hip
    crops are trained towards the uniform distribution (outlier exposure, Hendrycks et al.
    2019), so a chest film claimed as a pelvis gets a low confidence instead of a class."""
    outlier_weight: float = 0.5
    """Weight of the outlier-exposure term (cross-entropy of the outlier crops to uniform)."""
    structure_check: bool = False
    """Card setting ``ood.structure_check``: crops without any structure of a radiograph
    (blank, noise; `ood.no_anatomy`) are not assessed whatever the model says."""
    weights_dtype: str = "float32"
    """Storage of the exported weights: float32, or float16 (half the size)."""


def init_weights(module: Any, state: dict[str, Any], same_classes: bool) -> str:
    """Load another model's weights; with other classes, everything but the classifier.

    Transfer between label sets (e.g. a fracture model started from the hardware model's
    backbone) keeps the new model's freshly initialised head. A model with more input
    channels (e.g. grey + metal from a grey model) gets the old first-layer weights for the
    channels they share and zeros for the new ones, so it starts out as the old model.
    Returns what was loaded.
    """
    own = module.state_dict()
    notes = []
    state = dict(state)
    for key, value in state.items():
        target = own.get(key)
        if (target is not None and value.ndim == 4 and target.ndim == 4
                and value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]
                and value.shape[1] < target.shape[1]):
            grown = target.new_zeros(target.shape)
            grown[:, : value.shape[1]] = value
            state[key] = grown
            notes.append(f"{key}: {value.shape[1]} -> {target.shape[1]} input channels "
                         "(new ones start at zero)")
    head = module.pretrained_cfg.get("classifier") or ""
    prefix = f"{head}." if head else ""
    if not same_classes:
        if not prefix:
            raise ValueError("cannot transfer the backbone: the model names no classifier")
        state = {k: v for k, v in state.items() if not k.startswith(prefix)}
    missing, unexpected = module.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"cannot transfer the weights: unexpected {unexpected[:5]} (another "
                         "architecture?)")
    fresh = sorted({k.rsplit(".", 1)[0] for k in missing if not (prefix and
                                                                  k.startswith(prefix))})
    if fresh:  # layers the source model does not have (attention, GeM) start fresh
        notes.append(f"new layers start fresh: {', '.join(fresh[:6])}"
                     + (" ..." if len(fresh) > 6 else ""))
    extra = f"; {'; '.join(notes)}" if notes else ""
    if same_classes:
        return "all layers" + extra
    return f"backbone only, new {head!r} head for other classes" + extra


def augmentation(cfg: TrainConfig) -> Augment:
    """The training augmentation of a config (its preset unless `augment` is given)."""
    return Augment(cfg.augment or preset(cfg.augment_preset))


class _Crops:
    """torch Dataset over cached uint8 crops: augmentation, then the input channels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Any = None,
                 channels: Sequence[str] = ("grey",)) -> None:
        self.images, self.labels, self.transform = images, labels, transform
        self.channels = tuple(channels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        import torch

        x = torch.from_numpy(self.images[i]).float().div_(255.0)[None]
        if self.transform is not None:
            x = self.transform(x).clamp_(0.0, 1.0)
        if self.channels == ("grey",):
            return (x - 0.5) / 0.25, int(self.labels[i])
        grey = x[0].numpy()
        planes = [grey if c == "grey" else metal_channel(grey) for c in self.channels]
        return (torch.from_numpy(np.stack(planes)) - 0.5) / 0.25, int(self.labels[i])


def forward_arrays(module: Any, images: np.ndarray, device: Any, channels: Sequence[str] = (
        "grey",), tta: Sequence[str] = (), batch_size: int = 32, features: bool = False,
        ) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits (TTA-averaged as at run time) and optionally pooled features of cached crops."""
    import torch

    module.eval()
    out, feats = [], []
    pool = getattr(getattr(module, "global_pool", None), "pool_type", "avg")
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            boxed = images[start : start + batch_size].astype(np.float32) / 255.0
            x = torch.from_numpy(model_input(boxed, channels)).to(device)
            fmap = module.forward_features(x)
            logits = module.forward_head(fmap)
            if "hflip" in tta:
                logits = (logits + module(torch.flip(x, dims=[3]))) / 2.0
            out.append(logits.float().cpu().numpy())
            if features:
                if pool == "gem":
                    feats.append(module.global_pool(fmap).float().cpu().numpy())
                else:
                    feats.append(pooled(fmap.float().cpu().numpy(), "avg"))
    k = module.get_classifier().out_features
    logits = np.concatenate(out) if out else np.zeros((0, k))
    return logits, (np.concatenate(feats) if features and feats else None)


def predict_arrays(module: Any, images: np.ndarray, device: Any, batch_size: int = 32,
                   channels: Sequence[str] = ("grey",)) -> np.ndarray:
    """Softmax probabilities for cached uint8 crops (no augmentation, no calibration)."""
    logits, _ = forward_arrays(module, images, device, channels, batch_size=batch_size)
    return softmax(logits)


def _write_split(path: Path, rows: Sequence[LabelledHip], split: dict[str, list[int]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["split", "path", "study_uid", "patient_id", "laterality", "label"])
        for name, idx in split.items():
            for i in idx:
                r = rows[i]
                w.writerow([name, r.path, r.study_uid, r.patient_id, r.laterality, r.label])


def _forever(loader: Any) -> Iterator[Any]:
    """The batches of `loader`, epoch after epoch."""
    while True:
        yield from loader


def outlier_crops(folders: Sequence[str | Path], size: int) -> np.ndarray:
    """Letterboxed uint8 hip crops of the images in `folders`, each read as if its header
    claimed an AP pelvis (the case where such an image reaches a hip model); images that
    cannot be decoded as a radiograph (colour photos, ...) are skipped."""
    crops: list[np.ndarray] = []
    for folder in folders:
        paths, _ = ood_folder(Path(folder))
        for path in paths:
            try:
                ds = claim_ap_pelvis(read_dataset(path))
                pixels = decode(ds, RADIOGRAPH_MODALITIES).pixels
            except (RefusedImage, OSError, ValueError):
                continue
            crops.extend(crop for _, crop in letterboxed_crops(ds, pixels, size))
    return np.stack(crops) if crops else np.zeros((0, size, size), dtype=np.uint8)


def _run_stage(module: Any, loader: Any, epochs: int, max_lr: float, cfg: TrainConfig,
               device: Any, stage: str, state: dict[str, Any], on_epoch: Any,
               loss_fn: Any, outliers: Iterator[Any] | None = None) -> None:
    import torch
    from tqdm import tqdm

    params = [p for p in module.parameters() if p.requires_grad]
    if epochs <= 0 or not params:
        return
    opt = torch.optim.AdamW(params, lr=max_lr, weight_decay=cfg.weight_decay)
    total = epochs * len(loader)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=max(1, total))
    loss_fn = loss_fn.to(device)
    for epoch in range(epochs):
        module.train()
        bar = tqdm(loader, desc=f"{stage} {epoch + 1}/{epochs}", unit="batch", leave=False,
                   dynamic_ncols=True)
        running = 0.0
        for n, (x, y) in enumerate(bar, start=1):
            x, y = x.to(device), y.to(device)
            if outliers is None:
                loss = loss_fn(module(x), y)
            else:  # one forward pass over both (batch-norm statistics see the mix)
                xo = next(outliers)[0].to(device)
                logits = module(torch.cat([x, xo]))
                uniform_ce = -torch.log_softmax(logits[len(x):].float(), dim=1).mean()
                loss = loss_fn(logits[: len(x)], y) + cfg.outlier_weight * uniform_ce
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched.last_epoch + 1 < total:  # OneCycleLR refuses steps past its total
                sched.step()
            state["steps"] += 1
            running += loss.item()
            state["losses"].append(float(loss.item()))
            bar.set_postfix(loss=f"{running / n:.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
            if cfg.max_steps is not None and state["steps"] >= cfg.max_steps:
                break
        bar.close()
        on_epoch(stage, epoch + 1, running / max(1, n))
        if cfg.max_steps is not None and state["steps"] >= cfg.max_steps:
            return


def train(data_dir: Path | Sequence[Path], labels_csv: Path | Sequence[Path], out_dir: Path,
          cfg: TrainConfig, cache_dir: Path | None = None, log: Any = print) -> ModelCard:
    """Run the whole recipe; returns the written model card.

    `data_dir` and `labels_csv` may be lists of the same length (several data sets, e.g. both
    synthetic renderers, trained on as one).
    """
    import torch
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dirs = [Path(d) for d in (data_dir if isinstance(data_dir, list | tuple) else [data_dir])]
    csvs = [Path(c) for c in (labels_csv if isinstance(labels_csv, list | tuple)
                              else [labels_csv])]
    if len(dirs) != len(csvs):
        raise ValueError("one labels CSV per data folder")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    channels = list(check_channels(cfg.channels))
    spec = label_spec(cfg.label_set, cfg.classes)
    classes = spec.classes
    column = cfg.label_column or spec.column
    rows = read_sources(list(zip(dirs, csvs, strict=True)), classes, column, spec.aliases)
    n_skipped = rows.skipped
    if n_skipped:
        log(f"skipped {rows.skipped} row(s) with an empty {column!r} label "
            "(hips the task does not apply to)")
    images, used, refused = load_crops(
        rows, Path("/"), cfg.input_size, cache_dir or out_dir / "cache",
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
    module = create_model(cfg.arch, len(classes), len(channels), attention=cfg.attention,
                          pool=cfg.pool)
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
    train_set = _Crops(images[split["train"]], labels[split["train"]], augmentation(cfg),
                       channels)
    counts = np.bincount(train_set.labels, minlength=len(classes))
    sampler = None
    if cfg.balance:
        sampler = torch.utils.data.WeightedRandomSampler(
            torch.as_tensor(1.0 / np.maximum(counts[train_set.labels], 1), dtype=torch.double),
            num_samples=len(train_set), replacement=True,
            generator=torch.Generator().manual_seed(cfg.seed))
    loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch_size,
                                         shuffle=sampler is None, sampler=sampler,
                                         num_workers=cfg.workers, drop_last=False,
                                         persistent_workers=cfg.workers > 0)
    loss_fn = make_loss(cfg.loss, counts.tolist(), cfg.focal_gamma, cfg.cb_beta,
                        cfg.label_smoothing)
    outliers = None
    if cfg.outliers:
        ood_x = outlier_crops(cfg.outliers, cfg.input_size)
        if not len(ood_x):
            raise ValueError(f"no hip crops in the outlier folders {cfg.outliers}")
        log(f"outlier exposure: {len(ood_x)} crops of {', '.join(cfg.outliers)} "
            f"(weight {cfg.outlier_weight})")
        outliers = _forever(torch.utils.data.DataLoader(
            _Crops(ood_x, np.full(len(ood_x), -1), augmentation(cfg), channels),
            batch_size=max(1, cfg.batch_size // 2), shuffle=True, drop_last=len(ood_x) > 1,
            num_workers=0, generator=torch.Generator().manual_seed(cfg.seed)))
    ckpt_dir = out_dir / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    val_x, val_y = images[split["val"]], labels[split["val"]]
    state: dict[str, Any] = {"steps": 0, "best": (-1.0, -np.inf), "history": [], "losses": []}
    started = time.time()

    def on_epoch(stage: str, epoch: int, train_loss: float) -> None:
        probs = predict_arrays(module, val_x, device, channels=channels)
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
               on_epoch, loss_fn, outliers)
    # Stage 2: everything.
    for p in module.parameters():
        p.requires_grad = True
    if cfg.max_steps is None or state["steps"] < cfg.max_steps:
        _run_stage(module, loader, cfg.epochs, cfg.lr, cfg, device, "full", state, on_epoch,
                   loss_fn, outliers)
    if (ckpt_dir / "best.pt").is_file():
        module.load_state_dict(torch.load(ckpt_dir / "best.pt", map_location=device))
    train_seconds = round(time.time() - started, 1)

    # Calibration, abstention, triage (validation split) and OOD (training split).
    def hips(idx: list[int], logits: np.ndarray, temperature: float
             ) -> tuple[np.ndarray, np.ndarray]:
        keys = [(rows[i].study_uid, rows[i].laterality) for i in idx]
        return fuse_hips(keys, labels[idx].tolist(), softmax(logits, temperature))

    tta = list(cfg.tta)
    need_feats = cfg.ood_method == "mahalanobis" and cfg.ood_tpr is not None
    val_logits, _ = forward_arrays(module, val_x, device, channels, tta)
    temperature = fit_temperature(val_logits, val_y) if cfg.calibrate and len(val_y) else 1.0
    test = split["test"]
    test_logits, _ = forward_arrays(module, images[test], device, channels, tta)
    y_test_raw, p_test_raw = hips(test, test_logits, 1.0)
    y_hip, p_hip = hips(test, test_logits, temperature)
    calibration = {"temperature": round(temperature, 4), "method": "temperature scaling",
                   "fitted_on": f"validation split ({len(val_y)} crops, NLL)",
                   "ece_before": rounded(ece(p_test_raw, y_test_raw)),
                   "ece_after": rounded(ece(p_hip, y_hip)),
                   "ece_measured_on": f"test split ({len(y_hip)} hips)"}
    log(f"temperature {temperature:.3f}: test ECE {calibration['ece_before']} -> "
        f"{calibration['ece_after']}")
    yv_hip, pv_hip = hips(split["val"], val_logits, temperature)
    abstention: dict[str, Any] = {}
    if cfg.abstain_accuracy is not None and len(yv_hip):
        choice = choose_min_confidence(pv_hip, yv_hip, cfg.abstain_accuracy)
        abstention = {**choice, "chosen_on": f"validation split ({len(yv_hip)} hips)",
                      "rule": "smallest calibrated confidence whose accepted validation hips "
                              "reach the target accuracy"}
        log(f"abstention: min_confidence {choice['min_confidence']} (validation coverage "
            f"{choice.get('val_coverage', 0):.3f})")
    triage: dict[str, float] = {}
    triage_info: dict[str, Any] = {}
    if cfg.triage_sensitivity is not None:
        wanted = cfg.triage_classes if cfg.triage_classes is not None else spec.triage
        triage_info = triage_thresholds(pv_hip, yv_hip, classes, wanted,
                                        cfg.triage_sensitivity)
        triage = {k: v["threshold"] for k, v in triage_info.items()}
        for k in wanted:
            if k not in triage:
                log(f"no triage threshold for {k}: no validation hips of that class")
        log("triage thresholds: " + (", ".join(f"{k} {v}" for k, v in triage.items()) or "none"))
    ood: dict[str, Any] = {}
    if cfg.ood_tpr is not None:
        tr = split["train"]
        tr_logits, tr_feats = forward_arrays(module, images[tr], device, channels, tta,
                                             features=need_feats)
        _, val_feats = forward_arrays(module, val_x, device, channels, tta,
                                      features=need_feats)
        if need_feats:
            stats = Mahalanobis.fit(tr_feats, labels[tr])
            stats.save(out_dir / STATS_FILE)
            tr_scores, val_scores = stats.score(tr_feats), stats.score(val_feats)
        else:
            tr_scores, val_scores = energy(tr_logits), energy(val_logits)
        # The threshold comes from held-out crops when there are enough of them: scores of
        # the crops a model (or the Mahalanobis statistics) was fitted on are optimistic.
        if cfg.ood_threshold_on == "training":
            scores, where = tr_scores, f"training split ({len(tr_scores)} crops)"
        elif len(val_scores) >= MIN_OOD_VALIDATION:
            scores, where = val_scores, f"validation split ({len(val_scores)} crops)"
        else:
            scores = np.concatenate([tr_scores, val_scores])
            where = f"training + validation splits ({len(scores)} crops)"
        ood = {"method": cfg.ood_method, "threshold": round(threshold_at(scores, cfg.ood_tpr), 4),
               "fitted_on": (f"{'statistics: training split, ' if need_feats else ''}"
                             f"threshold: {where}, no augmentation"),
               "tpr": cfg.ood_tpr,
               "train_kept": round(float((tr_scores <= threshold_at(scores, cfg.ood_tpr))
                                         .mean()), 4)}
        if cfg.structure_check:
            ood["structure_check"] = True
        if need_feats:
            ood.update(file=STATS_FILE, file_sha256=sha256_file(out_dir / STATS_FILE))
        log(f"OOD ({cfg.ood_method}): threshold {ood['threshold']} keeps {cfg.ood_tpr:.0%} "
            f"of the {where}")

    metrics = compute_metrics(y_hip, p_hip, classes, seed=cfg.seed)
    metrics["calibration"] = {"ece": calibration["ece_after"],
                              "ece_uncalibrated": calibration["ece_before"]}
    if abstention:
        metrics["selective"] = selective_figures(y_hip, p_hip, abstention["min_confidence"])
    dataset_name = cfg.training_data or ", ".join(f"{d.name} (labels {c.name})"
                                                  for d, c in zip(dirs, csvs, strict=True))
    note = SYNTHETIC_DISCLAIMER if cfg.synthetic_demo else ""
    write_report(metrics, y_hip, p_hip, out_dir / "evaluation",
                 f"{cfg.name} {cfg.version}: test split of {dataset_name}", note)
    parameters: dict[str, Any] = {"channels": channels}
    if cfg.attention != "none":
        parameters["attention"] = cfg.attention
    if cfg.pool != "avg":
        parameters["pool"] = cfg.pool
    if tta:
        parameters["tta"] = tta
    skip = ("name", "version", "training_data", "synthetic_demo")
    card = ModelCard(
        name=cfg.name, version=cfg.version, architecture=cfg.arch, input_size=cfg.input_size,
        in_chans=len(channels), parameters=parameters,
        label_set=cfg.label_set, classes=classes, training_data=dataset_name,
        synthetic_demo=cfg.synthetic_demo, limitations=note,
        training={**{k: v for k, v in asdict(cfg).items() if k not in skip},
                  "augment": cfg.augment or preset(cfg.augment_preset),
                  "label_column": column, "skipped_empty_labels": n_skipped,
                  "split": {k: len(v) for k, v in split.items()},
                  "optimiser": f"AdamW, OneCycleLR per stage, loss {cfg.loss}",
                  "steps": state["steps"], "seconds": train_seconds,
                  "history": state["history"]},
        evaluation={"test_split": card_figures(metrics, f"test split of {dataset_name}")},
        calibration=calibration, abstention=abstention, ood=ood, triage_thresholds=triage,
    )
    if triage_info:
        card.evaluation["triage_validation"] = triage_info
    card = save_model(module.cpu(), card, out_dir, cfg.weights_dtype)
    (out_dir / "history.json").write_text(json.dumps(
        {"epochs": state["history"], "step_losses": state["losses"]}, indent=2))
    return card
