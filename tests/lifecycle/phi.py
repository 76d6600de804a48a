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


BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def text_sr(study: Dataset, text: str, *, final: bool = True, seed: str = "") -> Dataset:
    """A Basic Text SR final report in the study of `study` (same patient and study
    attributes, identifiers included), as a RIS/PACS would store it."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    def code(value: str, scheme: str, meaning: str) -> Dataset:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
        return item

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    ds.SOPClassUID = BASIC_TEXT_SR
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["report", str(study.StudyInstanceUID), seed])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber",
                    "ReferringPhysicianName", "StudyID", "InstitutionName", "StudyDescription"):
        if keyword in study:
            setattr(ds, keyword, study.get(keyword))
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.Modality = "SR"
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["report-series", ds.SOPInstanceUID])
    ds.SeriesNumber, ds.InstanceNumber = 900, 1
    ds.Manufacturer = "RIS"
    ds.ContentDate, ds.ContentTime = str(study.get("StudyDate", "20260101")), "120000"
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([code("18748-4", "LN", "Diagnostic Imaging Report")])
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "VERIFIED" if final else "UNVERIFIED"
    if final:
        observer = Dataset()
        observer.VerifyingObserverName = "RADIOLOGE^RITA"
        observer.VerifyingOrganization = str(study.get("InstitutionName", "") or "X")
        observer.VerificationDateTime = ds.ContentDate + "130000"
        observer.VerifyingObserverIdentificationCodeSequence = Sequence()
        ds.VerifyingObserverSequence = Sequence([observer])
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = Sequence([code("121071", "DCM", "Finding")])
    item.TextValue = text
    ds.ContentSequence = Sequence([item])
    return ds
