"""Kind `onfh` (seed 002): osteonecrosis of the femoral head, per native hip on AP views.

Per hip, on each AP pelvis / AP hip image that shows it (hiprouter/inference/onfh.py):
femoral-head segmentation (locator and refiner U-Nets), the normalised head patch, the
Mahalanobis distance of its VAE latent mean from the healthy heads, its percentile among
healthy reference heads, and a stage band from distance thresholds calibrated on a
labelled validation set. Several views of a hip: the distance is their mean.

Findings (no DICOM here; the report stage builds SR, SC and SEG):

- `Classification`: the stage band (``onfh_0_1`` when the card found grades 0 and 1 not
  separable, else ``onfh_0`` / ``onfh_1``; ``onfh_2`` ... ``onfh_4``), its probability
  from the card's per-grade fits of the log distance; indeterminate below the card's (or
  the options') minimum confidence; not assessed when no head is found or it is mostly
  white in the display;
- `Measurement`: the distance and the percentile (UCUM "1");
- `Mask`: one per head and image ("Right femoral head"; the SEG's segment);
- `Region`: the head's outline as a POLYLINE per image (drawn on the SC, SCOORD in the SR);
- finding site femoral head with laterality; ``qualifiers["label"]`` puts the stage on
  the SC.

Cascade: by default it runs after `hardware` on hips without arthroplasty (``exclude``
tha, hemiarthroplasty, tha_with_fixation, post_infectious: no native head); the skipped
hips are audited. The default condition is optional: a rule that runs `onfh` without a
`hardware` pipeline runs it on every hip and its sentences say "hardware not checked"
(a prosthetic head that is white in the display is still refused, `max_saturated`, but
screws in a native head are not recognised). A `runs_on` written in the config is never
optional unless it says so.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator

from hiprouter.config import RunsOn
from hiprouter.findings import (
    ANATOMICAL_STRUCTURE,
    FEMORAL_HEAD,
    NO_UNITS,
    PRIVATE_SCHEME,
    Classification,
    Code,
    Finding,
    FindingClass,
    Laterality,
    Mask,
    Measurement,
    ModelInfo,
    PipelineResult,
    Region,
    Vocabulary,
)
from hiprouter.inference.laterality import HipCrop, image_left_is_patient_right
from hiprouter.inference.models import demo_model_dir
from hiprouter.inference.study import StudyInput
from hiprouter.pipelines.base import (
    VIEW_NAMES,
    ConfigPath,
    Inputs,
    KindContext,
    PipelineKind,
    PipelineOptions,
    Target,
    views_qualifier,
)

_P = FindingClass.private

ONFH = Vocabulary((
    _P("onfh_0_1", "No definite femoral head osteonecrosis", "ON001",
       "No definite femoral head osteonecrosis, stage 0-1",
       negative=True),
    _P("onfh_0", "No femoral head osteonecrosis", "ON000",
       "No femoral head osteonecrosis, stage 0", negative=True),
    _P("onfh_1", "Femoral head osteonecrosis", "ON010",
       "Femoral head osteonecrosis, estimated stage 1"),
    _P("onfh_2", "Femoral head osteonecrosis", "ON020",
       "Femoral head osteonecrosis, estimated stage 2"),
    _P("onfh_3", "Femoral head osteonecrosis", "ON030",
       "Femoral head osteonecrosis, estimated stage 3"),
    _P("onfh_4", "Femoral head osteonecrosis", "ON040",
       "Femoral head osteonecrosis, estimated stage 4"),
))
"""Stage bands (docs/synthetic-data.md: `onfh_grade` 0-4). A model card lists the bands it
estimates: ``onfh_0_1`` replaces ``onfh_0`` and ``onfh_1`` when the validation set did not
separate grades 0 and 1 (as in seed 002)."""

STAGE_TEXT = {"onfh_0_1": "0-1", "onfh_0": "0", "onfh_1": "1", "onfh_2": "2", "onfh_3": "3",
              "onfh_4": "4"}
DISTANCE = Code("ON101", PRIVATE_SCHEME, "Mahalanobis distance of femoral head from healthy "
                "reference")
PERCENTILE = Code("ON102", PRIVATE_SCHEME, "Percentile of distance among healthy reference "
                  "femoral heads")
ARTHROPLASTY = ["tha", "hemiarthroplasty", "tha_with_fixation", "post_infectious"]
SIDE_WORDS = {"R": "Right femoral head", "L": "Left femoral head", "U": "Femoral head"}


class OnfhOptions(PipelineOptions):
    """``pipelines.<name>.*`` keys of kind onfh."""

    models: list[ConfigPath] = []
    """One model folder (card.yaml + weights); empty: the bundled demo (models/onfh-demo)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    runtime: Literal["auto", "torch", "onnx"] = "auto"
    """On the CPU, auto runs the networks with ONNX Runtime (exported once per weights)."""
    modalities: list[str] = ["CR", "DX"]
    min_confidence: float | None = Field(None, ge=0, le=1)
    """Below this stage probability a finding is indeterminate (None: the card's
    ``abstention.min_confidence``, else never)."""
    max_saturated: float | None = Field(0.5, ge=0, le=1)
    """A head with more than this share of its pixels white in the display is not assessed
    (a prosthetic head when no hardware pipeline ran, or a window that clips bone); null:
    never. Display brightness cannot tell metal from clipped bone, so this is no
    substitute for the hardware cascade."""

    @field_validator("models")
    @classmethod
    def _one_model(cls, v: list) -> list:
        if len(v) > 1:
            raise ValueError("the onfh kind takes one model folder (no ensembles)")
        return v


