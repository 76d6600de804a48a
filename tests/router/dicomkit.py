"""Small synthetic DICOM files for router tests (headers that rules look at, 8x8 pixels)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"


def make_dataset(
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    modality: str = "CR",
    charset: str | None = None,
    **attrs: Any,
) -> Dataset:
    """A minimal, valid CR/DX image; extra keyword arguments become attributes."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DX_STORAGE if modality == "DX" else CR_STORAGE
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if charset:
        ds.SpecificCharacterSet = charset
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = modality
    ds.PatientName = "Test^Patient"
    ds.PatientID = "T0001"
    ds.StudyDate = "20261125"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = (np.arange(64, dtype=np.uint16) * 50).tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def write_dataset(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def make_study(folder: Path, n_series: int = 1, per_series: int = 2, **attrs: Any) -> list[Path]:
    """Write a study of `n_series` x `per_series` instances to `folder`; returns the paths."""
    study_uid = attrs.pop("study_uid", None) or generate_uid()
    paths = []
    for s in range(n_series):
        series_uid = generate_uid()
        for i in range(per_series):
            ds = make_dataset(study_uid=study_uid, series_uid=series_uid, SeriesNumber=s + 1,
                              InstanceNumber=i + 1, **attrs)
            paths.append(write_dataset(ds, folder / f"s{s}i{i}.dcm"))
    return paths


def add_study(factory: Any, paths: list[Path], *, calling_ae: str | None = "MODALITY",
              state: str = "complete", received_at: Any = None) -> str:
    """Record files as received instances of one study (as the receiver would), without
    a network; returns the Study Instance UID."""
    import hashlib

    from pydicom import dcmread

    from hiprouter.db import utcnow
    from hiprouter.schema import Instance, Study

    at = received_at or utcnow()
    with factory() as session, session.begin():
        study_uid = ""
        for path in paths:
            ds = dcmread(path, stop_before_pixels=True)
            study_uid = str(ds.StudyInstanceUID)
            data = path.read_bytes()
            session.add(Instance(
                sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
                study_uid=study_uid, series_uid=str(ds.SeriesInstanceUID),
                transfer_syntax=str(ds.file_meta.TransferSyntaxUID), size=len(data),
                sha256=hashlib.sha256(data).hexdigest(), spool_path=str(path),
                received_at=at, calling_ae=calling_ae, state="stored"))
        session.add(Study(study_uid=study_uid, state=state, first_received_at=at,
                          last_received_at=at, completed_at=at, instance_count=len(paths),
                          calling_ae=calling_ae, episode=1))
    return study_uid
