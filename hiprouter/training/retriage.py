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
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hiprouter.training.dataset import LabelledHip


def validation_rows(split_csv: Path) -> list[LabelledHip]:
    """The validation hips of a training run's split.csv (absolute image paths)."""
    with Path(split_csv).open(newline="", encoding="utf-8") as fh:
        return [LabelledHip(r["path"], r["study_uid"], r["patient_id"], r["laterality"],
                            r["label"]) for r in csv.DictReader(fh) if r["split"] == "val"]


def _validation_hips(model_dir: Path, split_csv: Path, cache_dir: Path | None, device: str
                     ) -> tuple[Any, Any, np.ndarray, np.ndarray]:
    """(card, classifier, labels, calibrated probabilities) of the run's validation hips,
    with the model as the pipeline runs it (calibrated, TTA, views of a hip fused)."""
    from hiprouter.inference.classifier import CropClassifier
    from hiprouter.inference.models import read_card
    from hiprouter.training.dataset import load_crops
    from hiprouter.training.evaluate import fuse_predictions

    card = read_card(Path(model_dir))
    clf = CropClassifier.from_dirs([Path(model_dir)], device)
    rows = [r for r in validation_rows(split_csv) if r.label in clf.classes]
    if not rows:
        raise ValueError(f"{split_csv}: no validation rows with this model's classes")
    images, used, _ = load_crops(rows, Path("/"), card.input_size, cache_dir)
    preds = clf.predict([im.astype(np.float32) / 255.0 for im in images], heatmaps=False)
    keys = [(rows[i].study_uid, rows[i].laterality) for i in used]
    labels = [clf.classes.index(rows[i].label) for i in used]
    y_hip, p_hip, _ = fuse_predictions(keys, labels, preds)
    return card, clf, y_hip, p_hip


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
    previous = {k: v for k, v in (card.abstention or {}).items() if k != "previous"}
    card.abstention = {
        **choice, "target_accuracy": accuracy,
        "chosen_on": f"validation split ({len(y_hip)} hips, {Path(split_csv).name})",
        "rule": "smallest calibrated confidence whose accepted validation hips reach the "
                "target accuracy",
        "chosen_by": "hiprouter models reabstain",
        **({"previous": previous} if previous else {})}
    write_card(model_dir, card)
    return choice
