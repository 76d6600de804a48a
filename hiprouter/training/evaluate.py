"""Evaluation figures for a classifier: the seed papers' metrics, with bootstrap 95 % CIs.

Accuracy, macro-F1 and macro-AUC (seed 001), per-class precision, sensitivity (recall),
specificity, F1 and one-vs-rest ROC AUC, Cohen's kappa and the confusion matrix
(scikit-learn primitives), all with percentile-bootstrap CIs over hips; the expected
calibration error with a reliability diagram; with the card's abstention and OOD settings,
how many hips are indeterminate / not assessed and the accuracy on the rest; on folders of
images a hip model must not assess (`hiprouter synth-ood`), how many it refuses. ROC,
confusion-matrix and reliability PNGs (matplotlib Agg); report.md and report.json.
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
    boot: dict[str, list[float]] = {"acc": [], "kappa": [], "macro_f1": [], "macro_auc": []}
    boot_auc: list[list[float]] = [[] for _ in labels]
    boot_sens: list[list[float]] = [[] for _ in labels]
    boot_spec: list[list[float]] = [[] for _ in labels]
    for _ in range(n_boot if len(y) > 1 else 0):
        idx = rng.integers(0, len(y), len(y))
        yb, pb = y[idx], pred[idx]
        boot["acc"].append(float(np.mean(yb == pb)))
        if len(set(yb.tolist()) | set(pb.tolist())) > 1:
            boot["kappa"].append(float(cohen_kappa_score(yb, pb, labels=labels)))
        f1b = []
        aucs_b = []
        for c in labels:
            tp = int(np.sum((yb == c) & (pb == c)))
            fp = int(np.sum((yb != c) & (pb == c)))
            fn = int(np.sum((yb == c) & (pb != c)))
            tn = len(yb) - tp - fp - fn
            f1b.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
            if tp + fn:
                boot_sens[c].append(tp / (tp + fn))
            if tn + fp:
                boot_spec[c].append(tn / (tn + fp))
            a = _fast_auc((yb == c).astype(int), probs[idx, c])
            if a is not None:
                boot_auc[c].append(a)
                if aucs[c] is not None:
                    aucs_b.append(a)
        boot["macro_f1"].append(float(np.mean(f1b)))
        if aucs_b:
            boot["macro_auc"].append(float(np.mean(aucs_b)))

    defined = [a for a in aucs if a is not None]
    kappa = float(cohen_kappa_score(y, pred, labels=labels)) if len(set(y) | set(pred)) > 1 \
        else 1.0
    cm = confusion_matrix(y, pred, labels=labels)
    per_class = {}
    for c, cls in enumerate(classes):
        tp = int(cm[c, c])
        fn = int(cm[c].sum() - tp)
        fp = int(cm[:, c].sum() - tp)
        tn = int(len(y) - tp - fn - fp)
        per_class[cls] = {
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "sensitivity": float(tp / (tp + fn)) if tp + fn else None,
            "sensitivity_ci95": _ci(boot_sens[c]) if tp + fn else None,
            "specificity": float(tn / (tn + fp)) if tn + fp else None,
            "specificity_ci95": _ci(boot_spec[c]) if tn + fp else None,
            "f1": float(f1[c]),
            "support": int(support[c]),
            "auc": aucs[c],
            "auc_ci95": _ci(boot_auc[c]) if aucs[c] is not None else None,
        }
    return {
        "n": int(len(y)),
        "classes": list(classes),
        "accuracy": float(accuracy_score(y, pred)),
        "accuracy_ci95": _ci(boot["acc"]),
        "cohen_kappa": kappa,
        "cohen_kappa_ci95": _ci(boot["kappa"]),
        "macro_auc": float(np.mean(defined)) if defined else None,
        "macro_auc_ci95": _ci(boot["macro_auc"]) if defined else None,
        "macro_f1": float(np.mean(f1)),
        "macro_f1_ci95": _ci(boot["macro_f1"]),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "bootstrap_samples": int(n_boot),
    }


def selective_figures(y_true: Sequence[int], probs: np.ndarray, min_confidence: float,
                      not_assessed: Sequence[bool] | None = None) -> dict[str, Any]:
    """What the pipeline would say per hip: not assessed (OOD), indeterminate (confidence
    below `min_confidence`) or assessed, and the accuracy on the assessed hips."""
    y = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    n = len(y)
    out_of = np.asarray(not_assessed if not_assessed is not None else np.zeros(n, bool), bool)
    conf = probs.max(axis=1) if n else np.zeros(0)
    indeterminate = ~out_of & (conf < min_confidence)
    assessed = ~out_of & ~indeterminate
    correct = probs.argmax(axis=1) == y if n else np.zeros(0, bool)
    return {
        "min_confidence": float(min_confidence),
        "hips": int(n),
        "not_assessed_rate": float(out_of.mean()) if n else None,
        "indeterminate_rate": float(indeterminate.mean()) if n else None,
        "assessed_rate": float(assessed.mean()) if n else None,
        "accuracy_assessed": float(correct[assessed].mean()) if assessed.any() else None,
        "wrong_definitive_rate": float((assessed & ~correct).mean()) if n else None,
    }


def triage_figures(y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str],
                   thresholds: dict[str, float],
                   not_assessed: Sequence[bool] | None = None) -> dict[str, Any]:
    """The card's triage operating point as the pipeline applies it (report/triage.py): a
    hip is flagged when a triage class's probability reaches its threshold (indeterminate
    hips included, not-assessed hips never flagged). Per class: sensitivity on its hips and
    the share of other hips flagged for it; overall: sensitivity on hips of any triage class
    and specificity on all other hips."""
    y = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    n = len(y)
    out_of = np.asarray(not_assessed if not_assessed is not None else np.zeros(n, bool), bool)
    keys = [k for k in thresholds if k in classes]
    flagged_any = np.zeros(n, bool)
    positive = np.zeros(n, bool)
    per_class: dict[str, Any] = {}
    for key in keys:
        k = list(classes).index(key)
        flagged = ~out_of & (probs[:, k] >= float(thresholds[key])) if n else np.zeros(0, bool)
        mine = y == k
        flagged_any |= flagged
        positive |= mine
        per_class[key] = {
            "threshold": float(thresholds[key]), "hips": int(mine.sum()),
            "sensitivity": float(flagged[mine].mean()) if mine.any() else None,
            "other_hips_flagged": float(flagged[~mine].mean()) if (~mine).any() else None,
        }
    return {
        "classes": per_class,
        "sensitivity": float(flagged_any[positive].mean()) if positive.any() else None,
        "specificity": float(1 - flagged_any[~positive].mean()) if (~positive).any() else None,
        "hips_flagged": float(flagged_any.mean()) if n else None,
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
        f"- macro F1: {_fmt(metrics['macro_f1'], metrics.get('macro_f1_ci95'))}",
        f"- macro AUC (one-vs-rest): {_fmt(metrics['macro_auc'], metrics.get('macro_auc_ci95'))}",
        f"- Cohen's kappa: {_fmt(metrics['cohen_kappa'], metrics['cohen_kappa_ci95'])}",
    ]
    cal = metrics.get("calibration")
    if cal:
        lines.append(f"- expected calibration error (15 bins): {_fmt(cal.get('ece'))}"
                     + (f" (uncalibrated {_fmt(cal['ece_uncalibrated'])})"
                        if cal.get("ece_uncalibrated") is not None else ""))
    sel = metrics.get("selective")
    if sel:
        lines.append(
            f"- with min_confidence {sel['min_confidence']:.3f}: not assessed (OOD) "
            f"{_pct(sel['not_assessed_rate'])}, indeterminate {_pct(sel['indeterminate_rate'])}, "
            f"assessed {_pct(sel['assessed_rate'])} with accuracy "
            f"{_fmt(sel['accuracy_assessed'])}; wrong definitive answers "
            f"{_pct(sel['wrong_definitive_rate'])} of all hips")
    tri = metrics.get("triage")
    if tri and tri["classes"]:
        lines.append(
            "- triage at the card's thresholds (a hip is flagged when a class reaches its "
            f"threshold): sensitivity {_fmt(tri['sensitivity'])}, specificity "
            f"{_fmt(tri['specificity'])}, hips flagged {_pct(tri['hips_flagged'])}"
            + "".join(f"; {k} (p >= {v['threshold']:.3f}): sensitivity {_fmt(v['sensitivity'])}"
                      f", other hips flagged {_pct(v['other_hips_flagged'])}"
                      for k, v in tri["classes"].items()))
    anat = metrics.get("anatomy_check")
    if anat:
        lines.append(f"- anatomy check ({anat['model']}, P(hip) below "
                     f"{anat['min_probability']:.3f}): {anat['not_assessed']} of "
                     f"{anat['images']} labelled images would not be assessed "
                     f"({_pct(anat['not_assessed_rate'])}); they stay in the figures above")
        if anat.get("views_from_image"):
            lines.append(f"- {views_from_image_text(anat['views_from_image'])}")
    ood = metrics.get("ood_images")
    if ood:
        lines.append(f"- out-of-distribution images ({ood['images']}): not assessed "
                     f"{_pct(ood['not_assessed_rate'])}"
                     + "".join(f"; {k} {_pct(v['not_assessed_rate'])}"
                               for k, v in ood.get("by_kind", {}).items())
                     + (f"; AUROC of the OOD score, crops of these hips vs "
                        f"{ood['crops_scored']} crops of OOD images that passed the tag checks: "
                        f"{_fmt(ood['auroc_crops'])}" if "auroc_crops" in ood else ""))
    lines += [
        f"- 95 % CIs: percentile bootstrap over hips, {metrics['bootstrap_samples']} resamples",
        "",
        "| class | support | precision | sensitivity [95 % CI] | specificity [95 % CI] | F1 | "
        "AUC [95 % CI] |",
        "|---|---:|---:|---|---|---:|---|",
    ]
    for cls, m in metrics["per_class"].items():
        lines.append(f"| {cls} | {m['support']} | {m['precision']:.3f} | "
                     f"{_fmt(m.get('sensitivity'), m.get('sensitivity_ci95'))} | "
                     f"{_fmt(m.get('specificity'), m.get('specificity_ci95'))} | "
                     f"{m['f1']:.3f} | {_fmt(m['auc'], m['auc_ci95'])} |")
    classes = metrics["classes"]
    lines += ["", "Confusion matrix (rows: truth, columns: prediction):", "",
              "| | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    for cls, row in zip(classes, metrics["confusion_matrix"], strict=True):
        lines.append(f"| {cls} | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "![ROC](roc.png)", "", "![Confusion matrix](confusion.png)", "",
              "![Reliability diagram](reliability.png)", ""]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def write_report(metrics: dict[str, Any], y_true: Sequence[int], probs: np.ndarray,
                 out_dir: Path, title: str, note: str = "") -> dict[str, Path]:
    """report.json, report.md, roc.png and confusion.png in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from hiprouter.training.calibration import plot_reliability, reliability

    metrics.setdefault("calibration", {})["ece"] = reliability(probs, y_true)["ece"] \
        if len(y_true) else None
    paths = {
        "json": out_dir / "report.json",
        "markdown": out_dir / "report.md",
        "roc": plot_roc(y_true, probs, metrics["classes"], out_dir / "roc.png"),
        "confusion": plot_confusion(metrics["confusion_matrix"], metrics["classes"],
                                    out_dir / "confusion.png"),
        "reliability": plot_reliability(probs, y_true, out_dir / "reliability.png"),
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
        "macro_f1_ci95": [round(v, 4) for v in metrics.get("macro_f1_ci95") or []],
        "ece": None if (metrics.get("calibration") or {}).get("ece") is None
        else round(metrics["calibration"]["ece"], 4),
        "per_class_auc": {c: (None if m["auc"] is None else round(m["auc"], 4))
                          for c, m in metrics["per_class"].items()},
        "per_class_recall": {c: round(m["recall"], 4) for c, m in metrics["per_class"].items()},
        "per_class_specificity": {c: (None if m.get("specificity") is None
                                      else round(m["specificity"], 4))
                                  for c, m in metrics["per_class"].items()},
        **({"ece_uncalibrated": round(metrics["calibration"]["ece_uncalibrated"], 4)}
           if (metrics.get("calibration") or {}).get("ece_uncalibrated") is not None else {}),
        **({"selective": metrics["selective"]} if metrics.get("selective") else {}),
        **({"triage": metrics["triage"]} if (metrics.get("triage") or {}).get("classes")
           else {}),
        **({"ood_images": {k: v for k, v in metrics["ood_images"].items() if k != "by_kind"}}
           if metrics.get("ood_images") else {}),
    }


