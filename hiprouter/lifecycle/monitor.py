"""Shadow validation, feedback and drift: findings against final reports, over time.

- `extract_received_reports`: final reports the PACS sent (text SRs, stored with purpose
  ``report``) become per-hip labels in `report_labels` (label, rules, text hash; never the
  text). `import_reports_csv` does the same for a RIS export keyed by accession number.
- `validate`: for one pipeline and mode (shadow while validating, active in production),
  pairs each hip's latest finding with the report's label and computes sensitivity,
  specificity and kappa per class with 95 % intervals, overall and per ISO week.
- `run_checks`: per pipeline, mode, model version and week: how often the final report
  agrees with the findings (for active pipelines: with the prepopulated text), the
  predicted-class distribution (population stability index against the baseline), mean
  confidence and the share of hips not assessed (out of distribution) against the
  baseline; each figure is a `MonitorCheck` row with its alert flag (`hiprouter status`).

The baseline of a registered version is what `models promote --to active` stored (its
shadow period, else the class distribution of its test split); without one, the first
week with enough findings.
"""

from __future__ import annotations

import csv
import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from hiprouter import audit
from hiprouter.config import Settings, StorageConfig
from hiprouter.db import as_utc, dialect_insert, utcnow, write_transaction
from hiprouter.lifecycle.agreement import agreement, distribution, psi, wilson
from hiprouter.lifecycle.reportlabels import (
    LABELLED,
    Rules,
    extract,
    is_final,
    load_rules,
    text_of_sr,
)
from hiprouter.logs import get_logger
from hiprouter.schema import FindingRow, Instance, ModelVersion, MonitorCheck, ReportLabel

log = get_logger(__name__)

REPORT_LABELS = audit.Code("HIP011", "Report Labels Extracted")
DRIFT_ALERT = audit.Code("HIP012", "Model Monitoring Alert")


def iso_week(when: datetime) -> str:
    year, week, _ = as_utc(when).isocalendar()
    return f"{year}-W{week:02d}"


def pipeline_kinds(settings: Settings, rules: Rules) -> dict[str, str]:
    """Configured pipeline -> kind, for kinds the label rules know."""
    return {name: cfg.kind for name, cfg in settings.pipelines.items() if cfg.kind in rules.kinds}


def _imaged(session: Session, study_uid: str) -> list[str]:
    sides = set(session.scalars(select(FindingRow.laterality).where(
        FindingRow.study_uid == study_uid)))
    return [s for s in ("R", "L") if s in sides] or ["R", "L"]


def _reported_at(ds: Any, fallback: datetime) -> datetime:
    date, clock = str(ds.get("ContentDate", "") or ""), str(ds.get("ContentTime", "") or "")
    try:
        return datetime.strptime(date + (clock[:6] or "000000").ljust(6, "0"),
                                 "%Y%m%d%H%M%S").replace(tzinfo=fallback.tzinfo)
    except ValueError:
        return fallback


def store_labels(factory: sessionmaker[Session], rules: Rules, kinds: Iterable[str],
                 study_uid: str, source: str, ref: str, text: str, reported_at: datetime | None,
                 language: str = "auto") -> int:
    """Extract and upsert the per-hip labels of one report; returns the labelled hips."""
    kinds = sorted(set(kinds))
    with factory() as session:
        imaged = _imaged(session, study_uid)
    result = extract(text, rules, kinds, language=language, imaged=imaged,
                     side_hint=imaged[0] if len(imaged) == 1 else None)
    now = utcnow()
    with write_transaction(factory) as session:
        insert = dialect_insert(session.get_bind().dialect.name)
        for hip in result.labels:
            values = {"study_uid": study_uid, "source": source, "source_ref": ref[:64],
                      "report_sha256": result.sha256, "language": result.language,
                      "kind": hip.kind, "laterality": hip.laterality, "status": hip.status,
                      "label": hip.label, "evidence": hip.evidence, "reported_at": reported_at,
                      "extracted_at": now}
            session.execute(insert(ReportLabel).values(**values).on_conflict_do_update(
                index_elements=["study_uid", "source_ref", "kind", "laterality"],
                set_={k: values[k] for k in ("report_sha256", "language", "status", "label",
                                             "evidence", "reported_at", "extracted_at")}))
        audit.record(session, REPORT_LABELS, "R", audit.SUCCESS,
                     description=f"{source} report ({result.language}): " + "; ".join(
                         f"{h.kind} {h.laterality} {h.label or h.status}"
                         for h in result.labels),
                     participants=[audit.participant("application")],
                     objects={"study_uid": study_uid, "report": ref[:64],
                              "rules_sha256": rules.sha256[:16]})
    return sum(h.status == LABELLED for h in result.labels)


