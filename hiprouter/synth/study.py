"""Synthetic hip/pelvis radiograph studies as DICOM, with ground truth per hip.

`make_study` builds one study in memory (pydicom Datasets, label rows, femoral head masks);
`write_study` writes one study's files, `generate_dataset` many studies and a `labels.csv`
(one row per image and hip, columns `LABEL_FIELDS`, see docs/synthetic-data.md). The
ground truth is sampled by `labels` for a training task; everything that is not a label
(anatomy, age, habitus, exposure, noise, processing, annotations, bit depth, photometric
interpretation, collimation, markers, headers) is randomised independently of the labels.
Images are synthetic: demo and test data, not clinical data.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset

from hiprouter.synth.dicom import SeriesHeader, StudyHeader, build_dataset, det_uid
from hiprouter.synth.image import Acquisition, degrade, form_image, plain, quantise
from hiprouter.synth.labels import (
    FIXATION,
    FRACTURES,
    HARDWARE_KEYS,
    LABEL_FIELDS,
    SIDES,
    TASKS,
    VIEWS,
    HipSpec,
    override_hips,
    sample_age,
    sample_hips,
    sample_views,
    task_weights,
)
from hiprouter.synth.overlay import burn_in, marker_mask
from hiprouter.synth.scene import Patient, render_view

__all__ = [
    "DEFAULT_SIZE", "FIXATION", "FRACTURES", "HARDWARE_KEYS", "LABEL_FIELDS", "SIDES", "TASKS",
    "VIEWS", "HipSpec", "SynthImage", "SynthStudy", "generate_dataset", "make_study",
    "sample_hips", "write_study",
]

WORK_LONG_SIDE = (256, 640)
"""Range of the long side (pixels) of the working-resolution scene: the stored image's
long side, clipped to it (larger images are upsampled from the scene)."""
DEFAULT_SIZE = (1500, 2500)
"""Range of the long side (pixels) of the stored images."""
RENDERER = "primary"

_FOV = {  # (width, height) ranges in mm
    "ap_pelvis": ((370, 430), (290, 350)),
    "ap_hip": ((220, 260), (270, 320)),
    "frog_leg": ((230, 280), (250, 300)),
    "cross_table_lateral": ((250, 300), (210, 250)),
}
_SIDE_WORDS = {
    "en": {"R": "RIGHT", "L": "LEFT"}, "de": {"R": "RECHTS", "L": "LINKS"},
    "fr": {"R": "DROITE", "L": "GAUCHE"},
}
_SERIES_TEXT = {
    "ap_pelvis": {"en": ["PELVIS AP", "AP PELVIS", "Pelvis AP supine"], "de": ["BECKEN AP"],
                  "fr": ["BASSIN FACE"]},
    "ap_hip": {"en": ["HIP {S} AP", "AP {S} HIP"], "de": ["HUEFTE {S} AP"],
               "fr": ["HANCHE {S} FACE"]},
    "frog_leg": {"en": ["HIP {S} FROG LEG LAT", "{S} HIP FROG LATERAL"],
                 "de": ["HUEFTE {S} LAUENSTEIN"], "fr": ["HANCHE {S} LAUENSTEIN"]},
    "cross_table_lateral": {"en": ["HIP {S} CROSS TABLE LAT", "{S} HIP LATERAL"],
                            "de": ["HUEFTE {S} AXIAL"], "fr": ["HANCHE {S} PROFIL"]},
}
_STUDY_TEXT = {
    "pelvis": {"en": "XR PELVIS AP", "de": "BECKENUEBERSICHT", "fr": "BASSIN"},
    "hip": {"en": "XR HIP {S} 2 VIEWS", "de": "HUEFTE {S}", "fr": "HANCHE {S}"},
    "pelvis_hip": {"en": "XR PELVIS AND {S} HIP", "de": "BECKEN UND HUEFTE {S}",
                   "fr": "BASSIN ET HANCHE {S}"},
}


@dataclass
class SynthImage:
    """One synthetic radiograph: the DICOM object, its label rows and test helpers."""

    dataset: Dataset
    view: str
    labels: list[dict[str, object]]
    display: np.ndarray
    """Display image in [0, 1], bright = dense, whatever the photometric interpretation."""
    implant_work: np.ndarray = field(repr=False)
    marker: str
    marker_box: tuple[int, int, int, int] | None
    right_on_image_left: bool | None
    head_masks: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    """Per hip side: boolean mask (stored image size) of its native femoral head."""

    def implant_mask(self, threshold: float = 1.0) -> np.ndarray:
        """Pixels (stored resolution) covered by implants (metal or cement)."""
        img = Image.fromarray((self.implant_work > threshold).astype(np.uint8) * 255)
        rows, cols = self.display.shape
        return np.asarray(img.resize((cols, rows), Image.Resampling.NEAREST)) > 127


@dataclass
class SynthStudy:
    """One synthetic patient's study."""

    patient_id: str
    study_uid: str
    hips: dict[str, HipSpec]
    images: list[SynthImage]
    age: int = 0
    task: str = "hardware"
    patient: Patient | None = field(default=None, repr=False)
    """The drawn patient (shapes, findings' geometry), for tests and debugging."""


