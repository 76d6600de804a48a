"""Training and evaluation of the dual-view (AP + lateral) model of Hip-Net (seed 000).

The labels CSV is the usual one row per (image, hip); the rows of the same hip (study,
laterality) are paired: its AP crops (AP pelvis, AP hip) with its lateral crops (frog-leg,
cross-table lateral). Rows with an empty label are skipped (the `failure` column is empty
for hips without a THA); a hip without an AP view is left out (the model needs one).

Training (`hiprouter train-dual-view`): patient-level, class-stratified 70/10/20 split of
hips (split.csv); every epoch each training hip contributes one random AP crop and one
random lateral crop, the lateral dropped with probability `lateral_dropout` (and always for
hips without one), so the model also learns to answer from the AP alone; augmentation
(flip, affine, perspective, brightness, contrast) per view; AdamW with a one-cycle learning
rate; the epoch with the best validation accuracy (then loss) is kept. `members` > 1 trains
an ensemble (member-1 ... member-N, seeds seed ... seed+N-1, the same split) and evaluates
it. Weights are written as float16.

Evaluation (`hiprouter evaluate-dual-view`, and the test split after training): per hip,
every AP x lateral pair averaged (as at run time): accuracy, Cohen's kappa, per-class and
macro one-vs-rest AUC with percentile-bootstrap 95 % CIs, confusion matrix (evaluate.py), for
the hips as they come (dual view where there is a lateral) and with the laterals removed
(AP only), and per member for an ensemble.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hiprouter.inference.dualview import (
    AP_VIEWS,
    LATERAL_VIEWS,
    DualViewEnsemble,
    build_net,
    card_parameters,
    save,
)
from hiprouter.inference.models import SYNTHETIC_DISCLAIMER, ModelCard, select_device
from hiprouter.inference.preprocess import INPUT_MEAN, INPUT_STD
from hiprouter.training.dataset import (
    DatasetError,
    LabelledHip,
    LabelSpec,
    load_crops,
    read_labels,
    split_patients,
)
from hiprouter.training.evaluate import (
    card_figures,
    compute_metrics,
    selective_figures,
    write_report,
)


@dataclass(frozen=True)
class Hip:
    """One labelled hip: its AP and lateral crops (indices into the crop array)."""

    study_uid: str
    patient_id: str
    laterality: str
    label: int
    ap: tuple[int, ...]
    lateral: tuple[int, ...]


@dataclass
class DualViewConfig:
    """A dual-view training run (recorded in the model cards)."""

    arch: str = "mnasnet_small"
    input_size: int = 192
    epochs: int = 30
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    members: int = 1
    label_set: str = "prosthesis_failure"
    label_column: str = ""
    lateral_dropout: float = 0.3
    crop: str = "implant_window"
    """Model input: `implant_window` (a square around the implant) or `full` (the whole
    hip crop letterboxed); recorded in the card and applied at run time."""
    balance: bool = False
    threads: int = 0
    """torch threads (0: torch's default)."""
    max_steps: int | None = None
    decode_workers: int = 1
    name: str = "prosthesis_failure"
    version: str = "0.1.0"
    training_data: str = ""
    synthetic_demo: bool = False
    device: str = "auto"
    init_from: str | None = None
    """A model folder of the same architecture whose backbone starts every member: a
    single-view classifier (e.g. the hardware demo, which knows what implants look like) or
    another dual-view model (with the same classes: all of it)."""
    augment: dict[str, float] = field(default_factory=lambda: {
        "rotation_deg": 10.0, "zoom": 0.1, "translate": 0.05, "perspective": 0.2,
        "brightness": 0.2, "contrast": 0.2, "flip_p": 0.5})


def label_spec(label_set: str) -> LabelSpec:
    """Classes, labels column and aliases of a pipeline kind with a dual-view model (its
    `default_vocabulary`, `label_column` and `label_aliases`)."""
    from hiprouter.config import ConfigError
    from hiprouter.pipelines.registry import kind_class

    try:
        cls = kind_class(label_set)
    except ConfigError as exc:
        raise DatasetError(str(exc)) from None
    vocabulary = getattr(cls, "default_vocabulary", None)
    if vocabulary is None:
        raise DatasetError(f"kind {label_set!r} has no default vocabulary to train")
    return LabelSpec(label_set, vocabulary().keys, getattr(cls, "label_column", "") or label_set,
                     dict(getattr(cls, "label_aliases", {})))


def view_kind(view: str) -> str:
    """'ap', 'lateral' or '' (a view the model does not read)."""
    return "ap" if view in AP_VIEWS else "lateral" if view in LATERAL_VIEWS else ""


def _view_of(data_dir: Path, row: LabelledHip) -> str:
    if row.view:
        return row.view
    from pydicom import dcmread

    from hiprouter.inference.laterality import classify_view

    return classify_view(dcmread(Path(data_dir) / row.path, stop_before_pixels=True))


def pair_hips(rows: Sequence[LabelledHip], used: Sequence[int], classes: Sequence[str],
              data_dir: Path) -> tuple[list[Hip], int]:
    """Group the crops of the same hip (`used[k]` is the row of crop k); returns the hips
    with at least one AP crop and the number of hips left out for having none."""
    groups: dict[tuple[str, str], list[int]] = {}
    for k, i in enumerate(used):
        r = rows[i]
        side = r.laterality if r.laterality in ("R", "L") else f"U:{r.path}"
        groups.setdefault((r.study_uid, side), []).append(k)
    hips, without_ap = [], 0
    for (study, side), ks in groups.items():
        first = rows[used[ks[0]]]
        kinds = [view_kind(_view_of(data_dir, rows[used[k]])) for k in ks]
        ap = tuple(k for k, v in zip(ks, kinds, strict=True) if v == "ap")
        lat = tuple(k for k, v in zip(ks, kinds, strict=True) if v == "lateral")
        if not ap:
            without_ap += 1
            continue
        hips.append(Hip(study, first.patient_id, side[:1], classes.index(first.label), ap, lat))
    return hips, without_ap


def _window_crops(image: Path, size: int, crop: str, cache_dir: Path | None
                  ) -> dict[str, np.ndarray] | str:
    """Model inputs (uint8) of one image's hip crops by laterality, through the same
    `model_input` as run time; cached per image, size and crop mode."""
    import hashlib

    from hiprouter.inference.decode import RefusedImage, decode_file
    from hiprouter.inference.dualview import model_input
    from hiprouter.inference.laterality import hip_crops

    cached = None
    if cache_dir is not None:
        stat = image.stat()
        key = f"{image.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{size}|{crop}"
        cached = Path(cache_dir) / f"{hashlib.sha1(key.encode()).hexdigest()}-{crop}.npz"
        if cached.is_file():
            with np.load(cached) as npz:
                return {k: npz[k] for k in npz.files}
    try:
        ds, decoded = decode_file(image)
    except (RefusedImage, OSError) as exc:
        return getattr(exc, "reason", None) or str(exc)
    out: dict[str, np.ndarray] = {}
    for c in hip_crops(ds, decoded.pixels):
        boxed, _, _ = model_input(c.pixels, size, crop)
        out.setdefault(c.laterality, np.rint(boxed * 255).astype(np.uint8))
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp.npz")
        np.savez(tmp, **out)
        tmp.replace(cached)
    return out


def load_inputs(rows: Sequence[LabelledHip], data_dir: Path, size: int, crop: str,
                cache_dir: Path | None, workers: int = 1
                ) -> tuple[np.ndarray, list[int], dict[str, str]]:
    """Like dataset.load_crops (uint8 (N, S, S), row indices, refusals), for a crop mode:
    `full` is exactly load_crops; `implant_window` cuts the implant window first."""
    if crop == "full":
        return load_crops(rows, data_dir, size, cache_dir, workers=workers)
    from hiprouter.training.dataset import crop_for

    images, used, refused = [], [], {}
    by_path: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_path.setdefault(row.path, []).append(i)
    for path, idx in by_path.items():
        crops = _window_crops(Path(data_dir) / path, size, crop, cache_dir)
        if isinstance(crops, str):
            refused[path] = crops
            continue
        for i in idx:
            got = crop_for(crops, rows[i].laterality)
            if got is None:
                refused[path] = f"no {rows[i].laterality} hip found in this image"
                continue
            images.append(got)
            used.append(i)
    order = np.argsort(used, kind="stable")
    stacked = np.stack([images[j] for j in order]) if images else np.zeros((0, size, size),
                                                                           np.uint8)
    return stacked, [used[j] for j in order], refused


def load_hips(data_dir: Path, labels_csv: Path, label_set: str, input_size: int,
              cache_dir: Path | None, label_column: str = "", decode_workers: int = 1,
              log: Callable[[str], Any] = print, crop: str = "full"
              ) -> tuple[list[str], np.ndarray, list[Hip]]:
    """Classes, uint8 model inputs (N, S, S) and the paired hips of a labelled DICOM
    folder."""
    spec = label_spec(label_set)
    rows = read_labels(labels_csv, spec.classes, label_column or spec.column, spec.aliases)
    images, used, refused = load_inputs(rows, data_dir, input_size, crop, cache_dir,
                                        decode_workers)
    for path, reason in refused.items():
        log(f"skipped {path}: {reason}")
    hips, without_ap = pair_hips(rows, used, spec.classes, data_dir)
    if without_ap:
        log(f"left out {without_ap} hip(s) without an AP view")
    if not hips:
        raise DatasetError(f"{labels_csv}: no hip with an AP view and a label")
    return list(spec.classes), images, hips


def split_hips(hips: Sequence[Hip], classes: Sequence[str], seed: int) -> dict[str, list[int]]:
    """Patient-level, class-stratified 70/10/20 split of hip indices."""
    pseudo = [LabelledHip(path="", study_uid=h.study_uid, patient_id=h.patient_id,
                          laterality=h.laterality, label=classes[h.label]) for h in hips]
    return split_patients(pseudo, seed)


def _augmentation(cfg: DualViewConfig) -> Any:
    from torchvision.transforms import v2

    a = cfg.augment
    return v2.Compose([
        v2.RandomHorizontalFlip(p=a["flip_p"]),
        v2.RandomAffine(degrees=a["rotation_deg"], translate=(a["translate"], a["translate"]),
                        scale=(1.0 - a["zoom"], 1.0 + a["zoom"])),
        v2.RandomPerspective(distortion_scale=a["perspective"], p=0.5),
        v2.ColorJitter(brightness=a["brightness"], contrast=a["contrast"]),
    ])


class PairDataset:
    """torch Dataset: per hip, a random AP crop and (maybe) a random lateral crop."""

    def __init__(self, images: np.ndarray, hips: Sequence[Hip], dropout: float,
                 transform: Any, seed: int) -> None:
        self.images, self.hips, self.dropout, self.transform = images, list(hips), dropout, \
            transform
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.hips)

    def _tensor(self, k: int) -> Any:
        import torch

        x = torch.from_numpy(self.images[k]).float().div_(255.0)[None]
        if self.transform is not None:
            x = self.transform(x).clamp_(0.0, 1.0)
        return (x - INPUT_MEAN) / INPUT_STD

    def __getitem__(self, i: int) -> tuple[Any, Any, bool, int]:
        import torch

        hip = self.hips[i]
        ap = self._tensor(int(self.rng.choice(hip.ap)))
        keep = bool(hip.lateral) and self.rng.random() >= self.dropout
        lat = self._tensor(int(self.rng.choice(hip.lateral))) if keep else torch.zeros_like(ap)
        return ap, lat, keep, hip.label


