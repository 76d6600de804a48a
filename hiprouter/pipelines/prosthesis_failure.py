"""Kind `prosthesis_failure` (seed 000, Hip-Net): why a total hip arthroplasty fails.

A cascade on the hips the hardware pipeline calls THA or THA with additional fixation. Per
hip, the AP view(s) and the lateral view(s) of that hip in the study are fused by a siamese
dual-view model (inference/dualview.py; an ensemble of several averages): five causes of
failure (periprosthetic joint infection, aseptic loosening, dislocation, periprosthetic
fracture, polyethylene wear) or none detected. A hip with only an AP view is assessed from
the AP alone and marked single-view ("AP only" in the report); a hip with only a lateral
view is not assessed (the model needs an AP).

Each finding carries the classification, the class activation map of the predicted cause
for every view (each view its own map, from that view's half of the head), and a
POLYLINE around the hot area of the AP map (a POINT at the hip when no failure is found),
which the SR references and the SC outlines.

Codes: no SNOMED CT concept matching these classes exactly was verified, so all use the
private scheme 99HIPAI. Triage (the vocabulary's meaning; `triage:` overrides it):
dislocation and periprosthetic fracture HIGH, infection and loosening MEDIUM.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from hiprouter.config import RunsOn
from hiprouter.findings import (
    Classification,
    Finding,
    FindingClass,
    Laterality,
    ModelInfo,
    PipelineResult,
    Region,
    Vocabulary,
)
from hiprouter.inference.dualview import AP_VIEWS, LATERAL_VIEWS, DualViewEnsemble
from hiprouter.inference.laterality import HipCrop
from hiprouter.inference.models import ModelError, demo_model_dir
from hiprouter.inference.study import StudyInput
from hiprouter.pipelines.base import (
    VIEW_NAMES,
    ConfigPath,
    Inputs,
    KindContext,
    PipelineKind,
    PipelineOptions,
    Target,
    crop_heat_maps,
    views_qualifier,
)

_P = FindingClass.private

PROSTHESIS_FAILURE = Vocabulary((
    _P("no_failure", "No prosthesis failure detected", "PF000",
       "No total hip arthroplasty failure detected", negative=True),
    _P("infection", "Periprosthetic joint infection", "PF001", triage="MEDIUM"),
    _P("loosening", "Aseptic loosening", "PF002", "Aseptic loosening of hip prosthesis",
       triage="MEDIUM"),
    _P("dislocation", "Dislocation", "PF003", "Dislocation of total hip arthroplasty",
       triage="HIGH"),
    _P("periprosthetic_fracture", "Periprosthetic fracture", "PF004",
       "Periprosthetic fracture of femur", triage="HIGH"),
    _P("wear", "Polyethylene wear", "PF005", "Polyethylene liner wear"),
))
"""The 5 causes of THA failure of seed 000 and the negative class, in model output order
(the `failure` column of the synthetic labels: `none` is `no_failure`)."""

THA_CLASSES = ["tha", "tha_with_fixation"]
SINGLE_VIEW = "AP only"


class ProsthesisFailureOptions(PipelineOptions):
    """``pipelines.<name>.*`` of a prosthesis_failure pipeline."""

    models: list[ConfigPath] = []
    """Dual-view model folders (card.yaml + weights); several make an ensemble (the seed
    uses 4); a folder without a card whose sub-folders hold models is such an ensemble.
    Empty: the bundled demo, models/prosthesis_failure-demo."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    runtime: Literal["auto", "torch", "onnx"] = "auto"
    batch_size: int = Field(8, ge=1)
    heatmaps: bool = True
    modalities: list[str] = ["CR", "DX"]
    min_confidence: float | None = Field(None, ge=0, le=1)
    """Below this fused probability a finding is indeterminate (None: the model card's
    abstention.min_confidence, else never)."""
    ood_detection: bool = True
    region_level: float = Field(0.5, gt=0, lt=1)
    """The outline on the AP image encloses the part of the AP map at or above this
    fraction of its peak (the connected area around the peak)."""


