"""Secondary Capture overlays: every pipeline's findings over each source radiograph.

One RGB 8-bit SC per source radiograph: one heat map (of the first pipeline in
``report.heatmap_pipelines`` that has one for the image), outlines of region findings
(e.g. femoral heads), a burned-in label line per hip and pipeline (class, probability),
the models, "NOT FOR DIAGNOSTIC USE" and, for demo weights, "SYNTHETIC DEMO MODEL". For an
AP pelvis each hip's labels sit on that hip's side of the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import highdicom as hd
import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from hiprouter.findings import Finding, ModelInfo, Vocabulary
from hiprouter.report.header import paired_body_part
from hiprouter.report.sr import algorithm_equipment_for

SC_SERIES_NUMBER = 9902
SC_SERIES_DESCRIPTION = "AI HEAT MAP OVERLAY - NOT FOR DIAGNOSTIC USE"
MAX_SIDE = 1024
"""Default longest side of an SC in pixels (report.sc_max_side); larger radiographs are
downscaled."""
TRANSFER_SYNTAXES = {"none": ExplicitVRLittleEndian, "jpeg-ls": JPEGLSLossless,
                     "jpeg2000": JPEG2000Lossless, "rle": RLELossless}
"""report.sc_compression -> the SC's transfer syntax (all lossless)."""
OVERLAY_OPACITY = 0.55
"""Opacity of the colour map where the heat map is 1 (it fades to 0 with the heat)."""
COLORMAP = "jet"
SOURCE_IMAGE_PURPOSE = hd.sr.CodedConcept(
    "121322", "DCM", "Source image for image processing operation")


HEAT_LEVELS = 256
"""The heat map is drawn in this many levels (the colour map's own resolution)."""


@lru_cache(maxsize=4)
def _blend_tables(colormap: str, opacity: float) -> tuple[np.ndarray, np.ndarray]:
    """Per heat level, in 1/256 units: 1 - alpha (uint32) and alpha * colour (RGB, uint32)."""
    heat = np.linspace(0.0, 1.0, HEAT_LEVELS, dtype=np.float64)
    colour = colormaps[colormap](heat)[:, :3] * 255.0
    alpha = opacity * heat
    keep = np.round((1.0 - alpha) * 256).astype(np.uint32)
    coloured = np.round(colour * alpha[:, None] * 256).astype(np.uint32)
    return keep, coloured