def extract_received_reports(factory: sessionmaker[Session], settings: Settings,
                             rules: Rules | None = None) -> int:
    """Labels from final reports received since the last run; returns how many reports."""
    rules = rules or load_rules(settings.dataset.label_rules)
    kinds = set(pipeline_kinds(settings, rules).values())
    if not kinds:
        return 0
    with factory() as session:
        done = select(ReportLabel.source_ref).where(ReportLabel.source == "sr")
        rows = list(session.scalars(select(Instance).where(
            Instance.purpose == "report", Instance.state == "stored",
            Instance.sop_instance_uid.not_in(done)).order_by(Instance.id).limit(500)))
    n = 0
    for row in rows:
        try:
            ds = dcmread(settings.storage.resolve(row.spool_path))
        except Exception as exc:
            log.warning("cannot read a received report", sop_instance_uid=row.sop_instance_uid,
                        error=type(exc).__name__)
            continue
        if not is_final(ds):
            continue  # a preliminary report; the final one comes as a new instance
        text = text_of_sr(ds)
        if not text.strip():
            continue
        store_labels(factory, rules, kinds, row.study_uid, "sr", row.sop_instance_uid, text,
                     _reported_at(ds, as_utc(row.received_at)),
                     settings.monitoring.report_language)
        n += 1
    if n:
        log.info("labels extracted from received reports", reports=n)
    return n


def accession_map(factory: sessionmaker[Session], since: datetime | None = None,
                  storage: StorageConfig | None = None) -> dict[str, str]:
    """Accession number -> study UID, read from one stored clinical instance per study
    (kept in memory only); `storage` resolves the rows' file references."""
    out: dict[str, str] = {}
    with factory() as session:
        query = select(Instance.study_uid, Instance.spool_path).where(
            Instance.purpose == "clinical", Instance.state == "stored")
        if since is not None:
            query = query.where(Instance.received_at >= since)
        seen: set[str] = set()
        for study_uid, path in session.execute(query.order_by(Instance.id)):
            if study_uid in seen:
                continue
            seen.add(study_uid)
            try:
                local = storage.resolve(path) if storage is not None else path
                ds = dcmread(local, stop_before_pixels=True, specific_tags=["AccessionNumber"])
            except Exception:
                continue
            acc = str(ds.get("AccessionNumber", "") or "").strip()
            if acc:
                out[acc] = study_uid
    return out


def import_reports_csv(factory: sessionmaker[Session], settings: Settings, path: Path,
                       accession_column: str = "accession_number",
                       text_column: str = "report_text", date_column: str | None = None
                       ) -> dict[str, int]:
    """Final reports exported from the RIS: labels for the studies hiprouter has."""
    rules = load_rules(settings.dataset.label_rules)
    kinds = set(pipeline_kinds(settings, rules).values())
    mapping = accession_map(factory, storage=settings.storage)
    counts = {"rows": 0, "matched": 0, "labelled_hips": 0}
    with Path(path).open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = {accession_column, text_column} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{Path(path).name}: missing column(s) {sorted(missing)}")
        for row in reader:
            counts["rows"] += 1
            acc = (row.get(accession_column) or "").strip()
            text = row.get(text_column) or ""
            study = mapping.get(acc)
            if not study or not text.strip():
                continue
            when = None
            if date_column and row.get(date_column):
                try:
                    when = datetime.fromisoformat(row[date_column])
                except ValueError:
                    when = None
            ref = "csv:" + hashlib.sha256(f"{acc}\x00{text}".encode()).hexdigest()[:32]
            counts["matched"] += 1
            counts["labelled_hips"] += store_labels(factory, rules, kinds, study, "csv", ref,
                                                    text, when, settings.monitoring.report_language)
    return counts


# ---- pairing findings with report labels -------------------------------------------------


@dataclass
class Pair:
    study_uid: str
    laterality: str
    week: str
    model: str
    status: str
    predicted: str | None
    probability: float | None
    ood_score: float | None
    truth: str | None
    truth_status: str | None
    model_id: int | None = None


