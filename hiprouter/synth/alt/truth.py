"""The ground truth the alt renderer draws: one `HipTruth` per side (docs/synthetic-data.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hiprouter.pipelines.hardware import HARDWARE as HARDWARE_CLASSES

HARDWARE = tuple(c.key for c in HARDWARE_CLASSES)
ARTHROPLASTY = ("tha", "tha_with_fixation", "hemiarthroplasty", "post_infectious")
THA = ("tha", "tha_with_fixation")
FIXATION = ("im_nail", "cannulated_screws", "dynamic_hip_screw", "lateral_plate")
FRACTURES = ("none", "femoral_neck_fracture", "intertrochanteric_fracture")
FAILURES = ("none", "infection", "loosening", "dislocation", "periprosthetic_fracture", "wear")
DEVICES = {
    "cmn_helical_blade": "im_nail",
    "cmn_lag_screw": "im_nail",
    "cmn_dual_screw": "im_nail",
    "sliding_hip_screw": "dynamic_hip_screw",
    "cannulated_screws_3": "cannulated_screws",
    "neck_system_plate_bolt": "lateral_plate",
}
SCREENING = ("normal", "osteoarthritis", "osteonecrosis", "femoral_neck_fracture",
             "intertrochanteric_fracture", "dysplasia", "tha", "internal_fixation")
VIEWS = ("ap_pelvis", "ap_hip", "frog_leg", "cross_table_lateral")
SIDES = ("R", "L")


@dataclass(frozen=True)
class HipTruth:
    """Ground truth of one hip, with the label schema's field names and values."""

    hardware: str = "no_hardware"
    fracture: str = "none"
    fracture_displaced: int = 0
    dislocation: int = 0
    screening: str = "normal"
    oa_grade: int = 0
    onfh_grade: int = 0
    ddh: int = 0
    failure: str = ""
    device: str = ""

    def __post_init__(self) -> None:
        problems = []
        if self.hardware not in HARDWARE:
            problems.append(f"hardware {self.hardware!r}")
        if self.fracture not in FRACTURES:
            problems.append(f"fracture {self.fracture!r}")
        if (self.failure != "") != (self.hardware in THA) or (
                self.failure and self.failure not in FAILURES):
            problems.append(f"failure {self.failure!r} with {self.hardware}")
        if self.dislocation != int(self.failure == "dislocation"):
            problems.append("dislocation must equal failure == dislocation")
        if self.device and DEVICES.get(self.device) != self.hardware:
            problems.append(f"device {self.device!r} with {self.hardware}")
        if not (0 <= self.oa_grade <= 4 and 0 <= self.onfh_grade <= 4):
            problems.append("grades must be 0-4")
        if self.screening not in SCREENING:
            problems.append(f"screening {self.screening!r}")
        if problems:
            raise ValueError("inconsistent hip truth: " + "; ".join(problems))

    @property
    def native_head(self) -> bool:
        """The hip keeps its own femoral head (no arthroplasty)."""
        return self.hardware not in ARTHROPLASTY


@dataclass(frozen=True)
class PatientTruth:
    """What is true of a patient: age, sex and each hip."""

    age: float
    sex: str
    hips: dict[str, HipTruth] = field(default_factory=dict)
    index_side: str = "R"
    """The hip the study was ordered for (single-hip views show it)."""