def _features(net: Any, images: np.ndarray, index: Sequence[int], device: Any,
              batch_size: int = 32) -> dict[int, Any]:
    """Pooled backbone features of the given crops (no augmentation)."""
    import torch

    out: dict[int, Any] = {}
    idx = sorted(set(index))
    net.eval()
    with torch.inference_mode():
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            x = torch.from_numpy(images[chunk]).float().div_(255.0)[:, None]
            pooled = net.features(((x - INPUT_MEAN) / INPUT_STD).to(device)).mean(dim=(2, 3))
            for k, v in zip(chunk, pooled.float().cpu(), strict=True):
                out[k] = v
    return out


def hip_probabilities(net: Any, images: np.ndarray, hips: Sequence[Hip], device: Any,
                      ap_only: bool = False) -> np.ndarray:
    """Softmax probabilities per hip, every AP x lateral pair averaged (as at run time)."""
    import torch

    if not hips:
        return np.zeros((0, net.head.out_features))
    crops = [k for h in hips for k in (*h.ap, *(() if ap_only else h.lateral))]
    pooled = _features(net, images, crops, device)
    head_w = net.head.weight.detach().float().cpu()
    head_b = net.head.bias.detach().float().cpu()
    missing = net.missing.detach().float().cpu()
    out = []
    for h in hips:
        aps = torch.stack([pooled[k] for k in h.ap])
        lats = [pooled[k] for k in h.lateral] if not ap_only else []
        if lats:
            lat = torch.stack(lats)
            pairs = torch.cat([aps.repeat_interleave(len(lats), 0), lat.repeat(len(aps), 1)], 1)
        else:
            pairs = torch.cat([aps, missing.expand_as(aps)], 1)
        logits = pairs @ head_w.T + head_b
        out.append(torch.softmax(logits, dim=1).mean(0).numpy())
    return np.stack(out)


