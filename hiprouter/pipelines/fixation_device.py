"""Kind `fixation_device` (seed 004): which internal fixation design a hip carries.

A cascade on the hips the hardware pipeline calls intramedullary nail, cannulated screws,
dynamic hip screw or lateral plate. Like the seed, it reads AP views (AP pelvis, AP hip):
one CNN (or an ensemble) names the design among the six generic designs of the synthetic
catalogue (docs/synthetic-data.md), with a class activation map on the SC. The report
gives the top design with its probability and the three most probable candidates.

A site replaces the catalogue with its own device list through the model card: the
card's ``classes`` are the model's outputs and its ``vocabulary:`` names and codes them
(`ModelCard.vocabulary_over`); the kind knows only the generic designs' wording.

Codes: the generic designs have no SNOMED CT concept of their own, so they use the private
scheme 99HIPAI. No class flags the study: device identification is not a triage finding.
"""

from __future__ import annotations

from hiprouter.config import RunsOn
from hiprouter.findings import FindingClass, Vocabulary
from hiprouter.pipelines.base import Inputs
from hiprouter.pipelines.classifier import ClassifierKind
from hiprouter.pipelines.hardware import INTERNAL_FIXATION

_P = FindingClass.private

FIXATION_DEVICES = Vocabulary((
    _P("cmn_helical_blade", "Cephalomedullary nail with helical blade", "FD001"),
    _P("cmn_lag_screw", "Cephalomedullary nail with single lag screw", "FD002"),
    _P("cmn_dual_screw", "Cephalomedullary nail with two integrated screws", "FD003",
       "Cephalomedullary nail with two integrated parallel screws"),
    _P("sliding_hip_screw", "Sliding hip screw with side plate", "FD004"),
    _P("cannulated_screws_3", "Three cannulated screws, inverted triangle", "FD005",
       "Three parallel cannulated screws in inverted triangle"),
    _P("neck_system_plate_bolt", "Femoral neck system (plate, bolt, anti-rotation screw)",
       "FD006", "Femoral neck system: short plate, bolt, anti-rotation screw"),
))
"""The generic catalogue: the `device` column of the synthetic labels, in output order."""


class FixationDeviceKind(ClassifierKind):
    """Names the fixation design of each hip with internal fixation; top-3 candidates."""

    kind = "fixation_device"
    description = ("internal fixation design per hip (seed 004), 6 generic designs or the "
                   "model card's catalogue; top-3 candidates, CAM heat maps")
    inputs = Inputs(views=frozenset({"ap_pelvis", "ap_hip"}))
    default_runs_on = RunsOn(pipeline="hardware", classes=list(INTERNAL_FIXATION))
    label_column = "device"

    @classmethod
    def default_vocabulary(cls) -> Vocabulary:
        return FIXATION_DEVICES
