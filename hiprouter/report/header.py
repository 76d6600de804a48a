"""Source headers for created objects: a radiograph's attributes, without pixel data, safe to copy.

Created objects copy the Patient and Study modules from the source. Real radiographs often
lack Type 2 attributes or carry values that break their VR (a 56-character Accession Number,
a hash in Study Date); highdicom would fail on the first and copy the second into every
output. `source_header` returns a copy in which missing Type 2 Patient/Study attributes are
present and empty, and invalid values are emptied (Type 2) or dropped (others). UIDs are kept
as they are: they are what the outputs reference.
"""

from __future__ import annotations

import copy

from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import validate_value

PATIENT_STUDY_TYPE2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber",
)
"""Type 2 attributes of the Patient and General Study modules that highdicom copies."""

_NOT_CHECKED = frozenset({"SQ", "UI", "OB", "OD", "OF", "OL", "OV", "OW", "UN", "UR", "UT",
                          "ST", "LT", "US", "SS", "UL", "SL", "FL", "FD", "AT", "SV", "UV"})

UNPAIRED_BODY_PARTS = frozenset({
    "ABDOMEN", "ABDOMENPELVIS", "AORTA", "BLADDER", "BRAIN", "CEREBELLUM", "CERVIX", "CHEST",
    "CHESTABDOMEN", "CHESTABDPELVIS", "CIRCLEOFWILLIS", "COCCYX", "COLON", "CORONARYARTERY",
    "CSPINE", "CTSPINE", "DUODENUM", "ESOPHAGUS", "FACE", "GALLBLADDER", "HEAD", "HEADNECK",
    "HEART", "ILEUM", "ILIUM", "JAW", "JEJUNUM", "LARYNX", "LIVER", "LSPINE", "LSSPINE",
    "MAXILLA", "MEDIASTINUM", "MOUTH", "NECK", "NECKCHEST", "NECKCHESTABDOMEN",
    "NECKCHESTABDPELV", "NOSE", "PANCREAS", "PELVIS", "PENIS", "PHARYNX", "PROSTATE", "RECTUM",
    "SCALP", "SKULL", "SPINE", "SPLEEN", "SSPINE", "STERNUM", "STOMACH", "THYMUS", "THYROID",
    "TLSPINE", "TONGUE", "TRACHEA", "TSPINE", "URETER", "URETHRA", "UTERUS", "VAGINA", "VULVA",
    "WHOLEBODY",
})
"""Body Part Examined terms (PS3.16 Annex L) of unpaired structures, as dicom3tools knows them.

Any other body part (HIP, KNEE, a local term, or none at all) counts as paired: the General
Series module then needs Laterality (Type 2C), empty when the side is unknown.
"""


def _valid(elem: DataElement) -> bool:
    if elem.VR in _NOT_CHECKED or elem.value is None:
        return True
    values = elem.value if isinstance(elem.value, MultiValue) else [elem.value]
    try:
        for value in values:
            if value is not None and value != "":
                if elem.VR in ("DS", "IS"):  # pydicom holds them as numbers: check the text
                    value = getattr(value, "original_string", None) or str(value)
                validate_value(elem.VR, value, config.RAISE)
    except (ValueError, TypeError):
        return False
    return True


def source_header(ds: Dataset) -> Dataset:
    """Top-level attributes of ``ds`` without pixel data or overlays, made safe to copy."""
    header = Dataset()
    for elem in ds:
        group = elem.tag.group
        if group == 0x7FE0 or 0x6000 <= group <= 0x60FF:
            continue
        if _valid(elem):
            header.add(copy.deepcopy(elem))
        elif elem.keyword in PATIENT_STUDY_TYPE2:
            header.add(DataElement(elem.tag, elem.VR, None))
    for keyword in PATIENT_STUDY_TYPE2:
        if keyword not in header:
            setattr(header, keyword, None)
    return header


def paired_body_part(ds: Dataset) -> bool:
    """Whether Laterality is needed: the Body Part Examined is paired, unknown or absent."""
    body_part = str(ds.get("BodyPartExamined") or "").strip().upper()
    return body_part not in UNPAIRED_BODY_PARTS
