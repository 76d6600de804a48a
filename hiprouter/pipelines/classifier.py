"""A per-hip image classifier as a pipeline kind: the base of hardware, fracture and others.

Per hip: the crops of every view the kind reads -> the model ensemble (calibrated
probabilities, CAM, out-of-distribution score) -> views of the same hip fused (mean
probability over the familiar crops) -> a `Finding` with

- a `Classification`: assessed; indeterminate when the fused probability is below the
  card's (or the options') minimum confidence; not assessed when every crop of the hip is
  out of distribution (the reason names the score and the threshold);
- a `HeatMap` per source image (CAM of the predicted class in source geometry);
- a `Region`: a POINT at the hip on its first source image (the CAM peak inside the hip's
  crop, else the crop centre), which viewers draw.

Subclasses set ``kind``, ``description`` and `default_vocabulary()`; the model card may
describe its classes itself (a site's own catalogue).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from hiprouter.findings import (
    Classification,
    Finding,
    Laterality,
    ModelInfo,
    PipelineResult,
    Region,
    Vocabulary,
)
from hiprouter.inference.cam import CropHeat
from hiprouter.inference.classifier import CropClassifier, CropPrediction
from hiprouter.inference.laterality import HipCrop
from hiprouter.inference.models import ModelError, demo_model_dir
from hiprouter.inference.study import StudyInput
from hiprouter.pipelines.base import (
    VIEW_NAMES,
    ConfigPath,
    KindContext,
    PipelineKind,
    PipelineOptions,
    Target,
    crop_heat_maps,
    views_qualifier,
)

AP_VIEWS = ("ap_pelvis", "ap_hip")


class ClassifierOptions(PipelineOptions):
    """Options of every classifier kind (``pipelines.<name>.*``)."""

    models: list[ConfigPath] = []
    """Model folders (card.yaml + weights); several make an ensemble (probabilities are
    averaged). Empty: the kind's bundled demo model (models/<kind>-demo)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    runtime: Literal["auto", "torch", "onnx"] = "auto"
    batch_size: int = Field(8, ge=1)
    heatmaps: bool = True
    modalities: list[str] = ["CR", "DX"]
    """Modalities the model accepts; others are not assessed, with the reason."""
    min_confidence: float | None = Field(None, ge=0, le=1)
    """Below this fused probability a finding is indeterminate (None: the model card's
    calibrated value, else 0: never)."""
    ood_detection: bool = True
    """Mark crops whose out-of-distribution score exceeds the card's threshold as not
    assessed (only when the card has a threshold)."""
    min_age_years: float | None = Field(None, ge=0, le=150)
    """Intended-use gate: images of patients younger than this are not assessed (age from
    PatientAge, else PatientBirthDate and the study/series/acquisition date). Unknown age:
    the image decides (the out-of-distribution score)."""