def hip_groups(keys: Sequence[tuple[str, str]]) -> list[list[int]]:
    """The indices of the views of each hip (study, laterality), in first-seen order; a
    view of unknown laterality ("U") is a hip of its own."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, (study, lat) in enumerate(keys):
        key = (study, lat) if lat in ("R", "L") else (study, f"U{i}")
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def fuse_hips(keys: Sequence[tuple[str, str]], labels: Sequence[int],
              probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average probabilities of all views of the same hip (study, laterality).

    Unknown laterality ("U") is never merged with other views.
    """
    y, p = [], []
    for idx in hip_groups(keys):
        y.append(labels[idx[0]])
        p.append(np.mean(probs[idx], axis=0))
    return np.asarray(y, dtype=int), np.asarray(p)


def fuse_predictions(keys: Sequence[tuple[str, str]], labels: Sequence[int],
                     preds: Sequence[Any], ood_detection: bool = True,
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per hip as the pipeline fuses it: the mean probability over the crops that are not
    out of distribution (all crops when none is familiar); not assessed when none is."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, (study, lat) in enumerate(keys):
        key = (study, lat) if lat in ("R", "L") else (study, f"U{i}")
        groups.setdefault(key, []).append(i)
    y, p, out = [], [], []
    for idx in groups.values():
        familiar = [i for i in idx if not (ood_detection and preds[i].ood)]
        use = familiar or idx
        y.append(labels[idx[0]])
        p.append(np.mean([preds[i].probabilities for i in use], axis=0))
        out.append(not familiar)
    return np.asarray(y, dtype=int), np.asarray(p), np.asarray(out, dtype=bool)


def assess_files(clf: Any, paths: Sequence[Path], min_confidence: float = 0.0,
                 modalities: Sequence[str] = ("CR", "DX"), anatomy: Any | None = None,
                 ) -> list[dict[str, Any]]:
    """What a classifier pipeline would say about each image, per hip: refused (not a hip
    radiograph by its tags, not decodable, or -- with `anatomy`, an `AnatomyCheck` -- not
    an adult hip or pelvis radiograph by the whole-image check), not_assessed (every crop
    out of distribution), indeterminate (below `min_confidence`) or assessed with the
    class."""
    from hiprouter.inference.decode import RefusedImage, decode, read_dataset
    from hiprouter.inference.laterality import (
        hip_crops,
        not_hip_reason,
        view_of_dataset_read_from_image,
    )

    out: list[dict[str, Any]] = []
    for path in paths:
        try:
            ds = read_dataset(path)
            reason = not_hip_reason(ds)
            if reason:
                raise RefusedImage(reason)
            pixels = decode(ds, modalities).pixels
            view = None
            if anatomy is not None:
                verdict = anatomy.assess([pixels])[0]
                if verdict.refused:
                    raise RefusedImage(verdict.reason or "not a hip or pelvis radiograph")
                view = view_of_dataset_read_from_image(ds, verdict.view)
            crops = hip_crops(ds, pixels, view)
        except RefusedImage as exc:
            out.append({"path": str(path), "hip": "", "status": "refused", "reason": exc.reason})
            continue
        except Exception as exc:  # a broken file is refused, as the router does
            out.append({"path": str(path), "hip": "", "status": "refused",
                        "reason": f"{type(exc).__name__}: {exc}"})
            continue
        preds = clf.predict([c.pixels for c in crops], heatmaps=False)
        for crop, pred in zip(crops, preds, strict=True):
            probs = pred.probabilities
            best = int(np.argmax(probs))
            status = ("not_assessed" if pred.ood else
                      "indeterminate" if probs[best] < min_confidence else "assessed")
            out.append({"path": str(path), "hip": crop.laterality, "view": crop.view,
                        "status": status, "predicted": clf.classes[best],
                        "probability": float(probs[best]), "ood_score": pred.ood_score})
    return out


def views_from_image_text(counts: dict[str, int]) -> str:
    """One line for the evaluate report: images cut by the view the anatomy check read."""
    names = {"ap_pelvis": "an AP pelvis (two hips)", "unknown": "a single hip"}
    return "view read from the image (the headers name none): " + ", ".join(
        f"{n} image{'s' if n != 1 else ''} read as {names.get(v, v)}" for v, n in counts.items())


def anatomy_figures(anatomy: Any, paths: Sequence[Path],
                    modalities: Sequence[str] = ("CR", "DX")) -> dict[str, Any]:
    """How many labelled (hip) images the whole-image anatomy check would not assess, and
    how many were cut by the view it read because their headers name none (view -> count:
    "ap_pelvis" read per hip, "unknown" a single hip)."""
    from hiprouter.inference.decode import RefusedImage, decode_file
    from hiprouter.inference.laterality import view_of_dataset_read_from_image

    refused: list[str] = []
    read_as: dict[str, int] = {}
    checked = 0
    for path in paths:
        try:
            ds, decoded = decode_file(path, modalities)
        except (RefusedImage, OSError):
            continue
        checked += 1
        verdict = anatomy.assess([decoded.pixels])[0]
        if verdict.refused:
            refused.append(str(path))
        view = view_of_dataset_read_from_image(ds, verdict.view)
        if view is not None:
            read_as[view] = read_as.get(view, 0) + 1
    return {"model": anatomy.info, "min_probability": anatomy.min_probability,
            "images": checked, "not_assessed": len(refused),
            "not_assessed_rate": len(refused) / checked if checked else None,
            "not_assessed_files": refused[:20], "views_from_image": dict(sorted(read_as.items()))}


def ood_figures(results: Sequence[dict[str, Any]], kinds: dict[str, str] | None = None,
                ) -> dict[str, Any]:
    """Per image: not assessed when refused or when no hip crop was assessed/indeterminate."""
    by_path: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_path.setdefault(r["path"], []).append(r)

    def silent(rs: list[dict[str, Any]]) -> bool:
        return all(r["status"] in ("refused", "not_assessed") for r in rs)

    def rate(paths: list[str]) -> dict[str, Any]:
        flags = [silent(by_path[p]) for p in paths]
        refused = [by_path[p][0]["status"] == "refused" for p in paths]
        definitive = [any(r["status"] == "assessed" for r in by_path[p]) for p in paths]
        return {"images": len(paths), "not_assessed_rate": float(np.mean(flags)),
                "refused_rate": float(np.mean(refused)),
                "definitive_rate": float(np.mean(definitive))}

    paths = list(by_path)
    out = rate(paths) if paths else {"images": 0, "not_assessed_rate": None}
    if kinds:
        groups: dict[str, list[str]] = {}
        for p in paths:
            groups.setdefault(kinds.get(p, "?"), []).append(p)
        out["by_kind"] = {k: rate(v) for k, v in sorted(groups.items())}
    return out


def ood_folder(folder: Path) -> tuple[list[Path], dict[str, str]]:
    """The DICOM files of a folder (labels.csv with `ood_kind` when present) and their kinds."""
    import csv

    folder = Path(folder)
    labels = folder / "labels.csv"
    kinds: dict[str, str] = {}
    if labels.is_file():
        with labels.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        paths = []
        for r in rows:
            p = folder / r["path"]
            if str(p) not in kinds:
                paths.append(p)
                kinds[str(p)] = r.get("ood_kind") or r.get("view") or "?"
        return paths, kinds
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".dcm", "") and
                   p.is_file())
    return paths, {str(p): p.parent.name for p in paths}


