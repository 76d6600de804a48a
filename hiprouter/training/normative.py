"""`hiprouter train --label-set onfh --task normative`: the VAE, normative model and stages.

On top of a femoral-head segmentation model (``--segmentation DIR``, same data and seed, so
the test patients stay unseen):

1. every labelled head is segmented end to end and cut into the normalised 2-channel head
   patch the pipeline uses (hiprouter/inference/onfh.py);
2. a convolutional VAE learns the healthy heads (grade 0, no hardware) of the training
   split: ELBO = reconstruction (Gaussian on the intensity channel, Bernoulli on the mask
   channel) + beta x KL; the epoch with the best validation ELBO is kept;
3. the normative distribution: mean and Ledoit-Wolf (shrinkage) covariance of the training
   healthy heads' latent means; the held-out healthy heads of the validation split give
   the reference distances for percentiles;
4. stage calibration on the validation split (every grade): grades 0 and 1 share the band
   "0-1" when they are not separable (two-sided Mann-Whitney p >= 0.05 or AUC < 0.7, as
   in the seed); distance thresholds between the bands minimise the class-balanced
   absolute band error; per-grade normal fits of the log distance give the probabilities;
5. the test split is assessed end to end (hiprouter/training/onfh_eval.py) and the figures
   go into the card; the model folder holds the U-Nets, the VAE and the normative arrays
   in one weights file.
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

from hiprouter.inference.models import SYNTHETIC_DISCLAIMER, ModelCard, ModelError
from hiprouter.inference.onfh import (
    DEFAULT_PARAMETERS,
    LABEL_SET,
    ONFH_TASK,
    SATURATED_FRACTION,
    SEGMENTATION_TASK,
    HeadSegmenter,
    NormativeModel,
    OnfhModel,
    Staging,
    _load_module,
    _split_state,
    _unet,
    head_patch,
    lateral_on_image_right,
    load_state,
    mahalanobis,
    round_weights,
    saturated_fraction,
    save_onfh_model,
)
from hiprouter.training.onfh_data import (
    FIXATION,
    HeadImage,
    HeadRow,
    cache_key,
    dice,
    iterate_heads,
    read_head_labels,
    split_heads,
    write_split,
)

BAND_KEYS = {(0,): "onfh_0", (1,): "onfh_1", (0, 1): "onfh_0_1", (2,): "onfh_2",
             (3,): "onfh_3", (4,): "onfh_4"}


@dataclass
class NormativeConfig:
    """A normative-model training run (recorded in the model card)."""

    patch_size: int = 64
    patch_scale: float = 1.0
    """Patch side / head diameter."""
    patch_offset: float = 0.25
    """Patch centre above the head's centroid / head diameter (towards the dome)."""
    patch_highpass: float = 0.05
    """Gaussian high-pass of the intensities, sigma / head diameter (0: none)."""
    latent_dim: int = 16
    widths: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    beta: float = 1.0
    """Weight of the KL term in the ELBO (beta-VAE; 1 is the plain VAE)."""
    recon_sigma: float = 0.1
    """Standard deviation of the Gaussian likelihood of the intensity channel."""
    epochs: int = 200
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-5
    seed: int = 0
    max_steps: int | None = None
    healthy_grades: list[int] = field(default_factory=lambda: [0])
    merge_low_grades: str = "auto"
    """auto: grades 0 and 1 share a band when not separable on the validation split;
    yes / no: always / never."""
    separable_auc: float = 0.7
    separable_p: float = 0.05
    threads: int = 0
    """torch threads (0: torch's default, which OMP_NUM_THREADS sets)."""
    decode_workers: int = 1
    name: str = "onfh"
    version: str = "0.1.0"
    training_data: str = ""
    synthetic_demo: bool = False
    device: str = "cpu"

    def vae_parameters(self) -> dict[str, Any]:
        return {"patch_size": self.patch_size, "patch_scale": self.patch_scale,
                "patch_offset": self.patch_offset, "patch_highpass": self.patch_highpass,
                "latent_dim": self.latent_dim, "widths": list(self.widths),
                "channels": ["intensity", "mask"], "beta": self.beta,
                "recon_sigma": self.recon_sigma}


# --- patches ------------------------------------------------------------------------------

