"""De-identification of data-set images: the PS3.15 Basic Application Level
Confidentiality Profile with options, pseudonymous UIDs and patient keys, burned-in
annotation handling.

The profile's action table (PS3.15 Table E.1-1, edition 2026c) comes from the
`dicom-anonymizer` package (KitwareMedical), which also applies the X, Z and D actions; we
override the actions that must be consistent across files and runs:

- U (UIDs): a keyed hash (HMAC-SHA256 with the site's key) under the 2.25 root, so the same
  study gets the same pseudonymous Study Instance UID in every pull and references between
  instances stay intact; UIDs of the DICOM standard (SOP classes, codes) are kept.
- Patient ID and Name: a keyed patient key ("HIP" + 13 hex digits), the unit of the
  patient-level split.
- Retain Longitudinal Temporal Information with Modified Dates Option (DCM 113107):
  study, series, acquisition and content dates are shifted back by a keyed number of days
  per patient (1..max_date_shift_days), so intervals survive; the birth date is removed.
- Clean Descriptors Option (DCM 113105): study/series descriptions and protocol names are
  kept (hip models read view and side words in them) with identifying words removed.
- Clean Pixel Data Option (DCM 113101), CR/DX: the corners of images that have or may have
  burned-in annotation are blanked, or such images are left out (``deid.burned_in``).

The key is a file outside any data set (``dataset.deid.key_file``, mode 0600). After the
profile, every text value of the result is searched for the original identifiers (name
parts, IDs, birth date, accession number, institution); a file where one survived is left
out, never exported.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from hiprouter.config import DeidConfig

PROFILE_EDITION = "dicomfields_2026c"
STANDARD_ROOT = "1.2.840.10008."
IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber",
               "InstitutionName", "InstitutionAddress", "OtherPatientIDs",
               "OtherPatientNames", "ReferringPhysicianName", "PerformingPhysicianName",
               "OperatorsName", "PatientAddress", "PatientTelephoneNumbers", "StudyID",
               "InstitutionalDepartmentName", "StationName", "PatientMotherBirthName")
"""Values searched for in the result; a file where one survived is not exported."""
SHIFTED_DATES = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate",
                 "InstanceCreationDate", "PerformedProcedureStepStartDate",
                 "AcquisitionDateTime")
DESCRIPTORS = ("StudyDescription", "SeriesDescription", "ProtocolName",
               "PerformedProcedureStepDescription", "RequestedProcedureDescription",
               "ImageComments")
PIXEL_MODALITIES = ("CR", "DX", "RG", "PX", "MG", "XA", "RF", "OT")
CODES = {"basic": ("113100", "Basic Application Confidentiality Profile"),
         "pixels": ("113101", "Clean Pixel Data Option"),
         "descriptors": ("113105", "Clean Descriptors Option"),
         "dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")}


class DeidError(Exception):
    """A key file or data set that cannot be de-identified safely."""


def load_key(path: Path, create: bool = True) -> bytes:
    """The pseudonymisation key (32 random bytes, hex in a 0600 file), created on first use."""
    path = Path(path)
    if not path.exists():
        if not create:
            raise DeidError(f"no pseudonymisation key at {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
    text = path.read_text().strip()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise DeidError(f"{path} is not a pseudonymisation key (64 hex digits)")
    return bytes.fromhex(text)


class Pseudonyms:
    """Keyed, repeatable pseudonyms: the same input and key always give the same output."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def _digest(self, domain: str, value: str) -> bytes:
        return hmac.new(self.key, f"{domain}\x00{value}".encode(), hashlib.sha256).digest()

    def uid(self, uid: str) -> str:
        """A UID under 2.25 (a 128-bit integer, at most 44 characters)."""
        uid = str(uid).strip()
        if not uid or uid.startswith(STANDARD_ROOT):
            return uid
        return "2.25." + str(int.from_bytes(self._digest("uid", uid)[:16], "big"))

    def patient_key(self, patient_id: str, issuer: str = "") -> str:
        return "HIP" + self._digest("patient", f"{issuer}|{patient_id}").hex()[:13].upper()

    def date_shift(self, patient_key: str, max_days: int) -> int:
        """Days every date of this patient moves back (1..max_days)."""
        return 1 + int.from_bytes(self._digest("dates", patient_key)[:4], "big") % max_days

    def name(self, value: str, length: int = 12) -> str:
        """A file or folder name for a value (never the value itself)."""
        return self._digest("name", value).hex()[:length]


@dataclass
class Deidentified:
    """The outcome for one file: the de-identified dataset, or why it was left out."""

    dataset: Dataset | None
    excluded: str | None = None
    patient_key: str = ""
    study_uid: str = ""
    actions: list[str] = field(default_factory=list)


