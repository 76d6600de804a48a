"""Evaluation of an ONFH model, with the figures seed 002 reports.

Per femoral head of a labelled set: the end-to-end segmentation (Dice against the ground
truth mask, in the stored image's pixels), the Mahalanobis distance, its percentile and
the stage band. Summary:

- Dice: mean (bootstrap 95 % CI), median, 5th percentile, per view;
- distance distributions per grade (n, median, quartiles) and a box plot PNG;
- pairwise two-sided Mann-Whitney U tests between the grades, Holm-corrected;
- ROC AUC of healthy (grade 0) against each grade, and against grades 2-4 together, with
  stratified bootstrap 95 % CIs;
- the stage bands against the truth: confusion matrix, accuracy, balanced accuracy,
  linearly weighted kappa.

`hiprouter evaluate MODEL_DIR DATA_DIR --out DIR` runs it for a model whose card's label
set is ``onfh``; training runs it on the test split.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from hiprouter.inference.onfh import OnfhModel, lateral_on_image_right
from hiprouter.training.onfh_data import (
    FIXATION,
    GRADES,
    HeadImage,
    HeadRow,
    dice,
    iterate_heads,
    read_head_labels,
)

N_BOOTSTRAP = 1000


def assess_heads(model: OnfhModel, rows: Sequence[HeadRow], data_dir: Path,
                 workers: int = 1, progress: bool = True) -> list[dict[str, Any]]:
    """Run the model on every labelled head; one record per row."""
    from tqdm import tqdm

    out: list[dict[str, Any]] = []
    bar = (lambda it: tqdm(it, total=len(rows), leave=False, desc="assess")) if progress \
        else None
    for i, head in iterate_heads(rows, data_dir, workers, progress=bar):
        row = rows[i]
        rec: dict[str, Any] = {"path": row.path, "laterality": row.laterality,
                               "view": row.view, "grade": row.grade, "hardware": row.hardware}
        if isinstance(head, str):
            rec["refused"] = head
            out.append(rec)
            continue
        assert isinstance(head, HeadImage)
        seg = model.segmenter.segment(head.crop)
        rec["dice"] = dice(seg.crop_mask(head.crop.shape) if seg is not None
                           else np.zeros_like(head.mask), head.mask)
        if seg is None:
            rec["found"] = False
        result = model.assess_segmentation(seg, lateral_on_image_right(row.laterality,
                                                                       head.standard_display))
        if isinstance(result, str):
            rec["not_assessed"] = result
        else:
            rec["distance"] = result.distance
            rec["percentile"] = result.percentile
            rec["band"] = result.band
            rec["band_key"] = model.normative.staging.keys[result.band]  # type: ignore[union-attr]
            rec["probability"] = max(result.probabilities.values())
        out.append(rec)
    return out


def stage_answers(records: Sequence[dict[str, Any]], rows: Sequence[HeadRow],
                  folder: str = "") -> dict[tuple[str, str, str], tuple[int, list[float]]]:
    """The labelled grade and assessed distances of each hip (folder, study, side) of
    `assess_heads` records: the kind averages a hip's distances over its AP views."""
    by_file = {(r.path, r.laterality): r for r in rows}
    hips: dict[tuple[str, str, str], tuple[int, list[float]]] = {}
    for rec in records:
        if "distance" not in rec:
            continue  # not assessed: the kind says so, with no stage to abstain from
        row = by_file[(rec["path"], rec["laterality"])]
        hips.setdefault((folder, row.study_uid, row.laterality),
                        (row.grade, []))[1].append(float(rec["distance"]))
    return hips


