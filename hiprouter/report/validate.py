"""Check created objects the way they are judged: dciodvfy, dsrdump and a highdicom read-back.

- dciodvfy (dicom3tools) prints no line starting with "Error" or "Abort";
- for SR and KOS, dsrdump (DCMTK) exits 0 and prints no "E:" or "F:" line;
- highdicom reads the object back as its IOD class (SR, KOS, SEG; an SC's pixels decode).

`hiprouter check-dicom FILE...` runs it; the tests call `problems()` on every output.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import highdicom as hd
import pydicom

SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
KOS = "1.2.840.10008.5.1.4.1.1.88.59"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
SC = "1.2.840.10008.5.1.4.1.1.7"
TOOLS = ("dciodvfy", "dsrdump")


class ValidatorMissing(RuntimeError):
    """dciodvfy or dsrdump is not installed (Debian packages dicom3tools, dcmtk)."""


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def dciodvfy(path: Path) -> list[str]:
    p = _run(["dciodvfy", str(path)])
    return [f"dciodvfy: {line}" for line in (p.stderr + p.stdout).splitlines()
            if line.startswith(("Error", "Abort"))]


def dsrdump(path: Path) -> list[str]:
    p = _run(["dsrdump", str(path)])
    bad = [f"dsrdump: {line}" for line in p.stderr.splitlines() if line[:2] in ("E:", "F:")]
    if p.returncode != 0 and not bad:
        bad = [f"dsrdump: exit status {p.returncode}"]
    return bad


def read_back(ds: pydicom.Dataset) -> list[str]:
    """Whether highdicom (or pydicom, for SC pixels) reads the object back."""
    sop_class = str(ds.SOPClassUID)
    try:
        if sop_class == KOS:
            hd.ko.KeyObjectSelectionDocument.from_dataset(ds)
        elif sop_class.startswith(SR_PREFIX):
            hd.sr.Comprehensive3DSR.from_dataset(ds)
        elif sop_class == SEG:
            hd.seg.Segmentation.from_dataset(ds)
        elif sop_class == SC:
            if ds.pixel_array.shape != (ds.Rows, ds.Columns, 3):
                return [f"highdicom: SC pixels have shape {ds.pixel_array.shape}"]
    except Exception as exc:
        return [f"read-back: {type(exc).__name__}: {exc}"]
    return []


def problems(path: Path) -> list[str]:
    """Everything the validators say is wrong with one file (empty: it passes)."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise ValidatorMissing(f"{', '.join(missing)} not installed (Debian dicom3tools, dcmtk)")
    ds = pydicom.dcmread(path)
    found = dciodvfy(path)
    if str(ds.SOPClassUID).startswith(SR_PREFIX):
        found += dsrdump(path)
    return found + read_back(ds)


def validate(paths: Iterable[Path]) -> dict[Path, list[str]]:
    """Problems per file, only for files that have any."""
    out = {}
    for path in paths:
        found = problems(Path(path))
        if found:
            out[Path(path)] = found
    return out
