"""One report per study episode: every pipeline's findings -> SR, SCs, SEGs, KOS; and writing them.

Each object is built on its own: when one cannot be built (an odd header, a broken plugin
finding), the others still go out and `ReportBundle.left_out` says what was left out and
why, for the audit. Every object joins the source study (Patient and Study modules copied
from the radiographs) in its own new series; all UIDs are deterministic (uids.py), so
building again for the same study, models and images gives the same SOP Instance UIDs.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from hiprouter import __version__
from hiprouter.config import ReportConfig, TriageRule
from hiprouter.findings import Finding, ModelInfo, StudyFindings
from hiprouter.report.header import source_header
from hiprouter.report.kos import build_kos
from hiprouter.report.sc import Overlay, build_sc, display_size, finding_label
from hiprouter.report.seg import build_seg
from hiprouter.report.sr import build_sr
from hiprouter.report.text import ReportText, render_report_text
from hiprouter.report.triage import triage
from hiprouter.report.uids import input_digest, output_uid, producer_key

# highdicom warns about single-component person names (legal in DICOM, common in real data)
# and quotes the name in the message; patient names must never reach stderr or the logs.
warnings.filterwarnings(
    "ignore", message=r'The string ".*" is unlikely to represent the intended person name',
    category=UserWarning)


class NothingToReport(ValueError):
    """No finding and no source radiograph a report could refer to."""


@dataclass
class ReportBundle:
    """The objects created for one study episode, and what could not be created."""

    sr: Dataset | None
    scs: list[Dataset]
    segs: list[Dataset]
    kos: Dataset | None
    priority: str
    reason: str
    text: ReportText | None
    referenced_sop_uids: list[str] = field(default_factory=list)
    """SOP Instance UIDs of the source radiographs the outputs reference."""
    left_out: list[tuple[str, str]] = field(default_factory=list)
    """(what, why) for every object or finding that could not be included."""

    def datasets(self) -> list[Dataset]:
        """All objects, in sending order: SR, SCs, SEGs, then the KOS that references them."""
        return [d for d in (self.sr, *self.scs, *self.segs, self.kos) if d is not None]


def router_identity(producer: str) -> ModelInfo:
    """hiprouter as the observer device of SR and KOS (its UID changes with the models)."""
    return ModelInfo(name="hiprouter", version=__version__, architecture="hiprouter AI router",
                     device_uid=str(generate_uid(entropy_srcs=["hiprouter-router", producer])),
                     synthetic_demo=False)


def check_finding(finding: Finding, study: StudyFindings) -> str | None:
    """Why a finding cannot be reported (None when it can)."""
    if finding.laterality not in ("R", "L", "U"):
        return f"laterality {finding.laterality!r} is not R, L or U"
    c = finding.classification
    if c is not None:
        if c.predicted not in study.vocabulary(finding.pipeline):
            return f"class {c.predicted!r} is not in the pipeline's vocabulary"
        if not (math.isfinite(c.probability) and 0.0 <= c.probability <= 1.0):
            return f"probability {c.probability!r} is not in [0, 1]"
    for m in finding.measurements:
        if not math.isfinite(m.value):
            return f"measurement {m.key} is not a finite number"
    return None


def _drop_invalid(study: StudyFindings, left_out: list[tuple[str, str]]) -> StudyFindings:
    for result in study.results:
        kept = []
        for f in result.findings:
            why = check_finding(f, study)
            if why is None:
                kept.append(f)
            else:
                left_out.append((f"{f.pipeline} finding, {f.laterality} hip", why))
        result.findings = kept
    return study


def _evidence(study: StudyFindings, sources: Sequence[Dataset]) -> list[Dataset]:
    by_uid: dict[str, Dataset] = {}
    for ds in sources:
        if str(ds.StudyInstanceUID) != study.study_uid:
            raise ValueError(f"source {ds.SOPInstanceUID} is not in study {study.study_uid}")
        by_uid[str(ds.SOPInstanceUID)] = ds
    wanted = [u for f in study.findings() for u in f.source_sop_uids]
    wanted += list(study.not_assessed())
    wanted = [u for u in dict.fromkeys(wanted) if u in by_uid]
    if not wanted:
        raise NothingToReport(f"study {study.study_uid}: no finding and no source radiograph")
    return [by_uid[u] for u in wanted]


def _overlay(uid: str, display: np.ndarray, study: StudyFindings,
             heat_order: Sequence[str], max_side: int) -> Overlay:
    """Labels and outlines of every finding on the image, and per hip the heat map of the
    first pipeline in `heat_order` that has one for that hip (so an AP pelvis can show the
    failure map of its THA and the device map of its other hip), at the SC's size."""
    overlay = Overlay(uid, display, None)
    size = display_size(display.shape, max_side)
    on_image = [f for f in study.findings() if uid in f.source_sop_uids]
    for f in on_image:
        overlay.labels.setdefault(f.laterality, []).append(
            finding_label(f, study.vocabulary(f.pipeline)))
        overlay.outlines += [r.points for r in f.regions
                             if r.sop_instance_uid == uid and r.graphic_type == "POLYLINE"]
    chosen: list[np.ndarray] = []
    used: list[str] = []
    for side in dict.fromkeys(f.laterality for f in on_image):
        for pipeline in heat_order:
            maps = [h for f in on_image
                    if f.pipeline == pipeline and f.laterality == side and _explains(f, study)
                    for h in f.heatmaps if h.sop_instance_uid == uid]
            if maps:
                chosen += [h.resized(*size) for h in maps]
                used.append(pipeline)
                break
    if chosen:
        overlay.heatmap = np.maximum.reduce(chosen)
        overlay.heatmap_from = ", ".join(dict.fromkeys(used))
    return overlay