class ProsthesisFailureKind(PipelineKind):
    """Classifies the failure of each THA from its AP and lateral views."""

    kind = "prosthesis_failure"
    description = ("THA failure per hip (seed 000, Hip-Net): infection, loosening, "
                   "dislocation, periprosthetic fracture, wear or none; AP + lateral fused "
                   "(dual-view ensemble), a probability map per view, outline on the AP")
    Options: ClassVar[type[PipelineOptions]] = ProsthesisFailureOptions
    options: ProsthesisFailureOptions
    inputs = Inputs(views=frozenset(AP_VIEWS + LATERAL_VIEWS))
    default_runs_on = RunsOn(pipeline="hardware", classes=THA_CLASSES)
    label_set: ClassVar[str] = "prosthesis_failure"
    """The models' label set (subclasses of the kind keep reading these models)."""
    label_column: ClassVar[str] = "failure"
    label_aliases: ClassVar[dict[str, str]] = {"none": "no_failure"}

    def __init__(self, context: KindContext, options: PipelineOptions) -> None:
        super().__init__(context, options)
        dirs = list(self.options.models) or [demo_model_dir(self.label_set)]
        self.ensemble = DualViewEnsemble.from_dirs(dirs, self.options.device,
                                                   self.options.runtime,
                                                   self.options.batch_size)
        for card in self.ensemble.cards:
            if card.label_set != self.label_set:
                raise ModelError(f"pipelines.{self.name}: {card.name} is a {card.label_set!r} "
                                 f"model; kind {self.kind!r} needs {self.label_set!r} models")
        self._vocabulary = self.ensemble.cards[0].vocabulary_over(self.default_vocabulary())

    @classmethod
    def default_vocabulary(cls) -> Vocabulary:
        return PROSTHESIS_FAILURE

    def vocabulary(self) -> Vocabulary:
        return self._vocabulary

    def model_info(self) -> ModelInfo:
        return self.ensemble.info

    def modalities(self) -> Sequence[str]:
        return tuple(self.options.modalities)

    @property
    def min_confidence(self) -> float:
        if self.options.min_confidence is not None:
            return self.options.min_confidence
        return float(self.ensemble.card_value("abstention", "min_confidence", 0.0))

    def run(self, study: StudyInput, targets: Sequence[Target] | None) -> PipelineResult:
        result = self.empty_result()
        for card in self.ensemble.cards:
            for key, value in card.triage_thresholds.items():
                result.triage_thresholds.setdefault(key, float(value))
        mods = {m.upper() for m in self.options.modalities}
        views = self.inputs.views or frozenset()
        for uid, image in study.images.items():
            if image.modality not in mods:
                result.not_assessed[uid] = (f"modality {image.modality} is not one this model "
                                            f"accepts ({', '.join(sorted(mods))})")
            elif image.view not in views:
                result.not_assessed[uid] = f"{VIEW_NAMES[image.view]} is not read by {self.name}"
        crops = study.crops(views, mods)
        for side, hip_crops in _hips(crops, targets):
            started = time.perf_counter()
            finding = self._finding(side, hip_crops, study)
            finding.latency_ms = (time.perf_counter() - started) * 1000.0
            result.findings.append(finding)
        return result

    def _finding(self, side: Laterality, crops: list[tuple[str, HipCrop]],
                 study: StudyInput) -> Finding:
        ap = [(u, c) for u, c in crops if c.view in AP_VIEWS]
        lateral = [(u, c) for u, c in crops if c.view in LATERAL_VIEWS]
        uids = list(dict.fromkeys(u for u, _ in ap + lateral))
        finding = Finding(pipeline=self.name, laterality=side, source_sop_uids=uids,
                          model=self.model_info())
        finding.qualifiers["views"] = views_qualifier(study, ap + lateral, " + ")
        keys = self.ensemble.classes
        if not ap:
            finding.classification = Classification(
                predicted=next((fc.key for fc in self._vocabulary if fc.negative), keys[0]),
                probability=0.0, probabilities={k: 0.0 for k in keys}, status="not_assessed",
                reason="no AP view of this hip (the dual-view model needs an AP; "
                       "a lateral alone is not assessed)")
            top, left, bottom, right = lateral[0][1].box
            finding.regions = [Region(lateral[0][0], "POINT",
                                      np.array([[(left + right) / 2, (top + bottom) / 2]]),
                                      label="hip")]
            return finding
        pred = self.ensemble.predict([c.pixels for _, c in ap], [c.pixels for _, c in lateral],
                                     heatmaps=self.options.heatmaps)
        best = int(pred.probabilities.argmax())
        classification = Classification(
            predicted=keys[best], probability=float(pred.probabilities[best]),
            probabilities={k: float(v) for k, v in zip(keys, pred.probabilities, strict=True)})
        if self.options.ood_detection and pred.ood:
            threshold = self.ensemble.card_value("ood", "threshold")
            classification.status = "not_assessed"
            classification.reason = (
                f"image unlike the training data (out-of-distribution score "
                f"{pred.ood_score:.2f} above {float(threshold):.2f})")
        elif classification.probability < self.min_confidence:
            classification.status = "indeterminate"
            classification.reason = (f"confidence {classification.probability:.2f} below "
                                     f"{self.min_confidence:.2f}")
        finding.classification = classification
        if pred.single_view:
            finding.qualifiers["single_view"] = SINGLE_VIEW
            finding.qualifiers["label"] = SINGLE_VIEW
        finding.heatmaps = crop_heat_maps(
            study, [(uid, crop, crop_map) for (uid, crop), crop_map in
                    [*zip(ap, pred.ap_maps, strict=True),
                     *zip(lateral, pred.lateral_maps, strict=True)]],
            classification.predicted)
        positive = not self._vocabulary.is_negative(classification.predicted)
        ap_uid, ap_crop = ap[0]
        ap_map = pred.ap_maps[0]
        outline = (hot_outline(ap_map, ap_crop.box, self.options.region_level)
                   if positive and classification.status == "assessed" and ap_map is not None
                   else None)
        if outline is not None:
            finding.regions = [Region(ap_uid, "POLYLINE", outline,
                                      label=self._vocabulary.display(classification.predicted))]
        else:
            top, left, bottom, right = ap_crop.box
            finding.regions = [Region(ap_uid, "POINT",
                                      np.array([[(left + right) / 2, (top + bottom) / 2]]),
                                      label="hip")]
        return finding


