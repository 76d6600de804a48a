"""Small DICOM radiographs built in memory for the inference tests."""

from __future__ import annotations

import atexit
import csv
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage as CRImageStorage
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def make_radiograph(pixels: np.ndarray, modality: str = "CR",
                    photometric: str = "MONOCHROME2", bits_stored: int = 12,
                    **tags: object) -> Dataset:
    """A single-frame CR/DX dataset with the given 16-bit pixels and extra tags."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CRImageStorage
    ds.SOPClassUID = CRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "TEST"
    ds.Modality = modality
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels.astype(np.uint16)).tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def blob_image(shape: tuple[int, int], centre: tuple[int, int], radius: int,
               background: int = 400, peak: int = 4000) -> np.ndarray:
    """A dark image with one bright disc."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.full(shape, background, dtype=np.uint16)
    img[(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2] = peak
    return img


def toy_dataset(folder: Path, patients: int, classes: list[str], seed: int = 0) -> Path:
    """AP pelvis studies whose 'hardware' is a bright bar at a class-specific angle."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for p in range(patients):
        labels = {lat: classes[rng.integers(len(classes))] for lat in ("R", "L")}
        img = rng.normal(800, 60, (96, 160)).clip(0, 4095)
        for lat, x0 in (("R", 40), ("L", 120)):
            k = classes.index(labels[lat])
            angle = np.pi * k / len(classes)
            for t in np.linspace(-25, 25, 60):
                y, x = int(48 + t * np.sin(angle)), int(x0 + t * np.cos(angle))
                img[max(0, y - 2) : y + 2, max(0, x - 2) : x + 2] = 3800
        ds = make_radiograph(img, SeriesDescription="AP PELVIS", PatientID=f"P{p}")
        name = f"img{p:03d}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
        for lat in ("R", "L"):
            rows.append({"path": name, "study_uid": ds.StudyInstanceUID,
                         "patient_id": f"P{p}", "view": "ap_pelvis", "laterality": lat,
                         "hardware": labels[lat]})
    labels_csv = folder / "labels.csv"
    with labels_csv.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return labels_csv


def classify(datasets: list, kind: str = "hardware", targets: list | None = None,
             **options: object) -> tuple:
    """Run one classifier pipeline kind on datasets of one study: (pipeline, result)."""
    from hiprouter.config import Settings
    from hiprouter.inference.study import StudyInput
    from hiprouter.pipelines.registry import PipelineSet

    options.setdefault("device", "cpu")
    settings = Settings.model_validate({"pipelines": {kind: {"kind": kind, **options}}})
    pipe = PipelineSet(settings).get(kind)
    study_uid = str(datasets[0].StudyInstanceUID) if datasets else "1.2.3"
    study = StudyInput.from_datasets(study_uid, datasets, pipe.modalities())
    result = pipe.run(study, targets)
    for uid, reason in study.refused.items():
        result.not_assessed.setdefault(uid, reason)
    return pipe, result


_MADE_ONCE: dict[tuple[object, ...], Path] = {}


def made_once(key: tuple[object, ...], folder: Path, make: Callable[[Path], Path]) -> Path:
    """`folder` holding a copy of the model folder that `make(path)` writes, made once per
    test process for each `key`: the same weights file every time, so one ONNX export
    (keyed by the weights' sha256) serves every test that asks for the same model."""
    if key not in _MADE_ONCE:
        made = Path(tempfile.mkdtemp(prefix="hiprouter-test-model-"))
        atexit.register(shutil.rmtree, made, True)
        _MADE_ONCE[key] = make(made / "model")
    shutil.copytree(_MADE_ONCE[key], folder, dirs_exist_ok=True)
    return folder


def constant_model(folder: Path, label_set: str, favoured: str, input_size: int = 64) -> Path:
    """A model of a classifier kind that always answers `favoured` (p ~ 0.9): zero weights,
    a biased head. For plumbing tests only; never a claim about detection (`made_once`)."""
    return made_once(("classifier", label_set, favoured, input_size), folder,
                     lambda path: _make_constant_model(path, label_set, favoured, input_size))


def _make_constant_model(folder: Path, label_set: str, favoured: str, input_size: int) -> Path:
    import torch

    from hiprouter.inference.models import ModelCard, create_model, save_model
    from hiprouter.training.dataset import label_spec

    keys = label_spec(label_set).classes
    module = create_model("regnetx_002", len(keys))
    head = module.get_classifier()
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([3.0 if k == favoured else 0.0 for k in keys]))
    card = ModelCard(name=f"constant-{favoured}", version="0.0.1", architecture="regnetx_002",
                     input_size=input_size, label_set=label_set, classes=keys,
                     training_data="none (constant output for tests)", synthetic_demo=True)
    save_model(module, card, folder)
    return folder


def claimed_pelvis_predictions(classifier: object, kind: str, images: int = 3) -> list[list]:
    """Per generated image of an OOD `kind` (seeds 9000 on) whose headers claim an AP pelvis,
    the classifier's predictions for its hip crops."""
    from hiprouter.inference.decode import decode
    from hiprouter.inference.laterality import hip_crops
    from hiprouter.synth.ood import claim_ap_pelvis, make_ood_image

    out = []
    for n in range(images):
        ds = claim_ap_pelvis(make_ood_image(kind, 9000 + n))
        crops = hip_crops(ds, decode(ds, ("CR", "DX")).pixels)
        out.append(classifier.predict([c.pixels for c in crops], heatmaps=False))  # type: ignore[attr-defined]
    return out