def identifiers_of(ds: Dataset) -> list[str]:
    """The identifying values of a dataset (whole values, and the parts of names), for
    the survival check and for scrubbing."""
    values: list[str] = []
    for keyword in IDENTIFYING:
        value = ds.get(keyword)
        if value is None:
            continue
        items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
        for item in items:
            text = str(item).strip()
            if len(text) >= 3:
                values.append(text)
                if "^" in text:
                    values.extend(p.strip() for p in text.split("^") if len(p.strip()) >= 3)
    return values


def _shift(value: str, days: int, vr: str) -> str:
    text = str(value).strip()
    if vr == "DA" and re.fullmatch(r"\d{8}", text):
        return (datetime.strptime(text, "%Y%m%d").date() - timedelta(days=days)).strftime("%Y%m%d")
    if vr == "DT" and re.match(r"\d{8}", text):
        day = (datetime.strptime(text[:8], "%Y%m%d").date() - timedelta(days=days))
        return day.strftime("%Y%m%d") + text[8:]
    return ""


def _clean_text(text: str, identifiers: Iterable[str]) -> str:
    out = str(text)
    for ident in sorted(set(identifiers), key=len, reverse=True):
        out = re.sub(re.escape(ident), " ", out, flags=re.IGNORECASE)
    out = re.sub(r"\d{5,}", " ", out)  # IDs, accession and phone numbers
    out = re.sub(r"\b\d{1,4}[./-]\d{1,2}[./-]\d{1,4}\b", " ", out)  # dates
    return re.sub(r"\s+", " ", out).strip()[:64]


def _replace_uids(item: Dataset, pseudo: Pseudonyms) -> None:
    for elem in list(item):
        if elem.VR == "UI" and elem.value:
            values = elem.value if elem.VM > 1 else [elem.value]
            new = [pseudo.uid(v) for v in values]
            elem.value = new if elem.VM > 1 else new[0]
        elif elem.VR == "SQ":
            for sub in elem.value:
                _replace_uids(sub, pseudo)


def _uid_references(pseudo: Pseudonyms) -> Any:
    """X/Z/U* sequences: keep the references (keyed UIDs), drop everything else in them."""

    def action(dataset: Dataset, tag: Any) -> None:
        elem = dataset.get(tag)
        if elem is None:
            return
        if elem.VR == "UI":
            values = elem.value if elem.VM > 1 else [elem.value]
            new = [pseudo.uid(v) for v in values if v]
            elem.value = new if elem.VM > 1 else (new[0] if new else "")
            return
        if elem.VR != "SQ":
            del dataset[elem.tag]
            return
        for item in elem.value:
            for sub in list(item):
                if sub.VR == "SQ":
                    action(item, sub.tag)
                elif sub.VR != "UI":
                    del item[sub.tag]
            _replace_uids(item, pseudo)

    return action


def _uid_action(pseudo: Pseudonyms) -> Any:
    def action(dataset: Dataset, tag: Any) -> None:
        elem = dataset.get(tag)
        if elem is None:
            return
        if elem.VR == "SQ":
            for item in elem.value:
                _replace_uids(item, pseudo)
            return
        values = elem.value if elem.VM > 1 else [elem.value]
        new = [pseudo.uid(v) for v in values if v]
        elem.value = new if elem.VM > 1 else (new[0] if new else "")

    return action


def _burned_in(ds: Dataset, cfg: DeidConfig) -> tuple[str, str | None]:
    """What to do with the pixels: ("keep" | "blank" | "exclude", reason)."""
    if cfg.burned_in == "keep" or str(ds.get("Modality", "")).upper() not in PIXEL_MODALITIES:
        return "keep", None
    flag = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if cfg.burned_in == "exclude":
        if flag != "NO":
            return "exclude", ("burned-in annotation " + ("present" if flag == "YES" else
                                                           "not ruled out (no BurnedInAnnotation)"))
        return "keep", None
    if flag == "NO" and cfg.trust_burned_in_no:
        return "keep", None
    return "blank", None


def blank_corners(ds: Dataset, fraction: float) -> None:
    """Set the four corners of every frame to black (uncompressed afterwards)."""
    arr = ds.pixel_array
    if getattr(ds, "SamplesPerPixel", 1) != 1:
        raise DeidError("only single-sample (greyscale) images can have corners blanked")
    frames = arr if arr.ndim == 3 else arr[None]
    rows, cols = frames.shape[1:]
    h, w = max(1, int(rows * fraction)), max(1, int(cols * fraction))
    black = frames.max() if str(ds.PhotometricInterpretation) == "MONOCHROME1" else frames.min()
    frames = frames.copy()
    for rs in (slice(0, h), slice(rows - h, rows)):
        for cs in (slice(0, w), slice(cols - w, cols)):
            frames[:, rs, cs] = black
    out = frames if arr.ndim == 3 else frames[0]
    dtype = np.dtype(f"<{'i' if ds.PixelRepresentation else 'u'}{ds.BitsAllocated // 8}")
    ds.PixelData = np.ascontiguousarray(out.astype(dtype)).tobytes()
    ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
        if keyword in ds and str(ds.get("LossyImageCompression", "00")) == "00":
            del ds[keyword]


