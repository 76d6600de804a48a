"""Labelled hips for training and evaluation: a folder of DICOM files plus a labels CSV.

The CSV has one row per (image, hip): `path` (relative to the data folder), `study_uid`,
`patient_id`, `laterality` (R|L|U) and a label column (default `hardware`, a class key).
Rows whose label is empty (hips the task does not apply to, e.g. `device` of a hip without
fixation) are skipped and counted. Several folders (e.g. both synthetic renderers) can be
read into one training set (`read_sources`).
Each image is decoded once, cut into per-hip crops (laterality.py), letterboxed to the input
size and cached as uint8 (one .npz per image and size), so epochs never re-decode DICOM.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from hiprouter.inference.decode import RADIOGRAPH_MODALITIES, RefusedImage, decode_file
from hiprouter.inference.laterality import (
    View,
    hip_crops,
    view_evidence,
    view_read_from_image,
)
from hiprouter.inference.preprocess import letterbox

SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


class DatasetError(Exception):
    """A labels CSV or data folder that cannot be used, with the reason."""


@dataclass(frozen=True)
class LabelSpec:
    """What a model of one label set (a classifier pipeline kind) learns, and where."""

    name: str
    classes: list[str]
    """Class keys in model output order (the kind's vocabulary)."""
    column: str
    """Default labels CSV column."""
    aliases: dict[str, str]
    triage: list[str] = field(default_factory=list)
    """Classes with a triage meaning (e.g. fractures): triage thresholds are chosen for them."""


def label_spec(label_set: str, classes: Sequence[str] | None = None) -> LabelSpec:
    """The classes and labels column of a classifier kind (`hiprouter models kinds`).

    For a label set that is not (yet) an installed kind, `classes` names the class keys in
    output order and the labels column is the label set's name.
    """
    from hiprouter.config import ConfigError
    from hiprouter.pipelines.classifier import ClassifierKind
    from hiprouter.pipelines.registry import installed_kinds, kind_class

    try:
        cls = kind_class(label_set)
    except ConfigError as exc:
        if classes:
            return LabelSpec(label_set, list(classes), label_set, {})
        raise DatasetError(f"{exc} (or name its classes with --classes)") from None
    if not issubclass(cls, ClassifierKind):
        kinds = [k for k in installed_kinds() if issubclass(kind_class(k), ClassifierKind)]
        raise DatasetError(f"kind {label_set!r} is not a classifier; label sets: "
                           f"{', '.join(kinds)}")
    vocabulary = cls.default_vocabulary()
    keys = vocabulary.keys
    if classes and list(classes) != keys:
        raise DatasetError(f"kind {label_set!r} has the classes {keys}; --classes differs")
    return LabelSpec(label_set, keys, cls.label_column or label_set, dict(cls.label_aliases),
                     [c.key for c in vocabulary if c.triage and not c.negative])


@dataclass(frozen=True)
class LabelledHip:
    """One row of the labels CSV."""

    path: str
    study_uid: str
    patient_id: str
    laterality: str
    label: str
    view: str = ""


class LabelRows(list):
    """The usable rows of a labels CSV; `skipped` counts rows with an empty label."""

    skipped: int = 0


def read_labels(csv_path: Path, classes: Sequence[str], label_column: str = "hardware",
                aliases: Mapping[str, str] | None = None) -> LabelRows:
    """Read and check a labels CSV; every non-empty label (after `aliases`) must be one of
    `classes`.

    Rows with an empty label are skipped (counted in the result's `skipped`): the hip is
    outside this label set (the synthetic `failure` column is empty for hips without a THA,
    `device` for hips without a catalogue fixation).
    """
    try:
        with Path(csv_path).open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = set(reader.fieldnames or [])
            missing = {"path", label_column} - fields
            if missing:
                raise DatasetError(f"{csv_path}: missing column(s) {', '.join(sorted(missing))}")
            rows = list(reader)
    except OSError as exc:
        raise DatasetError(f"cannot read labels {csv_path}: {exc}") from exc
    out = LabelRows()
    known = set(classes)
    for n, row in enumerate(rows, start=2):
        label = (row.get(label_column) or "").strip()
        if not label:
            out.skipped += 1
            continue
        label = (aliases or {}).get(label, label)
        if label not in known:
            raise DatasetError(f"{csv_path}:{n}: label {label!r} is not one of {sorted(known)}")
        path = (row.get("path") or "").strip()
        study = (row.get("study_uid") or "").strip() or path
        out.append(LabelledHip(
            path=path,
            study_uid=study,
            patient_id=(row.get("patient_id") or "").strip() or study,
            laterality=((row.get("laterality") or "U").strip().upper() or "U")[:1],
            label=label,
            view=(row.get("view") or "").strip(),
        ))
    if not out:
        raise DatasetError(f"{csv_path}: no rows with a {label_column!r} label"
                           + (f" ({out.skipped} empty)" if out.skipped else ""))
    return out


def read_sources(sources: Sequence[tuple[Path, Path]], classes: Sequence[str],
                 label_column: str, aliases: Mapping[str, str] | None = None) -> LabelRows:
    """Rows of several (data folder, labels CSV) pairs, paths made absolute (one data set)."""
    from dataclasses import replace

    out = LabelRows()
    for data_dir, csv_path in sources:
        rows = read_labels(csv_path, classes, label_column, aliases)
        base = Path(data_dir).resolve()
        out.extend(replace(r, path=str(base / r.path)) for r in rows)
        out.skipped += rows.skipped
    return out


def cache_file(cache_dir: Path, image: Path, size: int, variant: str = "") -> Path:
    """The cache file of one image at one input size (its path, size and mtime in the key;
    `variant` names anything else the crops depend on)."""
    stat = image.stat()
    key = f"{image.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{size}"
    if variant:
        key += f"|{variant}"
    return cache_dir / f"{hashlib.sha1(key.encode()).hexdigest()}-{size}.npz"


def letterboxed_crops(ds: Dataset, pixels: np.ndarray, size: int, view: View | None = None
                      ) -> list[tuple[str, np.ndarray]]:
    """(laterality, letterboxed uint8 crop) of every hip crop of a decoded image, in the
    cropper's order: the form crops are cached and trained on (`view` overrides the tags')."""
    out = []
    for crop in hip_crops(ds, pixels, view):
        boxed, _ = letterbox(crop.pixels, size)
        out.append((crop.laterality, np.rint(boxed * 255).astype(np.uint8)))
    return out


def checked_view(ds: Dataset, pixels: np.ndarray, anatomy: Any | None) -> View | None:
    """The view a job reads the image by when its own tags name none and `anatomy` (an
    `AnatomyCheck`) names one (AP pelvis: two hips; single hip: one crop); None: the tags'
    view. The check runs only on images whose tags name no view."""
    if anatomy is None:
        return None
    view, source = view_evidence(ds)
    if source == "series":
        return None
    return view_read_from_image(view, source, anatomy.assess([pixels])[0].view)


def image_crops(image: Path, size: int, cache_dir: Path | None,
                modalities: Sequence[str] = RADIOGRAPH_MODALITIES, anatomy: Any | None = None,
                ) -> dict[str, np.ndarray]:
    """Letterboxed uint8 crops of one image keyed by laterality (R, L, U); cached. With
    `anatomy`, an image whose tags name no view is cut by the view the check names, as a
    job cuts it (`checked_view`)."""
    variant = f"view by {anatomy.info}" if anatomy else ""
    cached = cache_file(cache_dir, image, size, variant) if cache_dir else None
    if cached is not None and cached.is_file():
        with np.load(cached) as npz:
            return {k: npz[k] for k in npz.files}
    ds, decoded = decode_file(image, modalities)
    crops: dict[str, np.ndarray] = {}
    view = checked_view(ds, decoded.pixels, anatomy)
    for laterality, crop in letterboxed_crops(ds, decoded.pixels, size, view):
        crops.setdefault(laterality, crop)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp.npz")
        np.savez(tmp, **crops)
        tmp.replace(cached)
    return crops


def crop_for(crops: dict[str, np.ndarray], laterality: str) -> np.ndarray | None:
    """The crop of the labelled hip: same laterality, or the only crop of a single-hip view."""
    if laterality in crops:
        return crops[laterality]
    if len(crops) == 1:
        return next(iter(crops.values()))
    return None


def map_jobs(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int = 1) -> Iterator[Any]:
    """`fn` over `jobs` in order, in `workers` processes when there is more than one."""
    if workers > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            yield from pool.map(fn, jobs, chunksize=4)
    else:
        yield from map(fn, jobs)


def _crops_or_reason(args: tuple[Path, int, Path | None, Sequence[str], Any]
                     ) -> dict[str, np.ndarray] | str:
    try:
        return image_crops(*args)
    except (RefusedImage, OSError) as exc:
        return getattr(exc, "reason", None) or str(exc)


def load_crops(rows: Sequence[LabelledHip], data_dir: Path, size: int, cache_dir: Path | None,
               progress: Callable | None = None, workers: int = 1, anatomy: Any | None = None,
               ) -> tuple[np.ndarray, list[int], dict[str, str]]:
    """uint8 array (N, size, size) for the usable rows, their row indices, refusals by path.

    `workers` > 1 decodes in that many processes (one when `anatomy` is given: with it,
    images whose tags name no view are cut by the view the check names, `image_crops`).
    """
    images: list[np.ndarray] = []
    used: list[int] = []
    refused: dict[str, str] = {}
    by_path: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_path.setdefault(row.path, []).append(i)
    items = list(by_path.items())
    jobs = [(Path(data_dir) / path, size, cache_dir, RADIOGRAPH_MODALITIES, anatomy)
            for path, _ in items]
    results = zip(items, map_jobs(_crops_or_reason, jobs, 1 if anatomy else workers),
                  strict=True)
    for (path, idx), crops in (progress(results) if progress else results):
        if isinstance(crops, str):
            refused[path] = crops
            continue
        for i in idx:
            crop = crop_for(crops, rows[i].laterality)
            if crop is None:
                refused[path] = f"no {rows[i].laterality} hip found in this image"
                continue
            images.append(crop)
            used.append(i)
    order = np.argsort(used, kind="stable")
    stacked = np.stack([images[j] for j in order]) if images else np.zeros((0, size, size),
                                                                           np.uint8)
    return stacked, [used[j] for j in order], refused


def split_patients(rows: Sequence[LabelledHip], seed: int = 0) -> dict[str, list[int]]:
    """Patient-level, class-stratified 70/10/20 split of row indices (train/val/test)."""

    groups = [r.patient_id for r in rows]
    labels = [r.label for r in rows]
    try:
        assign = _stratified_assign(groups, labels, seed)
    except ValueError:  # too few patients per class to stratify
        assign = _proportional_assign(groups, seed)
    split = {name: [i for i, a in enumerate(assign) if a == name] for name in SPLIT_FRACTIONS}
    if not split["val"]:
        split["val"] = list(split["train"])
    if not split["test"]:
        split["test"] = list(split["val"])
    return split


def _stratified_assign(groups: list[str], labels: list[str], seed: int) -> list[str]:
    """10 class-stratified patient folds: 2 test, 1 validation, 7 training."""
    from sklearn.model_selection import StratifiedGroupKFold

    folds = StratifiedGroupKFold(n_splits=10, shuffle=True, random_state=seed)
    fold_of = np.zeros(len(groups), dtype=int)
    for k, (_, test_idx) in enumerate(folds.split(np.zeros(len(groups)), labels, groups)):
        fold_of[test_idx] = k
    names = {0: "test", 1: "test", 2: "val"}
    return [names.get(int(f), "train") for f in fold_of]


def _proportional_assign(groups: list[str], seed: int) -> list[str]:
    """Whole patients in proportion (at least one each for test and val when possible)."""
    rng = np.random.default_rng(seed)
    patients = sorted(set(groups))
    rng.shuffle(patients)
    n = len(patients)
    n_test = max(1, round(0.2 * n)) if n >= 3 else 0
    n_val = max(1, round(0.1 * n)) if n >= 3 else 0
    role = {p: "test" for p in patients[:n_test]}
    role.update({p: "val" for p in patients[n_test : n_test + n_val]})
    return [role.get(g, "train") for g in groups]
