"""`hiprouter status`: what the node has received, queued, sent and computed, from SQL."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from hiprouter import __version__, posture
from hiprouter import db as dbmod
from hiprouter.config import Settings
from hiprouter.lifecycle.monitor import latest_alerts
from hiprouter.schema import FindingRow, Instance, Job, ModelVersion, Send, Study

RECENT_FAILURES = 5


class StatusError(Exception):
    """The status cannot be collected (no database yet, cannot connect)."""


def collect_status(settings: Settings) -> dict[str, Any]:
    """Everything `hiprouter status` shows, as JSON-ready values."""
    url = settings.database.url
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:" and not Path(path).exists():
            raise StatusError(
                f"database {dbmod.redact_url(url)} does not exist yet: run `hiprouter serve` "
                "or `hiprouter db upgrade` first"
            )
    engine = dbmod.make_engine(url)
    try:
        _check_schema(engine, url)
        with Session(engine) as session:
            data = _collect(session, settings)
    except SQLAlchemyError as exc:
        raise StatusError(f"cannot read database {dbmod.redact_url(url)}: {exc}") from exc
    finally:
        engine.dispose()
    return data


def collect_from(session: Session, settings: Settings) -> dict[str, Any]:
    """The same facts as `collect_status`, read with the caller's session (the web page)."""
    return _collect(session, settings)


def _check_schema(engine: Engine, url: str) -> None:
    try:
        tables = set(inspect(engine).get_table_names())
    except SQLAlchemyError as exc:
        raise StatusError(f"cannot connect to database {dbmod.redact_url(url)}: {exc}") from exc
    if "instances" not in tables:
        raise StatusError(
            f"database {dbmod.redact_url(url)} has no hiprouter tables: run `hiprouter serve` "
            "or `hiprouter db upgrade` first"
        )


def _iso(value: datetime | None) -> str | None:
    return dbmod.as_utc(value).isoformat() if value is not None else None


def _by_state(session: Session, column: Any, state: Any) -> dict[str, int]:
    rows = session.execute(select(state, func.count(column)).group_by(state)).all()
    return {str(s): int(n) for s, n in rows}