EQUIPMENT = frozenset({"Manufacturer", "ManufacturerModelName", "SoftwareVersions",
                       "DeidentificationMethod", "ConversionType", "BodyPartExamined"})
"""Attributes that name equipment or our method: whole identifiers are searched there too,
name parts are not (a patient called "Synth" is not in "HIPROUTER SYNTH")."""


def _survivors(ds: Dataset, whole: list[str], parts: list[str]) -> list[str]:
    """Keywords of text elements that still contain an identifier (never the values)."""
    whole_l = [w.lower() for w in whole if len(w) >= 3]
    part_res = [re.compile(rf"(?<![a-z0-9]){re.escape(p.lower())}(?![a-z0-9])")
                for p in parts if len(p) >= 3]
    found: list[str] = []

    def walk(item: Dataset) -> None:
        for elem in item:
            if elem.VR == "SQ":
                for sub in elem.value:
                    walk(sub)
            elif elem.VR in ("PN", "LO", "SH", "CS", "ST", "LT", "UT", "UC", "DA", "DT",
                             "AE", "IS", "DS", "TM", "UR", "AS") and elem.value not in (None, ""):
                text = str(elem.value).lower()
                if any(w in text for w in whole_l) or (
                        elem.keyword not in EQUIPMENT and any(r.search(text) for r in part_res)):
                    found.append(elem.keyword or str(elem.tag))

    walk(ds)
    return found


def deidentify(ds: Dataset, pseudo: Pseudonyms, cfg: DeidConfig) -> Deidentified:
    """De-identify one dataset (in place); the result says what was done or why it is
    left out."""
    from dicomanonymizer import simpledicomanonymizer as sda
    from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector

    whole = [str(ds.get(k)).strip() for k in IDENTIFYING
             if ds.get(k) not in (None, "") and len(str(ds.get(k)).strip()) >= 3]
    identifiers = identifiers_of(ds)
    birth = str(ds.get("PatientBirthDate", "") or "").strip()
    patient = pseudo.patient_key(str(ds.get("PatientID", "") or ""),
                                 str(ds.get("IssuerOfPatientID", "") or ""))
    actions = ["basic"]
    pixels, why = _burned_in(ds, cfg)
    if pixels == "exclude":
        return Deidentified(None, why, patient)
    if pixels == "blank":
        try:
            blank_corners(ds, cfg.corner_fraction)
        except Exception as exc:
            return Deidentified(None, f"cannot blank the corners: {type(exc).__name__}",
                                patient)
        actions.append("pixels")
    descriptors = {k: str(ds.get(k)) for k in DESCRIPTORS if ds.get(k)}
    days = pseudo.date_shift(patient, cfg.max_date_shift_days)
    shifted = {k: (ds[k].VR, str(ds.get(k))) for k in SHIFTED_DATES if ds.get(k)}

    tags = dicom_anonymization_database_selector(PROFILE_EDITION)
    uid = _uid_action(pseudo)
    refs = _uid_references(pseudo)
    extra: dict[tuple[int, ...], Any] = {t: uid for t in tags["U_TAGS"]}
    extra.update({t: refs for t in tags["X_Z_U_STAR_TAGS"]})
    try:
        sda.anonymize_dataset(ds, extra, delete_private_tags=True,
                              base_rules_gen=lambda: sda.initialize_actions(PROFILE_EDITION))
    except Exception as exc:
        return Deidentified(None, f"profile failed: {type(exc).__name__}", patient)

    ds.PatientID = patient
    ds.PatientName = patient
    if "PatientBirthDate" in ds:
        ds.PatientBirthDate = ""
    if cfg.retain_longitudinal_dates:
        for keyword, (vr, value) in shifted.items():
            setattr(ds, keyword, _shift(value, days, vr))
        actions.append("dates")
    if cfg.clean_descriptors:
        for keyword, value in descriptors.items():
            cleaned = _clean_text(value, identifiers)
            if cleaned:
                setattr(ds, keyword, cleaned)
        actions.append("descriptors")
    ds.PatientIdentityRemoved = "YES"
    ds.LongitudinalTemporalInformationModified = (
        "MODIFIED" if cfg.retain_longitudinal_dates else "REMOVED")
    ds.DeidentificationMethod = ("PS3.15 Basic Profile (hiprouter), keyed UIDs" +
                                 (", corners blanked" if "pixels" in actions else ""))
    codes = Sequence()
    for a in actions:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = (
            CODES[a][0], "DCM", CODES[a][1])
        codes.append(item)
    ds.DeidentificationMethodCodeSequence = codes
    if hasattr(ds, "file_meta"):
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.ImplementationVersionName = "HIPROUTER_DEID"
    parts = [i for i in identifiers if i not in whole]
    leftover = _survivors(ds, whole + ([birth] if len(birth) == 8 else []), parts)
    if leftover:
        return Deidentified(None, "identifier survived in " + ", ".join(sorted(set(leftover))),
                            patient)
    return Deidentified(ds, None, patient, str(ds.StudyInstanceUID), actions)
