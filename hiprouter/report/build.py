"""Build all result objects of one study result (SR, SC overlays, KOS triage flag) and write them.

Every object joins the source study (Patient and Study modules copied from the radiographs),
each kind in its own new series; all UIDs are deterministic (see uids.py), so building again
for the same study, pipeline and model gives the same SOP Instance UIDs and a resend replaces.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
from pydicom.dataset import Dataset

from hiprouter.config import PipelineConfig
from hiprouter.inference.classes import class_by_key
from hiprouter.inference.results import StudyResult
from hiprouter.report.header import source_header
from hiprouter.report.kos import build_kos
from hiprouter.report.sc import build_sc
from hiprouter.report.sr import build_sr
from hiprouter.report.text import ReportText, render_report_text
from hiprouter.report.triage import triage
from hiprouter.report.uids import output_uid

# highdicom warns about single-component person names (legal in DICOM, common in real data)
# and quotes the name in the message; patient names must never reach stderr or the logs.
warnings.filterwarnings(
    "ignore", message=r'The string ".*" is unlikely to represent the intended person name',
    category=UserWarning)


class NothingToReport(ValueError):
    """No hip result or no usable source radiograph (every image was refused)."""


@dataclass
class ReportBundle:
    """The objects created for one study result."""

    sr: hd.sr.Comprehensive3DSR
    scs: list[hd.sc.SCImage]
    kos: hd.ko.KeyObjectSelectionDocument
    priority: str
    reason: str
    text: ReportText
    referenced_sop_uids: list[str] = field(default_factory=list)
    """SOP Instance UIDs of the source radiographs the outputs reference."""

    def datasets(self) -> list[Dataset]:
        """All objects, in sending order: SR, SCs, then the KOS that references them."""
        return [self.sr, *self.scs, self.kos]


def model_key(result: StudyResult) -> str:
    """What identifies the model's output in UIDs: its version and its weights' Device UID."""
    return f"{result.model.version}|{result.model.device_uid}"


def _used_sources(result: StudyResult, sources: Sequence[Dataset]) -> list[Dataset]:
    by_uid: dict[str, Dataset] = {}
    for ds in sources:
        if str(ds.StudyInstanceUID) != result.study_uid:
            raise ValueError(f"source {ds.SOPInstanceUID} is not in study {result.study_uid}")
        by_uid[str(ds.SOPInstanceUID)] = ds
    wanted = [uid for hip in result.hips for uid in hip.source_sop_uids]
    wanted += [h.sop_instance_uid for h in result.heatmaps]
    wanted = [uid for uid in dict.fromkeys(wanted) if uid not in result.refused]
    missing = [uid for uid in wanted if uid not in by_uid]
    if missing:
        raise ValueError(f"result references images not passed as sources: {missing}")
    if not wanted:
        wanted = [uid for uid in by_uid if uid not in result.refused]
    if not wanted:
        raise NothingToReport(f"study {result.study_uid}: no usable source radiograph")
    return [by_uid[uid] for uid in wanted]


def _check_hips(result: StudyResult) -> None:
    """Reject hip results that would make invalid objects, naming what is wrong."""
    for n, hip in enumerate(result.hips):
        where = f"study {result.study_uid} hip {n}"
        if hip.laterality not in ("R", "L", "U"):
            raise ValueError(f"{where}: laterality {hip.laterality!r} is not R, L or U")
        try:
            class_by_key(hip.predicted_class)
        except KeyError as exc:
            raise ValueError(f"{where}: unknown class {hip.predicted_class!r}") from exc
        if not (math.isfinite(hip.probability) and 0.0 <= hip.probability <= 1.0):
            raise ValueError(f"{where}: probability {hip.probability!r} is not in [0, 1]")


def input_digest(sop_uids: Iterable[str]) -> str:
    """A short digest of the set of source SOP Instance UIDs a result used."""
    joined = "\n".join(sorted(sop_uids)).encode("ascii", "replace")
    return hashlib.sha256(joined).hexdigest()[:32]


def series_laterality(sources: Sequence[Dataset]) -> str:
    """R or L when every source shows that side (Laterality or Image Laterality), else ""."""
    sides = {str(ds.get("Laterality") or ds.get("ImageLaterality") or "") for ds in sources}
    return sides.pop() if len(sides) == 1 and sides <= {"R", "L"} else ""


def _tracking_uids(result: StudyResult, key: str) -> list[str]:
    seen: Counter[str] = Counter()
    uids = []
    for hip in result.hips:
        seen[hip.laterality] += 1
        uids.append(output_uid(result.study_uid, result.pipeline, key, "tracking",
                               hip.laterality, str(seen[hip.laterality])))
    return uids


def build_outputs(result: StudyResult, sources: list[Dataset], pipeline_cfg: PipelineConfig,
                  templates_dir: Path | None = None) -> ReportBundle:
    """SR, one SC per radiograph with a heat map (when enabled), and the KOS triage flag.

    ``sources`` are the study's radiographs (at least those the result references); images in
    ``result.refused`` are never referenced. Raises NothingToReport when the result has no hip
    or no usable image, ValueError when sources and result do not fit together.
    """
    if not result.hips:
        raise NothingToReport(f"study {result.study_uid}: no hip result to report")
    _check_hips(result)
    used = [source_header(ds) for ds in _used_sources(result, sources)]
    by_uid = {str(ds.SOPInstanceUID): ds for ds in used}
    key = model_key(result)

    # Series UIDs depend on study, pipeline and model only; instance UIDs also on the images
    # used, so new images in the study (a later episode) give new objects in the same series.
    inputs = input_digest(by_uid)

    def uid(kind: str, *parts: str) -> str:
        return output_uid(result.study_uid, result.pipeline, key, kind, *parts)

    text = render_report_text(result, pipeline_cfg.language, pipeline_cfg.low_confidence,
                              templates_dir)
    sr = build_sr(result, used, text, series_uid=uid("sr-series"),
                  sop_uid=uid("sr-instance", inputs), tracking_uids=_tracking_uids(result, key))
    scs = []
    heats = [h for h in result.heatmaps if h.sop_instance_uid in by_uid]  # not refused ones
    if not pipeline_cfg.heatmaps:
        heats = []
    laterality = series_laterality([by_uid[h.sop_instance_uid] for h in heats])
    for heat in heats:
        hips = [h for h in result.hips if heat.sop_instance_uid in h.source_sop_uids]
        scs.append(build_sc(heat, hips, result.model, by_uid[heat.sop_instance_uid],
                            series_uid=uid("sc-series"),
                            sop_uid=uid("sc-instance", heat.sop_instance_uid, inputs),
                            instance_number=len(scs) + 1, series_laterality=laterality))
    flag = triage(result, pipeline_cfg)
    kos = build_kos(used, [sr, *scs], result.model, flag.level, flag.reason,
                    series_uid=uid("ko-series"), sop_uid=uid("ko-instance", inputs))
    return ReportBundle(sr=sr, scs=scs, kos=kos, priority=flag.level, reason=flag.reason,
                        text=text, referenced_sop_uids=list(by_uid))


def output_filename(ds: Dataset) -> str:
    """File name of a created object: its modality and a hash of its SOP Instance UID."""
    digest = hashlib.sha256(str(ds.SOPInstanceUID).encode("ascii")).hexdigest()[:32]
    return f"{str(ds.Modality).lower()}-{digest}.dcm"


def write_bundle(bundle: ReportBundle, out_dir: Path) -> list[Path]:
    """Write every object as a DICOM file with file meta (temp file, fsync, rename).

    The name is a hash of the SOP Instance UID, so writing the same result again replaces
    the earlier files instead of adding copies.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in bundle.datasets():
        path = out_dir / output_filename(ds)
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".tmp-", suffix=".dcm")
        try:
            with os.fdopen(fd, "wb") as fh:
                ds.save_as(fh, enforce_file_format=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        paths.append(path)
    dir_fd = os.open(out_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return paths