class ClassifierKind(PipelineKind):
    """Classify each hip with a model ensemble; subclasses name the kind and its classes."""

    Options: ClassVar[type[PipelineOptions]] = ClassifierOptions
    options: ClassifierOptions
    label_column: ClassVar[str] = ""
    """Column of a labels CSV holding this kind's classes (empty: the kind's name)."""
    label_aliases: ClassVar[dict[str, str]] = {}
    """Values of that column meaning a class key, e.g. ``none`` -> ``no_fracture``."""

    def __init__(self, context: KindContext, options: PipelineOptions) -> None:
        super().__init__(context, options)
        dirs = list(self.options.models) or [demo_model_dir(self.kind)]
        self.classifier = CropClassifier.from_dirs(dirs, self.options.device,
                                                   self.options.runtime,
                                                   self.options.batch_size)
        for card in self.classifier.cards:
            if card.label_set != self.kind:
                raise ModelError(f"pipelines.{self.name}: {card.name} is a {card.label_set!r} "
                                 f"model; kind {self.kind!r} needs {self.kind!r} models")
        self._vocabulary = self.classifier.cards[0].vocabulary_over(self.default_vocabulary())

    @classmethod
    def default_vocabulary(cls) -> Vocabulary:
        """The classes the kind knows how to name (a card may add or override)."""
        raise NotImplementedError

    def vocabulary(self) -> Vocabulary:
        return self._vocabulary

    def model_info(self) -> ModelInfo:
        return self.classifier.info

    def modalities(self) -> Sequence[str]:
        return tuple(self.options.modalities)

    @property
    def min_confidence(self) -> float:
        if self.options.min_confidence is not None:
            return self.options.min_confidence
        return float(self.classifier.card_value("abstention", "min_confidence", 0.0))

    def triage_threshold(self, key: str) -> float | None:
        """The card's calibrated triage threshold of a class, if any."""
        for card in self.classifier.cards:
            if key in card.triage_thresholds:
                return float(card.triage_thresholds[key])
        return None

    def run(self, study: StudyInput, targets: Sequence[Target] | None) -> PipelineResult:
        started = time.perf_counter()
        result = self.empty_result()
        for key in self.classifier.classes:
            threshold = self.triage_threshold(key)
            if threshold is not None:
                result.triage_thresholds[key] = threshold
        views = self.inputs.views
        mods = {m.upper() for m in self.options.modalities}
        for uid, image in study.images.items():
            if image.modality not in mods:
                result.not_assessed[uid] = (f"modality {image.modality} is not one this model "
                                            f"accepts ({', '.join(sorted(mods))})")
            elif views is not None and image.view not in views:
                result.not_assessed[uid] = f"{VIEW_NAMES[image.view]} is not read by {self.name}"
            elif self.options.min_age_years is not None:
                age = patient_age_years(image.dataset)
                if age is not None and age < self.options.min_age_years:
                    result.not_assessed[uid] = (
                        f"patient younger than {self.options.min_age_years:g} years "
                        f"(age {age:.1f}); outside the model's intended use")
        crops = [(uid, c) for uid, c in study.crops(views, mods)
                 if uid not in result.not_assessed]
        if targets is not None:
            crops = [(uid, c) for uid, c in crops if _targeted(uid, c, targets)]
        preds = self.classifier.predict([c.pixels for _, c in crops],
                                        heatmaps=self.options.heatmaps)
        groups: dict[str, list[int]] = {}
        for i, (uid, crop) in enumerate(crops):
            key = crop.laterality if crop.laterality in ("R", "L") else f"U:{uid}:{i}"
            groups.setdefault(key, []).append(i)
        elapsed = (time.perf_counter() - started) * 1000.0
        for key, idx in sorted(groups.items(), key=lambda kv: ("RLU".index(kv[0][0]), kv[0])):
            side: Laterality = key if key in ("R", "L") else "U"  # type: ignore[assignment]
            result.findings.append(self._finding(
                side, [crops[i] for i in idx], [preds[i] for i in idx], study,
                elapsed / max(1, len(groups))))
        return result

    def _finding(self, side: Laterality, crops: list[tuple[str, HipCrop]],
                 preds: list[CropPrediction], study: StudyInput, latency_ms: float) -> Finding:
        uids = list(dict.fromkeys(uid for uid, _ in crops))
        familiar = [i for i, p in enumerate(preds)
                    if not (self.options.ood_detection and p.ood)]
        use = familiar or list(range(len(preds)))
        mean = np.mean([preds[i].probabilities for i in use], axis=0)
        best = int(mean.argmax())
        keys = self.classifier.classes
        classification = Classification(
            predicted=keys[best], probability=float(mean[best]),
            probabilities={k: float(v) for k, v in zip(keys, mean, strict=True)})
        if not familiar:
            worst = max(p.ood_score for p in preds)
            threshold = self.classifier.card_value("ood", "threshold")
            classification.status = "not_assessed"
            if threshold is not None and worst > float(threshold):
                classification.reason = (
                    f"image unlike the training data (out-of-distribution score {worst:.2f} "
                    f"above {float(threshold):.2f})")
            else:
                classification.reason = "no structure of a radiograph (blank image or noise)"
        elif classification.probability < self.min_confidence:
            classification.status = "indeterminate"
            classification.reason = (f"confidence {classification.probability:.2f} below "
                                     f"{self.min_confidence:.2f}")
        finding = Finding(pipeline=self.name, laterality=side, source_sop_uids=uids,
                          model=self.model_info(), classification=classification,
                          latency_ms=latency_ms)
        finding.scores["ood_score"] = float(max(p.ood_score for p in preds))
        finding.qualifiers["views"] = views_qualifier(study, crops)
        finding.heatmaps = crop_heat_maps(
            study, [(uid, crop, pred.heat) for (uid, crop), pred in zip(crops, preds,
                                                                         strict=True)],
            classification.predicted)
        positive = not self._vocabulary.is_negative(classification.predicted)
        crop_maps = [pred.heat for pred in preds] if positive else [None] * len(preds)
        finding.regions = [_point_at_hip(crops, crop_maps)]
        return finding


def patient_age_years(ds: Any) -> float | None:
    """The patient's age in years: PatientAge (nnnD/W/M/Y), else PatientBirthDate and the
    study (series, acquisition, content) date; None when unknown or implausible."""
    from datetime import date

    text = str(ds.get("PatientAge", "") or "").strip().upper()
    if len(text) >= 2 and text[:-1].isdigit() and text[-1] in "DWMY":
        per_year = {"D": 365.25, "W": 52.1775, "M": 12.0, "Y": 1.0}[text[-1]]
        return int(text[:-1]) / per_year

    def parse(value: object) -> date | None:
        v = str(value or "").strip()
        if len(v) < 8 or not v[:8].isdigit():
            return None
        try:
            return date(int(v[:4]), int(v[4:6]), int(v[6:8]))
        except ValueError:
            return None

    born = parse(ds.get("PatientBirthDate"))
    if born is None:
        return None
    for key in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        when = parse(ds.get(key))
        if when is not None:
            years = (when - born).days / 365.25
            return years if 0 <= years <= 150 else None
    return None


def _targeted(uid: str, crop: HipCrop, targets: Sequence[Target]) -> bool:
    for t in targets:
        if t.laterality in ("R", "L") and crop.laterality == t.laterality:
            return True
        if t.laterality == "U" and crop.laterality == "U" and uid in t.source_sop_uids:
            return True
    return False


def _point_at_hip(crops: list[tuple[str, HipCrop]],
                  crop_maps: Sequence[CropHeat | None]) -> Region:
    """A POINT on the hip's first AP image (else first image): the CAM peak in its crop
    (within `cam.PEAK_STEP` pixels) when its map is given (positive findings), else the
    crop's centre."""
    order = sorted(range(len(crops)), key=lambda i: crops[i][1].view not in AP_VIEWS)
    uid, crop = crops[order[0]]
    top, left, bottom, right = crop.box
    heat = crop_maps[order[0]]
    peak = heat.peak() if heat is not None else None
    if peak is not None:
        point = (left + peak[0], top + peak[1])
    else:
        point = ((left + right) / 2, (top + bottom) / 2)
    return Region(uid, "POINT", np.array([point]), label="hip")


def bundled_model(kind: str) -> Path:
    """The bundled demo model folder of a kind (for documentation and tests)."""
    return demo_model_dir(kind)