def _per_group(session: Session, group: Any, state: Any, next_run: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rows = session.execute(select(group, state, func.count()).group_by(group, state)).all()
    for name, st, n in rows:
        out.setdefault(str(name), {})[str(st)] = int(n)
    oldest = session.execute(
        # failed = waiting for a retry (e.g. the PACS is down), running = being attempted
        # right now: all of it is unfinished work, so the backlog's age shows at any moment
        select(group, func.min(next_run)).where(
            state.in_(("pending", "failed", "running", "committing")))
        .group_by(group)
    ).all()
    for name, when in oldest:
        out.setdefault(str(name), {})["oldest_pending_next_run_at"] = _iso(when)
    return out


def _collect(session: Session, settings: Settings) -> dict[str, Any]:
    spool = settings.storage.spool_dir
    probe = spool if spool.exists() else spool.parent if spool.parent.exists() else Path("/")
    free_mb = shutil.disk_usage(probe).free / (1024 * 1024)
    failed_jobs = session.execute(
        select(Job.id, Job.pipeline, Job.study_uid, Job.state, Job.attempts, Job.last_error,
               Job.updated_at)
        .where(Job.state.in_(("failed", "dead"))).order_by(Job.updated_at.desc())
        .limit(RECENT_FAILURES)
    ).all()
    failed_sends = session.execute(
        select(Send.id, Send.destination, Send.sop_instance_uid, Send.state, Send.attempts,
               Send.last_error, Send.next_run_at)
        .where(Send.state.in_(("failed", "dead"))).order_by(Send.id.desc())
        .limit(RECENT_FAILURES)
    ).all()
    models = session.execute(
        select(FindingRow.model_name, FindingRow.model_version).distinct()
        .order_by(FindingRow.model_name, FindingRow.model_version)
    ).all()
    return {
        "version": __version__,
        "database": dbmod.redact_url(settings.database.url),
        "node": {"ae_title": settings.node.ae_title, "host": settings.node.host,
                 "port": settings.node.port},
        "spool": {"dir": str(spool), "free_mb": round(free_mb, 1),
                  "min_free_mb": settings.storage.min_free_mb},
        "last_received_at": _iso(session.scalar(select(func.max(Instance.received_at)))),
        "instances": {
            "by_state": _by_state(session, Instance.id, Instance.state),
            "duplicates": int(session.scalar(select(func.sum(Instance.duplicates))) or 0),
        },
        "studies": {"by_state": _by_state(session, Study.id, Study.state)},
        "jobs": {
            "by_state": _by_state(session, Job.id, Job.state),
            "by_pipeline": _per_group(session, Job.pipeline, Job.state, Job.next_run_at),
            "recent_failures": [
                {"id": r.id, "pipeline": r.pipeline, "study_uid": r.study_uid, "state": r.state,
                 "attempts": r.attempts, "last_error": r.last_error,
                 "updated_at": _iso(r.updated_at)} for r in failed_jobs
            ],
        },
        "sends": {
            "by_state": _by_state(session, Send.id, Send.state),
            "by_destination": _per_group(session, Send.destination, Send.state,
                                         Send.next_run_at),
            "recent_failures": [
                {"id": r.id, "destination": r.destination, "sop_instance_uid": r.sop_instance_uid,
                 "state": r.state, "attempts": r.attempts, "last_error": r.last_error}
                for r in failed_sends
            ],
        },
        "models": [{"name": n, "version": v} for n, v in models],
        "registry": [
            {"name": r.name, "version": r.version, "kind": r.kind, "stage": r.stage,
             "device_uid": r.device_uid, "since": _iso(r.stage_changed_at)}
            for r in session.scalars(select(ModelVersion).where(
                ModelVersion.stage.in_(("shadow", "active"))).order_by(ModelVersion.name))],
        "pipelines": {name: {"kind": cfg.kind, "mode": cfg.mode,
                             "registered_model": cfg.registry_name(name)}
                      for name, cfg in sorted(settings.pipelines.items())},
        "monitoring": {"alerts": [
            {"pipeline": c.pipeline, "mode": c.mode, "model": f"{c.model_name} {c.model_version}",
             "week": c.week, "metric": c.metric, "value": c.value, "threshold": c.threshold,
             "n": c.n} for c in latest_alerts(session)]},
        "destinations": {
            name: describe_destination(d) for name, d in sorted(settings.destinations.items())
        },
        "security_warnings": [{"key": w.key, "message": w.message}
                              for w in posture.warnings(settings)],
    }


def describe_destination(dest: Any) -> dict[str, Any]:
    """Type and address of a destination (no credentials)."""
    if dest.type == "dicomweb":
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(dest.url)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        return {"type": "dicomweb", "url": urlunsplit(parts._replace(netloc=netloc)),
                "address": urlunsplit(parts._replace(netloc=netloc))}
    if dest.type == "hl7":
        return {"type": "hl7", "host": dest.host, "port": dest.port,
                "message_type": dest.message_type,
                "address": f"MLLP {dest.host}:{dest.port} ({dest.message_type})"}
    return {"type": "dicom", "ae_title": dest.ae_title, "host": dest.host, "port": dest.port,
            "storage_commitment": dest.storage_commitment,
            "address": f"{dest.ae_title}@{dest.host}:{dest.port}"
                       + (" (storage commitment)" if dest.storage_commitment else "")}


def render_status(data: dict[str, Any], console: Any) -> None:
    """Print the status as rich tables."""
    for table in status_tables(data):
        console.print(table)


def status_tables(data: dict[str, Any]) -> list[Any]:
    """The status as rich tables (printed by `render_status`, refreshed by `--watch`)."""
    from rich.table import Table

    tables: list[Any] = []

    node = data["node"]
    head = Table(title=f"hiprouter {data['version']}", show_header=False)
    head.add_row("node", f"{node['ae_title']} on {node['host']}:{node['port']}")
    head.add_row("database", data["database"])
    spool = data["spool"]
    head.add_row("spool", f"{spool['dir']} ({spool['free_mb']:.0f} MiB free, "
                          f"minimum {spool['min_free_mb']} MiB)")
    head.add_row("last received", data["last_received_at"] or "never")
    head.add_row("duplicates", str(data["instances"]["duplicates"]))
    models = ", ".join(f"{m['name']} {m['version']}" for m in data["models"]) or "none yet"
    head.add_row("models seen", models)
    for r in data.get("registry", []):
        head.add_row(f"{r['stage']} model", f"{r['name']} {r['version']} ({r['kind']})")
    tables.append(head)

    alerts = data.get("monitoring", {}).get("alerts", [])
    if alerts:
        table = Table(title="[red]monitoring alerts[/] (hiprouter monitor)")
        for col in ("pipeline", "mode", "model", "week", "metric", "value", "limit", "n"):
            table.add_column(col)
        for a in alerts:
            table.add_row(a["pipeline"], a["mode"], a["model"], a["week"], a["metric"],
                          "n/a" if a["value"] is None else f"{a['value']:.3f}",
                          "n/a" if a["threshold"] is None else f"{a['threshold']:.3f}",
                          str(a["n"]))
        tables.append(table)

    counts = Table(title="counts by state")
    counts.add_column("what")
    counts.add_column("state")
    counts.add_column("count", justify="right")
    for what in ("instances", "studies", "jobs", "sends"):
        states = data[what]["by_state"] or {"-": 0}
        for state, n in sorted(states.items()):
            counts.add_row(what, state, str(n))
    tables.append(counts)

    for what, key, label in (("jobs", "by_pipeline", "pipeline"),
                             ("sends", "by_destination", "destination")):
        groups = data[what][key]
        if not groups:
            continue
        states = ["pending", "running", "failed", "dead"]
        if any("committing" in c for c in groups.values()):
            states.insert(3, "committing")
        table = Table(title=f"{what} per {label}")
        table.add_column(label, overflow="fold")
        for col in (*states, "oldest pending"):
            table.add_column(col, justify="right")
        for name, c in sorted(groups.items()):
            table.add_row(name, *(str(c.get(s, 0)) for s in states),
                          c.get("oldest_pending_next_run_at") or "-")
        tables.append(table)

    failures = [("job", f"{f['pipeline']} study {f['study_uid']}", f) for f in
                data["jobs"]["recent_failures"]]
    failures += [("send", f"{f['destination']} {f['sop_instance_uid']}", f) for f in
                 data["sends"]["recent_failures"]]
    if failures:
        table = Table(title="recent failures")
        for col in ("kind", "what", "state", "attempts", "last error"):
            table.add_column(col)
        for kind, what, f in failures:
            table.add_row(kind, what, f["state"], str(f["attempts"]), f["last_error"] or "")
        tables.append(table)

    if data.get("security_warnings"):
        table = Table(title="security warnings (docs/security.md)", title_style="bold red")
        table.add_column("key", style="red")
        table.add_column("warning")
        for w in data["security_warnings"]:
            table.add_row(w["key"], w["message"])
        tables.append(table)

    if data["destinations"]:
        table = Table(title="destinations")
        for col in ("name", "type", "address"):
            table.add_column(col, overflow="fold")
        for name, d in data["destinations"].items():
            table.add_row(name, d.get("type", "dicom"), d.get("address") or
                          f"{d.get('ae_title')}@{d.get('host')}:{d.get('port')}")
        tables.append(table)
    return tables