def blend(display: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """RGB uint8: the greyscale image with the colour-mapped heat map over it.

    The heat is quantised to the colour map's 256 levels and blended through per-level
    tables in integer arithmetic (1/256 steps): 10-20 times faster than colour-mapping
    every pixel in float, within one grey level of it; the (grey, level) -> RGB table is
    precomputed, so the blend itself is one lookup per pixel.
    """
    heat = np.clip(np.nan_to_num(heatmap.astype(np.float32, copy=False)), 0.0, 1.0)
    level = (heat * (HEAT_LEVELS - 1) + 0.5).astype(np.uint16)
    index = display.astype(np.uint16) << 8
    index |= level
    return np.take(_blend_lookup(COLORMAP, OVERLAY_OPACITY), index, axis=0)


@lru_cache(maxsize=4)
def _blend_lookup(colormap: str, opacity: float) -> np.ndarray:
    """(256 * HEAT_LEVELS, 3) uint8: the blended colour of every (grey, heat level) pair,
    row grey * 256 + level, so blending an image is one table lookup per pixel."""
    keep, coloured = _blend_tables(colormap, opacity)
    grey = np.arange(256, dtype=np.uint32)[:, None] * keep[None, :]  # (grey, level)
    out = (grey[..., None] + coloured[None, :, :] + 128) >> 8
    table = np.minimum(out, 255).astype(np.uint8).reshape(256 * HEAT_LEVELS, 3)
    table.setflags(write=False)
    return table


@dataclass
class Overlay:
    """What the SC of one radiograph shows."""

    sop_instance_uid: str
    display_image: np.ndarray
    """uint8 greyscale rendering of the source (VOI/window applied, MONOCHROME2)."""
    heatmap: np.ndarray | None
    """float32 [0, 1] in source geometry or already at the SC's size (`display_size`), or
    None (no heat map drawn)."""
    labels: dict[str, list[str]] = field(default_factory=dict)
    """Laterality (R, L, U) -> label lines, e.g. ``["Total hip arthroplasty 0.93"]``."""
    outlines: list[np.ndarray] = field(default_factory=list)
    """(N, 2) polylines (column, row) in source pixels, drawn as closed outlines."""
    heatmap_from: str = ""
    """Which pipeline's heat map is drawn (named in the footer)."""


def display_size(shape: tuple[int, int], max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(rows, columns) of the SC of a source image of `shape` (longest side <= max_side)."""
    rows, cols = shape
    scale = min(1.0, max_side / max(rows, cols))
    return max(1, round(rows * scale)), max(1, round(cols * scale))


def _fit(overlay: Overlay, max_side: int = MAX_SIDE) -> tuple[np.ndarray, np.ndarray, float]:
    """Display image and heat map at the same size (longest side at most max_side), scale."""
    display = overlay.display_image
    if display.ndim != 2 or display.dtype != np.uint8:
        raise ValueError(f"display image of {overlay.sop_instance_uid} must be 2-D uint8")
    rows, cols = display.shape
    scale = min(1.0, max_side / max(rows, cols))
    out_rows, out_cols = display_size((rows, cols), max_side)
    if scale < 1.0:
        display = np.asarray(Image.fromarray(display).resize((out_cols, out_rows),
                                                             Image.Resampling.LANCZOS))
    if overlay.heatmap is None:
        return display, np.zeros(display.shape, np.float32), scale
    heatmap = overlay.heatmap.astype(np.float32, copy=False)
    if heatmap.shape != display.shape:
        heatmap = np.asarray(Image.fromarray(heatmap).resize(
            (out_cols, out_rows), Image.Resampling.BILINEAR))
    return display, heatmap, scale


def finding_label(finding: Finding, vocabulary: Vocabulary) -> str:
    """The burned-in words for one finding, e.g. ``Total hip arthroplasty 0.93``."""
    c = finding.classification
    if c is None:
        return finding.pipeline.replace("_", " ")
    if c.status == "not_assessed":
        return f"{finding.pipeline}: not assessed"
    if c.status == "indeterminate":
        return f"{finding.pipeline}: indeterminate"
    text = f"{vocabulary.display(c.predicted)} {c.probability:.2f}"
    stage = finding.qualifiers.get("label")
    return f"{text} ({stage})" if stage else text


def _right_on_image_left(source: Dataset) -> bool:
    """Whether the patient's right is on the image's left (the usual AP display)."""
    orientation = [str(v) for v in (source.get("PatientOrientation") or [])]
    return not (orientation and orientation[0].startswith("R"))


def _draw_label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str,
                font: ImageFont.FreeTypeFont | ImageFont.ImageFont, anchor: str) -> None:
    box = draw.textbbox(xy, text, font=font, anchor=anchor)
    pad = max(2, (box[3] - box[1]) // 5)
    draw.rectangle((box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad), fill=(0, 0, 0))
    draw.text(xy, text, font=font, fill=(255, 255, 255), anchor=anchor)


def render_overlay(overlay: Overlay, models: Sequence[ModelInfo], source: Dataset,
                   max_side: int = MAX_SIDE) -> np.ndarray:
    """The labelled RGB overlay of one radiograph."""
    display, heatmap, scale = _fit(overlay, max_side)
    image = Image.fromarray(blend(display, heatmap))
    width, height = image.size
    font = ImageFont.load_default(size=max(10, min(width, height) // 32))
    draw = ImageDraw.Draw(image)
    for outline in overlay.outlines:
        pts = [(float(x) * scale, float(y) * scale) for x, y in outline]
        if len(pts) >= 2:
            draw.line(pts + pts[:1], fill=(255, 255, 0), width=max(1, width // 400))
    margin = max(4, min(width, height) // 60)
    right_left = _right_on_image_left(source)
    line = font.size * 1.4 if isinstance(font, ImageFont.FreeTypeFont) else 14
    sided = [s for s in ("R", "L") if overlay.labels.get(s)]
    for side in sided:
        on_left = (side == "R") == right_left
        x, anchor = (margin, "la") if on_left else (width - margin, "ra")
        if len(sided) == 1:
            x, anchor = width / 2, "ma"
        for i, text in enumerate(overlay.labels[side]):
            _draw_label(draw, (x, margin + line * i), f"{side}: {text}", font, anchor)
    first_free = max((len(overlay.labels[s]) for s in sided), default=0)
    for i, text in enumerate(overlay.labels.get("U", [])):
        _draw_label(draw, (width / 2, margin + line * (first_free + i)), f"?: {text}", font,
                    "ma")
    names = ", ".join(f"{m.name} {m.version}" for m in models)
    footer = [f"AI: {names}"[:120], "NOT FOR DIAGNOSTIC USE"]
    if overlay.heatmap_from:
        footer.insert(1, f"heat map: {overlay.heatmap_from}")
    if any(m.synthetic_demo for m in models):
        footer.insert(1, "SYNTHETIC DEMO MODEL")
    for i, text in enumerate(reversed(footer)):
        _draw_label(draw, (margin, height - margin - line * i), text, font, "ld")
    return np.asarray(image)


def _orientation(source: Dataset) -> tuple[str, str] | None:
    """The source's Patient Orientation (two values, each one or more of A P L R H F)."""
    values = [str(v).strip().upper() for v in (source.get("PatientOrientation") or [])]
    if len(values) == 2 and all(v and set(v) <= set("APLRHF") for v in values):
        return values[0], values[1]
    return None


_SIMPLE = frozenset("APLRHF")


def build_sc(overlay: Overlay, models: Sequence[ModelInfo], source: Dataset, *,
             series_uid: str, sop_uid: str, instance_number: int,
             series_description: str = SC_SERIES_DESCRIPTION,
             series_laterality: str = "", compression: str = "none",
             max_side: int = MAX_SIDE) -> hd.sc.SCImage:
    """The Secondary Capture of one radiograph, in the source's study.

    ``compression`` is a key of TRANSFER_SYNTAXES (lossless only: the SC shows the source's
    pixels under the overlay); ``max_side`` caps its longest side.

    ``source`` should be a `header.source_header`; ``series_laterality`` (R, L or "" for
    unknown) is written unless the body part is a known unpaired one, as the General Series
    module requires.
    """
    if str(source.SOPInstanceUID) != overlay.sop_instance_uid:
        raise ValueError("build_sc: overlay and source radiograph differ")
    pixels = render_overlay(overlay, models, source, max_side)
    orientation = _orientation(source)
    equipment = [algorithm_equipment_for(m, "AI heat map overlay") for m in models]
    manufacturer = models[0].manufacturer[:64] if models else "hiprouter project"
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        # JPEG 2000 lossless codes RGB with the reversible colour transform
        photometric_interpretation="YBR_RCT" if compression == "jpeg2000" else "RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_uid,
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=instance_number,
        manufacturer=manufacturer,
        # highdicom accepts single letters only; combined ones (FR, HR on rotated or
        # cross-table views) are valid DICOM and are written after construction.
        patient_orientation=orientation if orientation and all(
            v in _SIMPLE for v in orientation) else ("L", "F"),
        transfer_syntax_uid=TRANSFER_SYNTAXES[compression],
        series_description=series_description[:64],
        contributing_equipment=equipment,
        specific_character_set="ISO_IR 192",
    )
    sc.copy_patient_and_study_information(source)  # all of Patient and General Study
    sc.PatientOrientation = list(orientation) if orientation else None  # Type 2: never guessed
    sc.ConversionType = "WSD"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.RecognizableVisualFeatures = "NO"
    sc.LossyImageCompression = "00"
    names = ", ".join(f"{m.name} {m.version} ({m.architecture})" for m in models)
    sc.DerivationDescription = (
        f"AI findings of {names}, with the heat map of {overlay.heatmap_from or 'no model'}, "
        "over the source radiograph; not for diagnostic use")[:1024]
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    item.PurposeOfReferenceCodeSequence = [SOURCE_IMAGE_PURPOSE]
    sc.SourceImageSequence = [item]
    if source.get("BodyPartExamined"):
        sc.BodyPartExamined = source.BodyPartExamined
    if paired_body_part(source):
        sc.Laterality = series_laterality if series_laterality in ("R", "L") else None
    return sc
