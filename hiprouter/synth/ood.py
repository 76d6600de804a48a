"""Images a hip model must not assess ("not assessed" tests), as DICOM objects: a PA chest,
a child's pelvis, an AP knee, a PA hand, an AP shoulder (a ball in a socket, like a hip), a
lateral lumbar spine, a lateral skull with teeth, pure noise, a colour photograph (RGB Secondary
Capture), the same photograph greyed by a careless gateway into a CR object, and a blank
image. Headers say what a real sender would, sometimes wrongly (a chest labelled PELVIS).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from hiprouter.synth.alt import acquire, photo, regions
from hiprouter.synth.alt.compose import build_patient, project
from hiprouter.synth.alt.raycast import Layers, box, solid
from hiprouter.synth.alt.study import LABEL_FIELDS
from hiprouter.synth.alt.truth import HipTruth, PatientTruth
from hiprouter.synth.alt.views import plan_view
from hiprouter.synth.alt.voi import apply_voi
from hiprouter.synth.dicom import SeriesHeader, StudyHeader, build_dataset, det_uid

OOD_KINDS = ("chest_pa", "child_pelvis", "knee_ap", "hand_pa", "noise", "photo_rgb",
             "photo_mono", "blank", "shoulder_ap", "spine_lat", "skull_lat")
OOD_FIELDS = (*LABEL_FIELDS, "ood_kind")
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"

_PART = {"chest_pa": ("CHEST", "51185008", "Thorax"), "knee_ap": ("KNEE", "72696002", "Knee"),
         "hand_pa": ("HAND", "85562004", "Hand"), "child_pelvis": ("PELVIS", "816092008",
                                                                    "Pelvis"),
         "shoulder_ap": ("SHOULDER", "16982005", "Shoulder region"),
         "spine_lat": ("LSPINE", "122496007", "Lumbar spine"),
         "skull_lat": ("SKULL", "89546000", "Skull")}


@dataclass(frozen=True)
class _Region:
    """How one body region is drawn and labelled."""

    fov: tuple[tuple[float, float], tuple[float, float]]
    """Field of view (mm): ranges of width and height."""
    center: tuple[float, float, float]
    side: int
    """Beam side for `regions.camera`."""
    view_position: str
    orientation: tuple[str, str]
    draw: Callable[[Layers, np.random.Generator], None]


_REGIONS = {
    "chest_pa": _Region(((350, 430), (380, 440)), (0, 0, 40.0), 1, "PA", ("L", "F"),
                        lambda layers, rng: regions.draw_chest(layers, rng,
                                                               bool(rng.random() < 0.5))),
    "knee_ap": _Region(((180, 240), (220, 300)), (0, 0, 0.0), -1, "AP", ("L", "F"),
                       regions.draw_knee),
    "hand_pa": _Region(((180, 240), (220, 280)), (0, 0, 30.0), 1, "PA", ("L", "F"),
                       regions.draw_hand),
    "shoulder_ap": _Region(((200, 260), (200, 260)), (-40, 0, -10.0), -1, "AP", ("L", "F"),
                           regions.draw_shoulder),
    "spine_lat": _Region(((220, 300), (330, 430)), (0, 0, 30.0), 1, "LL", ("A", "F"),
                         regions.draw_lumbar_spine_lateral),
    "skull_lat": _Region(((220, 260), (220, 270)), (10, 0, -5.0), 1, "LL", ("A", "F"),
                         regions.draw_skull_lateral),
}


def _headers(kind: str, seed: int, rng: np.random.Generator, modality: str, view: str,
             part: str | None, pixel: float, orientation: tuple[str, str]
             ) -> tuple[StudyHeader, SeriesHeader]:
    when = datetime(2022, 3, 1) + timedelta(days=int(rng.integers(0, 700)),
                                            seconds=int(rng.integers(8 * 3600, 18 * 3600)))
    age = 6 if kind == "child_pelvis" else int(rng.integers(20, 90))
    study = StudyHeader(
        patient_name=f"OOD^{kind.upper()}", patient_id=f"OOD{seed % 100000:05d}{kind[:4]}",
        birth_date=(when - timedelta(days=365 * age)).strftime("%Y%m%d"),
        sex=str(rng.choice(["F", "M"])), study_uid=det_uid("ood", kind, seed, "study"),
        study_date=when.strftime("%Y%m%d"), study_time=when.strftime("%H%M%S"),
        accession=f"OD{seed % 100000:05d}{OOD_KINDS.index(kind)}",
        study_description=f"XR {part or 'UNKNOWN'}", study_id="1",
        manufacturer="Generic Radiography", station="ROOM 9", institution="SYNTHETIC OOD")
    series = SeriesHeader(
        series_uid=det_uid("ood", kind, seed, "series"), sop_uid=det_uid("ood", kind, seed,
                                                                         "image"),
        series_number=1, modality=modality, view_position=view,
        series_description=f"{part or ''} {view}".strip(), body_part=part,
        laterality=None, patient_orientation=orientation, pixel_spacing_mm=pixel,
        kvp=float(rng.uniform(60, 120)), exposure_mas=float(rng.uniform(2, 20)), window=None,
        rescale=(1.0, 0.0) if modality == "DX" else None, acquisition_dt=when)
    return study, series


def _header_part(kind: str, rng: np.random.Generator) -> str:
    """Body part as sent: usually the truth, sometimes the hip order's (a mislabelled image)."""
    if kind in _PART and rng.random() < 0.75:
        return _PART[kind][0]
    return str(rng.choice(["PELVIS", "HIP"]))


