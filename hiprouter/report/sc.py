"""Secondary Capture overlays: the CAM heat map blended over each source radiograph.

One RGB 8-bit SC per source radiograph, with a burned-in label per hip (class, probability),
the model name and version, "NOT FOR DIAGNOSTIC USE" and, for demo weights, "SYNTHETIC DEMO
MODEL". For an AP pelvis each hip's label sits on that hip's side of the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from hiprouter.inference.classes import class_by_key
from hiprouter.inference.results import HipResult, ImageHeatmap, ModelInfo
from hiprouter.report.header import paired_body_part
from hiprouter.report.sr import algorithm_equipment_for

SC_SERIES_NUMBER = 9902
SC_SERIES_DESCRIPTION = "AI HEAT MAP OVERLAY - NOT FOR DIAGNOSTIC USE"
MAX_SIDE = 2048
"""Longest side of an SC in pixels; larger radiographs are downscaled."""
OVERLAY_OPACITY = 0.55
"""Opacity of the colour map where the heat map is 1 (it fades to 0 with the heat)."""
COLORMAP = "jet"
SOURCE_IMAGE_PURPOSE = hd.sr.CodedConcept(
    "121322", "DCM", "Source image for image processing operation")


def blend(display: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """RGB uint8: the greyscale image with the colour-mapped heat map over it."""
    grey = np.repeat(display.astype(np.float32)[..., None], 3, axis=2)
    heat = np.clip(np.nan_to_num(heatmap.astype(np.float32)), 0.0, 1.0)
    colour = colormaps[COLORMAP](heat)[..., :3].astype(np.float32) * 255.0
    alpha = (OVERLAY_OPACITY * heat)[..., None]
    return np.clip(grey * (1 - alpha) + colour * alpha + 0.5, 0, 255).astype(np.uint8)


def _fit(heat: ImageHeatmap) -> tuple[np.ndarray, np.ndarray]:
    """Display image and heat map at the same size, the longest side at most MAX_SIDE."""
    display, heatmap = heat.display_image, heat.heatmap.astype(np.float32)
    if display.ndim != 2 or display.dtype != np.uint8:
        raise ValueError(f"display image of {heat.sop_instance_uid} must be 2-D uint8")
    rows, cols = display.shape
    scale = min(1.0, MAX_SIDE / max(rows, cols))
    size = (max(1, round(cols * scale)), max(1, round(rows * scale)))  # PIL: (width, height)
    if scale < 1.0:
        display = np.asarray(Image.fromarray(display).resize(size, Image.Resampling.LANCZOS))
    if heatmap.shape != display.shape:
        heatmap = np.asarray(Image.fromarray(heatmap).resize(
            size, Image.Resampling.BILINEAR))
    return display, heatmap


def hip_label(hip: HipResult) -> str:
    """The burned-in label of one hip, e.g. ``R: Total hip arthroplasty 0.93``."""
    try:
        name = class_by_key(hip.predicted_class).display
    except KeyError:
        name = hip.predicted_class
    side = {"R": "R", "L": "L"}.get(hip.laterality, "?")
    return f"{side}: {name} {hip.probability:.2f}"


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


def render_overlay(heat: ImageHeatmap, hips: Sequence[HipResult], model: ModelInfo,
                   source: Dataset) -> np.ndarray:
    """The labelled RGB overlay of one radiograph."""
    display, heatmap = _fit(heat)
    image = Image.fromarray(blend(display, heatmap))
    width, height = image.size
    font = ImageFont.load_default(size=max(10, min(width, height) // 28))
    draw = ImageDraw.Draw(image)
    margin = max(4, min(width, height) // 60)
    right_left = _right_on_image_left(source)

    line = font.size * 1.4 if isinstance(font, ImageFont.FreeTypeFont) else 14
    sided = [h for h in hips if h.laterality in ("R", "L")]
    labels = [hip_label(h) for h in sided]
    # Two labels that would overlap go on separate lines, each still on its hip's side.
    stacked = len(sided) == 2 and sum(draw.textlength(t, font=font) for t in labels) + (
        4 * margin) > width
    for i, (hip, text) in enumerate(zip(sided, labels, strict=True)):
        on_left = (hip.laterality == "R") == right_left
        x, anchor = (margin, "la") if on_left else (width - margin, "ra")
        if len(sided) == 1:
            x, anchor = width / 2, "ma"
        _draw_label(draw, (x, margin + (line * i if stacked else 0)), text, font, anchor)
    first_free = (2 if stacked else 1) if sided else 0
    for i, hip in enumerate(h for h in hips if h.laterality not in ("R", "L")):
        _draw_label(draw, (width / 2, margin + line * (first_free + i)), hip_label(hip), font,
                    "ma")

    footer = [f"AI: {model.name} {model.version}", "NOT FOR DIAGNOSTIC USE"]
    if model.synthetic_demo:
        footer.insert(1, "SYNTHETIC DEMO MODEL")
    for i, text in enumerate(reversed(footer)):
        _draw_label(draw, (margin, height - margin - line * i), text, font, "ld")
    return np.asarray(image)


def _orientation(source: Dataset) -> tuple[str, str] | None:
    values = [str(v) for v in (source.get("PatientOrientation") or [])]
    return (values[0], values[1]) if len(values) == 2 and all(values) else None


def build_sc(heat: ImageHeatmap, hips: Sequence[HipResult], model: ModelInfo, source: Dataset,
             *, series_uid: str, sop_uid: str, instance_number: int,
             series_description: str = SC_SERIES_DESCRIPTION,
             series_laterality: str = "") -> hd.sc.SCImage:
    """The Secondary Capture of one radiograph, in the source's study.

    ``source`` should be a `header.source_header`; ``series_laterality`` (R, L or "" for
    unknown) is written unless the body part is a known unpaired one, as the General Series
    module requires.
    """
    if str(source.SOPInstanceUID) != heat.sop_instance_uid:
        raise ValueError("build_sc: heat map and source radiograph differ")
    pixels = render_overlay(heat, hips, model, source)
    orientation = _orientation(source)
    equipment = algorithm_equipment_for(model, "AI heat map overlay")
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_uid,
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=instance_number,
        manufacturer=model.manufacturer[:64],
        patient_orientation=orientation or ("L", "F"),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        series_description=series_description[:64],
        contributing_equipment=[equipment],
        specific_character_set="ISO_IR 192",
    )
    sc.copy_patient_and_study_information(source)  # all of Patient and General Study
    if orientation is None:
        sc.PatientOrientation = None  # Type 2: unknown, never guessed
    sc.ConversionType = "WSD"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.RecognizableVisualFeatures = "NO"
    sc.LossyImageCompression = "00"
    sc.DerivationDescription = (
        f"CAM heat map of AI model {model.name} {model.version} ({model.architecture}) "
        "blended over the source radiograph; not for diagnostic use")[:1024]
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
