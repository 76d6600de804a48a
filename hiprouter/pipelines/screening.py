"""Kind `screening` (seed 001): every hip's main finding among 8 classes, with fracture triage.

Classes: normal, hip osteoarthritis, osteonecrosis of the femoral head, femoral neck
fracture, intertrochanteric fracture, developmental dysplasia of the hip, total hip
arthroplasty (any arthroplasty; seed 001 has one class), metallic internal fixation.
SNOMED CT codes where the meaning is exact (osteoarthritis of hip, fracture of neck of
femur, intertrochanteric fracture); the private scheme 99HIPAI otherwise. The two
fractures flag the study HIGH at the card's calibrated threshold (chosen on the validation
split at a target sensitivity).
"""

from __future__ import annotations

from hiprouter.findings import Code, FindingClass, Vocabulary
from hiprouter.pipelines.classifier import ClassifierKind

_P = FindingClass.private

SCREENING = Vocabulary((
    _P("normal", "No abnormality", "SC000", "No abnormality detected", negative=True),
    FindingClass("osteoarthritis", "Hip osteoarthritis",
                 Code("239872002", "SCT", "Osteoarthritis of hip")),
    _P("osteonecrosis", "Osteonecrosis of the femoral head", "SC002",
       "Osteonecrosis of femoral head"),
    FindingClass("femoral_neck_fracture", "Femoral neck fracture",
                 Code("5913000", "SCT", "Fracture of neck of femur"), triage="HIGH"),
    FindingClass("intertrochanteric_fracture", "Intertrochanteric fracture",
                 Code("82286005", "SCT", "Intertrochanteric fracture of femur"), triage="HIGH"),
    _P("dysplasia", "Developmental dysplasia of the hip", "SC005",
       "Developmental dysplasia of hip"),
    _P("tha", "Hip arthroplasty", "SC006", "Hip arthroplasty"),
    _P("internal_fixation", "Metallic internal fixation", "SC007",
       "Metallic internal fixation of proximal femur"),
))
"""The 8 classes of seed 001 (docs/synthetic-data.md: the `screening` label column)."""


class ScreeningKind(ClassifierKind):
    """Screens every hip; prepopulates "Right hip: femoral neck fracture." and flags it."""

    kind = "screening"
    description = ("multi-abnormality screening per hip (seed 001), 8 classes; fractures "
                   "flag the study HIGH")

    @classmethod
    def default_vocabulary(cls) -> Vocabulary:
        return SCREENING