def hip_stage_answers(hips: dict[tuple[str, str, str], tuple[int, list[float]]],
                      staging: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per hip, as the kind reports it: the probability of its stage band (of the mean
    distance) and whether the band is the labelled grade's."""
    confidence, correct = [], []
    for grade, distances in hips.values():
        distance = float(np.mean(distances))
        band = staging.band(distance)
        confidence.append(staging.probabilities(distance).get(staging.keys[band], 0.0))
        correct.append(band == band_of_grade(grade, staging.bands))
    return np.array(confidence, dtype=float), np.array(correct, dtype=bool)


def selective_stages(confidence: np.ndarray, correct: np.ndarray, min_confidence: float
                     ) -> dict[str, Any]:
    """What the kind says per assessed hip: a stage, or "indeterminate" below
    `min_confidence`, and the share of hips with a wrong definitive stage."""
    n = len(confidence)
    answered = confidence >= min_confidence
    return {"min_confidence": float(min_confidence), "hips": int(n),
            "indeterminate_rate": float((~answered).mean()) if n else None,
            "assessed_rate": float(answered.mean()) if n else None,
            "accuracy_assessed": float(correct[answered].mean()) if answered.any() else None,
            "wrong_definitive_rate": float((answered & ~correct).mean()) if n else None}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1)."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = len(p)
    order = np.argsort(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        adjusted[idx] = running
    return adjusted.tolist()


def auc(negative: np.ndarray, positive: np.ndarray) -> float | None:
    """ROC AUC that a positive has the larger score (ties count half)."""
    from scipy.stats import rankdata

    if len(negative) == 0 or len(positive) == 0:
        return None
    ranks = rankdata(np.concatenate([negative, positive]))
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_ci(negative: np.ndarray, positive: np.ndarray, n_boot: int = N_BOOTSTRAP,
           seed: int = 0) -> list[float] | None:
    """Percentile bootstrap 95 % CI, resampling each group separately."""
    if len(negative) < 2 or len(positive) < 2 or n_boot < 10:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        a = auc(negative[rng.integers(0, len(negative), len(negative))],
                positive[rng.integers(0, len(positive), len(positive))])
        if a is not None:
            values.append(a)
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def band_of_grade(grade: int, bands: Sequence[tuple[str, Sequence[int]]]) -> int:
    for i, (_, grades) in enumerate(bands):
        if grade in grades:
            return i
    raise ValueError(f"grade {grade} is in no stage band")


def weighted_kappa(y: np.ndarray, p: np.ndarray, k: int) -> float | None:
    from sklearn.metrics import cohen_kappa_score

    if len(set(y.tolist()) | set(p.tolist())) < 2:
        return None
    return float(cohen_kappa_score(y, p, labels=list(range(k)), weights="linear"))


def summarise(records: Sequence[dict[str, Any]], bands: Sequence[tuple[str, Sequence[int]]],
              n_boot: int = N_BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """All figures of a set of assessed heads (see the module docstring)."""
    from scipy.stats import mannwhitneyu

    from hiprouter.training.segmentation import dice_summary

    scored = [r for r in records if "distance" in r and r.get("hardware") not in FIXATION]
    by_grade = {g: np.array([r["distance"] for r in scored if r["grade"] == g])
                for g in GRADES}
    distances = {}
    for g, d in by_grade.items():
        if len(d):
            q1, med, q3 = np.percentile(d, [25, 50, 75])
            distances[str(g)] = {"n": int(len(d)), "median": round(float(med), 3),
                                 "q1": round(float(q1), 3), "q3": round(float(q3), 3),
                                 "mean": round(float(d.mean()), 3)}
        else:
            distances[str(g)] = {"n": 0}
    pairs = [(a, b) for a, b in combinations(GRADES, 2)
             if len(by_grade[a]) and len(by_grade[b])]
    raw = [float(mannwhitneyu(by_grade[a], by_grade[b], alternative="two-sided").pvalue)
           for a, b in pairs]
    adjusted = holm(raw) if raw else []
    tests = [{"grades": [a, b], "u": float(mannwhitneyu(by_grade[a], by_grade[b],
                                                        alternative="two-sided").statistic),
              "p": p, "p_holm": q, "significant_0.05": q < 0.05}
             for (a, b), p, q in zip(pairs, raw, adjusted, strict=True)]
    aucs = {}
    healthy = by_grade[0]
    for g in GRADES[1:]:
        a = auc(healthy, by_grade[g])
        aucs[f"0_vs_{g}"] = {"auc": None if a is None else round(a, 4),
                             "ci95": _round(auc_ci(healthy, by_grade[g], n_boot, seed + g)),
                             "n": [int(len(healthy)), int(len(by_grade[g]))]}
    late = np.concatenate([by_grade[g] for g in (2, 3, 4)])
    a = auc(healthy, late)
    aucs["0_vs_2-4"] = {"auc": None if a is None else round(a, 4),
                        "ci95": _round(auc_ci(healthy, late, n_boot, seed + 9)),
                        "n": [int(len(healthy)), int(len(late))]}

    k = len(bands)
    y = np.array([band_of_grade(r["grade"], bands) for r in scored], dtype=int)
    p = np.array([r["band"] for r in scored], dtype=int)
    stage: dict[str, Any] = {"bands": [key for key, _ in bands], "n": int(len(y))}
    if len(y):
        from sklearn.metrics import balanced_accuracy_score, confusion_matrix

        stage.update({
            "accuracy": round(float((y == p).mean()), 4),
            "balanced_accuracy": round(float(balanced_accuracy_score(y, p)), 4),
            "within_one_band": round(float((np.abs(y - p) <= 1).mean()), 4),
            "linear_weighted_kappa": _round1(weighted_kappa(y, p, k)),
            "confusion_matrix": confusion_matrix(y, p, labels=list(range(k))).tolist(),
        })
    return {
        "heads": len(records),
        "assessed": len([r for r in records if "distance" in r]),
        "not_assessed": {r["path"] + " " + r["laterality"]: r["not_assessed"]
                         for r in records if "not_assessed" in r},
        "refused": {r["path"] + " " + r["laterality"]: r["refused"]
                    for r in records if "refused" in r},
        "segmentation": dice_summary(records, n_boot, seed),
        "distance_by_grade": distances,
        "mann_whitney_holm": tests,
        "auc_healthy_vs_grade": aucs,
        "stage": stage,
        "bootstrap_samples": n_boot,
    }


def _round(v: list[float] | None) -> list[float] | None:
    return None if v is None else [round(float(x), 4) for x in v]


def _round1(v: float | None) -> float | None:
    return None if v is None else round(float(v), 4)


def plot_distances(records: Sequence[dict[str, Any]], path: Path,
                   thresholds: Sequence[float] = (), title: str = "") -> Path:
    """Box plot of the Mahalanobis distance per grade (log scale), stage thresholds dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [[r["distance"] for r in records if "distance" in r and r["grade"] == g
             and r.get("hardware") not in FIXATION] for g in GRADES]
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=90)
    ax.boxplot([d if d else [np.nan] for d in data], showfliers=True)
    ax.set_xticks(range(1, len(GRADES) + 1),
                  [f"grade {g}\n(n={len(d)})" for g, d in zip(GRADES, data, strict=True)])
    ax.set_yscale("log")
    for t in thresholds:
        ax.axhline(t, color="tab:red", lw=0.8, ls="--")
    ax.set(ylabel="Mahalanobis distance from healthy heads (log)",
           title=title or "Normative distance per ONFH grade")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def report_markdown(metrics: dict[str, Any], title: str, note: str = "") -> str:
    lines = [f"# {title}", ""]
    if note:
        lines += [f"> {note}", ""]
    seg = metrics["segmentation"]
    lines += [
        f"- femoral heads: {metrics['heads']}, assessed {metrics['assessed']}, "
        f"not assessed {len(metrics['not_assessed'])}, refused {len(metrics['refused'])}",
        f"- segmentation Dice: mean {seg.get('dice_mean')} (95 % CI "
        f"{seg.get('dice_mean_ci95')}), median {seg.get('dice_median')}, 5th percentile "
        f"{seg.get('dice_p05')}, per view {seg.get('dice_mean_by_view')}",
        f"- 95 % CIs: percentile bootstrap, {metrics['bootstrap_samples']} resamples",
        "", "## Mahalanobis distance per grade", "",
        "| grade | n | median | quartiles |", "|---|---:|---:|---|"]
    for g, d in metrics["distance_by_grade"].items():
        if d.get("n"):
            lines.append(f"| {g} | {d['n']} | {d['median']} | {d['q1']} - {d['q3']} |")
        else:
            lines.append(f"| {g} | 0 | | |")
    lines += ["", "![distances](distances.png)", "",
              "## Mann-Whitney U between grades (two-sided, Holm-corrected)", "",
              "| grades | U | p | p (Holm) | significant |", "|---|---:|---:|---:|---|"]
    for t in metrics["mann_whitney_holm"]:
        lines.append(f"| {t['grades'][0]} vs {t['grades'][1]} | {t['u']:.0f} | {t['p']:.3g} | "
                     f"{t['p_holm']:.3g} | {'yes' if t['significant_0.05'] else 'no'} |")
    lines += ["", "## AUC healthy (grade 0) against each grade", "",
              "| comparison | n (healthy, other) | AUC [95 % CI] |", "|---|---|---|"]
    for name, a in metrics["auc_healthy_vs_grade"].items():
        ci = a["ci95"]
        lines.append(f"| {name.replace('_', ' ')} | {a['n'][0]}, {a['n'][1]} | {a['auc']}"
                     + (f" [{ci[0]}, {ci[1]}]" if ci else "") + " |")
    st = metrics["stage"]
    lines += ["", "## Stage bands", "", f"- bands: {', '.join(st['bands'])}; heads {st['n']}"]
    sel = metrics.get("selective")
    if sel and sel["hips"]:
        acc = sel["accuracy_assessed"]
        lines.append(
            f"- per hip as the kind reports it ({sel['hips']} hips), with min_confidence "
            f"{sel['min_confidence']:.3f}: indeterminate {100 * sel['indeterminate_rate']:.1f} %, "
            f"staged {100 * sel['assessed_rate']:.1f} % (accuracy "
            f"{'n/a' if acc is None else f'{acc:.3f}'}); wrong definitive stages "
            f"{100 * sel['wrong_definitive_rate']:.1f} % of all hips")
    if "accuracy" in st:
        lines += [f"- accuracy {st['accuracy']}, balanced accuracy {st['balanced_accuracy']}, "
                  f"within one band {st['within_one_band']}, linearly weighted kappa "
                  f"{st['linear_weighted_kappa']}", "",
                  "Confusion matrix (rows: truth, columns: estimate):", "",
                  "| | " + " | ".join(st["bands"]) + " |",
                  "|---" * (len(st["bands"]) + 1) + "|"]
        for key, row in zip(st["bands"], st["confusion_matrix"], strict=True):
            lines.append(f"| {key} | " + " | ".join(map(str, row)) + " |")
    lines.append("")
    return "\n".join(lines)


def write_report(metrics: dict[str, Any], records: Sequence[dict[str, Any]], out_dir: Path,
                 title: str, note: str = "", thresholds: Sequence[float] = ()
                 ) -> dict[str, Path]:
    """report.json, report.md, distances.png and heads.json (one record per head)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md",
             "distances": plot_distances(records, out_dir / "distances.png", thresholds),
             "heads": out_dir / "heads.json"}
    paths["json"].write_text(json.dumps({"title": title, "note": note, **metrics}, indent=2),
                             encoding="utf-8")
    paths["markdown"].write_text(report_markdown(metrics, title, note), encoding="utf-8")
    paths["heads"].write_text(json.dumps(list(records), indent=1), encoding="utf-8")
    return paths


def card_figures(metrics: dict[str, Any], dataset: str) -> dict[str, Any]:
    """The compact subset of the figures that goes into the model card."""
    seg = metrics["segmentation"]
    return {
        "dataset": dataset,
        "unit": "femoral head on one AP image",
        "heads": metrics["heads"],
        "dice_mean": seg.get("dice_mean"),
        "dice_mean_ci95": seg.get("dice_mean_ci95"),
        "dice_median": seg.get("dice_median"),
        "distance_median_by_grade": {g: d.get("median")
                                     for g, d in metrics["distance_by_grade"].items()},
        "auc_healthy_vs_grade": {k: {"auc": v["auc"], "ci95": v["ci95"]}
                                 for k, v in metrics["auc_healthy_vs_grade"].items()},
        "mann_whitney_holm_p": {f"{t['grades'][0]}_vs_{t['grades'][1]}": float(
            f"{t['p_holm']:.3g}") for t in metrics["mann_whitney_holm"]},
        "stage_accuracy": metrics["stage"].get("accuracy"),
        "stage_balanced_accuracy": metrics["stage"].get("balanced_accuracy"),
        "stage_linear_weighted_kappa": metrics["stage"].get("linear_weighted_kappa"),
        **({"selective": metrics["selective"]} if metrics.get("selective") else {}),
    }


def evaluate_onfh(model_dir: Path, data_dir: Path, labels_csv: Path, out_dir: Path,
                  device: str = "cpu", n_boot: int = N_BOOTSTRAP, workers: int = 1,
                  log: Callable[[str], None] = print) -> tuple[dict[str, Any], dict[str, Path]]:
    """`hiprouter evaluate` for an ONFH model on a labelled DICOM folder."""
    from hiprouter.inference.models import SYNTHETIC_DISCLAIMER

    model = OnfhModel.load(model_dir, device)
    rows, skipped = read_head_labels(labels_csv)
    for reason, count in skipped.items():
        log(f"skipped {count} rows: {reason}")
    records = assess_heads(model, rows, data_dir, workers)
    staging = model.normative.staging  # type: ignore[union-attr]
    metrics = summarise(records, staging.bands, n_boot)
    confidence, correct = hip_stage_answers(stage_answers(records, rows), staging)
    metrics["selective"] = selective_stages(
        confidence, correct, float(model.card.abstention.get("min_confidence", 0.0)))
    info = model.info
    metrics["model"] = {"name": info.name, "version": info.version,
                        "architecture": info.architecture, "device_uid": info.device_uid,
                        "synthetic_demo": info.synthetic_demo}
    note = SYNTHETIC_DISCLAIMER if info.synthetic_demo else ""
    title = f"{info.name} {info.version} on {Path(data_dir).name} ({Path(labels_csv).name})"
    return metrics, write_report(metrics, records, out_dir, title, note, staging.thresholds)
