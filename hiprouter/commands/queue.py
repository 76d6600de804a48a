"""`hiprouter worker`, `hiprouter rules test`, `hiprouter retry`, `hiprouter replay`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hiprouter.commands import Context, pass_ctx


@click.command()
@click.option("--count", type=click.IntRange(1, 64), default=None,
              help="Job worker threads (default: queue.workers, at least 1).")
@click.option("--dispatch/--no-dispatch", default=True, show_default=True,
              help="Also send queued objects to their destinations.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve this process's Prometheus metrics on web.host:PORT/metrics.")
@click.option("--inference-threads", type=click.IntRange(1, 256), default=None,
              help="CPU inference threads of this process (default: inference.threads, "
                   "else one per core).")
@pass_ctx
def worker(ctx: Context, count: int | None, dispatch: bool, metrics_port: int | None,
           inference_threads: int | None) -> None:
    """Run job workers (and the dispatcher) only, next to `serve`, until SIGTERM."""
    from hiprouter.config import ConfigError
    from hiprouter.service import run_workers

    settings = ctx.settings
    if inference_threads is not None:
        settings.inference.threads = inference_threads
    try:
        run_workers(settings, count or max(settings.queue.workers, 1), dispatch,
                    metrics_port)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


@click.group()
def rules() -> None:
    """Routing rules."""


def _dicom_files(paths: tuple[str, ...]) -> list[Path]:
    found: list[Path] = []
    for p in map(Path, paths):
        found.extend(sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p])
    return found


@rules.command("test")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--calling-ae", default=None, help="Value of CallingAETitle for the rules.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_ctx
def rules_test(ctx: Context, paths: tuple[str, ...], calling_ae: str | None,
               as_json: bool) -> None:
    """Show which rule matches each FILE (or each file under DIR) and why."""
    import json

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from hiprouter.router.flow.routing import read_header
    from hiprouter.router.flow.rules import first_matching, rule_decision

    settings = ctx.settings
    rows: list[dict[str, str | None]] = []
    for path in _dicom_files(paths):
        header = read_header(path, calling_ae)
        if header is None:
            rows.append({"file": str(path), "level": None, "rule": None,
                         "condition": "not readable as DICOM"})
            continue
        hits = first_matching(settings.rules, header, settings.rule_mode)
        rows.extend({"file": str(path), "level": rule.level, "rule": rule.name,
                     "condition": decision.reason} for rule, decision in hits)
        if not hits:
            why = "; ".join(f"{r.name}: {rule_decision(r, header).reason}"
                            for r in settings.rules) or "no rules configured"
            rows.append({"file": str(path), "level": None, "rule": None,
                         "condition": f"no match (ignored): {why}"})
    matched = len({r["file"] for r in rows if r["rule"]})
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, ensure_ascii=False))
        return
    table = Table(title=f"rules ({settings.rule_mode} match)")
    for col in ("file", "level", "matched rule", "deciding condition"):
        table.add_column(col, overflow="fold")
    for row in rows:  # Text(): rule text such as [a-z] is not rich markup
        table.add_row(Text(row["file"] or ""), row["level"] or "-",
                      Text(row["rule"] or "-", style="" if row["rule"] else "yellow"),
                      Text(row["condition"] or ""))
    Console(width=200).print(table)
    click.echo(f"{matched} of {len({r['file'] for r in rows})} files matched")


WAIT_OPTION = click.option(
    "--timeout", "wait_s", default=30.0, show_default=True, type=click.FloatRange(0.1),
    help="Seconds to wait for the database (a lock held by `serve`, a slow connection).")


def _gave_up(ctx: Context, wait_s: float, exc: Exception) -> None:
    from hiprouter import db as dbmod

    url = dbmod.redact_url(ctx.settings.database.url)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    click.echo(f"error: gave up after {wait_s:g} s (--timeout) waiting for the database "
               f"{url} (locked by another process, or not reachable): {first}", err=True)
    sys.exit(1)


@click.command()
@click.option("--study", "study_uid", default=None, help="Only this Study Instance UID.")
@WAIT_OPTION
@pass_ctx
def retry(ctx: Context, study_uid: str | None, wait_s: float) -> None:
    """Put dead jobs and dead sends back in the queue (workers pick them up)."""
    from sqlalchemy.exc import OperationalError

    from hiprouter import db as dbmod
    from hiprouter.router.flow.ops import retry_dead

    engine = dbmod.make_engine(ctx.settings.database.url, wait_s=wait_s)
    try:
        done = retry_dead(dbmod.session_factory(engine), study_uid)
    except OperationalError as exc:
        _gave_up(ctx, wait_s, exc)
    finally:
        engine.dispose()
    click.echo(f"re-queued {done.jobs} dead jobs and {done.sends} dead sends")


@click.command()
@click.argument("study_uid")
@WAIT_OPTION
@pass_ctx
def replay(ctx: Context, study_uid: str, wait_s: float) -> None:
    """Run STUDY_UID's pipelines again and send their results again."""
    from sqlalchemy.exc import OperationalError

    from hiprouter import db as dbmod
    from hiprouter.router.flow.ops import replay_study

    engine = dbmod.make_engine(ctx.settings.database.url, wait_s=wait_s)
    try:
        done = replay_study(dbmod.session_factory(engine), ctx.settings, study_uid)
    except LookupError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except OperationalError as exc:
        _gave_up(ctx, wait_s, exc)
    finally:
        engine.dispose()
    how = "routed again with the current rules" if done.rerouted else "re-queued"
    click.echo(f"{done.jobs} jobs {how}"
               + (f"; {done.running} running jobs left alone" if done.running else ""))


def register(group: click.Group) -> None:
    group.add_command(worker)
    group.add_command(rules)
    group.add_command(retry)
    group.add_command(replay)