def init_backbone(net: Any, model_dir: Path, arch: str, classes: Sequence[str]) -> str:
    """Start `net` from another model's weights; returns what was taken."""
    from hiprouter.inference import dualview
    from hiprouter.inference.models import load_model, read_card

    card = read_card(Path(model_dir))
    if card.architecture != arch:
        raise ValueError(f"--init-from {model_dir}: architecture differs "
                         f"({card.architecture} vs {arch})")
    if card.task == dualview.TASK:
        start = dualview.load(Path(model_dir)).net.state_dict()
        if list(card.classes) == list(classes):
            net.load_state_dict(start)
            return "all layers (a dual-view model with the same classes)"
        backbone = {k[len("backbone."):]: v for k, v in start.items()
                    if k.startswith("backbone.")}
    else:
        module = load_model(Path(model_dir)).module
        head = module.pretrained_cfg.get("classifier") or ""
        if not head:
            raise ValueError(f"--init-from {model_dir}: cannot tell its classifier head apart")
        backbone = {k: v for k, v in module.state_dict().items()
                    if not k.startswith(f"{head}.")}
    missing, unexpected = net.backbone.load_state_dict(backbone, strict=False)
    if missing or unexpected:
        raise ValueError(f"--init-from {model_dir}: backbone does not fit (missing "
                         f"{missing[:5]}, unexpected {unexpected[:5]})")
    return f"backbone of {card.name} {card.version} ({card.weights_sha256[:12]}...), new head"