def make_study(
    seed: int,
    index: int = 0,
    *,
    task: str = "hardware",
    hardware: Mapping[str, str] | None = None,
    views: Sequence[str] | None = None,
    side: str | None = None,
    fracture: Mapping[str, str] | None = None,
    displaced: Mapping[str, bool] | None = None,
    dislocation: Mapping[str, bool] | None = None,
    oa_grade: Mapping[str, int] | None = None,
    onfh_grade: Mapping[str, int] | None = None,
    ddh: Mapping[str, bool] | None = None,
    failure: Mapping[str, str] | None = None,
    device: Mapping[str, str] | None = None,
    photometric: str | None = None,
    modality: str | None = None,
    size: tuple[int, int] | None = None,
    class_weights: Mapping[str, float] | None = None,
    plain: bool = False,
) -> SynthStudy:
    """One synthetic study, deterministic for (seed, index).

    task samples the ground truth and the views for a training task (labels.TASKS);
    class_weights weigh that task's classes. The per-hip overrides ({"R": ..., "L": ...})
    fix labels: hardware (both hips), fracture, displaced (fracture_displaced),
    dislocation, oa_grade, onfh_grade, ddh, failure, device; impossible combinations raise
    ValueError (see labels.override_hips). views fixes the series (VIEWS); side is the hip
    shown by single-hip views; photometric ("MONOCHROME1"/"MONOCHROME2") and modality
    ("CR"/"DX") override the random choice without changing anything else; size is the
    range of the image's long side in pixels; plain renders with neutral processing (no
    tone-curve extremes, collimation, grid, annotations or degradation) for figures and
    tests. Changing a label leaves everything else (the patient, the exposure, the noise)
    as it was.
    """
    label_rng = np.random.default_rng([seed, index, 1])
    hips, index_side = sample_hips(label_rng, class_weights, task)
    hips, index_side = override_hips(
        hips, index_side, label_rng, task=task, hardware=hardware, fracture=fracture,
        displaced=displaced, dislocation=dislocation, oa_grade=oa_grade, onfh_grade=onfh_grade,
        ddh=ddh, failure=failure, device=device)
    # views and age have their own streams: overriding a label does not change them
    protocol, sampled_views = sample_views(np.random.default_rng([seed, index, 4]), task)
    age = sample_age(np.random.default_rng([seed, index, 5]), hips)
    if views is not None:
        bad = [v for v in views if v not in VIEWS]
        if bad:
            raise ValueError(f"unknown views {bad}; choose from {VIEWS}")
        sampled_views = tuple(views)
        protocol = "pelvis" if set(views) == {"ap_pelvis"} else (
            "hip" if "ap_pelvis" not in views else "pelvis_hip")
    if side is not None:
        if side not in SIDES:
            raise ValueError("side must be 'R' or 'L'")
        index_side = side
    patient = Patient.sample(np.random.default_rng([seed, index, 2]), hips, age)
    header_rng = np.random.default_rng([seed, index, 3])
    header = _study_header(header_rng, seed, index, protocol, index_side, age)
    lang = str(header_rng.choice(["en", "en", "en", "de", "fr"]))
    images = []
    for n, view in enumerate(sampled_views, start=1):
        img_rng = np.random.default_rng([seed, index, 100 + n])
        images.append(_make_image(img_rng, patient, header, view, index_side, n, lang, seed,
                                  index, photometric, modality, size or DEFAULT_SIZE, plain))
    return SynthStudy(header.patient_id, header.study_uid, hips, images, age, task, patient)


