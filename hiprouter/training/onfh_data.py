"""Labelled femoral heads for the ONFH model: a labels CSV with `onfh_grade` and `head_mask`.

One row per (image, hip) as `hiprouter synth` writes it (docs/synthetic-data.md): `path`,
`study_uid`, `patient_id`, `view`, `laterality`, `onfh_grade` (0-4), `head_mask` (an 8-bit
PNG of the native head in the stored image's geometry, empty without one), `hardware`.
Rows of AP views (ap_pelvis, ap_hip) with a head mask are used; the rest are skipped with
the reason. The split is patient-level and grade-stratified (70/10/20, the classifier's
split function), so the segmentation and the normative model trained with the same seed
never see the test patients.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from hiprouter.inference.decode import RefusedImage, decode_file
from hiprouter.inference.laterality import hip_crops, image_left_is_patient_right
from hiprouter.training.dataset import DatasetError, LabelledHip, split_patients

AP_VIEWS = ("ap_pelvis", "ap_hip")
GRADES = (0, 1, 2, 3, 4)
FIXATION = ("im_nail", "cannulated_screws", "dynamic_hip_screw", "lateral_plate")


@dataclass(frozen=True)
class HeadRow:
    """One labelled femoral head on one image."""

    path: str
    study_uid: str
    patient_id: str
    laterality: str
    view: str
    grade: int
    head_mask: str
    hardware: str = "no_hardware"

    def hip(self) -> LabelledHip:
        return LabelledHip(self.path, self.study_uid, self.patient_id, self.laterality,
                           str(self.grade), self.view)


def read_head_labels(csv_path: Path, grade_column: str = "onfh_grade",
                     mask_column: str = "head_mask") -> tuple[list[HeadRow], dict[str, int]]:
    """Rows usable for the ONFH model, and counts of the rows skipped by reason."""
    try:
        with Path(csv_path).open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = {"path", "laterality", grade_column, mask_column} - set(
                reader.fieldnames or [])
            if missing:
                raise DatasetError(f"{csv_path}: missing column(s) {', '.join(sorted(missing))}")
            raw = list(reader)
    except OSError as exc:
        raise DatasetError(f"cannot read labels {csv_path}: {exc}") from exc
    rows: list[HeadRow] = []
    skipped: dict[str, int] = {}
    for n, r in enumerate(raw, start=2):
        view = (r.get("view") or "").strip()
        mask = (r.get(mask_column) or "").strip()
        reason = None
        if view and view not in AP_VIEWS:
            reason = f"view {view} (AP views only)"
        elif not mask:
            reason = "no head mask (no native head)"
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        try:
            grade = int((r.get(grade_column) or "").strip())
        except ValueError:
            raise DatasetError(f"{csv_path}:{n}: {grade_column} {r.get(grade_column)!r} is "
                               "not an integer 0-4") from None
        if grade not in GRADES:
            raise DatasetError(f"{csv_path}:{n}: {grade_column} {grade} is not 0-4")
        path = (r.get("path") or "").strip()
        study = (r.get("study_uid") or "").strip() or path
        rows.append(HeadRow(path, study, (r.get("patient_id") or "").strip() or study,
                            ((r.get("laterality") or "U").strip().upper() or "U")[:1],
                            view or "ap_hip", grade, mask,
                            (r.get("hardware") or "no_hardware").strip()))
    if not rows:
        raise DatasetError(f"{csv_path}: no row with an AP view and a head mask")
    return rows, skipped


def split_heads(rows: Sequence[HeadRow], seed: int = 0) -> dict[str, list[int]]:
    """Patient-level, grade-stratified train/val/test split of row indices."""
    return split_patients([r.hip() for r in rows], seed)


def write_split(path: Path, rows: Sequence[HeadRow], split: dict[str, list[int]]) -> None:
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["split", "path", "study_uid", "patient_id", "laterality", "view",
                    "onfh_grade"])
        for name, idx in split.items():
            for i in idx:
                r = rows[i]
                w.writerow([name, r.path, r.study_uid, r.patient_id, r.laterality, r.view,
                            r.grade])


@dataclass
class HeadImage:
    """A labelled head's hip crop, ground-truth mask and orientation."""

    row: HeadRow
    crop: np.ndarray
    """Display-space crop (float32, [0, 1])."""
    mask: np.ndarray
    """Ground-truth head mask over the crop (bool)."""
    box: tuple[int, int, int, int]
    """(top, left, bottom, right) of the crop in the stored image."""
    standard_display: bool
    """Patient's right on the image's left."""
    sop_instance_uid: str = ""


def load_head(data_dir: Path, row: HeadRow) -> HeadImage:
    """Decode the image of a row and cut its hip crop and ground-truth mask."""
    ds, decoded = decode_file(Path(data_dir) / row.path)
    mask_path = Path(data_dir) / row.head_mask
    try:
        full = np.asarray(Image.open(mask_path).convert("L")) > 127
    except OSError as exc:
        raise RefusedImage(f"head mask {row.head_mask} cannot be read: {exc}") from exc
    if full.shape != decoded.pixels.shape:
        raise RefusedImage(f"head mask {row.head_mask} is {full.shape}, the image "
                           f"{decoded.pixels.shape}")
    crops = hip_crops(ds, decoded.pixels)
    match = [c for c in crops if c.laterality == row.laterality]
    if not match and len(crops) == 1:
        match = crops
    if not match:
        raise RefusedImage(f"no {row.laterality} hip in {row.path}")
    crop = match[0]
    top, left, bottom, right = crop.box
    return HeadImage(row, crop.pixels, full[top:bottom, left:right], crop.box,
                     image_left_is_patient_right(ds), str(ds.get("SOPInstanceUID", "")))


def iterate_heads(rows: Sequence[HeadRow], data_dir: Path, workers: int = 1,
                  fn: Callable[[HeadImage], object] | None = None,
                  progress: Callable | None = None) -> Iterator[tuple[int, object]]:
    """(row index, fn(HeadImage) or the refusal reason str) for every row.

    ``fn`` runs in the worker processes when ``workers`` > 1 (it must be picklable).
    """
    jobs = [(Path(data_dir), r, fn) for r in rows]

    def results() -> Iterator[object]:
        if workers > 1 and len(jobs) > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(workers) as pool:
                yield from pool.map(_one, jobs, chunksize=4)
        else:
            yield from map(_one, jobs)

    it = results()
    if progress is not None:
        it = progress(it)
    yield from enumerate(it)


def _one(job: tuple[Path, HeadRow, Callable | None]) -> object:
    data_dir, row, fn = job
    try:
        head = load_head(data_dir, row)
    except (RefusedImage, OSError) as exc:
        return getattr(exc, "reason", None) or str(exc)
    return fn(head) if fn is not None else head


def cache_key(row: HeadRow, data_dir: Path, *parts: object) -> str:
    """A cache file stem for a row's derived arrays (changes when the image changes)."""
    image = Path(data_dir) / row.path
    st = image.stat()
    key = "|".join(map(str, (image.resolve(), st.st_size, st.st_mtime_ns, row.laterality,
                             row.head_mask, *parts)))
    return hashlib.sha1(key.encode()).hexdigest()


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice similarity coefficient 2|A and B| / (|A| + |B|) of two boolean masks (1 when
    both are empty)."""
    a = np.asarray(pred, dtype=bool)
    b = np.asarray(truth, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * float(np.logical_and(a, b).sum()) / total
