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


def j2k_bomb(width: int = 60000, height: int = 60000, **attrs: Any) -> Dataset:
    """A 64 x 64 CR whose JPEG 2000 codestream (SIZ marker) declares width x height: the
    decoder would allocate for the codestream's size, not for Rows x Columns."""
    import struct

    from pydicom.encaps import encapsulate, generate_frames
    from pydicom.uid import JPEG2000Lossless

    ds = make_dataset(**attrs)
    ds.Rows = ds.Columns = 64
    ds.PixelData = (np.arange(64 * 64, dtype=np.uint16) % 4096).tobytes()
    ds.compress(JPEG2000Lossless)
    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    siz = frame.index(b"\xff\x51")
    struct.pack_into(">LL", frame, siz + 6, width, height)   # Xsiz, Ysiz
    struct.pack_into(">LL", frame, siz + 22, width, height)  # XTsiz, YTsiz (one tile)
    ds.PixelData = encapsulate([bytes(frame)])
    return ds


def deflate_bomb(path: Path, inflated_mb: int, **attrs: Any) -> Path:
    """A Deflated Explicit VR Little Endian file whose data set inflates to about
    `inflated_mb` MiB (a private OB element of zeros) from a few hundred KiB."""
    import struct
    import zlib
    from io import BytesIO

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = make_dataset(**attrs)
    meta = ds.file_meta
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    del ds.PixelData
    plain = DicomBytesIO()
    plain.is_little_endian, plain.is_implicit_VR = True, False
    write_dataset(plain, ds)
    size = inflated_mb * 1024 * 1024
    # (7FE1,0010) private OB, explicit VR with a 4-byte length; odd groups sort after 7FE0
    element = struct.pack("<HH2sHL", 0x7FE1, 0x1010, b"OB", 0, size)
    creator = struct.pack("<HH2sH", 0x7FE1, 0x0010, b"LO", 8) + b"HIPTEST "
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [deflater.compress(plain.getvalue() + creator + element)]
    zeros = b"\0" * (1 << 20)
    out += [deflater.compress(zeros) for _ in range(inflated_mb)]
    out.append(deflater.flush())
    head = BytesIO()
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head.getvalue() + b"".join(out))
    return path