def _study_header(rng: np.random.Generator, seed: int, index: int, protocol: str,
                  side: str, age: int) -> StudyHeader:
    lang = str(rng.choice(["en", "en", "de", "fr"]))
    desc = _STUDY_TEXT[protocol][lang].replace("{S}", _SIDE_WORDS[lang][side])
    when = datetime(2019, 1, 1) + timedelta(minutes=int(rng.integers(0, 7 * 365 * 24 * 60)))
    birth = when - timedelta(days=int(age * 365.25 + rng.integers(0, 365)))
    number = f"{seed % 10000:04d}{index:05d}"
    return StudyHeader(
        patient_name=f"SYNTH^PATIENT{number}", patient_id=f"SYN{number}",
        birth_date=birth.strftime("%Y%m%d"),
        sex=str(rng.choice(["F", "M", "O"], p=[0.55, 0.44, 0.01])),
        study_uid=det_uid(seed, index, "study"), study_date=when.strftime("%Y%m%d"),
        study_time=when.strftime("%H%M%S"), accession=f"A{seed % 1000:03d}{index:07d}",
        study_description=desc, study_id=str(index % 100000),
        manufacturer=str(rng.choice(["SYNTHETIC CR", "SYNTHETIC DR", "HIPROUTER SYNTH"])),
        station=f"XR{int(rng.integers(1, 9))}", institution="HIPROUTER SYNTHETIC DATA",
        age=f"{age:03d}Y")