def _radiograph(kind: str, seed: int, rng: np.random.Generator) -> Dataset:
    long_side = int(rng.integers(512, 1025))
    if kind == "child_pelvis":
        age = float(rng.uniform(2, 9))
        truth = PatientTruth(age, str(rng.choice(["F", "M"])),
                             {"R": HipTruth(), "L": HipTruth()}, "R")
        patient = build_patient(truth, rng)
        geom = plan_view(rng, patient.body, "ap_pelvis", None, long_side)
        cam, orientation, vpos = geom.camera, geom.orientation, "AP"
        proj = project(patient, geom, cam.shape, rng)
        layers = proj.layers
        if rng.random() < 0.4:  # a lead gonad shield over the pelvis
            s = patient.body.size
            c = np.array([0, -patient.body.trunk_b, -55 * s])
            layers.add("lead", solid(box(c, np.eye(3), (30 * s, 0.5, 25 * s))))
    else:
        region = _REGIONS[kind]
        fov = (rng.uniform(*region.fov[0]), rng.uniform(*region.fov[1]))
        cam = regions.camera(region.side, fov, long_side, np.asarray(region.center))
        layers = Layers(cam)
        region.draw(layers, rng)
        orientation, vpos = region.orientation, region.view_position
    acq = acquire.sample_acquisition(rng, "ap_hip")
    modality = acq.modality if vpos == "AP" else "CR"
    stored, _ = acquire.form_image(layers.maps, cam.pixel_mm, cam.shape, acq, None, True, rng)
    part = _header_part(kind, rng)
    study, series = _headers(kind, seed, rng, modality, vpos, part, cam.pixel_mm, orientation)
    ds = build_dataset(study, series, stored, acq.bits, acq.photometric)
    apply_voi(ds, rng, stored, acq)
    _laterality(ds, rng)
    if modality == "DX":
        code = _PART.get(kind, _PART["child_pelvis"])
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code[1], "SCT", code[2]
        ds.AnatomicRegionSequence = Sequence([item])
    return ds


def _grey(kind: str, seed: int, rng: np.random.Generator) -> Dataset:
    """Noise, blank, or a photograph greyed into a CR object (8 or 12 bits)."""
    h, w = int(rng.integers(256, 1025)), int(rng.integers(256, 1025))
    if kind == "noise":
        bits = 12
        pixels = rng.integers(0, 4096, (h, w)) if rng.random() < 0.5 else np.clip(
            rng.normal(2048, 600, (h, w)), 0, 4095)
    elif kind == "blank":
        bits = int(rng.choice([10, 12]))
        pixels = np.full((h, w), int(rng.integers(0, 2**bits)))
    else:
        bits = 8
        rgb = _photo(rng, (w, h))
        pixels = rgb @ np.array([0.299, 0.587, 0.114])
    photometric = "MONOCHROME2"
    study, series = _headers(kind, seed, rng, "CR", "AP", str(rng.choice(["PELVIS", "HIP"])),
                             float(rng.uniform(0.15, 0.4)), ("L", "F"))
    ds = build_dataset(study, series, np.rint(pixels).astype(np.uint16), bits, photometric)
    _laterality(ds, rng)
    return ds


