"""Choose a trained model's operating points again on its validation hips: the triage
thresholds at another sensitivity (`retriage`), the abstention threshold at another target
accuracy (`reabstain`).

`hiprouter train --triage-sensitivity` picks each triage class's threshold on the validation
split. With few validation positives a high target (0.95) can land on a threshold so low
that most hips are flagged; a site (or the demo) may prefer another operating point. This
re-runs the same choice on the same validation hips (the run's `split.csv`), with the
model as the pipeline runs it (calibrated, views of a hip fused), and rewrites the card's
`triage_thresholds` and `evaluation.triage_validation`. The weights are not touched.

Likewise `min_confidence` (below it a finding is "indeterminate"): training picks the lowest
calibrated confidence whose accepted validation hips reach `--abstain-accuracy`; a stricter
target trades coverage for fewer confident wrong sentences.

`recalibrate` fits the temperature and then `min_confidence` on labelled folders that are
not the training run's (a model trained before calibration existed, or a site calibrating
an installed model on its own labelled studies before it goes live).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hiprouter.training.dataset import LabelledHip


def folder_rows(folders: Sequence[Path], classes: Sequence[str], label_set: str,
                column: str = "") -> list[LabelledHip]:
    """The labelled hips of folders with a labels.csv (absolute image paths), in `column`
    (default: the label set's) with the label set's aliases."""
    from dataclasses import replace

    from hiprouter.training.dataset import label_spec, read_labels

    spec = label_spec(label_set, classes)
    rows: list[LabelledHip] = []
    for folder in folders:
        got = read_labels(Path(folder) / "labels.csv", classes, column or spec.column,
                          spec.aliases)
        rows.extend(replace(r, path=str((Path(folder) / r.path).resolve())) for r in got)
    return rows


def validation_rows(split_csv: Path) -> list[LabelledHip]:
    """The validation hips of a training run's split.csv (absolute image paths)."""
    with Path(split_csv).open(newline="", encoding="utf-8") as fh:
        return [LabelledHip(r["path"], r["study_uid"], r["patient_id"], r["laterality"],
                            r["label"]) for r in csv.DictReader(fh) if r["split"] == "val"]


def _validation_hips(model_dir: Path, split_csv: Path, cache_dir: Path | None, device: str
                     ) -> tuple[Any, Any, np.ndarray, np.ndarray]:
    """(card, classifier, labels, calibrated probabilities) of the run's validation hips,
    with the model as the pipeline runs it (calibrated, TTA, views of a hip fused)."""
    from hiprouter.training.evaluate import fuse_predictions

    card, clf, keys, labels, preds = _predictions(model_dir, validation_rows(split_csv),
                                                  cache_dir, device, str(split_csv))
    y_hip, p_hip, _ = fuse_predictions(keys, labels, preds)
    return card, clf, y_hip, p_hip


def _predictions(model_dir: Path, rows: Sequence[LabelledHip], cache_dir: Path | None,
                 device: str, source: str) -> tuple[Any, Any, list, list[int], list]:
    """(card, classifier, hip keys, labels, per-crop predictions) of labelled hips."""
    from hiprouter.inference.classifier import CropClassifier
    from hiprouter.inference.models import read_card
    from hiprouter.training.dataset import load_crops

    card = read_card(Path(model_dir))
    clf = CropClassifier.from_dirs([Path(model_dir)], device)
    rows = [r for r in rows if r.label in clf.classes]
    if not rows:
        raise ValueError(f"{source}: no labelled hips with this model's classes")
    images, used, _ = load_crops(rows, Path("/"), card.input_size, cache_dir)
    preds = clf.predict([im.astype(np.float32) / 255.0 for im in images], heatmaps=False)
    keys = [(rows[i].study_uid, rows[i].laterality) for i in used]
    labels = [clf.classes.index(rows[i].label) for i in used]
    return card, clf, keys, labels, preds


def retriage(model_dir: Path, split_csv: Path, sensitivity: float,
             triage_classes: Sequence[str] | None = None, cache_dir: Path | None = None,
             device: str = "cpu") -> dict[str, Any]:
    """New thresholds at `sensitivity` on the run's validation hips; written into the card."""
    from hiprouter.inference.models import write_card
    from hiprouter.training.calibration import triage_thresholds
    from hiprouter.training.dataset import label_spec

    if not 0 < sensitivity <= 1:
        raise ValueError(f"sensitivity must be in (0, 1], not {sensitivity}")
    model_dir = Path(model_dir)
    card, clf, y_hip, p_hip = _validation_hips(model_dir, split_csv, cache_dir, device)
    wanted = list(triage_classes or card.triage_thresholds
                  or label_spec(card.label_set, clf.classes).triage)
    unknown = [k for k in wanted if k not in clf.classes]
    if unknown:
        raise ValueError(f"not classes of {card.name}: {', '.join(unknown)}")
    info = triage_thresholds(p_hip, y_hip, clf.classes, wanted, sensitivity)
    missing = [k for k in wanted if k not in info]
    if missing:
        raise ValueError(f"no validation hips of {', '.join(missing)}: no threshold")
    card.triage_thresholds = {k: v["threshold"] for k, v in info.items()}
    trained_at = (card.training or {}).get("triage_sensitivity")
    card.evaluation["triage_validation"] = {
        **info, "target_sensitivity": sensitivity,
        "chosen_on": f"validation split ({len(y_hip)} hips, {Path(split_csv).name})",
        "chosen_by": "hiprouter models retriage"
                     + (f" (training chose them at {trained_at})" if trained_at else "")}
    write_card(model_dir, card)
    return info


def reabstain(model_dir: Path, split_csv: Path, accuracy: float,
              cache_dir: Path | None = None, device: str = "cpu") -> dict[str, Any]:
    """A new `min_confidence` whose accepted validation hips reach `accuracy`; written into
    the card's `abstention` (the previous choice kept under `previous`)."""
    from hiprouter.inference.models import write_card
    from hiprouter.training.calibration import choose_min_confidence

    if not 0 < accuracy <= 1:
        raise ValueError(f"accuracy must be in (0, 1], not {accuracy}")
    model_dir = Path(model_dir)
    card, _, y_hip, p_hip = _validation_hips(model_dir, split_csv, cache_dir, device)
    choice = choose_min_confidence(p_hip, y_hip, accuracy)
    card.abstention = with_previous({
        **choice, "target_accuracy": accuracy,
        "chosen_on": f"validation split ({len(y_hip)} hips, {Path(split_csv).name})",
        "rule": "smallest calibrated confidence whose accepted validation hips reach the "
                "target accuracy",
        "chosen_by": "hiprouter models reabstain"}, card.abstention)
    write_card(model_dir, card)
    return choice


def recalibrate(model_dir: Path, folders: Sequence[Path], accuracy: float,
                cache_dir: Path | None = None, device: str = "cpu") -> dict[str, Any]:
    """Fit the temperature on the labelled hips of `folders` (NLL of the model's
    uncalibrated logits: per crop, or per AP x lateral pair of a dual-view model), then
    choose `min_confidence` at `accuracy` on the same hips with it; both written into the
    card (the previous choices kept under `previous`), the weights untouched. Returns
    {"calibration": ..., "abstention": ...}."""
    from hiprouter.inference.models import read_card

    if not 0 < accuracy <= 1:
        raise ValueError(f"accuracy must be in (0, 1], not {accuracy}")
    if not folders:
        raise ValueError("no labelled folders to calibrate on")
    model_dir = Path(model_dir)
    if not (model_dir / "card.yaml").is_file() and any(model_dir.glob("member-*/card.yaml")):
        raise ValueError(f"{model_dir} is an ensemble (member-*/): recalibrate one model "
                         "directory at a time")
    card = read_card(model_dir)
    if card.task == "onfh_normative":
        return {"calibration": None,
                "abstention": _onfh_abstention(model_dir, folders, accuracy, device)}
    if card.task == "dual_view_classification":
        logits, labels, groups = _dual_view_logits(model_dir, folders, cache_dir, device)
        unit = "AP x lateral pairs"
    elif card.task in ("", "classification"):
        logits, labels, groups = _crop_logits(model_dir, card, folders, cache_dir, device)
        unit = "crops"
    else:
        raise ValueError(f"{card.name}: recalibrate fits classifiers (single- or dual-view) "
                         f"and ONFH models, not a {card.task} model")
    return _write_choices(model_dir, card, folders, accuracy, logits, labels, groups, unit)


def _crop_logits(model_dir: Path, card: Any, folders: Sequence[Path], cache_dir: Path | None,
                 device: str) -> tuple[np.ndarray, list[int], list[list[int]]]:
    """Per-crop logits of a single-view classifier (its `card`), their labels, and the crops
    of each hip (views of a hip are averaged, as at run time)."""
    from hiprouter.training.evaluate import hip_groups

    column = str((card.training or {}).get("label_column") or "")  # the column it learnt
    rows = folder_rows(folders, card.classes, card.label_set, column)
    _, clf, keys, labels, preds = _predictions(
        model_dir, rows, cache_dir, device, ", ".join(str(f) for f in folders))
    # the card's probabilities are softmax(logits / T): T log p are the logits (up to a
    # constant per crop, which softmax ignores; with test-time augmentation the log of the
    # averaged probabilities stands in for them, as in `evaluate`)
    old_t = float(clf.members[0].temperature)
    logits = old_t * np.log(np.maximum(np.stack([p.probabilities for p in preds]), 1e-30))
    return logits, labels, hip_groups(keys)


def _dual_view_logits(model_dir: Path, folders: Sequence[Path], cache_dir: Path | None,
                      device: str) -> tuple[np.ndarray, list[int], list[list[int]]]:
    """Per-pair logits of a dual-view model (every AP x lateral pair of a hip, or each AP
    alone), their labels, and the pairs of each hip, through the run-time code."""
    from hiprouter.inference.dualview import DualViewEnsemble
    from hiprouter.training.dualview import load_hips

    ens = DualViewEnsemble.from_dirs([Path(model_dir)], device)
    if len(ens.models) != 1:
        raise ValueError(f"{model_dir}: {len(ens.models)} members; recalibrate one model "
                         "directory at a time")
    model = ens.models[0]
    column = str((model.card.training or {}).get("label_column") or "")
    rows: list[np.ndarray] = []
    labels: list[int] = []
    groups: list[list[int]] = []
    for folder in folders:
        classes, images, hips = load_hips(Path(folder), Path(folder) / "labels.csv",
                                          model.card.label_set, model.card.input_size,
                                          cache_dir, column, log=lambda _: None,
                                          crop=model.crop)
        if classes != ens.classes:
            raise ValueError(f"{folder}: classes {classes} differ from the model's "
                             f"{ens.classes}")
        crops = images.astype(np.float32) / 255.0
        for hip in hips:
            pred = ens.predict([crops[k] for k in hip.ap], [crops[k] for k in hip.lateral],
                               heatmaps=False)
            pairs = np.asarray(pred.logits[0], dtype=np.float64)
            groups.append(list(range(len(rows), len(rows) + len(pairs))))
            rows.extend(pairs)
            labels.extend([hip.label] * len(pairs))
    return np.stack(rows), labels, groups


def _onfh_abstention(model_dir: Path, folders: Sequence[Path], accuracy: float,
                     device: str) -> dict[str, Any]:
    """`min_confidence` of an ONFH model at `accuracy` on labelled folders (`onfh_answers`;
    the band thresholds and probabilities are the card's, fitted in training; there is no
    temperature). Written into the card's `abstention`."""
    from hiprouter.inference.models import read_card, write_card
    from hiprouter.inference.onfh import OnfhModel
    from hiprouter.training.calibration import min_confidence_of

    model = OnfhModel.load(model_dir, device, runtime="auto")
    confidence, correct = onfh_answers(model, folders)
    abstention = _abstention(min_confidence_of(confidence, correct, accuracy), folders,
                             len(correct), "stage probability")
    card = read_card(model_dir)
    card.abstention = with_previous(abstention, card.abstention)
    write_card(model_dir, card)
    return abstention


def onfh_answers(model: Any, folders: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Per assessed hip of labelled folders, as the ONFH kind reports it: the probability
    of its stage band and whether the band is the labelled grade's
    (`onfh_eval.hip_stage_answers`). Hips without an assessed head are left out (the kind
    says "not assessed" there, with no stage to abstain from)."""
    from hiprouter.training.onfh_data import read_head_labels
    from hiprouter.training.onfh_eval import assess_heads, hip_stage_answers, stage_answers

    staging = model.normative.staging if model.normative is not None else None
    if staging is None:
        raise ValueError("no stage bands in the card (an untrained normative model)")
    hips: dict[tuple[str, str, str], tuple[int, list[float]]] = {}
    for folder in folders:
        rows, _ = read_head_labels(Path(folder) / "labels.csv")
        records = assess_heads(model, rows, Path(folder), progress=False)
        hips.update(stage_answers(records, rows, str(folder)))
    if not hips:
        raise ValueError("no femoral head of these folders could be assessed")
    return hip_stage_answers(hips, staging)


def _write_choices(model_dir: Path, card: Any, folders: Sequence[Path], accuracy: float,
                   logits: np.ndarray, labels: Sequence[int], groups: list[list[int]],
                   unit: str) -> dict[str, Any]:
    """Fit the temperature on `logits`, choose `min_confidence` on the hips (`groups` of
    rows, probabilities averaged as at run time) and write both into `card`."""
    from hiprouter.inference.models import write_card
    from hiprouter.training.calibration import (
        choose_min_confidence,
        ece,
        fit_temperature,
        rounded,
        softmax,
    )

    temperature = fit_temperature(logits, labels)
    y_hip = np.array([labels[g[0]] for g in groups], dtype=int)

    def per_hip(t: float) -> np.ndarray:
        probs = softmax(logits, t)
        return np.stack([probs[g].mean(axis=0) for g in groups])

    p_raw, p_hip = per_hip(1.0), per_hip(temperature)
    where = ", ".join(Path(f).name for f in folders)
    calibration = {"temperature": round(temperature, 4), "method": "temperature scaling",
                   "fitted_on": f"{where} ({len(labels)} {unit}, NLL)",
                   "ece_before": rounded(ece(p_raw, y_hip)),
                   "ece_after": rounded(ece(p_hip, y_hip)),
                   "ece_measured_on": f"the same hips ({len(y_hip)}; no held-out set)",
                   "chosen_by": "hiprouter models recalibrate"}
    abstention = _abstention(choose_min_confidence(p_hip, y_hip, accuracy), folders,
                             len(y_hip), "calibrated confidence")
    card.calibration = with_previous(calibration, card.calibration)
    card.abstention = with_previous(abstention, card.abstention)
    write_card(model_dir, card)
    return {"calibration": calibration, "abstention": abstention}


def _abstention(choice: dict[str, Any], folders: Sequence[Path], hips: int,
                confidence: str) -> dict[str, Any]:
    """The card's `abstention` section for a `min_confidence` chosen by `recalibrate`."""
    where = ", ".join(Path(f).name for f in folders)
    return {**choice, "chosen_on": f"{where} ({hips} hips)",
            "rule": f"smallest {confidence} whose accepted hips reach the target accuracy",
            "chosen_by": "hiprouter models recalibrate"}


def with_previous(new: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    """A card section chosen again: `new`, with the section it replaces (less its own
    history) kept under `previous`."""
    before = {k: v for k, v in (old or {}).items() if k != "previous"}
    return {**new, **({"previous": before} if before else {})}
