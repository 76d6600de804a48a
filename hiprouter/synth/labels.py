"""Ground truth of synthetic hip studies: the label schema and its sampling, no drawing.

This module is the contract between the synthetic renderers (docs/synthetic-data.md): the
columns of labels.csv, the per-hip ground truth (`HipSpec`), the derived screening class,
the fixation device catalogue, and how the ground truth of a study is sampled for each
training task (`sample_hips`, `override_hips`, `sample_views`, `sample_age`). A renderer
draws whatever these say; it never samples labels itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from hiprouter.pipelines.hardware import HARDWARE as HARDWARE_CLASSES

SIDES = ("R", "L")
VIEWS = ("ap_pelvis", "ap_hip", "frog_leg", "cross_table_lateral")
AP_VIEWS = ("ap_pelvis", "ap_hip")
FRACTURES = ("none", "femoral_neck_fracture", "intertrochanteric_fracture")
HARDWARE_KEYS: tuple[str, ...] = tuple(c.key for c in HARDWARE_CLASSES)
ARTHROPLASTY = frozenset({"tha", "hemiarthroplasty", "tha_with_fixation", "post_infectious"})
"""Hardware classes without a native femoral head."""
THA = frozenset({"tha", "tha_with_fixation"})
"""Hardware classes with a failure label."""
FIXATION = ("im_nail", "cannulated_screws", "dynamic_hip_screw", "lateral_plate")
SCREENING_CLASSES = ("normal", "osteoarthritis", "osteonecrosis", "femoral_neck_fracture",
                     "intertrochanteric_fracture", "dysplasia", "tha", "internal_fixation")
FAILURES = ("none", "infection", "loosening", "dislocation", "periprosthetic_fracture", "wear")
GRADES = (0, 1, 2, 3, 4)


@dataclass(frozen=True)
class Device:
    """One generic internal fixation design (no manufacturer's data)."""

    key: str
    description: str
    hardware: str
    """The hardware class a hip with this device has."""


DEVICES: tuple[Device, ...] = (
    Device("cmn_helical_blade", "cephalomedullary nail with a helical blade", "im_nail"),
    Device("cmn_lag_screw", "cephalomedullary nail with a single lag screw", "im_nail"),
    Device("cmn_dual_screw", "cephalomedullary nail with two integrated parallel screws",
           "im_nail"),
    Device("sliding_hip_screw", "sliding hip screw with a side plate (barrel plate)",
           "dynamic_hip_screw"),
    Device("cannulated_screws_3", "three parallel cannulated screws, inverted triangle",
           "cannulated_screws"),
    Device("neck_system_plate_bolt",
           "femoral neck system: short plate, bolt and anti-rotation screw", "lateral_plate"),
)
DEVICE_KEYS = tuple(d.key for d in DEVICES)
DEVICE_BY_KEY = {d.key: d for d in DEVICES}
OTHER_DESIGNS = frozenset({"cannulated_screws", "lateral_plate"})
"""Fixation classes that also come in designs outside the catalogue (device left empty):
two or four cannulated screws; a proximal femoral locking plate or an angled blade plate."""

TASKS = ("hardware", "screening", "failure", "device", "onfh")
TASK_COLUMN = {"hardware": "hardware", "screening": "screening", "failure": "failure",
               "device": "device", "onfh": "onfh_grade"}
"""The labels.csv column holding each task's class."""
TASK_CLASSES: dict[str, tuple[str, ...]] = {
    "hardware": HARDWARE_KEYS, "screening": SCREENING_CLASSES, "failure": FAILURES,
    "device": DEVICE_KEYS, "onfh": tuple(str(g) for g in GRADES),
}

LABEL_FIELDS = (
    "path", "study_uid", "series_uid", "sop_instance_uid", "patient_id", "renderer", "view",
    "laterality", "hardware", "fracture", "fracture_displaced", "dislocation", "screening",
    "oa_grade", "onfh_grade", "ddh", "failure", "device", "head_mask", "age", "photometric",
    "bits_stored", "modality", "rows", "columns", "marker", "marker_box", "hip_x", "hip_y",
)


@dataclass
class HipSpec:
    """Ground truth of one hip."""

    hardware: str = "no_hardware"
    fracture: str = "none"
    fracture_displaced: bool = False
    oa_grade: int = 0
    """Kellgren-Lawrence grade 0-4."""
    onfh_grade: int = 0
    """Osteonecrosis grade 0-4 (see docs/synthetic-data.md)."""
    ddh: bool = False
    failure: str = ""
    """THA hips: one of FAILURES; other hips: empty."""
    device: str = ""
    """Fixation hips: a DEVICE_KEYS design, or empty for a design outside the catalogue."""

    @property
    def dislocated(self) -> bool:
        return self.failure == "dislocation"

    @property
    def native_head(self) -> bool:
        """The hip still has its own femoral head (no arthroplasty or spacer)."""
        return self.hardware not in ARTHROPLASTY

    @property
    def screening(self) -> str:
        return screening_class(self)

    def label_values(self) -> dict[str, object]:
        """The per-hip columns of labels.csv."""
        return {"hardware": self.hardware, "fracture": self.fracture,
                "fracture_displaced": int(self.fracture_displaced),
                "dislocation": int(self.dislocated), "screening": self.screening,
                "oa_grade": self.oa_grade, "onfh_grade": self.onfh_grade, "ddh": int(self.ddh),
                "failure": self.failure, "device": self.device}


def screening_class(hip: HipSpec) -> str:
    """Seed 001's class of a hip: the first rule of docs/synthetic-data.md that applies."""
    if hip.hardware in ARTHROPLASTY:
        return "tha"
    if hip.hardware in FIXATION:
        return "internal_fixation"
    if hip.fracture != "none":
        return hip.fracture
    if hip.onfh_grade >= 2:
        return "osteonecrosis"
    if hip.ddh:
        return "dysplasia"
    if hip.oa_grade >= 2:
        return "osteoarthritis"
    return "normal"


def check_hip(side: str, hip: HipSpec) -> None:
    """Raise ValueError naming the hip when its ground truth is unknown or impossible."""
    where = f"hip {side}"
    if hip.hardware not in HARDWARE_KEYS:
        raise ValueError(f"unknown hardware class {hip.hardware!r} for {where}")
    if hip.fracture not in FRACTURES:
        raise ValueError(f"unknown fracture {hip.fracture!r}; choose from {FRACTURES}")
    for name in ("oa_grade", "onfh_grade"):
        if getattr(hip, name) not in GRADES:
            raise ValueError(f"{where}: {name} must be 0-4, not {getattr(hip, name)!r}")
    if hip.failure not in ("", *FAILURES):
        raise ValueError(f"{where}: unknown failure {hip.failure!r}; choose from {FAILURES}")
    if hip.device not in ("", *DEVICE_KEYS):
        raise ValueError(f"{where}: unknown device {hip.device!r}; choose from {DEVICE_KEYS}")
    if hip.hardware in ARTHROPLASTY:
        if hip.fracture != "none":
            raise ValueError(f"{where}: no native femoral neck to fracture with {hip.hardware}")
        for name, value in (("onfh_grade", hip.onfh_grade), ("oa_grade", hip.oa_grade),
                            ("ddh", hip.ddh)):
            if value:
                raise ValueError(f"{where}: {name} needs a native hip joint, not {hip.hardware}")
    if hip.hardware in THA and not hip.failure:
        raise ValueError(f"{where}: a {hip.hardware} hip needs a failure label {FAILURES}")
    if hip.failure and hip.hardware not in THA:
        if hip.failure == "dislocation":
            raise ValueError(f"{where}: dislocation is only generated for 'tha' or "
                             f"'tha_with_fixation' hips, not {hip.hardware}")
        raise ValueError(f"{where}: failure {hip.failure!r} is only for THA hips "
                         f"('tha', 'tha_with_fixation'), not {hip.hardware}")
    if hip.device and DEVICE_BY_KEY[hip.device].hardware != hip.hardware:
        raise ValueError(f"{where}: device {hip.device!r} is a "
                         f"{DEVICE_BY_KEY[hip.device].hardware} device, not {hip.hardware}")
    if hip.hardware in FIXATION and not hip.device and hip.hardware not in OTHER_DESIGNS:
        raise ValueError(f"{where}: every {hip.hardware} is a catalogue device; choose from "
                         f"{[d.key for d in DEVICES if d.hardware == hip.hardware]}")
    if hip.fracture_displaced and hip.fracture == "none":
        raise ValueError(f"{where}: fracture_displaced without a fracture")
    if hip.fracture_displaced and hip.hardware != "no_hardware":
        raise ValueError(f"{where}: a fixed fracture is reduced (not displaced)")


# ---- sampling -------------------------------------------------------------------------


def _pick(rng: np.random.Generator, p: Mapping[object, float]) -> object:
    keys = list(p)
    w = np.array([p[k] for k in keys], float)
    return keys[int(rng.choice(len(keys), p=w / w.sum()))]


def task_weights(task: str, class_weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """Normalised weights over a task's classes (uniform by default)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    classes = TASK_CLASSES[task]
    if class_weights is None:
        return {k: 1 / len(classes) for k in classes}
    weights = {str(k): v for k, v in class_weights.items()}
    unknown = set(weights) - set(classes)
    if unknown:
        noun = "hardware classes" if task == "hardware" else f"{task} classes"
        raise ValueError(f"unknown {noun}: {sorted(unknown)}; choose from {list(classes)}")
    w = np.array([float(weights.get(k, 0.0)) for k in classes])
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError("class_weights must be non-negative with a positive sum")
    return {k: float(v) for k, v in zip(classes, w / w.sum(), strict=True) if v > 0}


def _fixation_fracture(hardware: str, rng: np.random.Generator) -> str:
    if hardware == "cannulated_screws":
        return "femoral_neck_fracture" if rng.random() < 0.5 else "none"
    if rng.random() < 0.5:
        return "intertrochanteric_fracture" if rng.random() < 0.8 else "femoral_neck_fracture"
    return "none"


def _device(hardware: str, rng: np.random.Generator, catalogue_only: bool) -> str:
    designs = [d.key for d in DEVICES if d.hardware == hardware]
    if not designs:
        return ""
    other = {"cannulated_screws": 0.35, "lateral_plate": 0.55}.get(hardware, 0.0)
    if not catalogue_only and rng.random() < other:
        return ""
    return str(rng.choice(designs))


def _failure(rng: np.random.Generator, balanced: bool) -> str:
    if balanced or rng.random() < 0.3:
        return str(rng.choice(FAILURES if balanced else FAILURES[1:]))
    return "none"


def fill_hip(hardware: str, rng: np.random.Generator, task: str = "hardware") -> HipSpec:
    """A hip with the given hardware; the other labels sampled as background for a task."""
    hip = HipSpec(hardware)
    if hardware in ARTHROPLASTY:
        if hardware in THA:
            hip.failure = _failure(rng, balanced=task == "failure")
        return hip
    if hardware in FIXATION:
        hip.fracture = _fixation_fracture(hardware, rng)
        hip.device = _device(hardware, rng, catalogue_only=task == "device")
        hip.oa_grade = int(_pick(rng, {0: 0.6, 1: 0.3, 2: 0.1}))
        return hip
    if hardware != "no_hardware":
        raise ValueError(f"unknown hardware class {hardware!r}")
    if task != "onfh" and rng.random() < 0.3:
        hip.fracture = str(rng.choice(FRACTURES[1:]))
        hip.fracture_displaced = bool(rng.random() < 0.55)
    hip.oa_grade = int(_pick(rng, {0: 0.4, 1: 0.25, 2: 0.15, 3: 0.12, 4: 0.08}))
    if task == "onfh":
        hip.onfh_grade = int(rng.integers(0, 5))
    elif rng.random() < 0.12:
        hip.onfh_grade = int(rng.integers(1, 5))
    hip.ddh = bool(rng.random() < 0.06) and hip.onfh_grade < 2
    return hip


def screening_hip(cls: str, rng: np.random.Generator) -> HipSpec:
    """A hip whose derived screening class is `cls`, with realistic companions."""
    if cls == "tha":
        hw = str(_pick(rng, {"tha": 0.45, "tha_with_fixation": 0.2, "hemiarthroplasty": 0.25,
                             "post_infectious": 0.1}))
        return fill_hip(hw, rng)
    if cls == "internal_fixation":
        return fill_hip(str(rng.choice(FIXATION)), rng)
    hip = HipSpec()
    mild_oa = {0: 0.5, 1: 0.3, 2: 0.15, 3: 0.05}
    if cls == "normal":
        hip.oa_grade = int(_pick(rng, {0: 0.6, 1: 0.4}))
        hip.onfh_grade = int(_pick(rng, {0: 0.85, 1: 0.15}))
    elif cls == "osteoarthritis":
        hip.oa_grade = int(rng.integers(2, 5))
        hip.onfh_grade = int(_pick(rng, {0: 0.9, 1: 0.1}))
    elif cls == "osteonecrosis":
        hip.onfh_grade = int(rng.integers(2, 5))
        hip.oa_grade = int(_pick(rng, mild_oa))
    elif cls in FRACTURES:
        hip.fracture = cls
        hip.fracture_displaced = bool(rng.random() < 0.55)
        hip.oa_grade = int(_pick(rng, mild_oa))
    elif cls == "dysplasia":
        hip.ddh = True
        hip.oa_grade = int(_pick(rng, {0: 0.4, 1: 0.2, 2: 0.25, 3: 0.15}))
    else:
        raise ValueError(f"unknown screening class {cls!r}")
    return hip


def sample_hips(rng: np.random.Generator, class_weights: Mapping[str, float] | None = None,
                task: str = "hardware") -> tuple[dict[str, HipSpec], str]:
    """Ground truth of both hips for a task; returns (hips, index side).

    class_weights weigh the task's classes (TASK_CLASSES) for the index hip; the
    contralateral hip is normal, the same, or independently sampled (bilateral disease,
    hardware on one side and a native finding on the other).
    """
    w = task_weights(task, class_weights)
    index = str(rng.choice(SIDES))
    other = "L" if index == "R" else "R"
    hips = {index: _index_hip(task, str(_pick(rng, w)), rng),
            other: _contralateral_hip(task, w, class_weights, rng)}
    return hips, index


def _index_hip(task: str, cls: str, rng: np.random.Generator) -> HipSpec:
    if task == "hardware":
        return fill_hip(cls, rng)
    if task == "screening":
        return screening_hip(cls, rng)
    if task == "failure":
        hip = fill_hip("tha" if rng.random() < 0.75 else "tha_with_fixation", rng, task)
        hip.failure = cls
        return hip
    if task == "device":
        hip = fill_hip(DEVICE_BY_KEY[cls].hardware, rng, task)
        hip.device = cls
        return hip
    hip = fill_hip("no_hardware", rng, task)
    hip.onfh_grade = int(cls)
    hip.ddh = hip.ddh and hip.onfh_grade < 2
    return hip


def _contralateral_hip(task: str, w: Mapping[str, float],
                       class_weights: Mapping[str, float] | None,
                       rng: np.random.Generator) -> HipSpec:
    u = rng.random()
    if task == "hardware":
        if u < 0.15:
            return fill_hip(str(_pick(rng, w)), rng)
        if u < 0.6 and (class_weights is None or w.get("no_hardware", 0) > 0):
            return fill_hip("no_hardware", rng)
        return fill_hip(str(_pick(rng, w)), rng)
    if task == "screening":
        return screening_hip("normal" if u < 0.35 else str(rng.choice(SCREENING_CLASSES)), rng)
    if task == "onfh":
        if u < 0.15:
            return fill_hip(str(_pick(rng, {"tha": 0.7, "hemiarthroplasty": 0.3})), rng)
        return fill_hip("no_hardware", rng, task)
    if u < 0.3:  # failure: the other hip often has a THA too; device: another fixation
        return _index_hip(task, str(_pick(rng, w)), rng)
    if u < 0.8:
        return fill_hip("no_hardware", rng)
    return fill_hip(str(rng.choice(HARDWARE_KEYS)), rng)


def override_hips(hips: dict[str, HipSpec], index_side: str, rng: np.random.Generator, *,
                  task: str = "hardware",
                  hardware: Mapping[str, str] | None = None,
                  fracture: Mapping[str, str] | None = None,
                  displaced: Mapping[str, bool] | None = None,
                  dislocation: Mapping[str, bool] | None = None,
                  oa_grade: Mapping[str, int] | None = None,
                  onfh_grade: Mapping[str, int] | None = None,
                  ddh: Mapping[str, bool] | None = None,
                  failure: Mapping[str, str] | None = None,
                  device: Mapping[str, str] | None = None,
                  ) -> tuple[dict[str, HipSpec], str]:
    """Fix parts of the sampled ground truth per hip ({"R": ..., "L": ...}).

    `hardware` fixes both hips (a side left out has no hardware) and resamples their other
    labels; the index side becomes the first hip with hardware. Without it, a label that
    needs other hardware implies it (a device its class, a failure or dislocation a THA, a
    native finding a native hip), and a single overridden side becomes the index side.
    Raises ValueError for an impossible combination (e.g. ONFH on an arthroplasty hip, a
    failure on a non-THA hip).
    """
    per_hip = {"fracture": fracture, "fracture_displaced": displaced, "oa_grade": oa_grade,
               "onfh_grade": onfh_grade, "ddh": ddh, "failure": failure, "device": device}
    for name, values in [*per_hip.items(), ("dislocation", dislocation),
                         ("hardware", hardware)]:
        bad = set(values or {}) - set(SIDES)
        if bad:
            raise ValueError(f"{name}: sides must be 'R' or 'L', not {sorted(bad)}")
    hips = dict(hips)
    if hardware is not None:
        for s in SIDES:
            hips[s] = fill_hip(hardware.get(s, "no_hardware"), rng, task)
        index_side = next((s for s in SIDES if hips[s].hardware != "no_hardware"), index_side)
    else:
        for s in SIDES:
            implied = _implied_hardware(hips[s].hardware, s, per_hip, dislocation)
            if implied != hips[s].hardware:
                hips[s] = fill_hip(implied, rng, task)
        touched = {s for values in [*per_hip.values(), dislocation] for s in values or {}}
        if len(touched) == 1:  # single-hip views show the hip the caller asked about
            index_side = touched.pop()
    for s in SIDES:
        hip = hips[s]
        coin = bool(rng.random() < 0.55)
        if s in (fracture or {}):
            hip.fracture = fracture[s]  # type: ignore[index]
            hip.fracture_displaced = (hip.fracture != "none" and hip.hardware == "no_hardware"
                                      and coin)
        for name, values in per_hip.items():
            if name != "fracture" and s in (values or {}):
                value = values[s]  # type: ignore[index]
                setattr(hip, name, bool(value) if name in ("ddh", "fracture_displaced")
                        else value)
        if s in (dislocation or {}):
            if dislocation[s]:  # type: ignore[index]
                hip.failure = "dislocation"
            elif hip.failure == "dislocation":
                hip.failure = "none"
    for s in SIDES:
        check_hip(s, hips[s])
    return hips, index_side


def _implied_hardware(current: str, s: str, per_hip: Mapping[str, Mapping | None],
                      dislocation: Mapping[str, bool] | None) -> str:
    def given(name: str) -> object:
        return (per_hip[name] or {}).get(s)

    key = given("device")
    if key:
        return DEVICE_BY_KEY[key].hardware if key in DEVICE_BY_KEY else current
    if given("failure") or (dislocation or {}).get(s):
        return current if current in THA else "tha"
    native = (given("fracture") not in (None, "none") or given("fracture_displaced")
              or given("oa_grade") or given("onfh_grade") or given("ddh"))
    if native and current in ARTHROPLASTY:
        return "no_hardware"
    return current


_PROTOCOLS: dict[str, list[tuple[str, tuple[str, ...], float]]] = {
    # (study protocol, views; "lat" = a lateral view of the index hip, weight)
    "default": [("pelvis", ("ap_pelvis",), 0.3), ("pelvis_hip", ("ap_pelvis", "lat"), 0.25),
                ("hip", ("ap_hip", "lat"), 0.25), ("hip", ("ap_hip",), 0.1),
                ("pelvis_hip", ("ap_pelvis", "ap_hip", "lat"), 0.1)],
    "failure": [("pelvis_hip", ("ap_pelvis", "lat"), 0.35), ("hip", ("ap_hip", "lat"), 0.35),
                ("pelvis_hip", ("ap_pelvis", "ap_hip", "lat"), 0.15),
                ("pelvis", ("ap_pelvis",), 0.1), ("hip", ("ap_hip",), 0.05)],
    "device": [("pelvis", ("ap_pelvis",), 0.3), ("hip", ("ap_hip",), 0.25),
               ("hip", ("ap_hip", "lat"), 0.25), ("pelvis_hip", ("ap_pelvis", "lat"), 0.2)],
    "onfh": [("pelvis", ("ap_pelvis",), 0.6), ("hip", ("ap_hip",), 0.25),
             ("pelvis_hip", ("ap_pelvis", "ap_hip"), 0.15)],
}


def sample_views(rng: np.random.Generator, task: str = "hardware"
                 ) -> tuple[str, tuple[str, ...]]:
    """Study protocol ('pelvis', 'hip', 'pelvis_hip') and its views for a task."""
    protocols = _PROTOCOLS.get(task, _PROTOCOLS["default"])
    lateral = "frog_leg" if rng.random() < 0.5 else "cross_table_lateral"
    i = int(rng.choice(len(protocols), p=[p[2] for p in protocols]))
    protocol, views, _ = protocols[i]
    return protocol, tuple(lateral if v == "lat" else v for v in views)


def sample_age(rng: np.random.Generator, hips: Mapping[str, HipSpec]) -> int:
    """Patient age in years, adolescent to elderly, independent of the findings (open
    physes must not predict a label); only a hip with arthroplasty makes an adult."""
    band = str(_pick(rng, {"adolescent": 0.08, "young": 0.22, "middle": 0.35, "elderly": 0.35}))
    lo, hi = {"adolescent": (12, 18), "young": (18, 40), "middle": (40, 65),
              "elderly": (65, 96)}[band]
    age = float(rng.uniform(lo, hi))
    adult = float(rng.uniform(20, 45))
    if any(h.hardware in ARTHROPLASTY for h in hips.values()) and age < 20:
        age = adult
    return int(age)
