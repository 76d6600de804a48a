"""Kind `hardware` (seed 003): which orthopaedic hardware each hip carries, 9 classes.

Codes: SNOMED CT only where the meaning is exact (femoral head prosthesis, bone nail);
otherwise the private scheme 99HIPAI, declared in the SR.
"""

from __future__ import annotations

from hiprouter.findings import Code, FindingClass, Vocabulary
from hiprouter.pipelines.classifier import ClassifierKind

_P = FindingClass.private

HARDWARE = Vocabulary((
    _P("no_hardware", "No hardware", "HW000", "No orthopedic hardware", negative=True),
    _P("tha", "Total hip arthroplasty", "HW001"),
    FindingClass("hemiarthroplasty", "Hemiarthroplasty",
                 Code("304121006", "SCT", "Femoral head prosthesis")),
    FindingClass("im_nail", "Intramedullary nail", Code("63289001", "SCT", "Bone nail")),
    _P("cannulated_screws", "Femoral neck cannulated screws", "HW004"),
    _P("dynamic_hip_screw", "Dynamic hip screw", "HW005"),
    _P("lateral_plate", "Lateral blade or plate fixation", "HW006"),
    _P("tha_with_fixation", "THA with additional femoral fixation", "HW007",
       "Total hip arthroplasty with additional femoral fixation"),
    _P("post_infectious", "Post-infectious hip (cement spacer)", "HW008",
       "Post-infectious hip with cement spacer"),
))
"""The 9 hardware classes of seed 003, in the demo model's output order."""

ARTHROPLASTY = ("tha", "hemiarthroplasty", "tha_with_fixation", "post_infectious")
THA = ("tha", "tha_with_fixation")
INTERNAL_FIXATION = ("im_nail", "cannulated_screws", "dynamic_hip_screw", "lateral_plate")


class HardwareKind(ClassifierKind):
    """Names the hardware of every hip; prepopulates "Right hip: total hip arthroplasty."."""

    kind = "hardware"
    description = "orthopaedic hardware per hip (seed 003), 9 classes, CAM heat maps"

    @classmethod
    def default_vocabulary(cls) -> Vocabulary:
        return HARDWARE
