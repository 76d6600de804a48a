"""A test kind `tagged_hardware` (loaded with `plugins:`): the hardware a test wrote into
the radiograph's Image Comments ("hardware R=no_hardware L=tha"), as the `hardware`
pipeline would report it, without a model. It lets a served study cascade into onfh with
a THA on one side deterministically."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hiprouter.findings import Classification, Finding, ModelInfo, PipelineResult, Region
from hiprouter.inference.study import StudyInput
from hiprouter.pipelines.base import PipelineKind, Target
from hiprouter.pipelines.hardware import HARDWARE
from hiprouter.pipelines.registry import register_kind

MODEL = ModelInfo("tagged-hardware", "1", "image comments", "2.25.90210", synthetic_demo=True)


def tag(classes: dict[str, str]) -> str:
    return "hardware " + " ".join(f"{side}={cls}" for side, cls in sorted(classes.items()))


@register_kind
class TaggedHardwareKind(PipelineKind):
    kind = "tagged_hardware"

    def vocabulary(self):  # type: ignore[no-untyped-def]
        return HARDWARE

    def model_info(self) -> ModelInfo:
        return MODEL

    def run(self, study: StudyInput, targets: Sequence[Target] | None) -> PipelineResult:
        result = self.empty_result()
        for uid, crop in study.crops():
            text = str(study.images[uid].dataset.get("ImageComments", ""))
            said = dict(w.split("=", 1) for w in text.split()[1:] if "=" in w)
            cls = said.get(crop.laterality, "no_hardware")
            top, left, bottom, right = crop.box
            result.findings.append(Finding(
                self.name, crop.laterality, [uid], MODEL, Classification(cls, 0.97, {cls: 0.97}),
                regions=[Region(uid, "POINT", np.array([[(left + right) / 2,
                                                         (top + bottom) / 2]]))]))
        return result
