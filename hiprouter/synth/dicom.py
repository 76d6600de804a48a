"""DICOM encoding of synthetic radiographs: CR Image Storage or DX Image Storage - For
Presentation, explicit VR little endian, with deterministic UIDs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
UID_PREFIX = "1.2.826.0.1.3680043.8.498."


def det_uid(*parts: object) -> str:
    """Deterministic UID from the generator seed and the object's position."""
    return str(generate_uid(UID_PREFIX, entropy_srcs=["hiprouter-synth", *map(str, parts)]))


@dataclass
class StudyHeader:
    """Patient and study attributes shared by every image of a synthetic study."""

    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    study_uid: str
    study_date: str
    study_time: str
    accession: str
    study_description: str
    study_id: str
    manufacturer: str
    station: str
    institution: str
    age: str | None = None
    """PatientAge, e.g. '067Y'."""


@dataclass
class SeriesHeader:
    """Series and image attributes of one synthetic image."""

    series_uid: str
    sop_uid: str
    series_number: int
    modality: str
    view_position: str
    series_description: str
    body_part: str | None
    laterality: str | None
    """Hip side, or 'B' (both, AP pelvis), or None (not given in the header)."""
    patient_orientation: tuple[str, str]
    pixel_spacing_mm: float
    kvp: float
    exposure_mas: float
    window: tuple[float, float] | None
    rescale: tuple[float, float] | None
    """(slope, intercept) or None; DX always has one."""
    acquisition_dt: datetime
    burned_in: bool = False
    """Text or graphics burned into the pixels."""
    lossy_ratio: float | None = None
    """Compression ratio of a lossy JPEG step the pixels went through."""


def build_dataset(study: StudyHeader, series: SeriesHeader, stored: np.ndarray,
                  bits_stored: int, photometric: str) -> Dataset:
    """A complete CR or DX image object with the pixel data."""
    is_dx = series.modality == "DX"
    sop_class = DX_PRESENTATION_STORAGE if is_dx else CR_STORAGE
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = series.sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "HIPROUTER_SYN"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = series.sop_uid
    ds.StudyDate = study.study_date
    ds.SeriesDate = study.study_date
    ds.ContentDate = series.acquisition_dt.strftime("%Y%m%d")
    ds.StudyTime = study.study_time
    ds.SeriesTime = series.acquisition_dt.strftime("%H%M%S")
    ds.ContentTime = series.acquisition_dt.strftime("%H%M%S")
    ds.AccessionNumber = study.accession
    ds.Modality = series.modality
    ds.Manufacturer = study.manufacturer
    ds.InstitutionName = study.institution
    ds.ReferringPhysicianName = ""
    ds.StationName = study.station
    ds.StudyDescription = study.study_description
    ds.SeriesDescription = series.series_description
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.birth_date
    ds.PatientSex = study.sex
    if study.age:
        ds.PatientAge = study.age
    if series.body_part:
        ds.BodyPartExamined = series.body_part
    elif not is_dx:
        ds.BodyPartExamined = ""
    ds.ViewPosition = series.view_position
    ds.KVP = f"{series.kvp:.0f}"
    ds.Exposure = str(round(series.exposure_mas))
    ds.ImagerPixelSpacing = [f"{series.pixel_spacing_mm:.4f}"] * 2
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = series.series_uid
    ds.StudyID = study.study_id
    ds.SeriesNumber = series.series_number
    ds.InstanceNumber = 1
    ds.PatientOrientation = list(series.patient_orientation)
    # Laterality (General Series, 2C) only for a paired body part without ImageLaterality.
    if is_dx:
        ds.ImageLaterality = series.laterality or "U"
    elif series.laterality in ("R", "L", "B"):
        ds.ImageLaterality = series.laterality
    elif series.body_part != "PELVIS":  # HIP, or unknown body part: may be paired
        ds.Laterality = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    if series.lossy_ratio is None:
        ds.LossyImageCompression = "00"
    else:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = f"{series.lossy_ratio:.1f}"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    if series.window is not None:
        ds.WindowCenter = f"{series.window[0]:.1f}"
        ds.WindowWidth = f"{series.window[1]:.1f}"
        ds.VOILUTFunction = "LINEAR"
    if series.rescale is not None:
        ds.RescaleIntercept = f"{series.rescale[1]:g}"
        ds.RescaleSlope = f"{series.rescale[0]:g}"
        ds.RescaleType = "US"
    ds.BurnedInAnnotation = "YES" if series.burned_in else "NO"
    if is_dx:
        _dx_modules(ds, series, photometric)
    else:
        ds.PresentationLUTShape = "IDENTITY" if photometric == "MONOCHROME2" else "INVERSE"
    return ds


def _dx_modules(ds: Dataset, series: SeriesHeader, photometric: str) -> None:
    """DX Series, DX Image, DX Detector, DX Anatomy Imaged and positioning attributes."""
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1 if photometric == "MONOCHROME2" else -1
    ds.PresentationLUTShape = "IDENTITY" if photometric == "MONOCHROME2" else "INVERSE"
    ds.DetectorType = "SCINTILLATOR"
    ds.PixelSpacing = list(ds.ImagerPixelSpacing)
    ds.DistanceSourceToDetector = "1150"
    ds.PositionerType = ""
    ds.AcquisitionContextSequence = Sequence([])
    if series.laterality == "B":
        ds.AnatomicRegionSequence = Sequence([_code("816092008", "Pelvis")])
    else:
        ds.AnatomicRegionSequence = Sequence([_code("24136001", "Hip joint")])
    ds.ViewCodeSequence = Sequence([_code(*_VIEW_CODES[series.view_position])])
    orientation = _code("102538003", "recumbent")
    orientation.PatientOrientationModifierCodeSequence = Sequence([_code("40199007", "supine")])
    ds.PatientOrientationCodeSequence = Sequence([orientation])


_VIEW_CODES = {
    "AP": ("399348003", "antero-posterior"),
    "RL": ("399198007", "right lateral"),
    "LL": ("399173006", "left lateral"),
}


def _code(value: str, meaning: str, scheme: str = "SCT") -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item
