"""Evaluation figures for a classifier: the seed's metrics, with bootstrap 95 % CIs.

Accuracy, per-class precision/recall/F1, one-vs-rest ROC AUC per class, Cohen's kappa and
the confusion matrix (scikit-learn primitives); ROC and confusion-matrix PNGs (matplotlib
Agg); report.md and report.json.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

N_BOOTSTRAP = 1000


def _auc(y_bin: np.ndarray, score: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    if y_bin.min() == y_bin.max():
        return None  # AUC undefined without both positives and negatives
    return float(roc_auc_score(y_bin, score))


def _fast_auc(y_bin: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC by the rank-sum (Mann-Whitney) identity, for the bootstrap's many resamples."""
    from scipy.stats import rankdata

    n_pos = int(y_bin.sum())
    n_neg = len(y_bin) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(score)
    return float((ranks[y_bin == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _ci(values: list[float]) -> list[float] | None:
    if len(values) < 10:
        return None
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def compute_metrics(y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str],
                    n_boot: int = N_BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """All figures for integer labels `y_true` and probabilities `probs` (N, K)."""
    from sklearn.metrics import (
        accuracy_score,
        cohen_kappa_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    y = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    if probs.shape != (len(y), k):
        raise ValueError(f"probabilities shape {probs.shape} != ({len(y)}, {k})")
    pred = probs.argmax(axis=1)
    labels = list(range(k))
    precision, recall, f1, support = precision_recall_fscore_support(
        y, pred, labels=labels, zero_division=0)
    aucs = [_auc((y == c).astype(int), probs[:, c]) for c in labels]

    rng = np.random.default_rng(seed)
    boot_acc: list[float] = []
    boot_kappa: list[float] = []
    boot_auc: list[list[float]] = [[] for _ in labels]
    for _ in range(n_boot if len(y) > 1 else 0):
        idx = rng.integers(0, len(y), len(y))
        yb, pb = y[idx], pred[idx]
        boot_acc.append(float(np.mean(yb == pb)))
        if len(set(yb.tolist()) | set(pb.tolist())) > 1:
            boot_kappa.append(float(cohen_kappa_score(yb, pb, labels=labels)))
        for c in labels:
            a = _fast_auc((yb == c).astype(int), probs[idx, c])
            if a is not None:
                boot_auc[c].append(a)

    defined = [a for a in aucs if a is not None]
    kappa = float(cohen_kappa_score(y, pred, labels=labels)) if len(set(y) | set(pred)) > 1 \
        else 1.0
    return {
        "n": int(len(y)),
        "classes": list(classes),
        "accuracy": float(accuracy_score(y, pred)),
        "accuracy_ci95": _ci(boot_acc),
        "cohen_kappa": kappa,
        "cohen_kappa_ci95": _ci(boot_kappa),
        "macro_auc": float(np.mean(defined)) if defined else None,
        "macro_f1": float(np.mean(f1)),
        "per_class": {
            cls: {
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "support": int(support[c]),
                "auc": aucs[c],
                "auc_ci95": _ci(boot_auc[c]) if aucs[c] is not None else None,
            }
            for c, cls in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
        "bootstrap_samples": int(n_boot),
    }


def _fmt(value: float | None, ci: list[float] | None = None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def plot_roc(y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str], path: Path) -> Path:
    """One-vs-rest ROC curve per class in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    y = np.asarray(y_true)
    fig, ax = plt.subplots(figsize=(6, 6), dpi=80)
    for c, cls in enumerate(classes):
        yb = (y == c).astype(int)
        if yb.min() == yb.max():
            continue
        fpr, tpr, _ = roc_curve(yb, probs[:, c])
        ax.plot(fpr, tpr, lw=1.2, label=f"{cls} (AUC {_auc(yb, probs[:, c]):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="False positive rate", ylabel="True positive rate",
           title="One-vs-rest ROC", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_confusion(matrix: list[list[int]], classes: Sequence[str], path: Path) -> Path:
    """Confusion matrix (rows: truth, columns: prediction) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(7, 6), dpi=80)
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set(xlabel="Predicted", ylabel="True", title="Confusion matrix")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def report_markdown(metrics: dict[str, Any], title: str, note: str = "") -> str:
    """The figures as a Markdown report."""
    lines = [f"# {title}", ""]
    if note:
        lines += [f"> {note}", ""]
    lines += [
        f"- hips evaluated: {metrics['n']}",
        f"- accuracy: {_fmt(metrics['accuracy'], metrics['accuracy_ci95'])}",
        f"- Cohen's kappa: {_fmt(metrics['cohen_kappa'], metrics['cohen_kappa_ci95'])}",
        f"- macro AUC (one-vs-rest): {_fmt(metrics['macro_auc'])}",
        f"- macro F1: {_fmt(metrics['macro_f1'])}",
        f"- 95 % CIs: percentile bootstrap, {metrics['bootstrap_samples']} resamples",
        "",
        "| class | support | precision | recall | F1 | AUC [95 % CI] |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for cls, m in metrics["per_class"].items():
        lines.append(f"| {cls} | {m['support']} | {m['precision']:.3f} | {m['recall']:.3f} | "
                     f"{m['f1']:.3f} | {_fmt(m['auc'], m['auc_ci95'])} |")
    classes = metrics["classes"]
    lines += ["", "Confusion matrix (rows: truth, columns: prediction):", "",
              "| | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    for cls, row in zip(classes, metrics["confusion_matrix"], strict=True):
        lines.append(f"| {cls} | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "![ROC](roc.png)", "", "![Confusion matrix](confusion.png)", ""]
    return "\n".join(lines)


def write_report(metrics: dict[str, Any], y_true: Sequence[int], probs: np.ndarray,
                 out_dir: Path, title: str, note: str = "") -> dict[str, Path]:
    """report.json, report.md, roc.png and confusion.png in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "report.json",
        "markdown": out_dir / "report.md",
        "roc": plot_roc(y_true, probs, metrics["classes"], out_dir / "roc.png"),
        "confusion": plot_confusion(metrics["confusion_matrix"], metrics["classes"],
                                    out_dir / "confusion.png"),
    }
    paths["json"].write_text(json.dumps({"title": title, "note": note, **metrics}, indent=2),
                             encoding="utf-8")
    paths["markdown"].write_text(report_markdown(metrics, title, note), encoding="utf-8")
    return paths


def card_figures(metrics: dict[str, Any], dataset: str) -> dict[str, Any]:
    """The compact subset of the figures that goes into a model card."""
    return {
        "dataset": dataset,
        "unit": "hip (all views of one hip fused)",
        "n": metrics["n"],
        "accuracy": round(metrics["accuracy"], 4),
        "accuracy_ci95": [round(v, 4) for v in metrics["accuracy_ci95"] or []],
        "cohen_kappa": round(metrics["cohen_kappa"], 4),
        "macro_auc": None if metrics["macro_auc"] is None else round(metrics["macro_auc"], 4),
        "macro_f1": round(metrics["macro_f1"], 4),
        "per_class_auc": {c: (None if m["auc"] is None else round(m["auc"], 4))
                          for c, m in metrics["per_class"].items()},
        "per_class_recall": {c: round(m["recall"], 4) for c, m in metrics["per_class"].items()},
    }


def fuse_hips(keys: Sequence[tuple[str, str]], labels: Sequence[int],
              probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average probabilities of all views of the same hip (study, laterality).

    Unknown laterality ("U") is never merged with other views.
    """
    groups: dict[tuple[str, str], list[int]] = {}
    for i, (study, lat) in enumerate(keys):
        key = (study, lat) if lat in ("R", "L") else (study, f"U{i}")
        groups.setdefault(key, []).append(i)
    y, p = [], []
    for idx in groups.values():
        y.append(labels[idx[0]])
        p.append(np.mean(probs[idx], axis=0))
    return np.asarray(y, dtype=int), np.asarray(p)


def evaluate_model(model_dirs: Sequence[Path], data_dir: Path, labels_csv: Path, out_dir: Path,
                   device: str = "auto", runtime: str = "auto", label_column: str = "",
                   cache_dir: Path | None = None, n_boot: int = N_BOOTSTRAP,
                   ) -> tuple[dict[str, Any], dict[str, Path]]:
    """Evaluate a model (or ensemble) on a labelled DICOM folder; per-hip fused figures.

    The labels come from `label_column`, by default the column of the model card's label set.
    """
    from hiprouter.inference.classifier import CropClassifier
    from hiprouter.inference.models import SYNTHETIC_DISCLAIMER
    from hiprouter.training.dataset import DatasetError, label_spec, load_crops, read_labels

    clf = CropClassifier.from_dirs(model_dirs, device, runtime)
    try:
        spec = label_spec(clf.cards[0].label_set)
    except DatasetError as exc:
        raise ValueError(str(exc)) from None
    rows = read_labels(labels_csv, clf.classes, label_column or spec.column, spec.aliases)
    size = max(m.model.card.input_size for m in clf.members)
    images, used, refused = load_crops(rows, data_dir, size, cache_dir)
    preds = clf.predict([im.astype(np.float32) / 255.0 for im in images], heatmaps=False)
    probs = np.stack([p.probabilities for p in preds]) if preds else np.zeros((0, 0))
    labels = [clf.classes.index(rows[i].label) for i in used]
    keys = [(rows[i].study_uid, rows[i].laterality) for i in used]
    y_hip, p_hip = fuse_hips(keys, labels, probs)
    metrics = compute_metrics(y_hip, p_hip, clf.classes, n_boot=n_boot)
    metrics["per_image_accuracy"] = float((probs.argmax(1) == np.asarray(labels)).mean()) \
        if len(labels) else None
    metrics["refused"] = refused
    info = clf.info
    metrics["model"] = {"name": info.name, "version": info.version,
                        "architecture": info.architecture, "device_uid": info.device_uid,
                        "runtime": clf.runtime_names, "synthetic_demo": info.synthetic_demo}
    note = SYNTHETIC_DISCLAIMER if info.synthetic_demo else ""
    title = f"{info.name} {info.version} on {Path(data_dir).name} ({Path(labels_csv).name})"
    return metrics, write_report(metrics, y_hip, p_hip, out_dir, title, note)
