"""Synthetic studies with recognisable identifiers, for the de-identification and PHI
tests (every value below must be absent from exported headers and from every log line)."""

from __future__ import annotations

from pydicom.dataset import Dataset

from hiprouter.synth.study import make_study

PHI = {
    "PatientName": "ZWIEBELFISCH^KUNIGUNDE^MARIA",
    "PatientID": "PID-93X7-QQ41",
    "PatientBirthDate": "19410523",
    "AccessionNumber": "ACC77Q91Z",
    "InstitutionName": "Klinikum Obersummsee",
    "ReferringPhysicianName": "HAUSARZT^HELGA",
    "OtherPatientIDs": "ALT-55Q-8812",
}
NAMES = ("ZWIEBELFISCH", "KUNIGUNDE")


def phi_values(index: int = 0) -> dict[str, str]:
    """The identifiers of patient `index` (each patient different, all recognisable)."""
    out = dict(PHI)
    if index:
        out["PatientName"] = f"ZWIEBELFISCH{index}^KUNIGUNDE^MARIA"
        out["PatientID"] = f"PID-93X7-QQ{41 + index}"
        out["AccessionNumber"] = f"ACC77Q9{index}Z"
    return out


def with_phi(ds: Dataset, index: int = 0) -> Dataset:
    for keyword, value in phi_values(index).items():
        setattr(ds, keyword, value)
    ds.StudyDescription = f"XR PELVIS {phi_values(index)['PatientName'].split('^')[0]}"
    return ds


def phi_study(seed: int, index: int, hardware: dict[str, str], views: tuple[str, ...] =
              ("ap_pelvis",), **kwargs: object) -> list[Dataset]:
    """A small synthetic study carrying patient `index`'s identifiers."""
    study = make_study(seed, index, hardware=hardware, views=views, size=(256, 320),
                       **kwargs)  # type: ignore[arg-type]
    return [with_phi(img.dataset, index) for img in study.images]


def all_text(ds: Dataset) -> str:
    """Every value of a dataset as text, recursively (private tags included)."""
    parts: list[str] = []

    def walk(item: Dataset) -> None:
        for elem in item:
            if elem.VR == "SQ":
                for sub in elem.value:
                    walk(sub)
            elif elem.tag != 0x7FE00010 and elem.value is not None:
                value = elem.value
                parts.append(value.decode("latin-1", "replace") if isinstance(value, bytes)
                             else str(value))

    walk(ds)
    if hasattr(ds, "file_meta"):
        walk(ds.file_meta)
    return "\n".join(parts)


def leaked(text: str, index: int = 0) -> list[str]:
    """Identifiers of patient `index` found in `text` (case-insensitive)."""
    values = phi_values(index)
    needles = [*values.values(), *values["PatientName"].split("^"), "19410523", "1941-05-23"]
    low = text.lower()
    return sorted({n for n in needles if len(n) >= 4 and n.lower() in low})