def _laterality(ds: Dataset, rng: np.random.Generator) -> None:
    """Series Laterality: absent for unpaired parts, a side for paired ones (CR)."""
    if "Laterality" not in ds:
        return
    if ds.get("BodyPartExamined") in ("CHEST", "PELVIS", "LSPINE", "SKULL"):
        del ds.Laterality
    else:
        ds.Laterality = str(rng.choice(["R", "L"]))


def _photo(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    return photo.scene(rng, size) if rng.random() < 0.5 else photo.screen_photo(rng, size)


def _secondary_capture(seed: int, rng: np.random.Generator) -> Dataset:
    """An RGB photograph sent as a Secondary Capture object."""
    w, h = int(rng.integers(320, 1025)), int(rng.integers(240, 769))
    rgb = _photo(rng, (w, h))
    study, series = _headers("photo_rgb", seed, rng, "XC", "", "HIP", 0.2, ("L", "F"))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SC_STORAGE
    meta.MediaStorageSOPInstanceUID = series.sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SOPClassUID, ds.SOPInstanceUID = SC_STORAGE, series.sop_uid
    ds.StudyDate = ds.ContentDate = study.study_date
    ds.StudyTime = ds.ContentTime = study.study_time
    ds.AccessionNumber, ds.Modality, ds.ConversionType = study.accession, "XC", "DI"
    ds.ReferringPhysicianName = ""
    ds.PatientName, ds.PatientID = study.patient_name, study.patient_id
    ds.PatientBirthDate, ds.PatientSex = study.birth_date, study.sex
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study.study_uid, series.series_uid
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = study.study_id, 1, 1
    ds.StudyDescription, ds.BodyPartExamined = study.study_description, "HIP"
    ds.PatientOrientation = ""
    ds.Laterality = str(rng.choice(["R", "L"]))
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.Rows, ds.Columns = h, w
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PixelData = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    return ds


def claim_ap_pelvis(ds: Dataset) -> Dataset:
    """`ds` with headers claiming an AP pelvis (Body Part Examined, Series Description), in
    place: an image sent by mistake, which only the pixels can then refuse."""
    ds.BodyPartExamined, ds.SeriesDescription = "PELVIS", "AP PELVIS"
    return ds


def make_ood_image(kind: str, seed: int) -> Dataset:
    """One out-of-distribution image of `kind` (see OOD_KINDS); deterministic in seed."""
    if kind not in OOD_KINDS:
        raise ValueError(f"unknown OOD kind {kind!r}; choose from {OOD_KINDS}")
    rng = np.random.default_rng([seed, OOD_KINDS.index(kind), 0x00D])
    if kind == "photo_rgb":
        return _secondary_capture(seed, rng)
    if kind in ("noise", "blank", "photo_mono"):
        return _grey(kind, seed, rng)
    return _radiograph(kind, seed, rng)


def ood_label_row(ds: Dataset, kind: str, path: str) -> dict[str, object]:
    """A labels.csv row (the synthetic schema, hip columns empty) with its ood_kind."""
    row: dict[str, object] = {k: "" for k in OOD_FIELDS}
    row.update(path=path, study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID,
               sop_instance_uid=ds.SOPInstanceUID, patient_id=ds.PatientID, renderer="ood",
               photometric=ds.PhotometricInterpretation, bits_stored=ds.BitsStored,
               modality=ds.Modality, rows=ds.Rows, columns=ds.Columns, ood_kind=kind)
    return row


def generate_ood_dataset(out_dir: Path, per_kind: int, seed: int,
                         kinds: Collection[str] | None = None) -> Path:
    """Write per_kind images of every kind (or of `kinds`) as out_dir/<kind>/IM<n>.dcm;
    returns labels.csv. An image depends on its kind, seed and number only."""
    unknown = sorted(set(kinds or ()) - set(OOD_KINDS))
    if unknown:
        raise ValueError(f"unknown OOD kind(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(OOD_KINDS)}")
    out_dir = Path(out_dir)
    labels = out_dir / "labels.csv"
    out_dir.mkdir(parents=True, exist_ok=True)
    with labels.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=OOD_FIELDS)
        writer.writeheader()
        for kind in kinds or OOD_KINDS:
            (out_dir / kind).mkdir(exist_ok=True)
            for n in range(per_kind):
                ds = make_ood_image(kind, seed * 1000 + n)
                rel = f"{kind}/IM{n + 1}.dcm"
                ds.save_as(out_dir / rel, enforce_file_format=True)
                writer.writerow(ood_label_row(ds, kind, rel))
    return labels
