"""The alt renderer's own sampler of the ground truth per hip.

Deliberately not the primary renderer's sampler (hiprouter/synth/labels.py): other priors
(class mixes, combinations, ages) are part of what makes the alt cohort a test of
transfer. The label schema and the screening rule are the same (docs/synthetic-data.md).
`task` weights the index hip towards what a pipeline is tested on: 'mixed', 'hardware'
(9 classes equally), 'screening' (8 classes equally), 'failure' (THA hips, 6 outcomes
equally), 'device' (6 fixation designs equally) or 'onfh' (native hips, grades 0-4).
"""

from __future__ import annotations

import numpy as np

from hiprouter.synth.alt.truth import (
    ARTHROPLASTY,
    DEVICES,
    FAILURES,
    FIXATION,
    HARDWARE,
    SCREENING,
    THA,
    HipTruth,
    PatientTruth,
)

TASKS = ("mixed", "hardware", "screening", "failure", "device", "onfh")


def screening_class(hardware: str, fracture: str, onfh: int, ddh: int, oa: int) -> str:
    """Seed 001's class of a hip (docs/synthetic-data.md, first rule that applies)."""
    if hardware in ARTHROPLASTY:
        return "tha"
    if hardware in FIXATION:
        return "internal_fixation"
    if fracture != "none":
        return fracture
    if onfh >= 2:
        return "osteonecrosis"
    if ddh:
        return "dysplasia"
    if oa >= 2:
        return "osteoarthritis"
    return "normal"


def _hip(rng: np.random.Generator, hardware: str, *, fracture: str | None = None,
         oa: int | None = None, onfh: int | None = None, ddh: int | None = None,
         failure: str | None = None, device: str | None = None) -> HipTruth:
    native = hardware not in ARTHROPLASTY
    if device is None and hardware in FIXATION:
        device = str(rng.choice([d for d, h in DEVICES.items() if h == hardware]))
    if fracture is None:
        if hardware in FIXATION:
            neck = device in ("cannulated_screws_3", "neck_system_plate_bolt") or (
                device == "sliding_hip_screw" and rng.random() < 0.2)
            fracture = "femoral_neck_fracture" if neck else "intertrochanteric_fracture"
        elif hardware == "no_hardware" and rng.random() < 0.15:
            fracture = str(rng.choice(["femoral_neck_fracture", "intertrochanteric_fracture"]))
        else:
            fracture = "none"
    displaced = int(fracture != "none" and rng.random() < (0.25 if hardware in FIXATION
                                                           else 0.5))
    if oa is None:
        oa = int(rng.choice(5, p=[0.35, 0.2, 0.2, 0.15, 0.1])) if native else 0
        if hardware in FIXATION:
            oa = min(oa, 2)
    if onfh is None:
        onfh = int(rng.choice(5, p=[0.84, 0.04, 0.04, 0.04, 0.04])) if native else 0
    if ddh is None:
        ddh = int(native and hardware == "no_hardware" and rng.random() < 0.08)
    if hardware in THA:
        failure = failure or str(rng.choice(FAILURES, p=[0.5, 0.1, 0.1, 0.1, 0.1, 0.1]))
    else:
        failure = ""
    return HipTruth(hardware=hardware, fracture=fracture, fracture_displaced=displaced,
                    dislocation=int(failure == "dislocation"),
                    screening=screening_class(hardware, fracture, onfh, ddh, oa),
                    oa_grade=oa, onfh_grade=onfh, ddh=ddh, failure=failure,
                    device=device or "")


def _for_screening(rng: np.random.Generator, cls: str) -> HipTruth:
    low = {"onfh": int(rng.integers(0, 2)), "ddh": 0}
    if cls == "normal":
        return _hip(rng, "no_hardware", fracture="none", oa=int(rng.integers(0, 2)), **low)
    if cls == "osteoarthritis":
        return _hip(rng, "no_hardware", fracture="none", oa=int(rng.integers(2, 5)), **low)
    if cls == "osteonecrosis":
        return _hip(rng, "no_hardware", fracture="none", onfh=int(rng.integers(2, 5)), ddh=0)
    if cls == "dysplasia":
        return _hip(rng, "no_hardware", fracture="none", ddh=1, onfh=low["onfh"])
    if cls.endswith("_fracture"):
        return _hip(rng, "no_hardware", fracture=cls)
    if cls == "tha":
        return _hip(rng, str(rng.choice(ARTHROPLASTY)))
    return _hip(rng, str(rng.choice(FIXATION)))


def _index_hip(rng: np.random.Generator, task: str) -> HipTruth:
    if task == "hardware":
        return _hip(rng, str(rng.choice(HARDWARE)))
    if task == "screening":
        return _for_screening(rng, str(rng.choice(SCREENING)))
    if task == "failure":
        return _hip(rng, str(rng.choice(THA, p=[0.75, 0.25])), failure=str(rng.choice(FAILURES)))
    if task == "device":
        device = str(rng.choice(list(DEVICES)))
        return _hip(rng, DEVICES[device], device=device)
    if task == "onfh":
        return _hip(rng, "no_hardware", fracture="none", onfh=int(rng.integers(0, 5)))
    weights = np.array([0.4] + [0.6 / 8] * 8)
    return _hip(rng, str(rng.choice(HARDWARE, p=weights)))


def _age(rng: np.random.Generator, hip: HipTruth) -> float:
    if hip.fracture != "none" or hip.hardware in FIXATION or hip.hardware == "hemiarthroplasty":
        return float(rng.uniform(62, 96))
    if hip.hardware in ARTHROPLASTY or hip.oa_grade >= 2:
        return float(rng.uniform(50, 90))
    if hip.ddh or hip.onfh_grade >= 1:
        return float(rng.uniform(20, 60))
    return float(rng.uniform(18, 85))


def sample_truth(rng: np.random.Generator, task: str = "mixed",
                 index_side: str | None = None) -> PatientTruth:
    """Age, sex and the ground truth of both hips of one patient."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    side = index_side or str(rng.choice(["R", "L"]))
    other = "L" if side == "R" else "R"
    index = _index_hip(rng, task)
    age = _age(rng, index)
    weights = np.array([0.78] + [0.22 / 8] * 8)
    contra = _hip(rng, str(rng.choice(HARDWARE, p=weights)))
    if contra.fracture != "none" and rng.random() < 0.7:
        contra = _hip(rng, "no_hardware", fracture="none")
    return PatientTruth(age=age, sex="F" if rng.random() < 0.6 else "M",
                        hips={side: index, other: contra}, index_side=side)
