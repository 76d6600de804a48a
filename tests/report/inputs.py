"""Test input for the report builders: small CR radiographs and hand-made study results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from hiprouter.findings import (
    Classification,
    Finding,
    HeatMap,
    ModelInfo,
    PipelineResult,
    Region,
    StudyFindings,
)
from hiprouter.pipelines.fracture import FRACTURE
from hiprouter.pipelines.hardware import HARDWARE

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def make_cr(study_uid: str, *, rows: int = 256, cols: int = 256, series_uid: str | None = None,
            instance: int = 1, view: str = "AP") -> Dataset:
    """A small but complete 16-bit MONOCHROME2 CR image of a pelvis (a gradient with noise)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CR_STORAGE
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CR_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyDate, ds.StudyTime = "20261120", "101500"
    ds.SeriesDate, ds.SeriesTime = "20261120", "101600"
    ds.ContentDate, ds.ContentTime = "20261120", "101600"
    ds.AccessionNumber = "ACC123"
    ds.Modality = "CR"
    ds.Manufacturer = "Test Modality Co"
    ds.ReferringPhysicianName = "Doe^John"
    ds.StudyDescription = "PELVIS AP"
    ds.SeriesDescription = "Pelvis AP"
    ds.PatientName = "Müller^Anna"
    ds.PatientID = "PID0001"
    ds.PatientBirthDate = "19500101"
    ds.PatientSex = "F"
    ds.BodyPartExamined = "PELVIS"
    ds.ViewPosition = view
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyID = "S1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance
    ds.PatientOrientation = ["L", "F"]
    ds.ImageLaterality = "U"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.ImagerPixelSpacing = [0.2, 0.2]
    rng = np.random.default_rng(instance)
    yy, xx = np.mgrid[0:rows, 0:cols]
    img = (1000 + 2000 * yy / rows + rng.normal(0, 50, (rows, cols))).clip(0, 4095)
    ds.PixelData = img.astype(np.uint16).tobytes()
    return ds


def hot_spot_heatmap(rows: int, cols: int, cy: int, cx: int, sigma: float = 20.0) -> np.ndarray:
    """A float32 heat map in [0, 1] with a Gaussian peak at (cy, cx)."""
    yy, xx = np.mgrid[0:rows, 0:cols]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)).astype(np.float32)


def display_of(ds: Dataset) -> np.ndarray:
    """uint8 rendering of a test radiograph."""
    arr = ds.pixel_array.astype(np.float32)
    return ((arr - arr.min()) / max(float(np.ptp(arr)), 1.0) * 255).astype(np.uint8)


DEMO_MODEL = ModelInfo(name="hip-hardware-effnet", version="0.1.0", architecture="efficientnet_b4",
                       device_uid="2.25.1234567890", synthetic_demo=True)
FRACTURE_MODEL = ModelInfo(name="hip-fracture", version="0.3.0", architecture="resnet10t",
                           device_uid="2.25.987654321", synthetic_demo=True)
VOCABULARIES = {"hardware": ("hardware", HARDWARE), "fracture": ("fracture", FRACTURE)}
HIP_POINTS = {"R": (64.0, 128.0), "L": (192.0, 128.0), "U": (128.0, 128.0)}
"""Where each hip is on the 256 x 256 test AP pelvis (patient's right on the image left)."""


def pipeline_of(key: str) -> str:
    return "fracture" if key in FRACTURE else "hardware"


def make_study(right: tuple[str, float] | None = ("tha", 0.93),
               left: tuple[str, float] | None = ("no_hardware", 0.88),
               model: ModelInfo = DEMO_MODEL, extra_images: int = 0,
               refused: int = 0, unknown: tuple[str, float] | None = None,
               ) -> tuple[StudyFindings, list[Dataset], dict[str, np.ndarray]]:
    """(findings, source datasets, display images) for an AP pelvis with the given classes.

    Hardware classes become findings of a `hardware` pipeline (made by `model`), fracture
    classes findings of a `fracture` pipeline; ``refused`` extra images are in the study but
    not assessed.
    """
    study_uid = generate_uid()
    series_uid = generate_uid()
    sources = [make_cr(study_uid, series_uid=series_uid, instance=i + 1)
               for i in range(1 + extra_images + refused)]
    used = sources[: 1 + extra_images]
    uids = [str(ds.SOPInstanceUID) for ds in used]
    results: dict[str, PipelineResult] = {}
    for lat, res in (("R", right), ("L", left), ("U", unknown)):
        if res is None:
            continue
        key, p = res
        name = pipeline_of(key)
        kind, vocab = VOCABULARIES[name]
        who = model if name == "hardware" else FRACTURE_MODEL
        result = results.setdefault(name, PipelineResult(name, kind, vocab, who))
        cy, cx = HIP_POINTS[lat][1], HIP_POINTS[lat][0]
        heat = [HeatMap(u, hot_spot_heatmap(ds.Rows, ds.Columns, int(cy), int(cx)), key)
                for u, ds in zip(uids, used, strict=True)]
        result.findings.append(Finding(
            name, lat, list(uids), who, Classification(key, p, {key: p}),
            heatmaps=heat, regions=[Region(uids[0], "POINT", np.array([HIP_POINTS[lat]]))],
            latency_ms=12.0))
    refused_reasons = {str(ds.SOPInstanceUID): "not a hip radiograph"
                       for ds in sources[1 + extra_images:]}
    for result in results.values():
        result.not_assessed.update(refused_reasons)
    study = StudyFindings(study_uid, list(results.values()))
    if not study.results:
        study.results.append(PipelineResult("hardware", "hardware", HARDWARE, model,
                                            not_assessed=refused_reasons))
    return study, sources, {str(ds.SOPInstanceUID): display_of(ds) for ds in used}


def reread(ds: Dataset, path: Path) -> Dataset:
    """Write with file meta and read back, as a receiver would."""
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def numbers_by_tracking_uid(sr: object) -> dict[str, dict[str, object]]:
    """NUM items of an SR's TID 1501 groups, by tracking UID and concept code value.

    A finding with a region is a drawn TID 1410 group plus a TID 1501 group with its
    numbers under the same tracking UID (hiprouter/report/sr.py).
    """
    out: dict[str, dict[str, object]] = {}
    for group in sr.content.get_image_measurement_groups():  # type: ignore[attr-defined]
        out[str(group.tracking_uid)] = {m.name.value: m for m in group.get_measurements()}
    return out
