"""`hiprouter dataset pull`: a de-identified, labelled training set from the site's PACS.

    C-FIND studies by date (and modality), then their series; the routing rule language
    picks the image series (and the studies' SR series are taken as their reports)
    -> C-MOVE each series to hiprouter's dataset AE title (the running `serve` stores it
       with purpose `dataset`: never routed), or C-GET it here; rate-limited, resumable
       (`dataset_items`), a progress bar, every step audited
    -> de-identify each image (lifecycle/deid.py) into OUT/images/, a manifest OUT/images.csv
    -> report text (SR from the PACS, or a RIS CSV keyed by accession number) -> per-hip
       labels by rules (lifecycle/reportlabels.py) -> OUT/labels-<kind>.csv (and
       OUT/labels.csv for the first kind), OUT/label-report.md/.json, and the review sheet
       OUT/private/review.html with report excerpts for a radiologist.

A folder of DICOM files works the same way (`--from-folder`), without the network. The
retrieved originals leave the spool once exported (`dataset.keep_spool`). Log lines and
audit events carry UIDs and counts only; report text never leaves OUT/private/.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from hiprouter import audit
from hiprouter import db as dbmod
from hiprouter.config import ConfigError, Settings, StorageConfig
from hiprouter.db import utcnow, write_transaction
from hiprouter.inference.laterality import classify_view, single_hip_laterality
from hiprouter.lifecycle.deid import Pseudonyms, deidentify, identifiers_of, load_key
from hiprouter.lifecycle.reportlabels import (
    LABELLED,
    REPORT_SR_CLASSES,
    ReportResult,
    Rules,
    extract,
    is_final,
    load_rules,
    scrub,
    text_of_sr,
)
from hiprouter.logs import get_logger
from hiprouter.router.flow.rules import Header, evaluate
from hiprouter.schema import DatasetItem, Instance

log = get_logger(__name__)

DATASET_PULL = audit.Code("HIP010", "Data Set Pull")
FOUND, RETRIEVED, EXPORTED, EXCLUDED, FAILED = "found", "retrieved", "exported", "excluded", \
    "failed"
MAX_ATTEMPTS = 3
MANIFEST_FIELDS = ("path", "study_uid", "series_uid", "sop_instance_uid", "patient_id",
                   "modality", "view", "hips", "pixels")


class PullError(Exception):
    """A pull that cannot start or go on, with the reason (no PHI)."""


@dataclass
class PullSpec:
    """What to pull and where to."""

    out_dir: Path
    kinds: list[str]
    source: str | None = None
    """A destination (PACS) to query; None: `folder`."""
    folder: Path | None = None
    date_from: str | None = None
    date_to: str | None = None
    modalities: list[str] = field(default_factory=lambda: ["CR", "DX"])
    match: Any = None
    """A rule condition (the routing rule language) on study + series attributes."""
    reports_csv: Path | None = None
    csv_accession: str = "accession_number"
    csv_text: str = "report_text"
    reports_from_pacs: bool = True
    retrieve: str = "move"
    limit: int | None = None
    """At most this many studies (the first found)."""

    @property
    def name(self) -> str:
        return self.out_dir.resolve().name[:128]


@dataclass
class PullSummary:
    studies: int = 0
    series: Counter[str] = field(default_factory=Counter)
    images: int = 0
    excluded: Counter[str] = field(default_factory=Counter)
    reports: int = 0
    labels: dict[str, dict[str, int]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


# ---- helpers -----------------------------------------------------------------------------


def _ds_header(*parts: Dataset) -> Header:
    merged = Dataset()
    for part in parts:
        for elem in part:
            if elem.keyword and elem.keyword != "QueryRetrieveLevel":
                merged[elem.tag] = elem
    return Header(merged)


def _in_dates(value: str, spec: PullSpec) -> bool:
    value = (value or "").strip()[:8]
    if not value:
        return not (spec.date_from or spec.date_to)
    return (not spec.date_from or value >= spec.date_from) and \
        (not spec.date_to or value <= spec.date_to)


def _matches(spec: PullSpec, header: Header) -> bool:
    return spec.match is None or evaluate(spec.match, header).matched


def _hips(ds: Dataset) -> tuple[str, list[str]]:
    """(view, hips the image shows) from its original header."""
    view = classify_view(ds)
    if view == "ap_pelvis":
        return view, ["R", "L"]
    side = single_hip_laterality(ds)
    return view, [side] if side in ("R", "L") else []


def _upsert_item(session: Session, dataset: str, study: str, series: str, modality: str
                 ) -> DatasetItem:
    row = session.scalars(select(DatasetItem).where(
        DatasetItem.dataset == dataset, DatasetItem.study_uid == study,
        DatasetItem.series_uid == series)).first()
    if row is None:
        row = DatasetItem(dataset=dataset, study_uid=study, series_uid=series,
                          modality=modality[:16], state=FOUND, attempts=0, instances=0,
                          updated_at=utcnow())
        session.add(row)
    return row


def _set_state(factory: sessionmaker[Session], item_id: int, state: str,
               reason: str | None = None, instances: int | None = None,
               attempt: bool = False) -> None:
    with write_transaction(factory) as session:
        row = session.get(DatasetItem, item_id)
        assert row is not None
        row.state, row.reason, row.updated_at = state, reason, utcnow()
        if instances is not None:
            row.instances = instances
        if attempt:
            row.attempts += 1


class _Rate:
    """At most `per_minute` calls a minute (evenly spaced)."""

    def __init__(self, per_minute: float) -> None:
        self.interval = 60.0 / per_minute
        self.next = 0.0

    def wait(self) -> None:
        now = time.monotonic()
        if now < self.next:
            time.sleep(self.next - now)
        self.next = max(now, self.next) + self.interval


def _bar(items: list[Any], desc: str, show: bool) -> Iterator[Any]:
    if not show:
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, desc=desc, unit="series", leave=False, dynamic_ncols=True)


# ---- the store of exported images and report texts ---------------------------------------


class Store:
    """OUT/images.csv (manifest, pseudonyms only) and OUT/private/reports.jsonl (report
    text with the header identifiers scrubbed; site-internal)."""

    def __init__(self, out_dir: Path) -> None:
        self.out = Path(out_dir)
        self.manifest_path = self.out / "images.csv"
        self.reports_path = self.out / "private" / "reports.jsonl"
        self.images: dict[str, dict[str, str]] = {}
        self.reports: dict[tuple[str, str], dict[str, Any]] = {}
        if self.manifest_path.is_file():
            with self.manifest_path.open(newline="", encoding="utf-8") as fh:
                self.images = {r["path"]: r for r in csv.DictReader(fh)}
        if self.reports_path.is_file():
            for line in self.reports_path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    r = json.loads(line)
                    self.reports[(r["study_uid"], r["ref"])] = r

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.manifest_path.with_suffix(".tmp")
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS)
            w.writeheader()
            for key in sorted(self.images):
                w.writerow(self.images[key])
        tmp.replace(self.manifest_path)
        self.reports_path.parent.mkdir(parents=True, exist_ok=True)
        (self.reports_path.parent / "README.txt").write_text(
            "Report text of the studies in this data set (header identifiers removed, but\n"
            "free text may still name people). Site-internal: do not share this folder.\n",
            encoding="utf-8")
        tmp = self.reports_path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                               for _, r in sorted(self.reports.items())), encoding="utf-8")
        tmp.replace(self.reports_path)


def export_image(ds: Dataset, store: Store, pseudo: Pseudonyms, settings: Settings
                 ) -> str | None:
    """De-identify one image into OUT/images/; returns why it was left out, or None."""
    view, hips = _hips(ds)
    modality = str(ds.get("Modality", "") or "")
    result = deidentify(ds, pseudo, settings.dataset.deid)
    if result.dataset is None:
        return result.excluded or "not de-identified"
    out = result.dataset
    rel = Path("images") / f"S{pseudo.name(str(out.StudyInstanceUID))}" / \
        f"I{pseudo.name(str(out.SOPInstanceUID))}.dcm"
    path = store.out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    out.save_as(tmp, enforce_file_format=True)
    tmp.replace(path)
    store.images[rel.as_posix()] = {
        "path": rel.as_posix(), "study_uid": str(out.StudyInstanceUID),
        "series_uid": str(out.SeriesInstanceUID), "sop_instance_uid": str(out.SOPInstanceUID),
        "patient_id": result.patient_key, "modality": modality, "view": view,
        "hips": " ".join(hips), "pixels": "corners blanked" if "pixels" in result.actions
        else "as acquired"}
    return None


def add_report(store: Store, pseudo: Pseudonyms, study_uid: str, ref: str, text: str,
               source: str, final: bool, identifiers: Iterable[str]) -> None:
    """Keep a report's text (identifiers scrubbed) under the study's pseudonymous UID."""
    store.reports[(pseudo.uid(study_uid), pseudo.name(ref, 16))] = {
        "study_uid": pseudo.uid(study_uid), "ref": pseudo.name(ref, 16), "source": source,
        "final": final, "text": scrub(text, identifiers)}


# ---- the pull ----------------------------------------------------------------------------


def pull(settings: Settings, spec: PullSpec, *, progress: bool = True,
         say: Callable[[str], None] = print) -> PullSummary:
    """Run (or resume) a pull; returns what it did."""
    deid = settings.dataset.deid
    out = spec.out_dir.resolve()
    if deid.key_file.resolve().is_relative_to(out):
        raise PullError(f"the pseudonymisation key {deid.key_file} must be outside the data "
                        f"set folder {spec.out_dir}")
    rules = load_rules(settings.dataset.label_rules)
    _check_kinds(rules, spec.kinds)
    pseudo = Pseudonyms(load_key(deid.key_file))
    dbmod.upgrade(settings.database.url)
    engine = dbmod.make_engine(settings.database.url)
    factory = dbmod.session_factory(engine)
    store = Store(spec.out_dir)
    summary = PullSummary()
    try:
        if spec.folder is not None:
            _pull_folder(settings, spec, factory, pseudo, store, summary, progress, say)
        else:
            _pull_pacs(settings, spec, factory, engine, pseudo, store, summary, progress, say)
        store.save()
        summary.files.update(build_labels(spec.out_dir, rules, spec.kinds,
                                          settings.dataset.report_language,
                                          settings.dataset.sample_size, summary))
    finally:
        engine.dispose()
    audit.record_now(factory, audit.DATA_EXPORT, "R", audit.SUCCESS,
                     description=f"dataset {spec.name}: {summary.images} de-identified images "
                                 f"exported, {sum(summary.excluded.values())} left out, "
                                 f"{summary.reports} reports",
                     participants=[audit.participant("application", settings.node.ae_title),
                                   audit.participant("destination", None,
                                                     media=str(spec.out_dir.name))],
                     objects={"dataset": spec.name, "images": summary.images})
    log.info("dataset pull finished", dataset=spec.name, studies=summary.studies,
             images=summary.images, excluded=sum(summary.excluded.values()),
             reports=summary.reports)
    return summary


def kind_classes(kind: str) -> list[str]:
    """The class keys of a pipeline kind with a fixed vocabulary (`hiprouter models kinds`)."""
    from hiprouter.pipelines.registry import kind_class

    try:
        cls = kind_class(kind)
    except ConfigError as exc:
        raise PullError(str(exc)) from None
    vocabulary = getattr(cls, "default_vocabulary", None)
    if vocabulary is None:
        raise PullError(f"kind {kind!r} has no fixed vocabulary to label from reports")
    return list(vocabulary().keys)


def _check_kinds(rules: Rules, kinds: list[str]) -> None:
    if not kinds:
        raise PullError("name at least one pipeline kind to label (--kind)")
    for kind in kinds:
        rules.check_kind(kind, kind_classes(kind))


def _pull_pacs(settings: Settings, spec: PullSpec, factory: sessionmaker[Session], engine: Any,
               pseudo: Pseudonyms, store: Store, summary: PullSummary, progress: bool,
               say: Callable[[str], None]) -> None:
    from hiprouter.router.net import retrieve
    from hiprouter.router.net.spool import Spool

    if spec.source not in settings.destinations:
        raise PullError(f"unknown source {spec.source!r}: a destination of the configuration")
    dest = settings.destinations[spec.source]
    node = settings.node
    dates = f"{spec.date_from or ''}-{spec.date_to or ''}" if (spec.date_from or spec.date_to) \
        else ""
    studies = retrieve.find(node, dest, "STUDY", {
        "StudyInstanceUID": "", "StudyDate": dates, "AccessionNumber": "",
        "StudyDescription": "", "ModalitiesInStudy": "", "PatientID": ""})
    accession_to_study: dict[str, str] = {}
    wanted = set(spec.modalities)
    picked = 0
    with write_transaction(factory) as session:
        for st in studies:
            study_uid = str(st.get("StudyInstanceUID", "") or "")
            if not study_uid or not _in_dates(str(st.get("StudyDate", "")), spec):
                continue
            if spec.limit is not None and picked >= spec.limit:
                break
            series = retrieve.find(node, dest, "SERIES", {
                "StudyInstanceUID": study_uid, "SeriesInstanceUID": "", "Modality": "",
                "SeriesDescription": "", "BodyPartExamined": "", "ProtocolName": "",
                "SeriesNumber": ""})
            images = [s for s in series if str(s.get("Modality", "")) in wanted
                      and _matches(spec, _ds_header(st, s))]
            if not images:
                continue
            picked += 1
            if st.get("AccessionNumber"):
                accession_to_study[str(st.AccessionNumber).strip()] = study_uid
            for s in images:
                _upsert_item(session, spec.name, study_uid, str(s.SeriesInstanceUID),
                             str(s.get("Modality", "")))
            if spec.reports_from_pacs:
                for s in series:
                    if str(s.get("Modality", "")) == "SR":
                        _upsert_item(session, spec.name, study_uid, str(s.SeriesInstanceUID),
                                     "SR")
    summary.studies = picked
    audit.record_now(factory, DATASET_PULL, "E", audit.SUCCESS,
                     description=f"dataset {spec.name}: C-FIND at {dest.ae_title} found "
                                 f"{len(studies)} studies, {picked} match",
                     participants=[audit.participant("destination", dest.ae_title, dest.host),
                                   audit.participant("application", node.ae_title)],
                     objects={"dataset": spec.name, "query": retrieve.digest(
                         dates, ",".join(spec.modalities))})
    say(f"{picked} studies match at {dest.ae_title} ({len(studies)} found)")

    mode = spec.retrieve or settings.dataset.retrieve
    spool = Spool(settings.storage.spool_dir, fsync=settings.storage.fsync)
    spool.prepare()
    if mode == "move" and not retrieve.echo(node, _self_host(node.host), node.port,
                                            settings.dataset.ae_title):
        raise PullError(f"C-MOVE needs `hiprouter serve` listening as "
                        f"{settings.dataset.ae_title} on port {node.port} (and the PACS must "
                        f"know that AE title); start it, or use --retrieve get")
    rate = _Rate(settings.dataset.max_per_minute)
    with factory() as session:
        todo = list(session.scalars(select(DatasetItem).where(
            DatasetItem.dataset == spec.name,
            DatasetItem.state.in_((FOUND, FAILED)),
            DatasetItem.attempts < MAX_ATTEMPTS).order_by(DatasetItem.id)))
    for item in _bar(todo, "retrieve", progress):
        rate.wait()
        try:
            if mode == "get":
                result = retrieve.get_series(node, dest, engine, spool, item.study_uid,
                                             item.series_uid)
            else:
                result = retrieve.move_series(node, dest, settings.dataset.ae_title,
                                              item.study_uid, item.series_uid)
            count = _wait_for_instances(factory, item, result.completed,
                                        settings.dataset.timeout_s)
            if not result.ok and count == 0:
                raise retrieve.RetrieveError(
                    f"status 0x{(result.status or 0):04X}, {result.failed} failed")
        except Exception as exc:
            _set_state(factory, item.id, FAILED, f"{type(exc).__name__}: {exc}"[:500],
                       attempt=True)
            summary.series["failed"] += 1
            log.warning("dataset retrieval failed", dataset=spec.name,
                        study_uid=item.study_uid, series_uid=item.series_uid, error=str(exc))
            continue
        _set_state(factory, item.id, RETRIEVED, None, count, attempt=True)
        audit.record_now(factory, DATASET_PULL, "R", audit.SUCCESS,
                         description=f"dataset {spec.name}: C-{mode.upper()} {count} instances",
                         participants=[audit.participant("source", dest.ae_title, dest.host),
                                       audit.participant("destination",
                                                         settings.dataset.ae_title)],
                         objects={"study_uid": item.study_uid, "series_uid": item.series_uid,
                                  "dataset": spec.name})
    _export_retrieved(settings, spec, factory, pseudo, store, summary, progress,
                      accession_to_study, spool)


def _self_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def _wait_for_instances(factory: sessionmaker[Session], item: DatasetItem, expected: int,
                        timeout_s: float) -> int:
    """Instances of the item's series in the spool (C-MOVE sub-operations are acknowledged
    only once recorded, so they are there when the C-MOVE returns)."""
    deadline = time.monotonic() + min(timeout_s, 30.0)
    while True:
        with factory() as session:
            count = len(session.scalars(select(Instance.id).where(
                Instance.series_uid == item.series_uid, Instance.state == "stored")).all())
        if count >= max(expected, 1) or time.monotonic() > deadline:
            return count
        time.sleep(0.2)


def _export_retrieved(settings: Settings, spec: PullSpec, factory: sessionmaker[Session],
                      pseudo: Pseudonyms, store: Store, summary: PullSummary, progress: bool,
                      accession_to_study: dict[str, str], spool: Any) -> None:
    with factory() as session:
        items = list(session.scalars(select(DatasetItem).where(
            DatasetItem.dataset == spec.name, DatasetItem.state == RETRIEVED)
            .order_by(DatasetItem.id)))
    identifiers: dict[str, list[str]] = defaultdict(list)
    pending_reports: list[tuple[DatasetItem, Dataset]] = []
    for item in _bar(items, "de-identify", progress):
        with factory() as session:
            rows = list(session.scalars(select(Instance).where(
                Instance.series_uid == item.series_uid, Instance.state == "stored")))
        excluded: list[str] = []
        exported = 0
        for row in rows:
            try:
                ds = dcmread(settings.storage.resolve(row.spool_path))
            except Exception as exc:
                excluded.append(f"unreadable: {type(exc).__name__}")
                continue
            identifiers[item.study_uid].extend(identifiers_of(ds))
            if item.modality == "SR" or str(ds.SOPClassUID) in REPORT_SR_CLASSES:
                pending_reports.append((item, ds))
                continue
            why = export_image(ds, store, pseudo, settings)
            if why:
                excluded.append(why)
                summary.excluded[why] += 1
            else:
                exported += 1
        summary.images += exported
        state = EXPORTED if exported or item.modality == "SR" else EXCLUDED
        _set_state(factory, item.id, state, "; ".join(sorted(set(excluded)))[:500] or None)
        summary.series[state] += 1
        if not settings.dataset.keep_spool:
            _drop_from_spool(factory, rows, settings.storage)
    for item, ds in pending_reports:
        text = text_of_sr(ds)
        if text.strip():
            add_report(store, pseudo, item.study_uid, str(ds.SOPInstanceUID), text, "sr",
                       is_final(ds), identifiers[item.study_uid])
            summary.reports += 1
    if spec.reports_csv is not None:
        summary.reports += _csv_reports(spec, store, pseudo, accession_to_study, identifiers)


def _drop_from_spool(factory: sessionmaker[Session], rows: list[Instance],
                     storage: StorageConfig) -> None:
    """Remove exported data-set originals (rows, then files); clinical ones stay."""
    mine = [r for r in rows if r.purpose == "dataset"]
    if not mine:
        return
    with write_transaction(factory) as session:
        session.execute(delete(Instance).where(Instance.id.in_([r.id for r in mine])))
    for r in mine:
        storage.resolve(r.spool_path).unlink(missing_ok=True)


def _csv_reports(spec: PullSpec, store: Store, pseudo: Pseudonyms,
                 accession_to_study: dict[str, str], identifiers: dict[str, list[str]]) -> int:
    """Reports from a RIS export: one row per report, accession number and text."""
    assert spec.reports_csv is not None
    n = 0
    with spec.reports_csv.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = {spec.csv_accession, spec.csv_text} - set(reader.fieldnames or [])
        if missing:
            raise PullError(f"{spec.reports_csv.name}: missing column(s) {sorted(missing)}")
        for i, row in enumerate(reader):
            study = accession_to_study.get((row.get(spec.csv_accession) or "").strip())
            text = row.get(spec.csv_text) or ""
            if study and text.strip():
                add_report(store, pseudo, study, f"csv:{spec.reports_csv.name}:{i}", text,
                           "csv", True, identifiers.get(study, []))
                n += 1
    return n


def _pull_folder(settings: Settings, spec: PullSpec, factory: sessionmaker[Session],
                 pseudo: Pseudonyms, store: Store, summary: PullSummary, progress: bool,
                 say: Callable[[str], None]) -> None:
    assert spec.folder is not None
    files = sorted(p for p in spec.folder.rglob("*") if p.is_file())
    by_series: dict[tuple[str, str], list[tuple[Path, Dataset]]] = defaultdict(list)
    reports: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    accession_to_study: dict[str, str] = {}
    for path in files:
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        study = str(ds.get("StudyInstanceUID", "") or "")
        if not study:
            continue
        if str(ds.get("SOPClassUID", "")) in REPORT_SR_CLASSES:
            reports[study].append((path, ds))
        elif str(ds.get("Modality", "")) in spec.modalities and \
                _in_dates(str(ds.get("StudyDate", "")), spec) and \
                _matches(spec, Header(ds)):
            by_series[(study, str(ds.get("SeriesInstanceUID", "")))].append((path, ds))
            if ds.get("AccessionNumber"):
                accession_to_study[str(ds.AccessionNumber).strip()] = study
    studies = sorted({s for s, _ in by_series})
    if spec.limit is not None:
        studies = studies[:spec.limit]
    summary.studies = len(studies)
    say(f"{len(studies)} studies match in {spec.folder}")
    chosen = set(studies)
    with write_transaction(factory) as session:
        items = {key: _upsert_item(session, spec.name, key[0], key[1],
                                   str(v[0][1].get("Modality", "")))
                 for key, v in by_series.items() if key[0] in chosen}
        session.flush()
        ids = {key: (row.id, row.state) for key, row in items.items()}
    identifiers: dict[str, list[str]] = defaultdict(list)
    for key in _bar(sorted(ids), "de-identify", progress):
        item_id, state = ids[key]
        for _path, ds in by_series[key]:
            identifiers[key[0]].extend(identifiers_of(ds))
        if state in (EXPORTED, EXCLUDED):
            continue  # resumed: done in an earlier run
        exported, excluded = 0, []
        for path, _ in by_series[key]:
            why = export_image(dcmread(path), store, pseudo, settings)
            if why:
                excluded.append(why)
                summary.excluded[why] += 1
            else:
                exported += 1
        summary.images += exported
        state = EXPORTED if exported else EXCLUDED
        _set_state(factory, item_id, state, "; ".join(sorted(set(excluded)))[:500] or None,
                   exported)
        summary.series[state] += 1
    for study in studies:
        for path, _ in reports.get(study, []):
            ds = dcmread(path)
            text = text_of_sr(ds)
            if text.strip():
                add_report(store, pseudo, study, str(ds.SOPInstanceUID), text, "sr",
                           is_final(ds), identifiers[study])
                summary.reports += 1
    if spec.reports_csv is not None:
        summary.reports += _csv_reports(spec, store, pseudo, accession_to_study, identifiers)
    audit.record_now(factory, DATASET_PULL, "R", audit.SUCCESS,
                     description=f"dataset {spec.name}: {len(studies)} studies read from a "
                                 "folder",
                     participants=[audit.participant("application", settings.node.ae_title)],
                     objects={"dataset": spec.name, "study_uids": studies[:1000]})


# ---- labels, the label report and the review sheet ---------------------------------------


def build_labels(out_dir: Path, rules: Rules, kinds: list[str], language: str = "auto",
                 sample_size: int = 24, summary: PullSummary | None = None) -> dict[str, str]:
    """Labels CSVs, label report and review sheet from OUT/images.csv and the reports."""
    store = Store(out_dir)
    by_study: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in store.images.values():
        by_study[row["study_uid"]].append(row)
    results: dict[str, ReportResult] = {}
    texts: dict[str, str] = {}
    for (study, _ref), rep in sorted(store.reports.items()):
        if study not in by_study or not rep.get("final", True):
            continue
        hips = sorted({h for r in by_study[study] for h in r["hips"].split()},
                      key="RL".index)
        hint = hips[0] if len(hips) == 1 else None
        texts[study] = (texts.get(study, "") + "\n\n" + rep["text"]).strip()
        results[study] = extract(texts[study], rules, kinds, language=language,
                                 imaged=hips or ("R", "L"), side_hint=hint)
    files: dict[str, str] = {}
    counts: dict[str, dict[str, int]] = {}
    for n, kind in enumerate(kinds):
        path = Path(out_dir) / f"labels-{kind}.csv"
        rows = []
        for study, images in sorted(by_study.items()):
            res = results.get(study)
            for img in sorted(images, key=lambda r: r["path"]):
                for side in img["hips"].split():
                    hip = res.label(kind, side) if res else None
                    if hip is not None and hip.status == LABELLED:
                        rows.append({"path": img["path"], "study_uid": study,
                                     "patient_id": img["patient_id"], "laterality": side,
                                     "view": img["view"], kind: hip.label})
        _write_csv(path, ["path", "study_uid", "patient_id", "laterality", "view", kind], rows)
        files[f"labels-{kind}"] = str(path)
        if n == 0:
            _write_csv(Path(out_dir) / "labels.csv",
                       ["path", "study_uid", "patient_id", "laterality", "view", kind], rows)
            files["labels"] = str(Path(out_dir) / "labels.csv")
        c: Counter[str] = Counter()
        for study, images in by_study.items():
            sides = {h for r in images for h in r["hips"].split()}
            res = results.get(study)
            for side in sides:
                hip = res.label(kind, side) if res else None
                status = hip.status if hip else "no report"
                c[status] += 1
                if hip is not None and hip.label:
                    c[f"= {hip.label}"] += 1
        counts[kind] = dict(sorted(c.items()))
    report = {"studies": len(by_study), "images": len(store.images),
              "studies_with_report": len(results), "rules_sha256": rules.sha256,
              "kinds": counts,
              "contradictory": sorted({f"{s} {h.kind} {h.laterality}: {', '.join(h.evidence)}"
                                       for s, r in results.items() for h in r.labels
                                       if h.status == "contradictory"}),
              "no_side": sorted({f"{s}: {rule}" for s, r in results.items()
                                 for rule in r.unsided()})}
    (Path(out_dir) / "label-report.json").write_text(json.dumps(report, indent=2),
                                                     encoding="utf-8")
    (Path(out_dir) / "label-report.md").write_text(_label_markdown(report), encoding="utf-8")
    files["label_report"] = str(Path(out_dir) / "label-report.md")
    if sample_size:
        files["review"] = str(review_sheet(out_dir, by_study, results, texts, kinds,
                                           sample_size))
    if summary is not None:
        summary.labels = counts
    return files


def _write_csv(path: Path, fields: list[str], rows: list[dict[str, str]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def _label_markdown(report: dict[str, Any]) -> str:
    lines = ["# Labels from reports", "",
             f"- studies: {report['studies']} ({report['studies_with_report']} with a final "
             f"report), images: {report['images']}",
             f"- rules: sha256 {report['rules_sha256'][:12]}", "",
             "Hips per kind: labelled (and by class), unlabelled (the report says nothing "
             "usable), contradictory (it says both), no report.", ""]
    for kind, c in report["kinds"].items():
        lines += [f"## {kind}", "", "| | hips |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in c.items()]
        lines.append("")
    if report["contradictory"]:
        lines += ["## Contradictory hips (study, kind, side: rules that fired)", ""]
        lines += [f"- {c}" for c in report["contradictory"][:200]]
        lines.append("")
    if report["no_side"]:
        lines += ["## Positive mentions without a side (not used)", ""]
        lines += [f"- {c}" for c in report["no_side"][:200]]
        lines.append("")
    lines += ["Check a sample by eye: private/review.html (site-internal: it shows report "
              "excerpts)."]
    return "\n".join(lines) + "\n"


def _thumbnail(path: Path, size: int = 256) -> str:
    from PIL import Image

    from hiprouter.inference.decode import decode_file

    _ds, decoded = decode_file(path)
    img = Image.fromarray(decoded.display_uint8())
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def review_sheet(out_dir: Path, by_study: dict[str, list[dict[str, str]]],
                 results: dict[str, ReportResult], texts: dict[str, str], kinds: list[str],
                 sample_size: int) -> Path:
    """private/review.html: a sample of studies (spread over the labels) with an image, the
    labels per hip and the report with the phrases that fired marked."""
    buckets: dict[str, list[str]] = defaultdict(list)
    for study in sorted(results, key=lambda s: s[::-1]):
        res = results[study]
        key = " ".join(f"{h.laterality}:{h.label or h.status}" for h in res.labels)
        buckets[key].append(study)
    chosen: list[str] = []
    while len(chosen) < sample_size and any(buckets.values()):
        for key in sorted(buckets):
            if buckets[key] and len(chosen) < sample_size:
                chosen.append(buckets[key].pop(0))
    cards = []
    for study in chosen:
        res = results[study]
        image = sorted(by_study[study], key=lambda r: (r["view"] != "ap_pelvis", r["path"]))[0]
        try:
            thumb = f'<img src="data:image/png;base64,{_thumbnail(Path(out_dir) / image["path"])}">'
        except Exception:
            thumb = "<p>(image not readable)</p>"
        rows = "".join(
            f"<tr><td>{html.escape(h.kind)}</td><td>{h.laterality}</td>"
            f"<td class='{h.status}'>{html.escape(h.label or h.status)}</td></tr>"
            for h in res.labels)
        cards.append(
            f"<div class='card'><h3>{html.escape(image['view'])} · "
            f"{html.escape(study[-12:])}</h3>{thumb}<table>{rows}</table>"
            f"<p class='report'>{_marked(texts.get(study, ''), res)}</p>"
            "<p>Labels correct? ☐ yes ☐ no: ________</p></div>")
    doc = ("<!doctype html><meta charset='utf-8'><title>Label review</title><style>"
           "body{font-family:sans-serif}.card{display:inline-block;vertical-align:top;"
           "width:300px;margin:6px;padding:6px;border:1px solid #999}img{max-width:280px}"
           "td{padding:0 6px}.contradictory{color:#b00}.unlabelled{color:#777}"
           "mark{background:#ff6}mark.neg{background:#bdf}.report{font-size:12px}</style>"
           f"<h1>Label review: {len(chosen)} of {len(results)} reported studies</h1>"
           "<p>Site-internal: report excerpts (identifiers of the header removed). Yellow: "
           "a class mentioned; blue: a negated mention. Kinds: "
           f"{html.escape(', '.join(kinds))}.</p>" + "".join(cards))
    path = Path(out_dir) / "private" / "review.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc, encoding="utf-8")
    return path


def _marked(text: str, res: ReportResult) -> str:
    from hiprouter.lifecycle.reportlabels import normalise, sentences

    norm = normalise(text)
    spans = sentences(norm)
    marks = sorted(((spans[m.sentence][0] + m.start, spans[m.sentence][0] + m.end, m.negated)
                    for m in res.mentions if m.sentence < len(spans)), key=lambda t: t[0])
    out, pos = [], 0
    for a, b, neg in marks:
        if a < pos:
            continue
        out.append(html.escape(norm[pos:a]))
        out.append(f"<mark{' class=neg' if neg else ''}>{html.escape(norm[a:b])}</mark>")
        pos = b
    out.append(html.escape(norm[pos:]))
    return "".join(out).replace("\n", "<br>")
