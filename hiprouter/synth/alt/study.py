"""Whole synthetic studies from the alt renderer: DICOM CR/DX objects, label rows (the schema
of docs/synthetic-data.md) and femoral head masks; `generate_alt_dataset` writes many.

Everything that is not a label (anatomy, habitus, positioning, technique, detector, console
processing, bit depth, photometric interpretation, rescale, VOI, collimation, marker,
header texts) is drawn from the study's own random stream, independently of the labels.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset

from hiprouter.synth.alt.acquire import Acquisition, form_image, marker_mask, sample_acquisition
from hiprouter.synth.alt.compose import build_patient, project
from hiprouter.synth.alt.raycast import Layers
from hiprouter.synth.alt.sample import TASKS, sample_truth
from hiprouter.synth.alt.truth import SIDES, VIEWS, PatientTruth
from hiprouter.synth.alt.views import plan_view
from hiprouter.synth.alt.voi import apply_voi, sample_rescale
from hiprouter.synth.dicom import SeriesHeader, StudyHeader, build_dataset, det_uid

DEFAULT_SIZE = (1500, 2500)
"""Range of the stored image's long side (pixels)."""
WORK_LONG_SIDE = 1100
"""Longest side of the grid the scene is ray-cast on (the detector stage upsamples)."""

LABEL_FIELDS = (
    "path", "study_uid", "series_uid", "sop_instance_uid", "patient_id", "renderer", "view",
    "laterality", "hardware", "fracture", "fracture_displaced", "dislocation", "screening",
    "oa_grade", "onfh_grade", "ddh", "failure", "device", "head_mask", "age", "photometric",
    "bits_stored", "modality", "rows", "columns", "marker", "marker_box", "hip_x", "hip_y",
)

_PROTOCOLS = (  # (study kind, views, probability); the lateral view is chosen per study
    ("pelvis", ("ap_pelvis",), 0.3),
    ("pelvis_hip", ("ap_pelvis", "LAT"), 0.25),
    ("hip", ("ap_hip", "LAT"), 0.25),
    ("hip", ("ap_hip",), 0.08),
    ("pelvis_hip", ("ap_pelvis", "ap_hip", "LAT"), 0.12),
)
_SERIES_TEXT = {
    "ap_pelvis": ("AP PELVIS", "PELVIS AP", "BECKEN A.P.", "Pelvis ap supine"),
    "ap_hip": ("{S} HIP AP", "HIP AP {S}", "HUEFTE {S} AP"),
    "frog_leg": ("{S} HIP FROG", "FROG LEG LAT {S}", "HIP LAUENSTEIN {S}"),
    "cross_table_lateral": ("{S} HIP XTABLE LAT", "CROSS TABLE LATERAL {S}", "HIP AXIAL {S}"),
}
_STUDY_TEXT = {"pelvis": "XR PELVIS 1 VIEW", "hip": "XR HIP {S} MIN 2 VIEWS",
               "pelvis_hip": "XR PELVIS AND HIP {S}"}
_VENDORS = (("Generic Radiography", "ROOM 1"), ("Imaging Works", "DR-ER"),
            ("Phosphor Plate Co", "CR READER 2"), ("Flatpanel Systems", "XR3"))
_NAMES = ("GRAY", "KELLER", "OKAFOR", "NAKAMURA", "SILVA", "MORENO", "BERG", "COSTA",
          "DUBOIS", "HOLM")
_GIVEN = ("ANNA", "JOHN", "MARIA", "PETER", "LENA", "OMAR", "SARA", "LUCA")


@dataclass
class AltImage:
    """One radiograph: DICOM object, label rows and head masks (stored size)."""

    dataset: Dataset
    view: str
    labels: list[dict[str, object]]
    masks: dict[str, np.ndarray]
    display: np.ndarray = field(repr=False)
    """Display image (0..1, bright = dense) whatever the photometric interpretation."""


@dataclass
class AltStudy:
    patient_id: str
    study_uid: str
    truth: PatientTruth
    images: list[AltImage]


def _study_header(rng: np.random.Generator, seed: int, index: int, truth: PatientTruth,
                  kind: str, when: datetime) -> StudyHeader:
    vendor, station = _VENDORS[int(rng.integers(len(_VENDORS)))]
    birth = when - timedelta(days=int(truth.age * 365.25))
    side = {"R": "RIGHT", "L": "LEFT"}[truth.index_side]
    return StudyHeader(
        patient_name=f"{rng.choice(_NAMES)}^{rng.choice(_GIVEN)}",
        patient_id=f"ALT{seed % 100000:05d}{index:06d}",
        birth_date=birth.strftime("%Y%m%d"), sex=truth.sex,
        study_uid=det_uid("alt", seed, index, "study"),
        study_date=when.strftime("%Y%m%d"), study_time=when.strftime("%H%M%S"),
        accession=f"AX{seed % 1000:03d}{index:07d}",
        study_description=_STUDY_TEXT[kind].format(S=side),
        study_id=str(index + 1), manufacturer=vendor, station=station,
        institution="SYNTHETIC ALT HOSPITAL")