def evaluate_model(model_dirs: Sequence[Path], data_dir: Path, labels_csv: Path, out_dir: Path,
                   device: str = "auto", runtime: str = "auto", label_column: str = "",
                   cache_dir: Path | None = None, n_boot: int = N_BOOTSTRAP,
                   ood_dirs: Sequence[Path] = (), ood_detection: bool = True,
                   anatomy: Any | None = None,
                   ) -> tuple[dict[str, Any], dict[str, Path]]:
    """Evaluate a model (or ensemble) on a labelled DICOM folder; per-hip fused figures as the
    pipeline fuses views (calibrated probabilities; OOD crops left out), with the card's
    abstention and OOD rates; `ood_dirs`: folders of images it must not assess. With
    `anatomy` (an `AnatomyCheck`, as every job runs it first) the OOD images it refuses
    count as not assessed, the labelled images it would refuse are counted (they stay in
    the per-hip figures, which measure the model itself), and images whose tags name no
    view are cut by the view it names, as a job cuts them (an untagged AP pelvis: two hips).

    The labels come from `label_column`, by default the column of the model card's label set.
    """
    from hiprouter.inference.classifier import CropClassifier
    from hiprouter.inference.models import SYNTHETIC_DISCLAIMER
    from hiprouter.training.dataset import DatasetError, label_spec, load_crops, read_labels

    clf = CropClassifier.from_dirs(model_dirs, device, runtime)
    try:
        spec = label_spec(clf.cards[0].label_set, clf.classes)
    except DatasetError as exc:
        raise ValueError(str(exc)) from None
    rows = read_labels(labels_csv, clf.classes, label_column or spec.column, spec.aliases)
    size = max(m.model.card.input_size for m in clf.members)
    images, used, refused = load_crops(rows, data_dir, size, cache_dir, anatomy=anatomy)
    preds = clf.predict([im.astype(np.float32) / 255.0 for im in images], heatmaps=False)
    probs = np.stack([p.probabilities for p in preds]) if preds else np.zeros((0, 0))
    labels = [clf.classes.index(rows[i].label) for i in used]
    keys = [(rows[i].study_uid, rows[i].laterality) for i in used]
    y_hip, p_hip, not_assessed = fuse_predictions(keys, labels, preds, ood_detection)
    metrics = compute_metrics(y_hip, p_hip, clf.classes, n_boot=n_boot)
    if len(clf.members) == 1 and preds:
        # one member: its probabilities are softmax(logits / T), so softmax(T log p) are the
        # uncalibrated ones (what the card's temperature changed)
        from dataclasses import replace

        from hiprouter.training.calibration import ece
        from hiprouter.training.calibration import softmax as tempered

        t = clf.members[0].temperature
        raw = tempered(t * np.log(np.maximum(probs, 1e-30)))
        raw_preds = [replace(p, probabilities=raw[i]) for i, p in enumerate(preds)]
        y_raw, p_raw, _ = fuse_predictions(keys, labels, raw_preds, ood_detection)
        metrics["calibration"] = {"ece_uncalibrated": ece(p_raw, y_raw), "temperature": t}
    metrics["per_image_accuracy"] = float((probs.argmax(1) == np.asarray(labels)).mean()) \
        if len(labels) else None
    metrics["skipped_empty_labels"] = rows.skipped
    metrics["refused"] = refused
    min_conf = float(clf.card_value("abstention", "min_confidence", 0.0) or 0.0)
    metrics["selective"] = selective_figures(y_hip, p_hip, min_conf, not_assessed)
    thresholds = dict(clf.cards[0].triage_thresholds or {})
    if thresholds:
        metrics["triage"] = triage_figures(y_hip, p_hip, clf.classes, thresholds, not_assessed)
    metrics["ood_crop_rate"] = float(np.mean([p.ood for p in preds])) if preds else None
    if ood_dirs:
        results: list[dict[str, Any]] = []
        kinds: dict[str, str] = {}
        for folder in ood_dirs:
            paths, k = ood_folder(folder)
            kinds.update(k)
            results.extend(assess_files(clf, paths, min_conf, anatomy=anatomy))
        metrics["ood_images"] = ood_figures(results, kinds)
        from hiprouter.inference.ood import detection_rates

        # AUROC of the OOD score: the crops of these labelled (in-distribution) images against
        # the crops of the OOD images that reached the model (not refused by their tags)
        out_scores = [r["ood_score"] for r in results if "ood_score" in r]
        metrics["ood_images"]["crops_scored"] = len(out_scores)
        metrics["ood_images"]["auroc_crops"] = detection_rates(
            [p.ood_score for p in preds], out_scores, np.inf)["auroc"]
    if anatomy is not None:
        metrics["anatomy_check"] = anatomy_figures(
            anatomy, sorted({Path(data_dir) / rows[i].path for i in used}))
    info = clf.info
    metrics["model"] = {"name": info.name, "version": info.version,
                        "architecture": info.architecture, "device_uid": info.device_uid,
                        "runtime": clf.runtime_names, "synthetic_demo": info.synthetic_demo}
    note = SYNTHETIC_DISCLAIMER if info.synthetic_demo else ""
    title = f"{info.name} {info.version} on {Path(data_dir).name} ({Path(labels_csv).name})"
    return metrics, write_report(metrics, y_hip, p_hip, out_dir, title, note)
