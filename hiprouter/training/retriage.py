"""Choose a trained model's triage thresholds again, at another validation sensitivity.

`hiprouter train --triage-sensitivity` picks each triage class's threshold on the validation
split. With few validation positives a high target (0.95) can land on a threshold so low
that most hips are flagged; a site (or the demo) may prefer another operating point. This
re-runs the same choice on the same validation hips (the run's `split.csv`), with the
model as the pipeline runs it (calibrated, views of a hip fused), and rewrites the card's
`triage_thresholds` and `evaluation.triage_validation`. The weights are not touched.
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


def retriage(model_dir: Path, split_csv: Path, sensitivity: float,
             triage_classes: Sequence[str] | None = None, cache_dir: Path | None = None,
             device: str = "cpu") -> dict[str, Any]:
    """New thresholds at `sensitivity` on the run's validation hips; written into the card."""
    from hiprouter.inference.classifier import CropClassifier
    from hiprouter.inference.models import read_card, write_card
    from hiprouter.training.calibration import triage_thresholds
    from hiprouter.training.dataset import label_spec, load_crops
    from hiprouter.training.evaluate import fuse_predictions

    if not 0 < sensitivity <= 1:
        raise ValueError(f"sensitivity must be in (0, 1], not {sensitivity}")
    model_dir = Path(model_dir)
    card = read_card(model_dir)
    clf = CropClassifier.from_dirs([model_dir], device)
    wanted = list(triage_classes or card.triage_thresholds
                  or label_spec(card.label_set, clf.classes).triage)
    unknown = [k for k in wanted if k not in clf.classes]
    if unknown:
        raise ValueError(f"not classes of {card.name}: {', '.join(unknown)}")
    rows = [r for r in validation_rows(split_csv) if r.label in clf.classes]
    if not rows:
        raise ValueError(f"{split_csv}: no validation rows with this model's classes")
    images, used, _ = load_crops(rows, Path("/"), card.input_size, cache_dir)
    preds = clf.predict([im.astype(np.float32) / 255.0 for im in images], heatmaps=False)
    keys = [(rows[i].study_uid, rows[i].laterality) for i in used]
    labels = [clf.classes.index(rows[i].label) for i in used]
    y_hip, p_hip, _ = fuse_predictions(keys, labels, preds)
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
