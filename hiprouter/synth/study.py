"""Synthetic hip/pelvis radiograph studies as DICOM, with ground truth per hip.

`make_study` builds one study in memory (pydicom Datasets + label rows);
`generate_dataset` writes many studies and a `labels.csv` (one row per image and hip).
Everything that is not a label (anatomy, habitus, exposure, noise, processing, bit depth,
photometric interpretation, collimation, markers, headers) is randomised independently of
the labels. Images are synthetic: demo and test data, not clinical data.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset

from hiprouter.inference.classes import HARDWARE_CLASSES
from hiprouter.synth.dicom import SeriesHeader, StudyHeader, build_dataset, det_uid
from hiprouter.synth.image import Acquisition, form_image, marker_mask
from hiprouter.synth.scene import (
    FRACTURES,
    SIDES,
    VIEWS,
    HipSpec,
    Patient,
    render_view,
)

HARDWARE_KEYS: tuple[str, ...] = tuple(c.key for c in HARDWARE_CLASSES)
FIXATION = ("im_nail", "cannulated_screws", "dynamic_hip_screw", "lateral_plate")
WORK_LONG_SIDE = 512
"""Long side (pixels) of the working-resolution scene; images are upsampled from it."""
DEFAULT_SIZE = (1500, 2500)
"""Range of the long side (pixels) of the stored images."""

LABEL_FIELDS = (
    "path", "study_uid", "series_uid", "sop_instance_uid", "patient_id", "view", "laterality",
    "hardware", "fracture", "dislocation", "photometric", "bits_stored", "modality", "rows",
    "columns", "marker", "marker_box", "hip_x", "hip_y",
)

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


def _weights(class_weights: Mapping[str, float] | None) -> np.ndarray:
    if class_weights is None:
        return np.full(len(HARDWARE_KEYS), 1 / len(HARDWARE_KEYS))
    unknown = set(class_weights) - set(HARDWARE_KEYS)
    if unknown:
        raise ValueError(f"unknown hardware classes: {sorted(unknown)}")
    w = np.array([float(class_weights.get(k, 0.0)) for k in HARDWARE_KEYS])
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError("class_weights must be non-negative with a positive sum")
    return w / w.sum()


def sample_hips(rng: np.random.Generator, class_weights: Mapping[str, float] | None = None
                ) -> tuple[dict[str, HipSpec], str]:
    """Hardware, fractures and dislocation of both hips; returns (hips, index side)."""
    w = _weights(class_weights)
    index = str(rng.choice(SIDES))
    other = "L" if index == "R" else "R"
    primary = str(rng.choice(HARDWARE_KEYS, p=w))
    u = rng.random()
    if u < 0.15:
        contra = primary
    elif u < 0.6 and (class_weights is None or class_weights.get("no_hardware", 0) > 0):
        contra = "no_hardware"
    else:
        contra = str(rng.choice(HARDWARE_KEYS, p=w))
    hips = {index: HipSpec(primary), other: HipSpec(contra)}
    for hip in hips.values():
        hip.fracture = _sample_fracture(hip.hardware, rng)
        hip.dislocated = hip.hardware == "tha" and rng.random() < 0.2
    return hips, index


def _sample_fracture(hardware: str, rng: np.random.Generator) -> str:
    if hardware == "no_hardware" and rng.random() < 0.3:
        return str(rng.choice(FRACTURES[1:]))
    if hardware == "cannulated_screws" and rng.random() < 0.5:
        return "femoral_neck_fracture"
    if hardware in ("dynamic_hip_screw", "im_nail", "lateral_plate") and rng.random() < 0.5:
        return "intertrochanteric_fracture" if rng.random() < 0.8 else "femoral_neck_fracture"
    return "none"


def _sample_views(rng: np.random.Generator) -> tuple[str, tuple[str, ...]]:
    lateral = "frog_leg" if rng.random() < 0.5 else "cross_table_lateral"
    protocols = [
        ("pelvis", ("ap_pelvis",)), ("pelvis_hip", ("ap_pelvis", lateral)),
        ("hip", ("ap_hip", lateral)), ("hip", ("ap_hip",)),
        ("pelvis_hip", ("ap_pelvis", "ap_hip", lateral)),
    ]
    i = int(rng.choice(len(protocols), p=[0.3, 0.25, 0.25, 0.1, 0.1]))
    return protocols[i]


def make_study(
    seed: int,
    index: int = 0,
    *,
    hardware: Mapping[str, str] | None = None,
    views: Sequence[str] | None = None,
    side: str | None = None,
    fracture: Mapping[str, str] | None = None,
    dislocation: Mapping[str, bool] | None = None,
    photometric: str | None = None,
    modality: str | None = None,
    size: tuple[int, int] | None = None,
    class_weights: Mapping[str, float] | None = None,
) -> SynthStudy:
    """One synthetic study, deterministic for (seed, index).

    hardware/fracture/dislocation fix the ground truth per hip ({"R": ..., "L": ...});
    views fixes the series (VIEWS); side is the hip shown by single-hip views; photometric
    ("MONOCHROME1"/"MONOCHROME2") and modality ("CR"/"DX") override the random choice
    without changing anything else; size is the range of the image's long side in pixels.
    """
    rng = np.random.default_rng([seed, index, 1])
    hips, index_side = sample_hips(rng, class_weights)
    if hardware is not None:
        for s in SIDES:
            hips[s] = HipSpec(hardware.get(s, "no_hardware"))
            hips[s].fracture = _sample_fracture(hips[s].hardware, rng)
            hips[s].dislocated = hips[s].hardware == "tha" and rng.random() < 0.2
        index_side = next((s for s in SIDES if hips[s].hardware != "no_hardware"), index_side)
    for s, v in (fracture or {}).items():
        hips[s].fracture = v
    for s, d in (dislocation or {}).items():
        hips[s].dislocated = bool(d)
    _check_hips(hips)
    protocol, sampled_views = _sample_views(rng)
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
    patient = Patient.sample(rng, hips)
    header = _study_header(rng, seed, index, protocol, index_side)
    lang = str(rng.choice(["en", "en", "en", "de", "fr"]))
    images = []
    for n, view in enumerate(sampled_views, start=1):
        img_rng = np.random.default_rng([seed, index, 100 + n])
        images.append(_make_image(img_rng, patient, header, view, index_side, n, lang, seed,
                                  index, photometric, modality, size or DEFAULT_SIZE))
    return SynthStudy(header.patient_id, header.study_uid, hips, images)


def _check_hips(hips: Mapping[str, HipSpec]) -> None:
    for s, hip in hips.items():
        if hip.hardware not in HARDWARE_KEYS:
            raise ValueError(f"unknown hardware class {hip.hardware!r} for hip {s}")
        if hip.fracture not in FRACTURES:
            raise ValueError(f"unknown fracture {hip.fracture!r}; choose from {FRACTURES}")
        if hip.fracture != "none" and hip.hardware in (
                "tha", "hemiarthroplasty", "tha_with_fixation", "post_infectious"):
            raise ValueError(f"hip {s}: no native femoral neck to fracture with {hip.hardware}")
        if hip.dislocated and hip.hardware != "tha":
            raise ValueError(f"hip {s}: dislocation is only generated for 'tha' hips")


def _study_header(rng: np.random.Generator, seed: int, index: int, protocol: str,
                  side: str) -> StudyHeader:
    lang = str(rng.choice(["en", "en", "de", "fr"]))
    desc = _STUDY_TEXT[protocol][lang].replace("{S}", _SIDE_WORDS[lang][side])
    when = datetime(2019, 1, 1) + timedelta(minutes=int(rng.integers(0, 7 * 365 * 24 * 60)))
    birth = when - timedelta(days=int(rng.integers(25 * 365, 95 * 365)))
    number = f"{seed % 10000:04d}{index:05d}"
    return StudyHeader(
        patient_name=f"SYNTH^PATIENT{number}", patient_id=f"SYN{number}",
        birth_date=birth.strftime("%Y%m%d"),
        sex=str(rng.choice(["F", "M", "O"], p=[0.55, 0.44, 0.01])),
        study_uid=det_uid(seed, index, "study"), study_date=when.strftime("%Y%m%d"),
        study_time=when.strftime("%H%M%S"), accession=f"A{seed % 1000:03d}{index:07d}",
        study_description=desc, study_id=str(index % 100000),
        manufacturer=str(rng.choice(["SYNTHETIC CR", "SYNTHETIC DR", "HIPROUTER SYNTH"])),
        station=f"XR{int(rng.integers(1, 9))}", institution="HIPROUTER SYNTHETIC DATA")


def _make_image(rng: np.random.Generator, patient: Patient, header: StudyHeader, view: str,
                side: str, number: int, lang: str, seed: int, index: int,
                photometric: str | None, modality: str | None,
                size: tuple[int, int]) -> SynthImage:
    (w0, w1), (h0, h1) = _FOV[view]
    fov = (rng.uniform(w0, w1), rng.uniform(h0, h1))
    if fov[0] >= fov[1]:
        work = (round(WORK_LONG_SIDE * fov[1] / fov[0]), WORK_LONG_SIDE)
    else:
        work = (WORK_LONG_SIDE, round(WORK_LONG_SIDE * fov[0] / fov[1]))
    scene = render_view(patient, view, side, work, fov, rng)
    acq = Acquisition.sample(rng)
    if photometric is not None:
        if photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise ValueError("photometric must be MONOCHROME1 or MONOCHROME2")
        acq.photometric = photometric
    long_side = int(rng.integers(size[0], size[1] + 1))
    zoom = long_side / WORK_LONG_SIDE
    out_shape = (max(1, round(work[0] * zoom)), max(1, round(work[1] * zoom)))
    letter, corner = _marker(rng, view, side, scene.right_on_image_left)
    marker = None
    box_work = None
    if letter:
        size_px = max(8, round(rng.uniform(12, 20) / scene.pixel_mm))
        margin = max(2, round(max(acq.collimation) * max(work)) + round(rng.uniform(4, 20)))
        mask, box_work = marker_mask(work, letter, corner, size_px, margin, rng.random() < 0.6)
        marker = (mask, 30.0)
    stored, display = form_image(scene.attenuation, scene.implant + scene.foreign,
                                 scene.pixel_mm, out_shape, acq, rng, marker)
    maxval = 2**acq.bits_stored - 1
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
        + timedelta(seconds=60 * number))
    ds = build_dataset(header, series, stored, acq.bits_stored, acq.photometric)
    box = None
    if box_work is not None:
        box = tuple(int(round(v * zoom)) for v in box_work)
    hip_sides = SIDES if view == "ap_pelvis" else (side,)
    labels = []
    for s in hip_sides:
        hip = patient.hips[s]
        cx, cy = scene.hip_centres.get(s, (float("nan"), float("nan")))
        labels.append({
            "study_uid": header.study_uid, "series_uid": series.series_uid,
            "sop_instance_uid": series.sop_uid, "patient_id": header.patient_id, "view": view,
            "laterality": s, "hardware": hip.hardware, "fracture": hip.fracture,
            "dislocation": int(hip.dislocated), "photometric": acq.photometric,
            "bits_stored": acq.bits_stored, "modality": mod, "rows": out_shape[0],
            "columns": out_shape[1], "marker": letter,
            "marker_box": " ".join(map(str, box)) if box else "",
            "hip_x": round(cx * zoom, 1), "hip_y": round(cy * zoom, 1),
        })
    del maxval
    return SynthImage(ds, view, labels, display, scene.implant, letter, box,  # type: ignore[arg-type]
                      scene.right_on_image_left)


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


def write_study(out_dir: Path, seed: int, index: int, *,
                class_weights: Mapping[str, float] | None = None,
                views: Sequence[str] | None = None,
                size: tuple[int, int] | None = None) -> list[dict[str, object]]:
    """Write one study as out_dir/S<index>/IM<n>.dcm; returns its label rows."""
    study = make_study(seed, index, class_weights=class_weights, views=views, size=size)
    folder = Path(out_dir) / f"S{index:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    for n, img in enumerate(study.images, start=1):
        rel = f"{folder.name}/IM{n}.dcm"
        img.dataset.save_as(folder / f"IM{n}.dcm", enforce_file_format=True)
        rows.extend({"path": rel, **row} for row in img.labels)
    return rows


def _write_study_args(args: tuple) -> list[dict[str, object]]:
    out_dir, seed, index, kwargs = args
    return write_study(out_dir, seed, index, **kwargs)


def generate_dataset(out_dir: Path, studies: int, seed: int, *, progress: bool = True,
                     class_weights: Mapping[str, float] | None = None,
                     views: Sequence[str] | None = None,
                     size: tuple[int, int] | None = None, workers: int = 1) -> Path:
    """Write `studies` synthetic studies under out_dir and return the labels.csv path.

    Files are out_dir/S<index>/IM<n>.dcm; labels.csv has one row per image and hip. The
    output depends only on the arguments, not on `workers` (processes used).
    """
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    if studies < 0:
        raise ValueError("studies must be >= 0")
    if workers < 1:
        raise ValueError("workers must be >= 1")
    _weights(class_weights)  # fail early on bad weights
    if views is not None and any(v not in VIEWS for v in views):
        raise ValueError(f"unknown views {list(views)}; choose from {VIEWS}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels_path = out_dir / "labels.csv"
    kwargs = {"class_weights": dict(class_weights) if class_weights else None,
              "views": tuple(views) if views else None, "size": size}
    jobs = [(out_dir, seed, i, kwargs) for i in range(studies)]
    with labels_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LABEL_FIELDS)
        writer.writeheader()
        bar = tqdm(total=studies, disable=not progress, desc="synth", unit="study")
        if workers == 1:
            results = map(_write_study_args, jobs)
            for rows in results:
                writer.writerows(rows)
                bar.update()
        else:
            with ProcessPoolExecutor(workers) as pool:
                for rows in pool.map(_write_study_args, jobs, chunksize=2):
                    writer.writerows(rows)
                    bar.update()
        bar.close()
    return labels_path