def default_heat_order(study: StudyFindings) -> list[str]:
    """Whose heat maps the SCs prefer when ``report.heatmap_pipelines`` is not set: cascade
    stages before the pipelines they ran on (the more specific finding), else run order."""
    depth: dict[str, int] = {}
    for r in study.results:
        depth[r.pipeline] = depth.get(r.upstream, -1) + 1 if r.upstream else 0
    return [r.pipeline for r in sorted(study.results, key=lambda r: -depth[r.pipeline])]


def _explains(finding: Finding, study: StudyFindings) -> bool:
    """Whether a finding's heat map is worth drawing: an assessed, positive finding."""
    c = finding.classification
    if c is None:
        return True
    return c.status == "assessed" and not study.vocabulary(finding.pipeline).is_negative(
        c.predicted)


def series_laterality(sources: Sequence[Dataset]) -> str:
    """R or L when every source shows that side (Laterality or Image Laterality), else ""."""
    sides = {str(ds.get("Laterality") or ds.get("ImageLaterality") or "") for ds in sources}
    return sides.pop() if len(sides) == 1 and sides <= {"R", "L"} else ""


def build_report(study: StudyFindings, sources: Sequence[Dataset],
                 display_images: Mapping[str, np.ndarray], report_cfg: ReportConfig,
                 triage_rules: Mapping[str, Sequence[TriageRule]] | None = None,
                 templates_dir: Path | None = None) -> ReportBundle:
    """SR, one SC per radiograph with findings, a SEG per radiograph with masks, the KOS.

    ``sources`` are the study's radiographs (full datasets); ``display_images`` their uint8
    renderings by SOP Instance UID (from decoding). Raises NothingToReport when there is no
    finding and no radiograph to refer to.
    """
    left_out: list[tuple[str, str]] = []
    study = _drop_invalid(study, left_out)
    evidence = _evidence(study, sources)
    headers = [source_header(ds) for ds in evidence]
    by_uid = {str(ds.SOPInstanceUID): ds for ds in headers}
    producer = producer_key((r.pipeline, r.model) for r in study.results)
    router = router_identity(producer)
    models = list({r.model.device_uid: r.model for r in study.results
                   if r.model is not None}.values())
    inputs = input_digest(by_uid)

    def uid(kind: str, *parts: str) -> str:
        return output_uid(study.study_uid, producer, kind, *parts)

    text = None
    sr = None
    try:
        text = render_report_text(study, report_cfg.language, report_cfg.low_confidence,
                                  templates_dir)
        counts: dict[tuple[str, str], int] = {}
        tracking = []
        for f in study.findings():
            n = counts[(f.pipeline, f.laterality)] = counts.get((f.pipeline, f.laterality), 0) + 1
            tracking.append(uid("tracking", f.pipeline, f.laterality, str(n)))
        image_tracking = {u: uid("tracking", "not-assessed", u) for u in study.not_assessed()}
        sr = build_sr(study, headers, text, router, series_uid=uid("sr-series"),
                      sop_uid=uid("sr-instance", inputs), tracking_uids=tracking,
                      image_tracking_uids=image_tracking)
    except Exception as exc:
        left_out.append(("SR", f"{type(exc).__name__}: {exc}"))

    scs = []
    if report_cfg.secondary_captures:
        heat_order = report_cfg.heatmap_pipelines or default_heat_order(study)
        with_findings = [u for u in by_uid if u in display_images
                         and any(u in f.source_sop_uids for f in study.findings())]
        laterality = series_laterality([by_uid[u] for u in with_findings])
        for u in with_findings:
            try:
                scs.append(build_sc(_overlay(u, display_images[u], study, heat_order,
                                             report_cfg.sc_max_side), models,
                                    by_uid[u], series_uid=uid("sc-series"),
                                    sop_uid=uid("sc-instance", u, inputs),
                                    instance_number=len(scs) + 1,
                                    series_laterality=laterality,
                                    compression=report_cfg.sc_compression,
                                    max_side=report_cfg.sc_max_side))
            except Exception as exc:
                left_out.append((f"SC of image {u}", f"{type(exc).__name__}: {exc}"))

    segs = []
    full = {str(ds.SOPInstanceUID): ds for ds in sources}
    for u in by_uid:
        masks = [(m, f.laterality, f.model) for f in study.findings() for m in f.masks
                 if m.sop_instance_uid == u]
        if not masks:
            continue
        try:
            source = source_header(full[u])
            if "FrameOfReferenceUID" not in source and "PixelSpacing" in source:
                # a projection radiograph: highdicom would derive a Pixel Measures Sequence
                # without Slice Thickness from it, which its own reader then refuses
                del source.PixelSpacing
            source.PixelData = full[u].PixelData
            source.file_meta = full[u].file_meta
            segs.append(build_seg(source, masks, series_uid=uid("seg-series"),
                                  sop_uid=uid("seg-instance", u, inputs),
                                  instance_number=len(segs) + 1))
        except Exception as exc:
            left_out.append((f"SEG of image {u}", f"{type(exc).__name__}: {exc}"))

    flag = triage(study, triage_rules or {}, report_cfg.default_priority)
    kos = None
    try:
        created = [d for d in (sr, *scs, *segs) if d is not None]
        assessed = {u for f in study.findings() for u in f.source_sop_uids}
        radiographs = [h for h in headers if str(h.SOPInstanceUID) in assessed] or headers
        kos = build_kos(radiographs, created, router, models, flag.level, flag.reason,
                        series_uid=uid("ko-series"), sop_uid=uid("ko-instance", inputs))
    except Exception as exc:
        left_out.append(("KOS", f"{type(exc).__name__}: {exc}"))
    return ReportBundle(sr=sr, scs=scs, segs=segs, kos=kos, priority=flag.level,
                        reason=flag.reason, text=text, referenced_sop_uids=list(by_uid),
                        left_out=left_out)


def output_filename(ds: Dataset) -> str:
    """File name of a created object: its modality and a hash of its SOP Instance UID."""
    digest = hashlib.sha256(str(ds.SOPInstanceUID).encode("ascii")).hexdigest()[:32]
    return f"{str(ds.Modality).lower()}-{digest}.dcm"


def write_bundle(bundle: ReportBundle, out_dir: Path) -> list[Path]:
    """Write every object as a DICOM file with file meta (temp file, fsync, rename).

    The name is a hash of the SOP Instance UID, so writing the same report again replaces
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