class OnfhKind(PipelineKind):
    """Segments each native femoral head and stages osteonecrosis by a normative distance."""

    kind = "onfh"
    description = ("osteonecrosis of the femoral head per native hip (seed 002): head mask "
                   "(SEG), Mahalanobis distance + percentile, stage 0-4")
    Options: ClassVar[type[PipelineOptions]] = OnfhOptions
    options: OnfhOptions
    inputs = Inputs(views=frozenset({"ap_pelvis", "ap_hip"}))
    default_runs_on = RunsOn(pipeline="hardware", exclude=ARTHROPLASTY, optional=True)

    def __init__(self, context: KindContext, options: PipelineOptions) -> None:
        super().__init__(context, options)
        from hiprouter.inference.onfh import OnfhModel

        folder = self.options.models[0] if self.options.models else demo_model_dir(self.kind)
        self.model = OnfhModel.load(folder, self.options.device,
                                    runtime=self.options.runtime)
        self._vocabulary = self.model.card.vocabulary_over(ONFH)

    @classmethod
    def default_vocabulary(cls) -> Vocabulary:
        return ONFH

    def vocabulary(self) -> Vocabulary:
        return self._vocabulary

    def model_info(self) -> ModelInfo:
        return self.model.info

    def modalities(self) -> Sequence[str]:
        return tuple(self.options.modalities)

    @property
    def min_confidence(self) -> float:
        if self.options.min_confidence is not None:
            return self.options.min_confidence
        return float(self.model.card.abstention.get("min_confidence", 0.0))

    def run(self, study: StudyInput, targets: Sequence[Target] | None) -> PipelineResult:
        started = time.perf_counter()
        result = self.empty_result()
        views = self.inputs.views or frozenset()
        mods = {m.upper() for m in self.options.modalities}
        for uid, image in study.images.items():
            if image.modality not in mods:
                result.not_assessed[uid] = (f"modality {image.modality} is not one this model "
                                            f"accepts ({', '.join(sorted(mods))})")
            elif image.view not in views:
                result.not_assessed[uid] = (f"{VIEW_NAMES[image.view]} is not read by "
                                            f"{self.name} (AP views only)")
        crops = [(uid, c) for uid, c in study.crops(views, mods)
                 if targets is None or _targeted(uid, c, targets)]
        groups: dict[str, list[tuple[str, HipCrop]]] = {}
        for i, (uid, crop) in enumerate(crops):
            key = crop.laterality if crop.laterality in ("R", "L") else f"U:{uid}:{i}"
            groups.setdefault(key, []).append((uid, crop))
        for key in sorted(groups, key=lambda k: ("RLU".index(k[0]), k)):
            side: Laterality = key if key in ("R", "L") else "U"  # type: ignore[assignment]
            finding = self._finding(side, groups[key], study)
            if targets is None:
                finding.qualifiers["hardware"] = "not checked"
            result.findings.append(finding)
        elapsed = (time.perf_counter() - started) * 1000.0
        for f in result.findings:
            f.latency_ms = elapsed / max(1, len(result.findings))
        return result

    def _assess(self, study: StudyInput, uid: str, crop: HipCrop) -> object:
        from hiprouter.inference.onfh import lateral_on_image_right

        standard = image_left_is_patient_right(study.images[uid].dataset)
        return self.model.assess(crop.pixels, lateral_on_image_right(crop.laterality, standard),
                                 self.options.max_saturated)

    def _finding(self, side: Laterality, crops: list[tuple[str, HipCrop]],
                 study: StudyInput) -> Finding:
        from hiprouter.inference.onfh import HeadAssessment

        uids = list(dict.fromkeys(uid for uid, _ in crops))
        finding = Finding(self.name, side, uids, self.model_info(), finding_site=FEMORAL_HEAD)
        finding.qualifiers["views"] = views_qualifier(study, crops)
        assessed: list[tuple[str, HipCrop, HeadAssessment]] = []
        reasons: list[str] = []
        for uid, crop in crops:
            a = self._assess(study, uid, crop)
            if isinstance(a, HeadAssessment):
                assessed.append((uid, crop, a))
            else:
                reasons.append(f"{VIEW_NAMES[crop.view]}: {a}")
        keys = self._vocabulary.keys
        if not assessed:
            finding.classification = Classification(
                keys[0], 0.0, {k: 0.0 for k in keys}, "not_assessed",
                "; ".join(dict.fromkeys(reasons)) or "no femoral head found")
            return finding
        normative = self.model.normative
        assert normative is not None and normative.staging is not None
        distance = float(np.mean([a.distance for _, _, a in assessed]))
        percentile = normative.percentile(distance)
        staging = normative.staging
        band = staging.keys[staging.band(distance)]
        probabilities = staging.probabilities(distance)
        classification = Classification(band, float(probabilities.get(band, 0.0)),
                                        {k: float(probabilities.get(k, 0.0)) for k in keys})
        if classification.probability < self.min_confidence:
            classification.status = "indeterminate"
            classification.reason = (f"stage probability {classification.probability:.2f} "
                                     f"below {self.min_confidence:.2f}")
        finding.classification = classification
        finding.measurements = [
            Measurement("mahalanobis_distance", DISTANCE, distance, NO_UNITS),
            Measurement("healthy_percentile", PERCENTILE, percentile, NO_UNITS)]
        label = SIDE_WORDS[side]
        for uid, crop, a in assessed:
            shape = study.images[uid].decoded.pixels.shape
            top, left, bottom, right = crop.box
            full = np.zeros(shape, dtype=bool)
            full[top:bottom, left:right] = a.segmentation.crop_mask(crop.pixels.shape)
            finding.masks.append(Mask(uid, full, label, FEMORAL_HEAD, ANATOMICAL_STRUCTURE))
            points = a.segmentation.crop_outline()
            if len(points) >= 3:
                finding.regions.append(Region(uid, "POLYLINE",
                                              points + np.array([left, top], float),
                                              f"{label.lower()} outline"))
        stage = STAGE_TEXT.get(band, band)
        finding.qualifiers.update({
            "stage": stage, "label": f"stage {stage}, distance {distance:.1f}",
            "distance": f"{distance:.1f}", "percentile": f"{percentile:.0f}",
            "grades_0_1_merged": "yes" if "onfh_0_1" in keys else "no"})
        if reasons:
            finding.qualifiers["views_not_assessed"] = "; ".join(reasons)
        return finding


def _targeted(uid: str, crop: HipCrop, targets: Sequence[Target]) -> bool:
    for t in targets:
        if t.laterality in ("R", "L") and crop.laterality == t.laterality:
            return True
        if t.laterality == "U" and crop.laterality == "U" and uid in t.source_sop_uids:
            return True
    return False
