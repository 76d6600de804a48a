"""What a classifier pipeline says about real radiographs (shared/data), per hip.

Real hip/pelvis radiographs without hardware must never get a hardware sentence; images
that are not hip radiographs must be refused or not assessed. Each file is run three
times: with its own headers (the router's refusals by tag apply), with headers claiming an
AP pelvis of an adult of unknown age (only the image itself can then refuse it: the
whole-image anatomy check, unless --no-anatomy-check, and the hip model), and with no view
or side in its headers at all (the anatomy check, where its model has a pelvis class, then
says whether it is an AP pelvis to be read per hip). JPEG files
(the paediatric DDH set) are converted to a greyscale CR object first, as a careless
gateway would; that set's DICOMs (other films: RGB, Modality DX, no body part) are read as
published.

    .venv/bin/python bench/check_real.py --kind hardware --model models/hardware-demo \
        [--model another/ensemble/member] [--markdown out.md]

The data are real, public files under ../shared/data (never copied into the repository);
the script skips what is absent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
FILES = [
    ("hip-real/wg04/RG2_UNC_hip_CR.dcm", "adult CR hip, no hardware"),
    ("dicom-corpus/wg04/RG1_UNC.dcm", "CR chest (PA)"),
    ("dicom-corpus/wg04/RG3_UNC.dcm", "CR extremity"),
    ("dicom-corpus/pylibjpeg_data/JPEG2000Lossless/966.dcm", "DX chest"),
    ("dicom-corpus/pylibjpeg_data/JPEG2000Lossless/NM_Kakadu44_SOTmarkerincons.dcm",
     "CR hand"),
]
DDH = "hip-real/ddh_jordan"


def grey_from_jpeg(path: Path) -> object:
    """A greyscale CR dataset (AP pelvis, no age) from a JPEG."""
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.uint8)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "REAL"
    ds.Modality = "CR"
    ds.SeriesDescription = "AP PELVIS"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    return ds


def _without(ds: object, keys: tuple[str, ...]) -> object:
    """A copy of `ds` as a CR/DX radiograph without the given elements."""
    import copy

    ds = copy.deepcopy(ds)
    ds.Modality = "CR" if ds.get("Modality") not in ("CR", "DX") else ds.Modality
    for key in keys:
        if key in ds:
            delattr(ds, key)
    return ds


_AGE = ("PatientAge", "PatientBirthDate")
_SIDE_AND_POSITION = ("ImageLaterality", "Laterality", "PatientOrientation", "ViewPosition")


def claim_pelvis(ds: object) -> object:
    """The same image with headers claiming an AP pelvis of unknown age."""
    from hiprouter.synth.ood import claim_ap_pelvis

    return claim_ap_pelvis(_without(ds, (*_AGE, *_SIDE_AND_POSITION, "StudyDescription",
                                         "ProtocolName")))


def strip_view(ds: object) -> object:
    """The same image with no view or side in its headers (no body part, descriptions,
    view position, laterality, orientation), as a gateway that keeps only the pixels sends
    it; adult, unknown age."""
    return _without(ds, (*_AGE, *_SIDE_AND_POSITION, "BodyPartExamined", "SeriesDescription",
                         "StudyDescription", "ProtocolName",
                         "PerformedProcedureStepDescription", "RequestedProcedureDescription",
                         "AcquisitionDeviceProcessingDescription"))


def run(kind: str, models: list[Path], options: dict, anatomy: bool = True) -> list[dict]:
    import pydicom

    from hiprouter.config import Settings
    from hiprouter.inference.study import StudyInput
    from hiprouter.pipelines.registry import PipelineSet

    settings = Settings.model_validate({"pipelines": {kind: {
        "kind": kind, "models": [str(m) for m in models], "device": "cpu", **options}}})
    pipes = PipelineSet(settings)
    pipe = pipes.get(kind)
    check = pipes.anatomy_check() if anatomy else None
    items = []
    for rel, what in FILES:
        path = DATA / rel
        if path.is_file():
            items.append((rel, what, pydicom.dcmread(path)))
    for jpg in sorted((DATA / DDH).glob("*.jpg")):
        items.append((f"{DDH}/{jpg.name}", "child AP pelvis (DDH), JPEG -> grey CR",
                      grey_from_jpeg(jpg)))
    for dcm in sorted((DATA / DDH).glob("*.dcm")):  # other films than the JPEGs of that name
        items.append((f"{DDH}/{dcm.name}", "child AP pelvis (DDH), RGB DX DICOM as published",
                      pydicom.dcmread(dcm)))
    rows = []
    for rel, what, ds in items:
        for mode, data in (("own headers", ds), ("claims AP pelvis", claim_pelvis(ds)),
                           ("no view in headers", strip_view(ds))):
            study = StudyInput.from_datasets(str(data.StudyInstanceUID), [data],
                                             pipe.modalities())
            if check is not None and study.images:
                study.check_anatomy(check)
            result = pipe.run(study, None)
            refused = {**study.refused, **result.not_assessed}
            if refused:
                rows.append({"file": rel, "what": what, "headers": mode, "hip": "-",
                             "status": "refused / not assessed",
                             "says": "; ".join(refused.values())})
            from_image = any(im.view_from_image for im in study.images.values())
            for f in result.findings:
                c = f.classification
                rows.append({"file": rel, "what": what, "headers": mode,
                             "hip": f.laterality + (" (view from image)" if from_image else ""),
                             "status": c.status,
                             "says": f"{c.predicted} {c.probability:.2f}"
                             + (f" ({c.reason})" if c.reason else "")})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", default="hardware")
    ap.add_argument("--model", action="append", type=Path, required=True)
    ap.add_argument("--min-age-years", type=float, default=None)
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--no-anatomy-check", action="store_true",
                    help="Skip the whole-image anatomy check (as with "
                         "inference.anatomy_check.enabled: false).")
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        print(f"no real data at {DATA}; nothing to check")
        return 0
    options = {"heatmaps": False}
    if args.min_age_years is not None:
        options["min_age_years"] = args.min_age_years
    rows = run(args.kind, args.model, options, anatomy=not args.no_anatomy_check)
    lines = ["| file | what | headers | hip | status | says |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['file']} | {r['what']} | {r['headers']} | {r['hip']} | {r['status']} | "
              f"{r['says']} |" for r in rows]
    text = "\n".join(lines)
    print(text)
    hardware_claims = [r for r in rows if r["status"] == "assessed"
                       and not r["says"].startswith(("no_hardware", "normal"))]
    print(f"\n{len(hardware_claims)} definitive finding(s) of hardware/disease on images "
          "without any")
    if args.markdown:
        args.markdown.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