def pairs(session: Session, pipeline: str, kind: str, mode: str | None,
          since: datetime | None = None, model_version: str | None = None) -> list[Pair]:
    """The latest finding per study, hip and model of a pipeline (and mode), with the
    latest report label of that hip for the pipeline's kind (if any)."""
    query = select(FindingRow).where(FindingRow.pipeline == pipeline)
    if mode:
        query = query.where(FindingRow.mode == mode)
    if since is not None:
        query = query.where(FindingRow.created_at >= since)
    if model_version:
        query = query.where(FindingRow.model_version == model_version)
    latest: dict[tuple[str, str, str, str], FindingRow] = {}
    for row in session.scalars(query.order_by(FindingRow.id)):
        key = (row.study_uid, row.laterality, f"{row.model_name} {row.model_version}", row.mode)
        latest[key] = row
    studies = {k[0] for k in latest}
    labels: dict[tuple[str, str], ReportLabel] = {}
    if studies:
        for lab in session.scalars(select(ReportLabel).where(
                ReportLabel.kind == kind, ReportLabel.study_uid.in_(studies))
                .order_by(ReportLabel.extracted_at, ReportLabel.id)):
            labels[(lab.study_uid, lab.laterality)] = lab
    out = []
    for (study, side, model, _mode), row in sorted(latest.items()):
        lab = labels.get((study, side))
        scores = (row.details or {}).get("scores") or {}
        out.append(Pair(study, side, iso_week(row.created_at), model, row.status,
                        row.predicted_class, row.probability, scores.get("ood_score"),
                        lab.label if lab is not None and lab.status == LABELLED else None,
                        lab.status if lab is not None else None, row.model_id))
    return out


def _classes(settings: Settings, pipeline: str) -> list[str]:
    from hiprouter.pipelines.registry import kind_class

    cls = kind_class(settings.pipelines[pipeline].kind)
    vocabulary = getattr(cls, "default_vocabulary", None)
    return list(vocabulary().keys) if vocabulary is not None else []


def validate(factory: sessionmaker[Session], settings: Settings, pipeline: str,
             mode: str | None = "shadow", model_version: str | None = None,
             since: datetime | None = None, n_boot: int = 500) -> dict[str, Any]:
    """Agreement of a pipeline's findings with the final reports, overall and per week."""
    if pipeline not in settings.pipelines:
        raise ValueError(f"pipeline {pipeline!r} is not configured "
                         f"({', '.join(settings.pipelines)})")
    kind = settings.pipelines[pipeline].kind
    classes = _classes(settings, pipeline)
    with factory() as session:
        found = pairs(session, pipeline, kind, mode, since, model_version)
    compared = [(p.truth, p.predicted) for p in found
                if p.truth is not None and p.status == "assessed" and p.predicted]
    weeks: dict[str, list[Pair]] = defaultdict(list)
    for p in found:
        weeks[p.week].append(p)
    per_week = []
    for week in sorted(weeks):
        wp = [(p.truth, p.predicted) for p in weeks[week]
              if p.truth is not None and p.status == "assessed" and p.predicted]
        fig = agreement(wp, classes, n_boot=0)
        per_week.append({"week": week, "hips": len(weeks[week]), "compared": len(wp),
                         "accuracy": fig["accuracy"], "accuracy_ci95": fig["accuracy_ci95"],
                         "kappa": fig["kappa"],
                         "sensitivity": {c: v["sensitivity"] for c, v in fig["per_class"].items()
                                         if v["sensitivity"] is not None}})
    return {
        "pipeline": pipeline, "kind": kind, "mode": mode or "any",
        "models": sorted({p.model for p in found}),
        "hips": len(found), "compared": len(compared),
        "awaiting_report": sum(p.truth_status is None for p in found),
        "report_unlabelled": sum(p.truth_status == "unlabelled" for p in found),
        "report_contradictory": sum(p.truth_status == "contradictory" for p in found),
        "indeterminate": sum(p.status == "indeterminate" for p in found),
        "not_assessed": sum(p.status == "not_assessed" for p in found),
        "overall": agreement(compared, classes, n_boot=n_boot), "weeks": per_week,
    }


