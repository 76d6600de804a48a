"""An example pipeline kind, installed as its own package: the extent of metal in a hip.

It runs as a cascade on hips where the `hardware` pipeline found hardware, on AP views.
Per hip it reports every part of the findings model hiprouter has:

- a classification (`metal` / `no_metal`) with a probability-like confidence,
- a measurement: the fraction of the hip's crop that is metal-bright, in percent (UCUM %),
- a region: the closed outline (POLYLINE) of the metal's bounding box,
- a mask: the metal pixels (hiprouter writes them into a DICOM Segmentation),
- a heat map: the brightness above the threshold.

No model, no weights: a threshold on the display image. It exists to show (and test) that
a plugin brings its own options, vocabulary and cascade without editing hiprouter.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import Field

from hiprouter.config import RunsOn
from hiprouter.findings import (
    PHYSICAL_OBJECT,
    Classification,
    Code,
    Finding,
    FindingClass,
    HeatMap,
    Mask,
    Measurement,
    ModelInfo,
    PipelineResult,
    Region,
    Unit,
    Vocabulary,
)
from hiprouter.inference.study import StudyInput
from hiprouter.pipelines.base import Inputs, PipelineKind, PipelineOptions, Target

METAL = Code("425620007", "SCT", "Metal")
FRACTION = Code("MX100", "99HIPAI", "Metal fraction of hip region")
VOCABULARY = Vocabulary((
    FindingClass.private("metal", "Metal implant material", "MX001"),
    FindingClass.private("no_metal", "No metal", "MX000", negative=True),
))


class MetalExtentOptions(PipelineOptions):
    """``pipelines.<name>.*`` keys of this kind."""

    threshold: float = Field(0.92, gt=0, lt=1)
    """Display brightness (0-1) at and above which a pixel counts as metal."""
    min_percent: float = Field(0.2, ge=0, le=100)
    """Less metal than this (percent of the hip region) is reported as `no_metal`."""


class MetalExtentKind(PipelineKind):
    """Metal fraction, outline and mask of each hip with hardware."""

    kind = "metal_extent"
    description = "example plugin: metal fraction, outline and mask per hip with hardware"
    Options = MetalExtentOptions
    inputs = Inputs(views=frozenset({"ap_pelvis", "ap_hip"}))
    default_runs_on = RunsOn(pipeline="hardware", exclude=["no_hardware"])
    options: MetalExtentOptions

    def vocabulary(self) -> Vocabulary:
        return VOCABULARY

    def model_info(self) -> ModelInfo:
        return ModelInfo("metal-extent", "1.0.0", f"threshold {self.options.threshold:.2f}",
                         "2.25.281474976710655001", manufacturer="hiprouter example plugin",
                         synthetic_demo=False)

    def run(self, study: StudyInput, targets: Sequence[Target] | None) -> PipelineResult:
        result = self.empty_result()
        for uid, crop in study.crops(self.inputs.views, self.modalities()):
            wanted = targets is None or any(t.laterality == crop.laterality for t in targets)
            if wanted and crop.laterality in ("R", "L"):
                result.findings.append(self._finding(study, uid, crop))
        return result

    def _finding(self, study: StudyInput, uid: str, crop) -> Finding:  # type: ignore[no-untyped-def]
        shape = study.images[uid].decoded.pixels.shape
        top, left, bottom, right = crop.box
        metal = crop.pixels >= self.options.threshold
        percent = 100.0 * float(metal.mean())
        found = percent >= self.options.min_percent
        confidence = min(1.0, 0.5 + percent / 10.0) if found else 0.9
        key = "metal" if found else "no_metal"
        finding = Finding(
            self.name, crop.laterality, [uid], self.model_info(),
            Classification(key, confidence, {key: confidence,
                                             ("no_metal" if found else "metal"): 1 - confidence}),
            measurements=[Measurement("metal_percent", FRACTION, percent, Unit("%", "percent"))])
        full = np.zeros(shape, dtype=bool)
        full[top:bottom, left:right] = metal
        heat = np.zeros(shape, dtype=np.float32)
        span = 1.0 - self.options.threshold
        heat[top:bottom, left:right] = np.clip(
            (crop.pixels - self.options.threshold) / span, 0, 1)
        finding.heatmaps = [HeatMap(uid, heat, key)]
        if found:
            rows, cols = np.nonzero(metal)
            y0, y1 = top + rows.min(), top + rows.max() + 1
            x0, x1 = left + cols.min(), left + cols.max() + 1
            finding.regions = [Region(uid, "POLYLINE", np.array(
                [[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float), "metal extent")]
            side = {"R": "Right", "L": "Left"}[crop.laterality]
            finding.masks = [Mask(uid, full, f"{side} hip metal", METAL, PHYSICAL_OBJECT)]
        else:
            cx, cy = (left + right) / 2, (top + bottom) / 2
            finding.regions = [Region(uid, "POINT", np.array([[cx, cy]]), "hip")]
        return finding
