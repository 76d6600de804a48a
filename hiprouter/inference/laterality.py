"""Which view a radiograph is and which hip(s) it shows; per-hip crops in source pixels.

- AP pelvis: split at the midline. On a standard AP the patient's right is on the image's
  left; Patient Orientation (0020,0020) overrides that (first value = direction of the rows,
  i.e. towards increasing column; "R" there means the image is flipped).
- Single-hip views (AP hip, frog-leg, cross-table lateral): laterality from Image Laterality,
  then Laterality, then words in Series/Study Description, Protocol Name, Body Part (English,
  German, French, Spanish, Italian). Anything else is "U": never guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset

from hiprouter.findings import Laterality

View = Literal["ap_pelvis", "ap_hip", "frog_leg", "cross_table_lateral", "unknown"]

_WORD = re.compile(r"[A-Z]+")
_FROG = ("FROG", "LAUENSTEIN", "LOWENSTEIN", "GRENOUILLE", "RANA")
_CROSS = ("CROSSTABLE", "CROSS TABLE", "CROSS-TABLE", "AXIAL", "AXIALE", "LATERAL", "SEITLICH",
          "PROFIL", "LAT", "LAUENSTEIN AXIAL")
_PELVIS = ("PELVIS", "PELVIC", "BECKEN", "BASSIN", "PELVIEN", "BACINO")
_HIP = ("HIP", "HIPS", "HUEFTE", "HÜFTE", "HUFTE", "HANCHE", "CADERA", "ANCA", "FEMUR")
_RIGHT_WORDS = ("RIGHT", "RT", "R", "RECHTS", "DROITE", "DROIT", "DERECHA", "DERECHO", "DESTRA",
                "DESTRO")
_RIGHT_PREFIXES = ("RECHT", "DERECH", "DESTR")
_LEFT_WORDS = ("LEFT", "LT", "L", "LINKS", "GAUCHE", "IZQUIERDA", "IZQUIERDO", "SINISTRA",
               "SINISTRO")
_LEFT_PREFIXES = ("LINK", "IZQUIERD", "SINISTR")
_NOT_HIP_BODY_PARTS = ("CHEST", "THORAX", "SKULL", "HEAD", "BRAIN", "BREAST", "HAND", "FINGER",
                       "FOOT", "TOE", "ANKLE", "KNEE", "SHOULDER", "ELBOW", "WRIST", "CSPINE",
                       "TSPINE", "NECK", "ABDOMEN", "CLAVICLE", "JAW", "TMJ", "SINUS")
_LATERAL_POSITIONS = ("LL", "RL", "LLD", "RLD", "LAT", "LATERAL", "XTABLE")


@dataclass
class HipCrop:
    """One hip's region of a source radiograph."""

    laterality: Laterality
    view: View
    box: tuple[int, int, int, int]
    """(top, left, bottom, right) in source pixels; bottom/right exclusive."""
    pixels: np.ndarray
    """The display-space crop (float32, [0, 1])."""


_SERIES_KEYS = ("SeriesDescription", "ProtocolName", "PerformedProcedureStepDescription",
                "BodyPartExamined", "AcquisitionDeviceProcessingDescription")
_STUDY_KEYS = ("StudyDescription", "RequestedProcedureDescription")


def _texts(ds: Dataset, keys: tuple[str, ...] = _SERIES_KEYS + _STUDY_KEYS) -> list[str]:
    out = []
    for key in keys:
        value = ds.get(key)
        if value:
            out.append(str(value).upper())
    if "SeriesDescription" in keys:
        for item in ds.get("ViewCodeSequence", []) or []:
            meaning = item.get("CodeMeaning")
            if meaning:
                out.append(str(meaning).upper())
    return out


def _words(texts: list[str]) -> list[str]:
    words: list[str] = []
    for text in texts:
        words.extend(_WORD.findall(text.replace("Ü", "UE")))
    return words


def _has(texts: list[str], words: list[str], needles: tuple[str, ...]) -> bool:
    for needle in needles:
        if " " in needle or "-" in needle:
            if any(needle in t for t in texts):
                return True
        elif needle in words:
            return True
    return False


ViewSource = Literal["series", "study", "none"]