def _hips(crops: list[tuple[str, HipCrop]], targets: Sequence[Target] | None
          ) -> list[tuple[Laterality, list[tuple[str, HipCrop]]]]:
    """The crops of each hip to assess: by side (every view of it), or one image for a hip
    of unknown side; only the targeted hips of a cascade."""
    groups: dict[str, list[tuple[str, HipCrop]]] = {}
    for uid, crop in crops:
        key = crop.laterality if crop.laterality in ("R", "L") else f"U:{uid}"
        groups.setdefault(key, []).append((uid, crop))
    out: list[tuple[Laterality, list[tuple[str, HipCrop]]]] = []
    for key in sorted(groups, key=lambda k: ("RLU".index(k[0]), k)):
        side: Laterality = key[0]  # type: ignore[assignment]
        if targets is not None and not any(
                t.laterality == side and (side != "U" or key[2:] in t.source_sop_uids)
                for t in targets):
            continue
        out.append((side, groups[key]))
    return out


def hot_outline(crop_map: np.ndarray, box: tuple[int, int, int, int],
                level: float = 0.5) -> np.ndarray | None:
    """A closed outline (N, 2) of (column, row) in source pixels around the hot area of a
    [0, 1] map in crop geometry: the convex hull of the connected region at or above
    `level` x peak that holds the peak. None when the map is empty."""
    from scipy import ndimage
    from scipy.spatial import ConvexHull, QhullError

    peak = float(crop_map.max()) if crop_map.size else 0.0
    if peak <= 0:
        return None
    labels, _ = ndimage.label(crop_map >= level * peak)
    row, col = np.unravel_index(int(crop_map.argmax()), crop_map.shape)
    rows, cols = np.nonzero(labels == labels[row, col])
    top, left = box[0], box[1]
    # pixel corners, so a region one pixel wide still has an area
    pts = np.concatenate([np.stack([cols + dx, rows + dy], axis=1)
                          for dx in (0, 1) for dy in (0, 1)]).astype(np.float64)
    try:
        hull = ConvexHull(pts)
    except QhullError:
        return None
    outline = pts[hull.vertices]
    return outline + np.array([left, top], dtype=np.float64)


def bundled_model() -> Path:
    """The bundled demo (an ensemble folder) of this kind."""
    return demo_model_dir(ProsthesisFailureKind.kind)
