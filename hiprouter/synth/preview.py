"""Contact sheets of synthetic radiographs: one labelled image per class of a task.

- hardware: AP pelvis per hardware class on the right hip, with the full randomisation of
  processing and annotations (what training images look like);
- screening, onfh: the right hip of an AP pelvis, cropped around the femoral head;
- failure, device: AP hip of the right side.

The finding sheets use plain processing (`make_study(plain=True)`) so the finding, not the
console's look, is what differs between tiles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hiprouter.pipelines.hardware import HARDWARE as HARDWARE_CLASSES
from hiprouter.synth.labels import DEVICES, SCREENING_CLASSES, TASKS
from hiprouter.synth.study import SynthImage, make_study

_NATIVE = {"R": "no_hardware", "L": "no_hardware"}
_CLEAN = {"fracture": {"R": "none"}, "oa_grade": {"R": 0}, "onfh_grade": {"R": 0},
          "ddh": {"R": False}}
_SCREENING: dict[str, dict[str, Any]] = {
    "normal": {},
    "osteoarthritis": {"oa_grade": {"R": 4}},
    "osteonecrosis": {"onfh_grade": {"R": 3}},
    "femoral_neck_fracture": {"fracture": {"R": "femoral_neck_fracture"},
                              "displaced": {"R": True}},
    "intertrochanteric_fracture": {"fracture": {"R": "intertrochanteric_fracture"},
                                   "displaced": {"R": True}},
    "dysplasia": {"ddh": {"R": True}},
    "tha": {"hardware": {"R": "tha", "L": "no_hardware"}, "failure": {"R": "none"}},
    "internal_fixation": {"hardware": {"R": "dynamic_hip_screw", "L": "no_hardware"}},
}


def _cases(task: str) -> list[tuple[str, dict[str, Any], str]]:
    """(title, make_study keywords, how to show it: 'full' or 'head' crop) per class."""
    if task == "hardware":
        return [(f"R: {c.display}", {"views": ("ap_pelvis",), "hardware": {
            "R": c.key, "L": "no_hardware"}, "fracture": {"R": "none", "L": "none"}}, "full")
            for c in HARDWARE_CLASSES]
    if task == "screening":
        out = []
        for cls in SCREENING_CLASSES:
            kw = dict(_SCREENING[cls])
            if "hardware" not in kw:
                kw = {"hardware": _NATIVE, **_CLEAN, **kw}
            out.append((f"R: {cls}", {"views": ("ap_pelvis",), "plain": True, **kw}, "hip"))
        return out
    if task == "failure":
        return [(f"R THA: {f}", {"views": ("ap_hip",), "side": "R", "plain": True,
                                 "hardware": {"R": "tha"}, "failure": {"R": f}}, "implant")
                for f in ("none", "infection", "loosening", "dislocation",
                          "periprosthetic_fracture", "wear")]
    if task == "device":
        return [(f"R: {d.key}", {"views": ("ap_hip",), "side": "R", "plain": True,
                                 "device": {"R": d.key}}, "implant") for d in DEVICES]
    if task == "onfh":
        return [(f"R: ONFH grade {g}", {"views": ("ap_pelvis",), "plain": True,
                                        "hardware": _NATIVE, **_CLEAN,
                                        "onfh_grade": {"R": g}}, "head") for g in range(5)]
    raise ValueError(f"unknown task {task!r}; choose from {TASKS}")


def _show(img: SynthImage, how: str) -> Image.Image:
    pic = Image.fromarray((img.display * 255).astype(np.uint8))
    if how == "full":
        return pic
    if how == "implant":
        rows, cols = np.nonzero(img.implant_mask())
        pad = int(0.12 * max(img.display.shape))
        return pic.crop((int(cols.min()) - pad, int(rows.min()) - pad,
                         int(cols.max()) + pad, int(rows.max()) + pad))
    right = next(r for r in img.labels if r["laterality"] == "R")
    x, y = float(right["hip_x"]), float(right["hip_y"])
    half = int(max(img.display.shape) * (0.16 if how == "hip" else 0.09))
    return pic.crop((int(x) - half, int(y) - half, int(x) + half, int(y) + half))


_LAYOUT = {  # columns, tile width and height as fractions of `tile`
    "hardware": (3, 1.0, 0.8), "screening": (4, 0.9, 0.9), "failure": (6, 0.7, 1.3),
    "device": (6, 0.7, 1.3), "onfh": (5, 0.8, 0.8),
}


def example_sheet(task: str = "hardware", seed: int = 0, tile: int = 330) -> Image.Image:
    """Grey-scale sheet, one labelled tile per class of a task on the patient's right hip."""
    cases = _cases(task)
    columns, fw, fh = _LAYOUT[task]
    w, h = int(tile * fw), int(tile * fh)
    font = ImageFont.load_default(size=max(10, tile // 24))
    label_h = tile // 12
    rows = -(-len(cases) // columns)
    sheet = Image.new("L", (columns * w, rows * (h + label_h)), 0)
    draw = ImageDraw.Draw(sheet)
    for i, (title, kwargs, how) in enumerate(cases):
        size = {"full": 2, "implant": 3}.get(how, 4) * tile
        # the finding sheets show one patient, so only the finding differs between tiles
        index = i if task == "hardware" else 0
        study = make_study(seed, index, task=task, size=(size, size), **kwargs)
        pic = _show(study.images[0], how)
        pic.thumbnail((w - 4, h), Image.Resampling.LANCZOS)
        x0, y0 = (i % columns) * w, (i // columns) * (h + label_h)
        sheet.paste(pic, (x0 + (w - pic.width) // 2, y0 + (h - pic.height) // 2))
        draw.text((x0 + 6, y0 + h + 2), title, fill=255, font=font)
    draw.text((sheet.width // 2 - 4 * tile // 10, 4), "SYNTHETIC - NOT PATIENT DATA", fill=255,
              font=font)
    return sheet


def write_example_sheet(path: Path, seed: int = 0, tile: int = 330,
                        task: str = "hardware") -> Path:
    """Write the contact sheet of a task as an optimised PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example_sheet(task, seed, tile).save(path, optimize=True)
    return path