def view_evidence(ds: Dataset) -> tuple[View, ViewSource]:
    """The hip view and where it came from: the series' own tags (View Position, series
    descriptions, body part), only the study's descriptions (weaker: a "HIP" study often
    holds an AP pelvis image), or nothing ("unknown").

    Series-level text wins: a study "PELVIS AND RIGHT HIP" holds an AP pelvis series and
    single-hip series.
    """
    series = _texts(ds, _SERIES_KEYS)
    if _has(series, _words(series), _FROG):
        return "frog_leg", "series"
    position = str(ds.get("ViewPosition", "") or "").strip().upper()
    if position in _LATERAL_POSITIONS:
        return "cross_table_lateral", "series"
    for keys, source in ((_SERIES_KEYS, "series"), (_STUDY_KEYS, "study")):
        texts = _texts(ds, keys)
        words = _words(texts)
        if _has(texts, words, _FROG):
            return "frog_leg", source  # type: ignore[return-value]
        if _has(texts, words, _CROSS):
            return "cross_table_lateral", source  # type: ignore[return-value]
        if _has(texts, words, _PELVIS):
            return "ap_pelvis", source  # type: ignore[return-value]
        if _has(texts, words, _HIP):
            return "ap_hip", source  # type: ignore[return-value]
    return "unknown", "none"


def view_read_from_image(view: View, source: str, image_view: str | None) -> View | None:
    """The view to read an image by when the anatomy check names one (`image_view`:
    "ap_pelvis" or "single_hip") and the image's own tags do not (`source` "study" or
    "none", from `view_evidence`): an AP pelvis is split into its two hips, a single hip is
    one crop whose view the tags cannot say ("unknown"). None: keep `view` (the tags name
    the view, the check names none, or both agree)."""
    if source not in ("study", "none") or image_view is None:
        return None
    if image_view == "ap_pelvis" and view != "ap_pelvis":
        return "ap_pelvis"
    if image_view == "single_hip" and view == "ap_pelvis":
        return "unknown"
    return None


def view_of_dataset_read_from_image(ds: Dataset, image_view: str | None) -> View | None:
    """`view_read_from_image` for a dataset's own view evidence (its tags)."""
    return view_read_from_image(*view_evidence(ds), image_view)


def classify_view(ds: Dataset) -> View:
    """The hip view from View Position and the series' words, then the study's words."""
    return view_evidence(ds)[0]


def _side_of_words(words: list[str]) -> Laterality:
    right = any(w in _RIGHT_WORDS or w.startswith(_RIGHT_PREFIXES) for w in words)
    left = any(w in _LEFT_WORDS or w.startswith(_LEFT_PREFIXES) for w in words)
    if right and not left:
        return "R"
    if left and not right:
        return "L"
    return "U"


def single_hip_laterality(ds: Dataset) -> Laterality:
    """Laterality of a single-hip image; "U" when the tags do not say (never guessed)."""
    for key in ("ImageLaterality", "Laterality"):
        value = str(ds.get(key, "") or "").strip().upper()
        if value in ("R", "L"):
            return value  # type: ignore[return-value]
    return _side_of_words(_words(_texts(ds)))


def image_left_is_patient_right(ds: Dataset) -> bool:
    """True for the standard AP display; False when Patient Orientation says it is flipped."""
    orientation = ds.get("PatientOrientation")
    if orientation and len(orientation) >= 1:
        row_direction = str(orientation[0]).strip().upper()
        if row_direction.startswith("R"):
            return False
    return True


def not_hip_reason(ds: Dataset) -> str | None:
    """Why a radiograph is not a hip/pelvis image, from Body Part Examined; None if it may be."""
    part = str(ds.get("BodyPartExamined", "") or "").strip().upper().replace(" ", "")
    if part in _NOT_HIP_BODY_PARTS:
        return f"body part {part} is not a hip or pelvis"
    return None


def hip_crops(ds: Dataset, pixels: np.ndarray, view: View | None = None) -> list[HipCrop]:
    """Per-hip crops of a decoded radiograph: two for an AP pelvis, one otherwise; `view`
    overrides what the tags say (classify_view)."""
    view = view or classify_view(ds)
    rows, cols = pixels.shape
    if view == "ap_pelvis":
        mid = cols // 2
        first, second = ("R", "L") if image_left_is_patient_right(ds) else ("L", "R")
        return [
            HipCrop(first, view, (0, 0, rows, mid), pixels[:, :mid]),  # type: ignore[arg-type]
            HipCrop(second, view, (0, mid, rows, cols), pixels[:, mid:]),  # type: ignore[arg-type]
        ]
    return [HipCrop(single_hip_laterality(ds), view, (0, 0, rows, cols), pixels)]
