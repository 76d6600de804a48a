"""Label sets of the pipelines (the seed papers' classes), with their codes for SR output.

Codes: SNOMED CT only where the meaning is exact; otherwise the private scheme 99HIPAI,
declared in the SR's CodingSchemeIdentificationSequence.
"""

from __future__ import annotations

from dataclasses import dataclass

PRIVATE_SCHEME = "99HIPAI"
PRIVATE_SCHEME_NAME = "hiprouter AI findings"


@dataclass(frozen=True)
class FindingClass:
    """One output class of a model."""

    key: str
    """Stable machine name, used in labels CSVs, configs and templates."""
    display: str
    """Human-readable name."""
    scheme: str
    code: str
    meaning: str
    negative: bool = False
    """The absence of findings (no_hardware, no_fracture): never matched by triage rules."""


# 9 hardware classes of seed 003 (order is the model's output order).
HARDWARE_CLASSES: tuple[FindingClass, ...] = (
    FindingClass("no_hardware", "No hardware", PRIVATE_SCHEME, "HW000", "No orthopedic hardware",
                 negative=True),
    FindingClass("tha", "Total hip arthroplasty", PRIVATE_SCHEME, "HW001",
                 "Total hip arthroplasty"),
    FindingClass("hemiarthroplasty", "Hemiarthroplasty", "SCT", "304121006",
                 "Femoral head prosthesis"),
    FindingClass("im_nail", "Intramedullary nail", "SCT", "63289001", "Bone nail"),
    FindingClass("cannulated_screws", "Femoral neck cannulated screws", PRIVATE_SCHEME, "HW004",
                 "Femoral neck cannulated screws"),
    FindingClass("dynamic_hip_screw", "Dynamic hip screw", PRIVATE_SCHEME, "HW005",
                 "Dynamic hip screw"),
    FindingClass("lateral_plate", "Lateral blade or plate fixation", PRIVATE_SCHEME, "HW006",
                 "Lateral blade or plate fixation"),
    FindingClass("tha_with_fixation", "THA with additional femoral fixation", PRIVATE_SCHEME,
                 "HW007", "Total hip arthroplasty with additional femoral fixation"),
    FindingClass("post_infectious", "Post-infectious hip (cement spacer)", PRIVATE_SCHEME, "HW008",
                 "Post-infectious hip with cement spacer"),
)

# Findings the synthetic generator also labels, for later pipelines (screening, failure).
EXTRA_FINDINGS: tuple[FindingClass, ...] = (
    FindingClass("femoral_neck_fracture", "Femoral neck fracture", "SCT", "5913000",
                 "Fracture of neck of femur"),
    FindingClass("intertrochanteric_fracture", "Intertrochanteric fracture", "SCT", "82286005",
                 "Intertrochanteric fracture of femur"),
    FindingClass("tha_dislocation", "Dislocation of total hip arthroplasty", PRIVATE_SCHEME,
                 "HW101", "Dislocation of total hip arthroplasty"),
)

NO_FRACTURE = FindingClass("no_fracture", "No fracture", PRIVATE_SCHEME, "FX000",
                           "No fracture detected", negative=True)

# Acute proximal femoral fractures (the triage part of seed 001's screening), output order.
FRACTURE_CLASSES: tuple[FindingClass, ...] = (
    NO_FRACTURE,
    *(fc for fc in EXTRA_FINDINGS if fc.key.endswith("_fracture")),
)

LABEL_SETS: dict[str, tuple[FindingClass, ...]] = {
    "hardware": HARDWARE_CLASSES,
    "fracture": FRACTURE_CLASSES,
}


@dataclass(frozen=True)
class LabelSource:
    """Where a label set's ground truth sits in a labels CSV (hiprouter synth's layout)."""

    column: str
    """Default label column."""
    aliases: dict[str, str]
    """CSV values meaning a class key, e.g. `none` -> `no_fracture`."""


LABEL_SOURCES: dict[str, LabelSource] = {
    "hardware": LabelSource("hardware", {}),
    "fracture": LabelSource("fracture", {"none": "no_fracture"}),
}


def label_set(name: str) -> tuple[FindingClass, ...]:
    """The classes of a label set in output order; KeyError naming the known sets."""
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise KeyError(f"unknown label set {name!r}; known: {', '.join(LABEL_SETS)}") from None


def label_source(name: str) -> LabelSource:
    """Default label column and value aliases of a label set."""
    label_set(name)
    return LABEL_SOURCES.get(name, LabelSource(name, {}))


def class_by_key(key: str) -> FindingClass:
    """Look a class up by key across all label sets."""
    for fc in (*HARDWARE_CLASSES, *EXTRA_FINDINGS, *FRACTURE_CLASSES):
        if fc.key == key:
            return fc
    raise KeyError(f"unknown finding class {key!r}")
