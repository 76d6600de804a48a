"""The DICOM Segmentation of a study's mask findings, built with highdicom.

One binary SEG per source radiograph that has masks: one segment per mask (e.g. each
femoral head), its property type from the finding (SCT femoral head), the laterality as a
property type modifier, the algorithm that made it, referencing the radiograph.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from hiprouter.findings import Mask, ModelInfo
from hiprouter.report.sr import LATERALITY, algorithm_equipment_for, concept

SEG_SERIES_NUMBER = 9904
SEG_SERIES_DESCRIPTION = "AI SEGMENTATION - NOT FOR DIAGNOSTIC USE"
SEGMENTATION_FAMILY = hd.sr.CodedConcept("123109", "DCM", "Segmentation")


def build_seg(source: Dataset, masks: Sequence[tuple[Mask, str, ModelInfo]], *,
              series_uid: str, sop_uid: str, instance_number: int,
              series_description: str = SEG_SERIES_DESCRIPTION) -> hd.seg.Segmentation:
    """A binary SEG of one radiograph; ``masks`` are (mask, laterality, model) triples.

    ``source`` should be a `header.source_header` with its pixel data (highdicom reads the
    geometry from it).
    """
    if not masks:
        raise ValueError("build_seg: no mask to encode")
    rows, cols = int(source.Rows), int(source.Columns)
    pixels = np.zeros((1, rows, cols, len(masks)), dtype=bool)
    descriptions = []
    for n, (mask, side, model) in enumerate(masks, start=1):
        if mask.sop_instance_uid != str(source.SOPInstanceUID):
            raise ValueError("build_seg: a mask belongs to another image")
        if mask.mask.shape != (rows, cols):
            raise ValueError(f"build_seg: mask {mask.label!r} is {mask.mask.shape}, "
                             f"image is {(rows, cols)}")
        pixels[0, :, :, n - 1] = mask.mask.astype(bool)
        desc = hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=mask.label[:64],
            segmented_property_category=concept(mask.category),
            segmented_property_type=concept(mask.property_type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name=model.name[:64], version=model.version[:64], family=SEGMENTATION_FAMILY),
        )
        if side in LATERALITY:
            item = desc.SegmentedPropertyTypeCodeSequence[0]
            item.SegmentedPropertyTypeModifierCodeSequence = [LATERALITY[side]]
        descriptions.append(desc)
    models = list({m.device_uid: m for _, _, m in masks}.values())
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid,
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=instance_number,
        manufacturer=models[0].manufacturer[:64],
        manufacturer_model_name=models[0].name[:64],
        software_versions=models[0].version[:64],
        device_serial_number=models[0].device_uid[:64],
        series_description=series_description[:64],
        content_label="AI_SEGMENTATION",
        contributing_equipment=[algorithm_equipment_for(m, "AI segmentation") for m in models],
        omit_empty_frames=False,
    )
    orientation = [str(v) for v in (source.get("PatientOrientation") or [])]
    seg.PatientOrientation = orientation if len(orientation) == 2 else None  # Type 2C
    if "Laterality" in seg:
        # dciodvfy's Segmentation IOD never admits General Series Laterality here (the side
        # of each segment is its property type modifier).
        del seg.Laterality
    return seg