def _window_job(head: HeadImage, segmenter: HeadSegmenter) -> dict[str, Any]:
    seg = segmenter.segment(head.crop)
    if seg is None:
        return {"dice": dice(np.zeros_like(head.mask), head.mask), "found": False}
    mirror = lateral_on_image_right(head.row.laterality, head.standard_display)
    return {"dice": dice(seg.crop_mask(head.crop.shape), head.mask), "found": True,
            "mirror": bool(mirror), "image": seg.image.astype(np.float16),
            "prob": seg.prob.astype(np.float16)}


def segmented_heads(segmenter: HeadSegmenter, seg_sha: str, rows: Sequence[HeadRow],
                    data_dir: Path, cache_dir: Path, workers: int = 1,
                    log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Per row, the refined segmentation window: {"dice", "found", "mirror", "image",
    "prob"} (float16), or {"refused": reason}; cached per row and segmentation model, so
    patch settings can change without segmenting again."""
    from tqdm import tqdm

    cache_dir.mkdir(parents=True, exist_ok=True)
    files = [cache_dir / f"window-{cache_key(r, data_dir, seg_sha, 'v1')}.npz" for r in rows]
    out: list[dict[str, Any] | None] = [None] * len(rows)
    for i, f in enumerate(files):
        if f.is_file():
            with np.load(f) as npz:
                out[i] = {k: (npz[k] if npz[k].ndim else npz[k].item()) for k in npz.files}
    todo = [i for i, r in enumerate(out) if r is None]
    if todo:
        bar = tqdm(total=len(todo), leave=False, desc="segment heads")
        for k, head in iterate_heads([rows[i] for i in todo], data_dir, workers):
            i = todo[k]
            bar.update()
            if isinstance(head, str):
                out[i] = {"refused": head}
                log(f"skipped {rows[i].path} {rows[i].laterality}: {head}")
                continue
            assert isinstance(head, HeadImage)
            rec = _window_job(head, segmenter)
            out[i] = rec
            tmp = files[i].with_suffix(".tmp.npz")
            np.savez(tmp, **rec)
            tmp.replace(files[i])
        bar.close()
    return [r if r is not None else {"refused": "unknown"} for r in out]


def head_patches(segmenter: HeadSegmenter, seg_sha: str, rows: Sequence[HeadRow],
                 data_dir: Path, cfg: NormativeConfig, cache_dir: Path,
                 log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Per row: {"dice", "found", "patch" (2, P, P) float32} or {"refused": reason}."""
    out = []
    for rec in segmented_heads(segmenter, seg_sha, rows, data_dir, cache_dir,
                               cfg.decode_workers, log):
        rec = dict(rec)
        if "image" in rec and saturated_fraction(rec["image"].astype(np.float32),
                                                 rec["prob"].astype(np.float32)
                                                 ) > SATURATED_FRACTION:
            rec.pop("image"), rec.pop("prob")
            rec["not_assessed"] = "femoral head white in the display"
        elif "image" in rec:
            patch = head_patch(rec.pop("image").astype(np.float32),
                               rec.pop("prob").astype(np.float32), cfg.patch_size,
                               cfg.patch_scale, bool(rec["mirror"]), cfg.patch_offset,
                               cfg.patch_highpass)
            if patch is None:
                rec["found"] = False
            else:
                rec["patch"] = patch
        out.append(rec)
    return out


# --- the VAE ------------------------------------------------------------------------------

def elbo_terms(vae: Any, x: Any, cfg: NormativeConfig) -> tuple[Any, Any]:
    """(reconstruction negative log-likelihood, KL) per sample."""
    import torch
    from torch.nn import functional as F  # noqa: N812

    recon, mu, logvar = vae(x)
    nll_int = ((recon[:, 0] - x[:, 0]) ** 2).sum((1, 2)) / (2 * cfg.recon_sigma ** 2)
    nll_mask = F.binary_cross_entropy_with_logits(recon[:, 1], x[:, 1], reduction="none"
                                                  ).sum((1, 2))
    kl = -0.5 * torch.sum(1 + logvar - mu ** 2 - logvar.exp(), dim=1)
    return nll_int + nll_mask, kl


def augment_patches(x: Any, gen: Any) -> Any:
    """Small rotation, zoom and shift of (B, 2, P, P) patches; the mask stays binary and
    the intensity channel zero outside it."""
    import torch
    from torch.nn import functional as F  # noqa: N812

    b = x.shape[0]
    angle = (torch.rand(b, generator=gen) * 2 - 1) * np.deg2rad(8.0)
    scale = 1.0 + (torch.rand(b, generator=gen) * 2 - 1) * 0.05
    shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * 0.03
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mask = (y[:, 1:2] > 0.5).float()
    return torch.cat([y[:, 0:1] * mask, mask], dim=1)


def train_vae(train: np.ndarray, val: np.ndarray, cfg: NormativeConfig,
              log: Callable[[str], None]) -> tuple[Any, list[dict[str, float]]]:
    import torch

    from hiprouter.inference.onfh_nets import ConvVAE

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    vae = ConvVAE(cfg.patch_size, cfg.latent_dim, 2, tuple(cfg.widths))
    steps_per_epoch = max(1, -(-len(train) // cfg.batch_size))
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(1, total))
    x_train = torch.from_numpy(train.astype(np.float32))
    x_val = torch.from_numpy(val.astype(np.float32))
    best, best_state, history, steps = np.inf, None, [], 0
    started = time.time()
    for epoch in range(1, cfg.epochs + 1):
        vae.train()
        order = rng.permutation(len(x_train))
        running, n = 0.0, 0
        for s in range(0, len(order), cfg.batch_size):
            idx = order[s:s + cfg.batch_size]
            if len(idx) < 2:
                continue
            x = augment_patches(x_train[idx], gen)
            nll, kl = elbo_terms(vae, x, cfg)
            loss = (nll + cfg.beta * kl).mean()
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
        vae.eval()
        with torch.inference_mode():
            nll, kl = elbo_terms(vae, x_val, cfg) if len(x_val) else (torch.zeros(1),
                                                                       torch.zeros(1))
            val_loss = float((nll + cfg.beta * kl).mean())
        history.append({"epoch": epoch, "train_loss": running / max(1, n),
                        "val_loss": val_loss, "val_kl": float(kl.mean())})
        if epoch == 1 or epoch % 10 == 0 or steps >= total:
            log(f"VAE epoch {epoch}: loss {running / max(1, n):.1f}, val loss {val_loss:.1f}, "
                f"val KL {float(kl.mean()):.1f} ({time.time() - started:.0f} s)")
        if val_loss < best:
            best = val_loss
            best_state = {k: v.detach().clone() for k, v in vae.state_dict().items()}
        if steps >= total:
            break
    if best_state is not None:
        vae.load_state_dict(best_state)
    return vae.eval(), history


def latent_means(vae: Any, patches: np.ndarray, batch_size: int = 256) -> np.ndarray:
    import torch

    out = []
    with torch.inference_mode():
        for s in range(0, len(patches), batch_size):
            x = torch.from_numpy(patches[s:s + batch_size].astype(np.float32))
            out.append(vae.encode(x)[0].numpy())
    return np.concatenate(out) if out else np.zeros((0, vae.latent_dim), np.float32)


def fit_normative(latents: np.ndarray) -> dict[str, np.ndarray]:
    """Mean, Ledoit-Wolf covariance and its inverse of healthy latent means."""
    from sklearn.covariance import LedoitWolf

    lw = LedoitWolf().fit(latents.astype(np.float64))
    return {"mean": lw.location_, "covariance": lw.covariance_,
            "precision": np.linalg.inv(lw.covariance_),
            "shrinkage": np.array([lw.shrinkage_])}


# --- stage calibration --------------------------------------------------------------------

def ordinal_thresholds(distances: np.ndarray, bands: np.ndarray, k: int) -> list[float]:
    """Ascending thresholds splitting sorted distances into k bands, minimising the
    class-balanced absolute band error (dynamic programming over the sorted values)."""
    order = np.argsort(distances, kind="stable")
    d, b = np.asarray(distances, float)[order], np.asarray(bands, int)[order]
    n = len(d)
    counts = np.bincount(b, minlength=k).astype(float)
    w = np.where(counts[b] > 0, 1.0 / np.maximum(counts[b], 1), 0.0)
    # cost[j, c]: error of giving band c to item j
    cost = np.abs(np.arange(k)[None, :] - b[:, None]) * w[:, None]
    cum = np.vstack([np.zeros(k), np.cumsum(cost, axis=0)])  # cum[j, c] = sum of first j
    inf = np.inf
    best = np.full((k, n + 1), inf)
    back = np.zeros((k, n + 1), dtype=int)
    best[0, :] = cum[:, 0]
    for c in range(1, k):
        for j in range(n + 1):
            # items [i, j) get band c, the first i items bands <= c - 1
            cands = best[c - 1, : j + 1] + (cum[j, c] - cum[: j + 1, c])
            i = int(np.argmin(cands))
            best[c, j], back[c, j] = cands[i], i
    cuts = []
    j = n
    for c in range(k - 1, 0, -1):
        i = back[c, j]
        cuts.append(i)
        j = i
    cuts = cuts[::-1]  # cuts[c-1]: first sorted index of band c
    thresholds = []
    for i in cuts:
        if i <= 0:
            thresholds.append(float(d[0]) - 1e-6 if n else 0.0)
        elif i >= n:
            thresholds.append(float(d[-1]) + 1e-6 if n else 0.0)
        else:
            thresholds.append(float((d[i - 1] + d[i]) / 2))
    return list(np.maximum.accumulate(thresholds)) if thresholds else []


def calibrate_stages(distances: np.ndarray, grades: np.ndarray, cfg: NormativeConfig
                     ) -> tuple[dict[str, Any], list[str]]:
    """The card's ``calibration`` (bands, thresholds, per-grade log-distance fits) and its
    ``classes`` (band keys)."""
    from scipy.stats import mannwhitneyu

    from hiprouter.training.onfh_eval import auc

    d0, d1 = distances[grades == 0], distances[grades == 1]
    low: dict[str, Any] = {"n": [int(len(d0)), int(len(d1))]}
    if len(d0) and len(d1):
        low["auc"] = round(float(auc(d0, d1) or 0.5), 4)
        low["p_mann_whitney"] = float(f"{mannwhitneyu(d0, d1).pvalue:.4g}")
    separable = bool(low.get("auc", 0.5) >= cfg.separable_auc
                     and low.get("p_mann_whitney", 1.0) < cfg.separable_p)
    merge = {"yes": True, "no": False}.get(cfg.merge_low_grades, not separable)
    low["merged"] = merge
    groups: list[tuple[int, ...]] = ([(0, 1)] if merge else [(0,), (1,)]) + [(2,), (3,), (4,)]
    band_of = {g: i for i, gs in enumerate(groups) for g in gs}
    bands = np.array([band_of[int(g)] for g in grades], dtype=int)
    thresholds = ordinal_thresholds(distances, bands, len(groups))
    logs = np.log(np.maximum(distances, 1e-6))
    pooled = float(np.std(np.concatenate([logs[grades == g] - logs[grades == g].mean()
                                          for g in range(5) if (grades == g).sum() > 1])))
    fits = {}
    for g in range(5):
        x = logs[grades == g]
        if len(x):
            sd = float(x.std()) if len(x) > 2 else pooled
            fits[str(g)] = {"mean": round(float(x.mean()), 5),
                            "std": round(max(sd, 0.05), 5), "n": int(len(x))}
    calibration = {
        "method": "distance thresholds between stage bands minimising the class-balanced "
                  "absolute band error on the validation split; probabilities from normal "
                  "fits of the log distance per grade (equal priors)",
        "stage_bands": [{"key": BAND_KEYS[g], "grades": list(g)} for g in groups],
        "stage_thresholds": [round(float(t), 5) for t in thresholds],
        "grade_log_distance": fits,
        "grades_0_vs_1": low,
    }
    return calibration, [BAND_KEYS[g] for g in groups]


# --- the run ------------------------------------------------------------------------------

def _segmenter(seg_dir: Path, device: str) -> tuple[ModelCard, dict[str, Any], HeadSegmenter]:
    card, state = load_state(seg_dir)
    if card.label_set != LABEL_SET or card.task not in (SEGMENTATION_TASK, ONFH_TASK):
        raise ModelError(f"{seg_dir}: not an onfh segmentation model (label set "
                         f"{card.label_set!r}, task {card.task!r})")
    params = {**DEFAULT_PARAMETERS, **card.parameters}
    weights = Path(seg_dir) / card.weights_file
    loc = _load_module(_unet(params["locator"]), _split_state(state, "locator."), "locator",
                       weights)
    ref = _load_module(_unet(params["refiner"]), _split_state(state, "refiner."), "refiner",
                       weights)
    seg_state = {k: v for k, v in state.items() if k.startswith(("locator.", "refiner."))}
    return card, seg_state, HeadSegmenter(loc, ref, params, "cpu")


def check_split(seg_dir: Path, rows: Sequence[HeadRow], split: dict[str, list[int]]) -> None:
    """Refuse a test split whose heads the segmentation model trained or validated on."""
    path = Path(seg_dir) / "split.csv"
    if not path.is_file():
        return
    with path.open(newline="", encoding="utf-8") as fh:
        seen = {(r["study_uid"], r["laterality"]) for r in csv.DictReader(fh)
                if r["split"] in ("train", "val")}
    leaked = [rows[i] for i in split["test"]
              if (rows[i].study_uid, rows[i].laterality) in seen]
    if leaked:
        raise ValueError(f"{len(leaked)} test heads (e.g. {leaked[0].path}) were in the "
                         "segmentation model's training or validation split; use the same "
                         "data and --seed for both tasks")


def train_normative(data_dir: Path, labels_csv: Path, out_dir: Path, seg_dir: Path,
                    cfg: NormativeConfig, cache_dir: Path | None = None,
                    log: Callable[[str], None] = print, n_boot: int = 1000) -> ModelCard:
    """Train the VAE and normative model on a segmentation model; write the onfh model."""
    import torch

    from hiprouter.training.onfh_eval import card_figures, summarise, write_report

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    started = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seg_card, seg_state, segmenter = _segmenter(seg_dir, cfg.device)
    rows, skipped = read_head_labels(labels_csv)
    for reason, count in skipped.items():
        log(f"skipped {count} rows: {reason}")
    split = split_heads(rows, cfg.seed)
    check_split(seg_dir, rows, split)
    write_split(out_dir / "split.csv", rows, split)
    log("split (heads): " + ", ".join(f"{k} {len(v)}" for k, v in split.items()))
    recs = head_patches(segmenter, seg_card.weights_sha256, rows, data_dir, cfg,
                        cache_dir or out_dir / "cache", log)

    def usable(i: int) -> bool:
        return "patch" in recs[i] and rows[i].hardware not in FIXATION

    def healthy(idx: Sequence[int]) -> list[int]:
        return [i for i in idx if usable(i) and rows[i].grade in cfg.healthy_grades]

    tr, va = healthy(split["train"]), healthy(split["val"])
    if len(tr) < 4 or not va:
        raise ValueError(f"too few healthy heads: {len(tr)} training, {len(va)} validation")
    log(f"healthy heads: {len(tr)} training, {len(va)} validation")
    stack = lambda idx: np.stack([recs[i]["patch"] for i in idx]).astype(np.float32)  # noqa: E731
    vae, history = train_vae(stack(tr), stack(va), cfg, log)
    round_weights(vae, DEFAULT_PARAMETERS["weights_dtype"])
    norm = fit_normative(latent_means(vae, stack(tr)))
    reference = np.sort(mahalanobis(latent_means(vae, stack(va)), norm["mean"],
                                    norm["precision"]))

    def distances(idx: Sequence[int]) -> np.ndarray:
        return mahalanobis(latent_means(vae, stack(idx)), norm["mean"], norm["precision"])

    val_all = [i for i in split["val"] if usable(i)]
    calibration, classes = calibrate_stages(
        distances(val_all), np.array([rows[i].grade for i in val_all]), cfg)
    calibration["reference"] = (f"{len(reference)} healthy heads of the validation split "
                                "(percentiles)")
    calibration["ledoit_wolf_shrinkage"] = round(float(norm["shrinkage"][0]), 5)
    log(f"stage bands {classes}, thresholds {calibration['stage_thresholds']}, grades 0 vs 1 "
        f"{calibration['grades_0_vs_1']}")

    staging = Staging([(b["key"], tuple(b["grades"])) for b in calibration["stage_bands"]],
                      calibration["stage_thresholds"],
                      {int(g): (v["mean"], v["std"])
                       for g, v in calibration["grade_log_distance"].items()})
    test = split["test"]
    test_d = dict(zip([i for i in test if usable(i)], distances([i for i in test if usable(i)]),
                      strict=True))
    normative = NormativeModel(vae, norm["mean"], norm["covariance"], norm["precision"],
                               reference, staging, cfg.vae_parameters())
    records = []
    for i in test:
        r, rec = rows[i], recs[i]
        out: dict[str, Any] = {"path": r.path, "laterality": r.laterality, "view": r.view,
                               "grade": r.grade, "hardware": r.hardware}
        if "refused" in rec:
            out["refused"] = rec["refused"]
        else:
            out["dice"] = float(rec["dice"])
            if i in test_d:
                d = float(test_d[i])
                out.update({"distance": d, "percentile": normative.percentile(d),
                            "band": staging.band(d), "band_key": classes[staging.band(d)]})
            elif "not_assessed" in rec:
                out["not_assessed"] = rec["not_assessed"]
            elif not rec.get("found", False):
                out["found"] = False
                out["not_assessed"] = "no femoral head found"
        records.append(out)
    metrics = summarise(records, staging.bands, n_boot, cfg.seed)
    dataset_name = cfg.training_data or f"{Path(data_dir).name} (labels {Path(labels_csv).name})"
    note = SYNTHETIC_DISCLAIMER if cfg.synthetic_demo else ""
    write_report(metrics, records, out_dir / "evaluation" / "test-split",
                 f"{cfg.name} {cfg.version}: test split of {dataset_name}", note,
                 staging.thresholds)
    a = metrics["auc_healthy_vs_grade"]
    log("test split: Dice {} | AUC 0 vs 1..4: {} | stage accuracy {}".format(
        metrics["segmentation"].get("dice_mean"),
        ", ".join(str(a[f"0_vs_{g}"]["auc"]) for g in range(1, 5)),
        metrics["stage"].get("accuracy")))

    params = {**seg_card.parameters, "vae": cfg.vae_parameters(),
              "segmentation_model": {"name": seg_card.name, "version": seg_card.version,
                                     "weights_sha256": seg_card.weights_sha256,
                                     "test_split": seg_card.evaluation.get("test_split")}}
    card = ModelCard(
        name=cfg.name, version=cfg.version,
        architecture=(f"U-Net locator {params['locator']['widths']} + U-Net refiner "
                      f"{params['refiner']['widths']} + conv VAE {cfg.widths} "
                      f"z{cfg.latent_dim} + Mahalanobis"),
        input_size=int(params["refiner"]["size"]), task=ONFH_TASK, parameters=params,
        label_set=LABEL_SET, classes=classes, training_data=dataset_name,
        synthetic_demo=cfg.synthetic_demo, limitations=" ".join(filter(None, [
            note, "Stages come from one distance: a head unlike the healthy reference for "
            "another reason (fixation metal, tumour, fracture, unusual projection) has a "
            "large distance too. Grades 0 and 1 are not separable when the card says "
            "merged."])),
        intended_use="Prepopulate the radiology report with a femoral-head segmentation, "
                     "a normative distance and an osteonecrosis stage estimate; a "
                     "radiologist verifies every result.",
        training={**{k: v for k, v in asdict(cfg).items()
                     if k not in ("name", "version", "training_data", "synthetic_demo")},
                  "split": {k: len(v) for k, v in split.items()},
                  "healthy_heads": {"train": len(tr), "val": len(va)},
                  "objective": "ELBO: Gaussian NLL (intensity) + Bernoulli NLL (mask) + "
                               "beta KL; AdamW, one-cycle LR",
                  "seconds": round(time.time() - started, 1), "history": history},
        calibration=calibration,
        evaluation={"test_split": card_figures(metrics, f"test split of {dataset_name}")},
    )
    import torch as _torch  # the segmentation's tensors, unchanged (same dtype)

    class _Frozen(_torch.nn.Module):
        def __init__(self, state: dict[str, Any]) -> None:
            super().__init__()
            self._state = state

        def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
            return self._state

    modules = {"locator": _Frozen(_split_state(seg_state, "locator.")),
               "refiner": _Frozen(_split_state(seg_state, "refiner.")), "vae": vae}
    arrays = {k: norm[k] for k in ("mean", "covariance", "precision")}
    arrays["reference"] = reference
    card = save_onfh_model(card, out_dir, modules, arrays)
    (out_dir / "history.json").write_text(json.dumps(history, indent=1))
    OnfhModel.load(out_dir, "cpu")  # the folder loads as the pipeline will load it
    return card