def _train_member(images: np.ndarray, hips: list[Hip], split: dict[str, list[int]],
                  classes: list[str], cfg: DualViewConfig, seed: int, device: Any,
                  log: Callable[[str], Any]) -> tuple[Any, list[dict[str, Any]], int]:
    import torch
    from tqdm import tqdm

    torch.manual_seed(seed)
    net = build_net(cfg.arch, len(classes))
    if cfg.init_from:
        what = init_backbone(net, Path(cfg.init_from), cfg.arch, classes)
        log(f"seed {seed}: starting from the {what}")
    net = net.to(device)
    train_hips = [hips[i] for i in split["train"]]
    val_hips = [hips[i] for i in split["val"]]
    val_y = np.array([h.label for h in val_hips])
    data = PairDataset(images, train_hips, cfg.lateral_dropout, _augmentation(cfg), seed)
    sampler = None
    if cfg.balance:
        labels = np.array([h.label for h in train_hips])
        counts = np.bincount(labels, minlength=len(classes))
        sampler = torch.utils.data.WeightedRandomSampler(
            torch.as_tensor(1.0 / counts[labels], dtype=torch.double), len(labels),
            replacement=True, generator=torch.Generator().manual_seed(seed))
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch_size,
                                         shuffle=sampler is None, sampler=sampler,
                                         num_workers=0,
                                         generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = max(1, cfg.epochs * len(loader))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total)
    loss_fn = torch.nn.CrossEntropyLoss()
    history: list[dict[str, Any]] = []
    best: tuple[float, float] = (-1.0, -np.inf)
    best_state = None
    steps = 0
    started = time.time()
    for epoch in range(1, cfg.epochs + 1):
        net.train()
        running, n = 0.0, 0
        bar = tqdm(loader, desc=f"seed {seed} epoch {epoch}/{cfg.epochs}", unit="batch",
                   leave=False, dynamic_ncols=True)
        for ap, lat, keep, y in bar:
            keep = keep.bool()
            logits = net(ap.to(device), lat[keep].to(device), keep.to(device))
            loss = loss_fn(logits, y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched.last_epoch + 1 < total:
                sched.step()
            steps += 1
            running += float(loss.item())
            n += 1
            bar.set_postfix(loss=f"{running / n:.3f}")
            if cfg.max_steps is not None and steps >= cfg.max_steps:
                break
        bar.close()
        probs = hip_probabilities(net, images, val_hips, device)
        acc = float((probs.argmax(1) == val_y).mean()) if len(val_y) else 0.0
        nll = float(-np.log(probs[np.arange(len(val_y)), val_y] + 1e-9).mean()) \
            if len(val_y) else 0.0
        history.append({"epoch": epoch, "train_loss": running / max(1, n),
                        "val_accuracy": acc, "val_loss": nll})
        log(f"seed {seed} epoch {epoch}: train loss {running / max(1, n):.4f}, val loss "
            f"{nll:.4f}, val accuracy {acc:.3f} ({time.time() - started:.0f} s)")
        if (acc, -nll) > best:
            best = (acc, -nll)
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        if cfg.max_steps is not None and steps >= cfg.max_steps:
            break
    if best_state is not None:
        net.load_state_dict(best_state)
    return net.eval(), history, steps


def _write_split(path: Path, hips: Sequence[Hip], split: dict[str, list[int]],
                 classes: Sequence[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["split", "study_uid", "patient_id", "laterality", "label", "ap_crops",
                    "lateral_crops"])
        for name, idx in split.items():
            for i in idx:
                h = hips[i]
                w.writerow([name, h.study_uid, h.patient_id, h.laterality, classes[h.label],
                            len(h.ap), len(h.lateral)])


def _figures(y: np.ndarray, probs: np.ndarray, classes: list[str], seed: int,
             n_boot: int = 1000) -> dict[str, Any]:
    return compute_metrics(y, probs, classes, n_boot=n_boot, seed=seed)


def train_dual_view(data_dir: Path, labels_csv: Path, out_dir: Path, cfg: DualViewConfig,
                    cache_dir: Path | None = None, log: Callable[[str], Any] = print
                    ) -> list[ModelCard]:
    """Train `cfg.members` dual-view models; returns their cards.

    One member: OUT/card.yaml + weights. Several: OUT/member-<n>/ each, and the ensemble's
    test-split figures in OUT/evaluation/ (and in every member's card).
    """
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    np.random.seed(cfg.seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes, images, hips = load_hips(data_dir, labels_csv, cfg.label_set, cfg.input_size,
                                      cache_dir or out_dir / "cache", cfg.label_column,
                                      cfg.decode_workers, log, cfg.crop)
    split = split_hips(hips, classes, cfg.seed)
    _write_split(out_dir / "split.csv", hips, split, classes)
    with_lat = sum(1 for h in hips if h.lateral)
    log(f"{len(hips)} hips ({with_lat} with a lateral view); split (hips): "
        + ", ".join(f"{k} {len(v)}" for k, v in split.items()))
    device = select_device(cfg.device)
    test_hips = [hips[i] for i in split["test"]]
    y_test = np.array([h.label for h in test_hips])
    dataset_name = cfg.training_data or f"{Path(data_dir).name} (labels {Path(labels_csv).name})"
    note = SYNTHETIC_DISCLAIMER if cfg.synthetic_demo else ""
    spec_column = cfg.label_column or label_spec(cfg.label_set).column
    results = []
    for m in range(cfg.members):
        seed = cfg.seed + m
        member_dir = out_dir if cfg.members == 1 else out_dir / f"member-{m + 1}"
        net, history, steps = _train_member(images, hips, split, classes, cfg, seed, device, log)
        probs = hip_probabilities(net, images, test_hips, device)
        probs_ap = hip_probabilities(net, images, test_hips, device, ap_only=True)
        metrics = _figures(y_test, probs, classes, cfg.seed)
        metrics_ap = _figures(y_test, probs_ap, classes, cfg.seed)
        write_report(metrics, y_test, probs, member_dir / "evaluation" / "test-split",
                     f"{cfg.name} {cfg.version} (member {m + 1}/{cfg.members}): test split of "
                     f"{dataset_name}", note)
        log(f"member {m + 1}: test accuracy {metrics['accuracy']:.3f}, macro AUC "
            f"{metrics['macro_auc']}, AP only {metrics_ap['accuracy']:.3f}")
        training = {**{k: v for k, v in asdict(cfg).items()
                       if k not in ("name", "version", "training_data", "synthetic_demo")},
                    "seed": seed, "member": m + 1, "label_column": spec_column,
                    "split": {k: len(v) for k, v in split.items()},
                    "split_seed": cfg.seed, "hips_with_lateral": with_lat,
                    "optimiser": "AdamW, OneCycleLR, cross-entropy; random AP crop and "
                                 "random lateral crop per hip and epoch, lateral dropped "
                                 f"with p={cfg.lateral_dropout}",
                    "steps": steps, "history": history}
        card = ModelCard(
            name=cfg.name, version=cfg.version, architecture=cfg.arch,
            input_size=cfg.input_size, label_set=cfg.label_set, classes=classes,
            parameters=card_parameters(net, cfg.lateral_dropout, cfg.crop),
            training_data=dataset_name, synthetic_demo=cfg.synthetic_demo, limitations=note,
            training=training,
            evaluation={"test_split": {**card_figures(metrics, f"test split of {dataset_name}"),
                                       "unit": "hip (every AP x lateral pair averaged)"},
                        "test_split_ap_only": {
                            **card_figures(metrics_ap, f"test split of {dataset_name}, "
                                                       "laterals removed"),
                            "unit": "hip (AP views only)"}},
        )
        results.append((save(net, card, member_dir), member_dir, probs))
        (member_dir / "history.json").write_text(json.dumps(history, indent=2))
    cards = [c for c, _, _ in results]
    if cfg.members > 1:
        ensemble = np.mean([p for _, _, p in results], axis=0)
        metrics = _figures(y_test, ensemble, classes, cfg.seed)
        write_report(metrics, y_test, ensemble, out_dir / "evaluation" / "test-split",
                     f"{cfg.name} {cfg.version}, ensemble of {cfg.members}: test split of "
                     f"{dataset_name}", note)
        figures = {**card_figures(metrics, f"test split of {dataset_name}"),
                   "unit": "hip (every AP x lateral pair averaged)",
                   "ensemble": f"{cfg.members} members (member-1 ... member-{cfg.members})"}
        log(f"ensemble of {cfg.members}: test accuracy {metrics['accuracy']:.3f}, macro AUC "
            f"{metrics['macro_auc']}")
        cards = [record_figures(d, "ensemble_test_split", figures) for _, d, _ in results]
    return cards


def record_figures(model_dir: Path, name: str, figures: dict[str, Any]) -> ModelCard:
    """Store figures in a model card's evaluation section (the weights are not touched)."""
    from hiprouter.inference.models import read_card, write_card

    card = read_card(model_dir)
    card.evaluation = {**card.evaluation, name: figures}
    write_card(model_dir, card)
    return card


def evaluate_dual_view(model_dirs: Sequence[Path], data_dir: Path, labels_csv: Path,
                       out_dir: Path, device: str = "auto", runtime: str = "auto",
                       label_column: str = "", cache_dir: Path | None = None,
                       n_boot: int = 1000) -> tuple[dict[str, Any], dict[str, Path]]:
    """Evaluate a dual-view model or ensemble on a labelled DICOM folder, per hip, through
    the run-time code (letterbox, back-end, calibration, pair averaging)."""
    ens = DualViewEnsemble.from_dirs(model_dirs, device, runtime)
    card = ens.cards[0]
    size = max(c.input_size for c in ens.cards)
    crop = {m.crop for m in ens.models}
    if len(crop) > 1:
        raise ValueError(f"the members use different crops ({sorted(crop)})")
    # the inputs are cut exactly as at run time (a window of a square input, and the
    # letterbox of an input of the model's size, change nothing when predict repeats them)
    classes, images, hips = load_hips(data_dir, labels_csv, card.label_set, size, cache_dir,
                                      label_column, log=lambda _: None, crop=crop.pop())
    if classes != ens.classes:
        raise ValueError(f"the model's classes {ens.classes} differ from the label set's "
                         f"{classes}")
    y = np.array([h.label for h in hips])
    crops = images.astype(np.float32) / 255.0
    probs, probs_ap, members, ood = [], [], [], []
    for h in hips:
        pred = ens.predict([crops[k] for k in h.ap], [crops[k] for k in h.lateral],
                           heatmaps=False)
        probs.append(pred.probabilities)
        ood.append(pred.ood)
        members.append(pred.per_member)
        if h.lateral:
            probs_ap.append(ens.predict([crops[k] for k in h.ap], [],
                                        heatmaps=False).probabilities)
        else:
            probs_ap.append(pred.probabilities)
    p, p_ap = np.stack(probs), np.stack(probs_ap)
    metrics = compute_metrics(y, p, classes, n_boot=n_boot)
    metrics["hips_with_lateral"] = int(sum(1 for h in hips if h.lateral))
    # what the pipeline would say: out of distribution, indeterminate below the card's
    # min_confidence, or a definitive cause
    metrics["selective"] = selective_figures(
        y, p, float(ens.card_value("abstention", "min_confidence", 0.0)), ood)
    ap_only = compute_metrics(y, p_ap, classes, n_boot=n_boot)
    metrics["ap_only"] = {"accuracy": ap_only["accuracy"],
                          "accuracy_ci95": ap_only["accuracy_ci95"],
                          "macro_auc": ap_only["macro_auc"]}
    if len(ens.models) > 1:
        metrics["members"] = []
        for m in range(len(ens.models)):
            pm = np.stack([mp[m] for mp in members])
            mm = compute_metrics(y, pm, classes, n_boot=0)
            metrics["members"].append({"accuracy": mm["accuracy"], "macro_auc": mm["macro_auc"]})
    info = ens.info
    metrics["model"] = {"name": info.name, "version": info.version,
                        "architecture": info.architecture, "device_uid": info.device_uid,
                        "runtime": ens.runtime_names, "synthetic_demo": info.synthetic_demo,
                        "members": len(ens.models)}
    note = SYNTHETIC_DISCLAIMER if info.synthetic_demo else ""
    title = f"{info.name} {info.version} on {Path(data_dir).name} ({Path(labels_csv).name})"
    return metrics, write_report(metrics, y, p, out_dir, title, note)