def make_alt_study(seed: int, index: int, *, task: str = "mixed",
                   views: Sequence[str] | None = None, size: tuple[int, int] | None = None,
                   truth: PatientTruth | None = None) -> AltStudy:
    """One study (all its images in memory); the same arguments give the same study."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    if views is not None and (not views or any(v not in VIEWS for v in views)):
        raise ValueError(f"unknown views {list(views)}; choose from {VIEWS}")
    lo, hi = size or DEFAULT_SIZE
    if lo > hi or lo < 64:
        raise ValueError("size must be (min, max) with 64 <= min <= max")
    rng = np.random.default_rng([seed, index, 0xA17])
    truth = truth or sample_truth(np.random.default_rng([seed, index, 1]), task)
    patient = build_patient(truth, np.random.default_rng([seed, index, 2]))
    kind, protocol = _protocol(rng, views)
    when = datetime(2021, 1, 1) + timedelta(days=int(rng.integers(0, 1000)),
                                            seconds=int(rng.integers(7 * 3600, 19 * 3600)))
    header = _study_header(rng, seed, index, truth, kind, when)
    images = []
    for n, view in enumerate(protocol, start=1):
        img_rng = np.random.default_rng([seed, index, 10 + n])
        long_side = int(img_rng.integers(lo, hi + 1))
        images.append(_make_image(img_rng, patient, header, view, n, long_side, seed, index,
                                  when + timedelta(minutes=2 * n)))
    return AltStudy(header.patient_id, header.study_uid, truth, images)


def _protocol(rng: np.random.Generator, views: Sequence[str] | None
              ) -> tuple[str, tuple[str, ...]]:
    if views is not None:
        kind = "pelvis" if list(views) == ["ap_pelvis"] else (
            "pelvis_hip" if "ap_pelvis" in views else "hip")
        return kind, tuple(views)
    i = int(rng.choice(len(_PROTOCOLS), p=[p for *_, p in _PROTOCOLS]))
    kind, protocol, _ = _PROTOCOLS[i]
    lateral = "frog_leg" if rng.random() < 0.5 else "cross_table_lateral"
    return kind, tuple(lateral if v == "LAT" else v for v in protocol)


def _make_image(rng: np.random.Generator, patient, header: StudyHeader, view: str, n: int,
                long_side: int, seed: int, index: int, when: datetime) -> AltImage:
    truth = patient.truth
    side = None if view == "ap_pelvis" else truth.index_side
    geom = plan_view(rng, patient.body, view, side, long_side)
    stored_shape = geom.camera.shape
    scale = min(1.0, WORK_LONG_SIDE / max(stored_shape))
    work = (max(16, int(stored_shape[0] * scale)), max(16, int(stored_shape[1] * scale)))
    proj = project(patient, geom, work, rng)
    acq = sample_acquisition(rng, view)
    letter, corner, mirrored = _marker(rng, view, side)
    height = 14.0 / geom.camera.pixel_mm * rng.uniform(0.8, 1.3)
    marker, box = marker_mask(stored_shape, letter, corner, height, mirrored)
    stored, display = form_image(proj.layers.maps, geom.camera.resized(work).pixel_mm,
                                 stored_shape, acq, marker, geom.anode_vertical, rng)
    series = _series(rng, header, acq, geom, view, side, n, seed, index, when, stored)
    ds = build_dataset(header, series, stored, acq.bits, acq.photometric)
    apply_voi(ds, rng, stored, acq)
    stored_layers = Layers(geom.camera)
    sides = SIDES if side is None else (side,)
    masks: dict[str, np.ndarray] = {}
    rows: list[dict[str, object]] = []
    for s in sides:
        hip = truth.hips[s]
        head = proj.heads.get(s)
        mask = stored_layers.mask(head) if head is not None and hip.native_head else None
        mask_name = ""
        if mask is not None and mask.any():
            masks[s] = mask
            mask_name = f"S{index:06d}/IM{n}_head_{s}.png"
        col, row = geom.camera.project(proj.head_centres[s])
        rows.append({
            "study_uid": header.study_uid, "series_uid": series.series_uid,
            "sop_instance_uid": series.sop_uid, "patient_id": header.patient_id,
            "renderer": "alt", "view": view, "laterality": s, "hardware": hip.hardware,
            "fracture": hip.fracture, "fracture_displaced": hip.fracture_displaced,
            "dislocation": hip.dislocation, "screening": hip.screening,
            "oa_grade": hip.oa_grade, "onfh_grade": hip.onfh_grade, "ddh": hip.ddh,
            "failure": hip.failure, "device": hip.device, "head_mask": mask_name,
            "age": round(truth.age, 1), "photometric": acq.photometric,
            "bits_stored": acq.bits, "modality": acq.modality, "rows": stored_shape[0],
            "columns": stored_shape[1], "marker": letter, "marker_box": " ".join(map(str, box)),
            "hip_x": round(float(col), 1), "hip_y": round(float(row), 1),
        })
    return AltImage(ds, view, rows, masks, display)


def _marker(rng: np.random.Generator, view: str, side: str | None
            ) -> tuple[str, tuple[float, float], bool]:
    """Letter, (row, col) fractions of its corner, mirrored; R sits on the image left on AP."""
    letter = side or str(rng.choice(["R", "L"]))
    row = rng.uniform(0.08, 0.2) if rng.random() < 0.7 else rng.uniform(0.7, 0.82)
    if view == "cross_table_lateral":
        col = rng.uniform(0.08, 0.2) if rng.random() < 0.5 else rng.uniform(0.78, 0.88)
    else:
        col = rng.uniform(0.08, 0.18) if letter == "R" else rng.uniform(0.8, 0.88)
    return letter, (float(row), float(col)), bool(rng.random() < 0.08)


def _series(rng: np.random.Generator, header: StudyHeader, acq: Acquisition, geom, view: str,
            side: str | None, n: int, seed: int, index: int, when: datetime,
            stored: np.ndarray) -> SeriesHeader:
    words = {"R": rng.choice(["RIGHT", "RT", "R"]), "L": rng.choice(["LEFT", "LT", "L"])}
    text = str(rng.choice(_SERIES_TEXT[view])).format(S=words[side] if side else "")
    body_part = str(rng.choice(["PELVIS", "HIP"] if view == "ap_pelvis" else ["HIP", "HIP",
                                                                              "PELVIS"]))
    if rng.random() < 0.1:
        body_part = ""
    laterality = "B" if view == "ap_pelvis" else side
    if rng.random() < 0.15:
        laterality = None
    return SeriesHeader(
        series_uid=det_uid("alt", seed, index, n, "series"),
        sop_uid=det_uid("alt", seed, index, n, "image"), series_number=n,
        modality=acq.modality, view_position=geom.view_position,
        series_description=text.strip(), body_part=body_part or None,
        laterality=laterality, patient_orientation=geom.orientation,
        pixel_spacing_mm=geom.camera.pixel_mm, kvp=acq.exposure.kvp,
        exposure_mas=acq.exposure.mas, window=None,
        rescale=sample_rescale(rng, acq), acquisition_dt=when)


def write_alt_study(out_dir: Path, seed: int, index: int, **kwargs: object
                    ) -> list[dict[str, object]]:
    """Write one study as out_dir/S<index>/IM<n>.dcm (+ head masks); returns label rows."""
    study = make_alt_study(seed, index, **kwargs)
    folder = Path(out_dir) / f"S{index:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    for n, img in enumerate(study.images, start=1):
        img.dataset.save_as(folder / f"IM{n}.dcm", enforce_file_format=True)
        for s, mask in img.masks.items():
            Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"IM{n}_head_{s}.png")
        rows.extend({"path": f"{folder.name}/IM{n}.dcm", **row} for row in img.labels)
    return rows


def _write_args(args: tuple) -> list[dict[str, object]]:
    out_dir, seed, index, kwargs = args
    return write_alt_study(out_dir, seed, index, **kwargs)


def generate_alt_dataset(out_dir: Path, studies: int, seed: int, *, task: str = "mixed",
                         views: Sequence[str] | None = None,
                         size: tuple[int, int] | None = None, progress: bool = True,
                         workers: int = 1) -> Path:
    """Write `studies` alt-rendered studies under out_dir; returns the labels.csv path.

    The files depend only on the arguments, not on `workers`.
    """
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    if studies < 0 or workers < 1:
        raise ValueError("studies must be >= 0 and workers >= 1")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    if views is not None and any(v not in VIEWS for v in views):
        raise ValueError(f"unknown views {list(views)}; choose from {VIEWS}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kwargs = {"task": task, "views": tuple(views) if views else None, "size": size}
    jobs = [(out_dir, seed, i, kwargs) for i in range(studies)]
    labels = out_dir / "labels.csv"
    with labels.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LABEL_FIELDS)
        writer.writeheader()
        bar = tqdm(total=studies, disable=not progress, desc="synth alt", unit="study")
        if workers == 1:
            for rows in map(_write_args, jobs):
                writer.writerows(rows)
                bar.update()
        else:
            with ProcessPoolExecutor(workers) as pool:
                for rows in pool.map(_write_args, jobs):
                    writer.writerows(rows)
                    bar.update()
        bar.close()
    return labels
