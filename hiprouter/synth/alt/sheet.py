"""Labelled contact sheets of the alt renderer: one image per hardware class, and one per
finding (fractures, OA, ONFH, dysplasia, THA failures, devices, lateral views)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hiprouter.synth.alt.sample import screening_class
from hiprouter.synth.alt.study import make_alt_study
from hiprouter.synth.alt.truth import DEVICES, HARDWARE, HipTruth, PatientTruth

Example = tuple[str, str, dict[str, object]]
"""(caption, view, HipTruth fields of the right hip)."""


def _truth(fields: dict[str, object]) -> HipTruth:
    f = dict(fields)
    hw = str(f.get("hardware", "no_hardware"))
    if hw in ("tha", "tha_with_fixation"):
        f.setdefault("failure", "none")
    if hw in DEVICES.values() and "device" not in f:
        f["device"] = next(d for d, h in DEVICES.items() if h == hw)
        f.setdefault("fracture", "intertrochanteric_fracture"
                     if hw in ("im_nail", "dynamic_hip_screw") else "femoral_neck_fracture")
    f["dislocation"] = int(f.get("failure") == "dislocation")
    f["screening"] = screening_class(hw, str(f.get("fracture", "none")),
                                     int(f.get("onfh_grade", 0)), int(f.get("ddh", 0)),
                                     int(f.get("oa_grade", 0)))
    return HipTruth(**f)


HARDWARE_EXAMPLES: tuple[Example, ...] = tuple(
    (key.replace("_", " "), "ap_hip", {"hardware": key}) for key in HARDWARE)

FINDING_EXAMPLES: tuple[Example, ...] = (
    ("neck fracture, undisplaced", "ap_hip", {"fracture": "femoral_neck_fracture"}),
    ("neck fracture, displaced", "ap_hip", {"fracture": "femoral_neck_fracture",
                                            "fracture_displaced": 1}),
    ("intertrochanteric, displaced", "ap_hip", {"fracture": "intertrochanteric_fracture",
                                                "fracture_displaced": 1}),
    ("OA grade 2", "ap_hip", {"oa_grade": 2}),
    ("OA grade 4", "ap_hip", {"oa_grade": 4}),
    ("ONFH grade 2", "ap_hip", {"onfh_grade": 2}),
    ("ONFH grade 3", "ap_hip", {"onfh_grade": 3}),
    ("ONFH grade 4", "ap_hip", {"onfh_grade": 4}),
    ("dysplasia", "ap_pelvis", {"ddh": 1}),
    ("THA loosening", "ap_hip", {"hardware": "tha", "failure": "loosening"}),
    ("THA wear", "ap_hip", {"hardware": "tha", "failure": "wear"}),
    ("THA periprosthetic fracture", "ap_hip", {"hardware": "tha",
                                               "failure": "periprosthetic_fracture"}),
    ("THA dislocation", "ap_hip", {"hardware": "tha", "failure": "dislocation"}),
    ("THA infection", "ap_hip", {"hardware": "tha", "failure": "infection"}),
    *((d.replace("_", " "), "ap_hip", {"hardware": h, "device": d})
      for d, h in DEVICES.items() if h != "cannulated_screws" and d != "cmn_lag_screw"),
    ("frog leg", "frog_leg", {}),
    ("cross-table lateral", "cross_table_lateral", {}),
    ("cross-table lateral, THA", "cross_table_lateral", {"hardware": "tha"}),
)


def example_sheet(examples: tuple[Example, ...], seed: int = 0, tile: int = 300,
                  columns: int = 4) -> Image.Image:
    """Grey-scale sheet with one captioned tile per example (the right hip)."""
    font = ImageFont.load_default(size=max(10, tile // 20))
    rows = -(-len(examples) // columns)
    cap = tile // 12
    sheet = Image.new("L", (columns * tile, rows * (tile + cap)), 0)
    draw = ImageDraw.Draw(sheet)
    for i, (caption, view, fields) in enumerate(examples):
        truth = PatientTruth(74.0, "F", {"R": _truth(fields), "L": HipTruth()}, "R")
        study = make_alt_study(seed, i, views=(view,), size=(tile * 2, tile * 2), truth=truth)
        img = Image.fromarray((study.images[0].display * 255).astype(np.uint8))
        img.thumbnail((tile, tile))
        x, y = (i % columns) * tile, (i // columns) * (tile + cap)
        sheet.paste(img, (x + (tile - img.width) // 2, y + cap))
        draw.text((x + 4, y + 1), caption, fill=255, font=font)
    return sheet


def write_example_sheets(hardware_path: Path, findings_path: Path, seed: int = 0) -> None:
    """The two documentation sheets (docs/img/synth_alt_*.png)."""
    for path, examples in ((hardware_path, HARDWARE_EXAMPLES),
                           (findings_path, FINDING_EXAMPLES)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        example_sheet(examples, seed, columns=3 if examples is HARDWARE_EXAMPLES else 5).save(path)