def _make_image(rng: np.random.Generator, patient: Patient, header: StudyHeader, view: str,
                side: str, number: int, lang: str, seed: int, index: int,
                photometric: str | None, modality: str | None,
                size: tuple[int, int], neutral: bool) -> SynthImage:
    (w0, w1), (h0, h1) = _FOV[view]
    fov = (rng.uniform(w0, w1), rng.uniform(h0, h1))
    long_side = int(rng.integers(size[0], size[1] + 1))
    work_long = int(np.clip(long_side, *WORK_LONG_SIDE))
    if fov[0] >= fov[1]:
        work = (round(work_long * fov[1] / fov[0]), work_long)
    else:
        work = (work_long, round(work_long * fov[0] / fov[1]))
    scene = render_view(patient, view, side, work, fov, rng)
    acq = Acquisition.sample(rng)
    if neutral:
        acq = plain(acq)
    if photometric is not None:
        if photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise ValueError("photometric must be MONOCHROME1 or MONOCHROME2")
        acq.photometric = photometric
    zoom = long_side / work_long
    out_shape = (max(1, round(work[0] * zoom)), max(1, round(work[1] * zoom)))
    zy, zx = out_shape[0] / work[0], out_shape[1] / work[1]
    letter, corner = _marker(rng, view, side, scene.right_on_image_left)
    marker = None
    box_work = None
    if letter:
        size_px = max(8, round(rng.uniform(12, 20) / scene.pixel_mm))
        inset = max(acq.collimation) + abs(np.sin(np.radians(acq.collimation_deg))) * 0.6
        margin = max(2, round(inset * max(work)) + round(rng.uniform(4, 20)))
        mask, box_work = marker_mask(work, letter, corner, size_px, margin, rng.random() < 0.6)
        marker = (mask, 30.0)
    display = form_image(scene.attenuation, scene.implant + scene.foreign, scene.pixel_mm,
                         out_shape, acq, rng, marker, scene.hips)
    box = None
    if box_work is not None:
        box = (int(round(box_work[0] * zx)), int(round(box_work[1] * zy)),
               int(round(box_work[2] * zx)), int(round(box_work[3] * zy)))
    burned = not neutral and burn_in(display, rng, _burn_in_date(header, lang), box)
    display = degrade(display, acq)
    stored = quantise(display, acq)
    mod = modality or str(rng.choice(["CR", "DX"]))
    if mod not in ("CR", "DX"):
        raise ValueError("modality must be CR or DX")
    lo, hi = float(stored.min()), float(stored.max())
    rescale = _rescale(rng, mod, acq.bits_stored)
    slope, intercept = rescale or (1.0, 0.0)
    centre = (lo + hi) / 2 + rng.normal(0, 0.03) * (hi - lo)
    # the VOI window applies to modality values (after Rescale Slope/Intercept)
    window = (centre * slope + intercept, (hi - lo) * slope * rng.uniform(0.8, 1.1))
    series = SeriesHeader(
        series_uid=det_uid(seed, index, number, "series"),
        sop_uid=det_uid(seed, index, number, "image"), series_number=number, modality=mod,
        view_position=_view_position(view, side), series_description=_series_text(
            rng, view, side, lang), body_part=_body_part(rng, view),
        laterality=_laterality(rng, view, side, mod), patient_orientation=scene.orientation,
        pixel_spacing_mm=fov[0] / out_shape[1], kvp=rng.uniform(65, 90),
        exposure_mas=rng.uniform(8, 40),
        window=window if (mod == "DX" or rng.random() < 0.7) else None,
        rescale=rescale,
        acquisition_dt=datetime.strptime(header.study_date + header.study_time, "%Y%m%d%H%M%S")
        + timedelta(seconds=60 * number),
        burned_in=burned, lossy_ratio=_jpeg_ratio(acq.jpeg_quality))
    ds = build_dataset(header, series, stored, acq.bits_stored, acq.photometric)
    hip_sides = SIDES if view == "ap_pelvis" else (side,)
    labels, masks = [], {}
    for s in hip_sides:
        cx, cy = scene.hip_centres.get(s, (float("nan"), float("nan")))
        if s in scene.head_outlines:
            masks[s] = _polygon_mask(scene.head_outlines[s], (zx, zy), out_shape)
        labels.append({
            "study_uid": header.study_uid, "series_uid": series.series_uid,
            "sop_instance_uid": series.sop_uid, "patient_id": header.patient_id,
            "renderer": RENDERER, "view": view, "laterality": s,
            **patient.hips[s].label_values(), "head_mask": "", "age": patient.age,
            "photometric": acq.photometric, "bits_stored": acq.bits_stored, "modality": mod,
            "rows": out_shape[0], "columns": out_shape[1], "marker": letter,
            "marker_box": " ".join(map(str, box)) if box else "",
            "hip_x": round((cx + 0.5) * zx - 0.5, 1), "hip_y": round((cy + 0.5) * zy - 0.5, 1),
        })
    return SynthImage(ds, view, labels, display, scene.implant, letter, box,
                      scene.right_on_image_left, masks)


