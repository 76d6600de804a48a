"""Kind `fracture`: acute proximal femoral fractures for triage (the triage part of seed 001).

A fracture flags the study HIGH by default (the classes' triage meaning); `no_fracture`
is the negative class and never triggers triage.
"""

from __future__ import annotations

from hiprouter.findings import Code, FindingClass, Vocabulary
from hiprouter.pipelines.classifier import ClassifierKind

FRACTURE = Vocabulary((
    FindingClass.private("no_fracture", "No fracture", "FX000", "No fracture detected",
                         negative=True),
    FindingClass("femoral_neck_fracture", "Femoral neck fracture",
                 Code("5913000", "SCT", "Fracture of neck of femur"), triage="HIGH"),
    FindingClass("intertrochanteric_fracture", "Intertrochanteric fracture",
                 Code("82286005", "SCT", "Intertrochanteric fracture of femur"), triage="HIGH"),
))


class FractureKind(ClassifierKind):
    """Flags femoral neck and intertrochanteric fractures."""

    kind = "fracture"
    description = "acute femoral neck / intertrochanteric fracture triage, 3 classes"
    label_aliases = {"none": "no_fracture"}

    @classmethod
    def default_vocabulary(cls) -> Vocabulary:
        return FRACTURE
