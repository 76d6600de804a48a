"""Contact sheet of synthetic radiographs: one AP pelvis per hardware class (right hip)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hiprouter.inference.classes import HARDWARE_CLASSES
from hiprouter.synth.study import make_study


def example_sheet(seed: int = 0, tile: int = 330, columns: int = 3,
                  view: str = "ap_pelvis") -> Image.Image:
    """Grey-scale sheet, one labelled tile per hardware class on the patient's right hip."""
    font = ImageFont.load_default(size=max(10, tile // 22))
    tiles = []
    for i, cls in enumerate(HARDWARE_CLASSES):
        study = make_study(seed, i, views=(view,), side="R", size=(tile * 2, tile * 2),
                           hardware={"R": cls.key, "L": "no_hardware"},
                           fracture={"R": "none", "L": "none"})
        img = Image.fromarray((study.images[0].display * 255).astype(np.uint8))
        img.thumbnail((tile, tile * 4 // 5), Image.Resampling.LANCZOS)
        canvas = Image.new("L", (tile, tile * 4 // 5 + tile // 12), 0)
        canvas.paste(img, ((tile - img.width) // 2, 0))
        ImageDraw.Draw(canvas).text((6, tile * 4 // 5 + 2), f"R: {cls.display}", fill=255,
                                    font=font)
        tiles.append(canvas)
    rows = -(-len(tiles) // columns)
    w, h = tiles[0].size
    sheet = Image.new("L", (columns * w, rows * h), 0)
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % columns) * w, (i // columns) * h))
    ImageDraw.Draw(sheet).text((sheet.width // 2 - 4 * tile // 10, 4),
                               "SYNTHETIC - NOT PATIENT DATA", fill=255, font=font)
    return sheet


def write_example_sheet(path: Path, seed: int = 0, tile: int = 330) -> Path:
    """Write the contact sheet as an optimised PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example_sheet(seed, tile).save(path, optimize=True)
    return path
