"""Markers and annotations on synthetic radiographs.

`marker_mask` is the lead side marker, a physical object in the beam (the image former
adds it to the attenuation). `burn_in` draws what consoles and PACS workstations burn into
the pixels: dates, institution and technique text, rulers, arrows. None of it depends on the
labels, and no text names a side.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hiprouter.synth.canvas import Array

_FONT_CACHE: dict[int, ImageFont.FreeTypeFont | ImageFont.ImageFont] = {}
_TEXTS = ("SYNTHETIC HOSPITAL", "RADIOLOGY", "DEPT OF IMAGING", "XR ROOM {n}", "SUPINE",
          "AP", "PORTABLE", "ERECT", "{kv} kV  {mas} mAs", "S {s}  L {l}", "EI {ei}",
          "TECH: {t}", "ACC {acc}", "HIPROUTER SYNTH", "NOT FOR DIAGNOSIS", "COPY")


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if size not in _FONT_CACHE:
        _FONT_CACHE[size] = ImageFont.load_default(size=size)
    return _FONT_CACHE[size]


def marker_mask(shape: tuple[int, int], text: str, corner: str, size_px: int, margin_px: int,
                boxed: bool) -> tuple[Array, tuple[int, int, int, int]]:
    """Mask of a lead letter marker in a corner ('tl', 'tr', 'bl', 'br'); and its box
    (x0, y0, x1, y1) in pixels."""
    img = Image.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(img)
    f = font(size_px)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=f)
    w, h = right - left + size_px // 2, bottom - top + size_px // 2
    x0 = margin_px if corner[1] == "l" else shape[1] - margin_px - w
    y0 = margin_px if corner[0] == "t" else shape[0] - margin_px - h
    if boxed:
        draw.rectangle([x0, y0, x0 + w, y0 + h], outline=255, width=max(1, size_px // 10))
    draw.text((x0 + size_px // 4 - left, y0 + size_px // 4 - top), text, font=f, fill=255)
    return np.asarray(img, np.float32) / 255.0, (x0, y0, x0 + w + 1, y0 + h + 1)


def _text(rng: np.random.Generator, when: str) -> str:
    if rng.random() < 0.3:
        return when
    t = str(rng.choice(_TEXTS))
    return t.format(n=int(rng.integers(1, 9)), kv=int(rng.integers(60, 95)),
                    mas=int(rng.integers(5, 60)), s=int(rng.integers(50, 900)),
                    l=round(float(rng.uniform(0.8, 2.6)), 1), ei=int(rng.integers(150, 2500)),
                    t="".join(rng.choice(list("ABCDEFGHJKMNPRSTW"), 2)),
                    acc=int(rng.integers(10**6, 10**7)))


def burn_in(display: Array, rng: np.random.Generator, when: str,
            avoid: tuple[int, int, int, int] | None = None) -> bool:
    """Burn annotations into a display image in [0, 1] in place: text lines in corners,
    sometimes a ruler along an edge and arrows. Returns whether anything was drawn.

    avoid: a box (x0, y0, x1, y1) kept free (the lead marker)."""
    rows, cols = display.shape
    n_text = int(rng.choice([0, 0, 1, 2, 3, 4]))
    ruler = rng.random() < 0.15
    n_arrows = int(rng.choice([0, 0, 0, 0, 1, 2]))
    if not (n_text or ruler or n_arrows):
        return False
    img = Image.new("L", (cols, rows), 0)
    draw = ImageDraw.Draw(img)
    size = max(8, int(min(rows, cols) * rng.uniform(0.018, 0.035)))
    f = font(size)
    corners = rng.permutation(["tl", "tr", "bl", "br"])
    for i in range(n_text):
        corner = corners[i % 4]
        line = _text(rng, when)
        w = int(draw.textlength(line, font=f))
        offset = (i // 4) * int(size * 1.3)
        x = int(cols * 0.02) if corner[1] == "l" else cols - w - int(cols * 0.02)
        y = (int(rows * 0.02) + offset if corner[0] == "t"
             else rows - int(rows * 0.02) - size - offset)
        if avoid is not None and _overlaps((x, y, x + w, y + size), avoid):
            y = y + (2 * size if corner[0] == "t" else -2 * size)
        draw.text((x, y), line, font=f, fill=255)
    if ruler:
        vertical = rng.random() < 0.5
        length = int((rows if vertical else cols) * rng.uniform(0.3, 0.7))
        pos = int((cols if vertical else rows) * rng.uniform(0.05, 0.12))
        start = int((rows if vertical else cols) * rng.uniform(0.1, 0.25))
        step = max(4, length // int(rng.integers(8, 20)))
        for k in range(0, length + 1, step):
            tick = size // 2 if (k // step) % 5 else size
            if vertical:
                draw.line([(pos, start + k), (pos + tick, start + k)], fill=255, width=1)
            else:
                draw.line([(start + k, pos), (start + k, pos + tick)], fill=255, width=1)
        end = (pos, start + length) if vertical else (start + length, pos)
        draw.line([(pos, start) if vertical else (start, pos), end], fill=255,
                  width=max(1, size // 8))
    for _ in range(n_arrows):
        tip = np.array([rng.uniform(0.15, 0.85) * cols, rng.uniform(0.15, 0.85) * rows])
        a = rng.uniform(0, 2 * np.pi)
        d = np.array([np.cos(a), np.sin(a)])
        tail = tip + d * size * rng.uniform(3, 6)
        n = np.array([-d[1], d[0]])
        head = [tuple(tip), tuple(tip + d * size + n * size * 0.5),
                tuple(tip + d * size - n * size * 0.5)]
        draw.line([tuple(tip), tuple(tail)], fill=255, width=max(1, size // 6))
        draw.polygon(head, fill=255)
    mask = np.asarray(img, np.float32) / 255.0
    level = 1.0 if rng.random() < 0.8 else float(rng.choice([0.0, 0.6]))
    display[:] = display * (1 - mask) + level * mask
    return True


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