def plot_validation(result: dict[str, Any], path: Path) -> Path:
    """Agreement over time: accuracy with 95 % CI and kappa per week; sensitivity per
    class (one line each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weeks = [w for w in result["weeks"] if w["compared"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), dpi=80)
    x = list(range(len(weeks)))
    acc = [w["accuracy"] for w in weeks]
    lo = [a - w["accuracy_ci95"][0] for a, w in zip(acc, weeks, strict=True)]
    hi = [w["accuracy_ci95"][1] - a for a, w in zip(acc, weeks, strict=True)]
    ax1.errorbar(x, acc, yerr=[lo, hi], marker="o", capsize=3, label="agreement (95 % CI)")
    ax1.plot(x, [w["kappa"] if w["kappa"] is not None else float("nan") for w in weeks],
             marker="s", label="Cohen's kappa")
    ax1.set(xticks=x, ylim=(-0.05, 1.05), title=f"{result['pipeline']} ({result['mode']}) vs "
            "final reports", ylabel="per week")
    ax1.set_xticklabels([w["week"] for w in weeks], rotation=45, ha="right", fontsize=7)
    ax1.legend(fontsize=7, loc="lower left")
    classes = sorted({c for w in weeks for c in w["sensitivity"]})
    for c in classes:
        ax2.plot(x, [w["sensitivity"].get(c, float("nan")) for w in weeks], marker=".",
                 label=c)
    ax2.set(xticks=x, ylim=(-0.05, 1.05), title="sensitivity per class")
    ax2.set_xticklabels([w["week"] for w in weeks], rotation=45, ha="right", fontsize=7)
    if classes:
        ax2.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ---- drift and feedback checks -----------------------------------------------------------


@dataclass
class Stats:
    n: int = 0
    classes: dict[str, float] = field(default_factory=dict)
    confidence: float | None = None
    not_assessed: float | None = None
    ood_score: float | None = None

    @classmethod
    def of(cls, group: list[Pair]) -> Stats:
        assessed = [p for p in group if p.status == "assessed" and p.predicted]
        probs = [p.probability for p in assessed if p.probability is not None]
        oods = [p.ood_score for p in group if p.ood_score is not None]
        return cls(len(group), distribution([p.predicted for p in assessed]) if assessed else {},
                   sum(probs) / len(probs) if probs else None,
                   sum(p.status == "not_assessed" for p in group) / len(group) if group else None,
                   sum(oods) / len(oods) if oods else None)

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "class_distribution": self.classes, "confidence": self.confidence,
                "not_assessed": self.not_assessed, "ood_score": self.ood_score}


def baseline_of(session: Session, model_id: int | None) -> dict[str, Any]:
    """The stored baseline of a registered version (empty for configured models)."""
    row = session.get(ModelVersion, model_id) if model_id is not None else None
    return dict(row.baseline or {}) if row is not None else {}


def shadow_baseline(factory: sessionmaker[Session], settings: Settings, model_id: int,
                    ) -> dict[str, Any]:
    """The baseline of a registered version from its shadow findings (for promotion)."""
    with factory() as session:
        rows = list(session.scalars(select(FindingRow).where(
            FindingRow.model_id == model_id, FindingRow.mode == "shadow")))
    group = [Pair(r.study_uid, r.laterality, "", "", r.status, r.predicted_class, r.probability,
                  ((r.details or {}).get("scores") or {}).get("ood_score"), None, None)
             for r in rows]
    if len(group) < settings.monitoring.min_findings:
        return {}
    return {"source": "shadow findings", **Stats.of(group).as_dict()}


@dataclass
class Check:
    pipeline: str
    mode: str
    model_name: str
    model_version: str
    week: str
    metric: str
    value: float | None
    threshold: float | None
    n: int
    alert: bool
    details: dict[str, Any]
    new: bool = False
    """The alert is new since the last run (log it once)."""


def run_checks(factory: sessionmaker[Session], settings: Settings,
               now: datetime | None = None) -> list[Check]:
    """Recompute the weekly figures of every configured pipeline and store them."""
    mon = settings.monitoring
    now = now or utcnow()
    since = now - timedelta(weeks=mon.weeks)
    checks: list[Check] = []
    with factory() as session:
        for pipeline, cfg in settings.pipelines.items():
            for mode in ("active", "shadow"):
                found = pairs(session, pipeline, cfg.kind, mode, since)
                by_model: dict[tuple[str, int | None], list[Pair]] = defaultdict(list)
                for p in found:
                    by_model[(p.model, p.model_id)].append(p)
                for (model, model_id), group in by_model.items():
                    name, _, version = model.rpartition(" ")
                    checks.extend(_model_checks(session, mon, pipeline, mode, name, version,
                                                model_id, group))
    with write_transaction(factory) as session:
        insert = dialect_insert(session.get_bind().dialect.name)
        for c in checks:
            old = session.scalars(select(MonitorCheck.alert).where(
                MonitorCheck.pipeline == c.pipeline, MonitorCheck.mode == c.mode,
                MonitorCheck.model_version == c.model_version, MonitorCheck.week == c.week,
                MonitorCheck.metric == c.metric)).first()
            c.new = c.alert and not old
            values = {"pipeline": c.pipeline, "mode": c.mode, "model_name": c.model_name[:128],
                      "model_version": c.model_version[:64], "week": c.week,
                      "metric": c.metric, "value": c.value, "threshold": c.threshold,
                      "n": c.n, "alert": c.alert, "details": c.details, "checked_at": now}
            session.execute(insert(MonitorCheck).values(**values).on_conflict_do_update(
                index_elements=["pipeline", "mode", "model_version", "week", "metric"],
                set_={k: values[k] for k in ("model_name", "value", "threshold", "n", "alert",
                                             "details", "checked_at")}))
            if c.new:
                audit.record(session, DRIFT_ALERT, "E",
                             audit.MINOR_FAILURE,
                             description=f"{c.pipeline} ({c.mode}, {c.model_name} "
                                         f"{c.model_version}) {c.week}: {c.metric} "
                                         f"{_fmt(c.value)} beyond {_fmt(c.threshold)} (n={c.n})",
                             participants=[audit.participant("application",
                                                             settings.node.ae_title)],
                             objects={"pipeline": c.pipeline, "week": c.week,
                                      "metric": c.metric})
    return checks


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _model_checks(session: Session, mon: Any, pipeline: str, mode: str, name: str,
                  version: str, model_id: int | None, group: list[Pair]) -> list[Check]:
    weeks: dict[str, list[Pair]] = defaultdict(list)
    for p in group:
        weeks[p.week].append(p)
    base = baseline_of(session, model_id)
    base_source = base.get("source", "")
    if not base.get("class_distribution"):
        first = next((w for w in sorted(weeks) if len(weeks[w]) >= mon.min_findings), None)
        if first is not None:
            base = {**Stats.of(weeks[first]).as_dict(), **{k: v for k, v in base.items() if v}}
            base_source = f"first week with enough findings ({first})"
    out = []

    def add(week: str, metric: str, value: float | None, threshold: float | None, n: int,
            alert: bool, **details: Any) -> None:
        out.append(Check(pipeline, mode, name, version, week, metric, value, threshold, n,
                         alert and n >= mon.min_findings, {"baseline": base_source, **details}))

    for week, wp in sorted(weeks.items()):
        stats = Stats.of(wp)
        compared = [p for p in wp if p.truth is not None and p.status == "assessed"]
        agree = sum(p.truth == p.predicted for p in compared)
        per_class: dict[str, dict[str, int]] = defaultdict(lambda: {"n": 0, "agree": 0})
        for p in compared:
            per_class[p.truth]["n"] += 1  # type: ignore[index]
            per_class[p.truth]["agree"] += p.truth == p.predicted  # type: ignore[index]
        rate = agree / len(compared) if compared else None
        add(week, "agreement", rate, mon.min_agreement, len(compared),
            rate is not None and rate < mon.min_agreement, ci95=wilson(agree, len(compared)),
            per_class={c: v["agree"] / v["n"] for c, v in per_class.items()})
        if base.get("class_distribution") and stats.classes:
            shift = psi(base["class_distribution"], stats.classes)
            add(week, "class_psi", shift, mon.max_class_shift, stats.n,
                shift > mon.max_class_shift, distribution=stats.classes)
        if stats.confidence is not None:
            ref = base.get("confidence")
            add(week, "confidence", stats.confidence,
                None if ref is None else ref - mon.max_confidence_drop, stats.n,
                ref is not None and stats.confidence < ref - mon.max_confidence_drop,
                baseline_value=ref)
        if stats.not_assessed is not None:
            ref = base.get("not_assessed")
            add(week, "not_assessed", stats.not_assessed,
                None if ref is None else ref + mon.max_not_assessed_rise, stats.n,
                ref is not None and stats.not_assessed > ref + mon.max_not_assessed_rise,
                baseline_value=ref)
        if stats.ood_score is not None:
            add(week, "ood_score", stats.ood_score, None, stats.n, False,
                baseline_value=base.get("ood_score"))
    return out


def latest_alerts(session: Session) -> list[MonitorCheck]:
    """The alerting checks of each pipeline's most recent week (for `hiprouter status`)."""
    rows = list(session.scalars(select(MonitorCheck).order_by(MonitorCheck.week)))
    newest: dict[tuple[str, str], str] = {}
    for r in rows:
        newest[(r.pipeline, r.mode)] = max(newest.get((r.pipeline, r.mode), ""), r.week)
    return [r for r in rows if r.alert and r.week == newest[(r.pipeline, r.mode)]]