def _polygon_mask(outline_work: np.ndarray, zoom: tuple[float, float],
                  shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask (stored image size) of a working-resolution outline."""
    pts = (outline_work + 0.5) * np.array(zoom) - 0.5
    img = Image.new("L", (shape[1], shape[0]), 0)
    ImageDraw.Draw(img).polygon([tuple(p) for p in pts], fill=255)
    return np.asarray(img) > 0


def _burn_in_date(header: StudyHeader, lang: str) -> str:
    d = datetime.strptime(header.study_date + header.study_time, "%Y%m%d%H%M%S")
    return d.strftime("%Y-%m-%d %H:%M" if lang == "en" else "%d.%m.%Y %H:%M")


def _jpeg_ratio(quality: int) -> float | None:
    """A plausible compression ratio for a JPEG quality (None: no lossy step)."""
    return None if not quality else float(40 - 0.45 * quality)


def _rescale(rng: np.random.Generator, modality: str, bits: int) -> tuple[float, float] | None:
    """DX: identity (the standard requires it). CR: absent, identity, an offset or a gain."""
    if modality == "DX":
        return (1.0, 0.0)
    u = rng.random()
    if u < 0.5:
        return None
    if u < 0.8:
        return (1.0, 0.0)
    if u < 0.9:
        return (1.0, -float(2 ** (bits - 1)))
    return (2.0, 0.0)


def _marker(rng: np.random.Generator, view: str, side: str, right_on_left: bool | None
            ) -> tuple[str, str]:
    """Letter and corner of the lead marker; on AP views R sits on the patient's right."""
    if rng.random() < 0.12:
        return "", ""
    letter = side if view != "ap_pelvis" else str(rng.choice(["R", "L"]))
    vertical = str(rng.choice(["t", "b"], p=[0.7, 0.3]))
    if right_on_left is None:
        return letter, vertical + str(rng.choice(["l", "r"]))
    on_left = (letter == "R") == right_on_left
    return letter, vertical + ("l" if on_left else "r")


def _view_position(view: str, side: str) -> str:
    if view == "cross_table_lateral":
        return "RL" if side == "R" else "LL"
    return "AP"


def _series_text(rng: np.random.Generator, view: str, side: str, lang: str) -> str:
    texts = _SERIES_TEXT[view][lang]
    return str(rng.choice(texts)).replace("{S}", _SIDE_WORDS[lang][side])


def _body_part(rng: np.random.Generator, view: str) -> str | None:
    if rng.random() < 0.15:
        return None
    return "PELVIS" if view == "ap_pelvis" else "HIP"


def _laterality(rng: np.random.Generator, view: str, side: str, modality: str) -> str | None:
    if view == "ap_pelvis":
        return "B" if modality == "DX" or rng.random() < 0.5 else None
    return side if rng.random() < 0.75 else None


def write_study(out_dir: Path, seed: int, index: int, *, task: str = "hardware",
                class_weights: Mapping[str, float] | None = None,
                views: Sequence[str] | None = None,
                size: tuple[int, int] | None = None) -> list[dict[str, object]]:
    """Write one study as out_dir/S<index>/IM<n>.dcm with its femoral head masks
    (IM<n>_head_<side>.png, 8-bit 0/255); returns its label rows."""
    study = make_study(seed, index, task=task, class_weights=class_weights, views=views,
                       size=size)
    folder = Path(out_dir) / f"S{index:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    for n, img in enumerate(study.images, start=1):
        rel = f"{folder.name}/IM{n}.dcm"
        img.dataset.save_as(folder / f"IM{n}.dcm", enforce_file_format=True)
        for row in img.labels:
            side = str(row["laterality"])
            mask = img.head_masks.get(side)
            if mask is not None:
                name = f"IM{n}_head_{side}.png"
                Image.fromarray(mask.astype(np.uint8) * 255).save(folder / name, optimize=True)
                row = {**row, "head_mask": f"{folder.name}/{name}"}
            rows.append({"path": rel, **row})
    return rows


def _write_study_args(args: tuple) -> list[dict[str, object]]:
    out_dir, seed, index, kwargs = args
    return write_study(out_dir, seed, index, **kwargs)


def generate_dataset(out_dir: Path, studies: int, seed: int, *, progress: bool = True,
                     task: str = "hardware",
                     class_weights: Mapping[str, float] | None = None,
                     views: Sequence[str] | None = None,
                     size: tuple[int, int] | None = None, workers: int = 1) -> Path:
    """Write `studies` synthetic studies for a task under out_dir; returns labels.csv.

    Files are out_dir/S<index>/IM<n>.dcm and IM<n>_head_<side>.png; labels.csv has one row
    per image and hip (LABEL_FIELDS). The output depends only on the arguments, not on
    `workers` (processes used).
    """
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    if studies < 0:
        raise ValueError("studies must be >= 0")
    if workers < 1:
        raise ValueError("workers must be >= 1")
    task_weights(task, class_weights)  # fail early on a bad task or weights
    if views is not None and any(v not in VIEWS for v in views):
        raise ValueError(f"unknown views {list(views)}; choose from {VIEWS}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels_path = out_dir / "labels.csv"
    kwargs = {"task": task, "class_weights": dict(class_weights) if class_weights else None,
              "views": tuple(views) if views else None, "size": size}
    jobs = [(out_dir, seed, i, kwargs) for i in range(studies)]
    with labels_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LABEL_FIELDS)
        writer.writeheader()
        bar = tqdm(total=studies, disable=not progress, desc="synth", unit="study")
        if workers == 1:
            for rows in map(_write_study_args, jobs):
                writer.writerows(rows)
                bar.update()
        else:
            with ProcessPoolExecutor(workers) as pool:
                for rows in pool.map(_write_study_args, jobs, chunksize=2):
                    writer.writerows(rows)
                    bar.update()
        bar.close()
    return labels_path
