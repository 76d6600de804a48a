"""`hiprouter worker`, `hiprouter rules test`, `hiprouter retry`, `hiprouter replay`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hiprouter.cli import Context, pass_ctx


@click.command()
@click.option("--count", type=click.IntRange(1, 64), default=None,
              help="Job worker threads (default: queue.workers, at least 1).")
@click.option("--dispatch/--no-dispatch", default=True, show_default=True,
              help="Also send queued objects to their destinations.")
@pass_ctx
def worker(ctx: Context, count: int | None, dispatch: bool) -> None:
    """Run job workers (and the dispatcher) only, next to `serve`, until SIGTERM."""
    from hiprouter.config import ConfigError
    from hiprouter.router.worker import run_worker_process

    settings = ctx.settings
    try:
        run_worker_process(settings, count or max(settings.queue.workers, 1), dispatch)
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
@pass_ctx
def rules_test(ctx: Context, paths: tuple[str, ...], calling_ae: str | None) -> None:
    """Show which rule matches each FILE (or each file under DIR) and why."""
    from rich.console import Console
    from rich.table import Table

    from hiprouter.router.routing import read_header
    from hiprouter.router.rules import first_matching, rule_decision

    settings = ctx.settings
    table = Table(title=f"rules ({settings.rule_mode} match)")
    for col in ("file", "level", "matched rule", "deciding condition"):
        table.add_column(col, overflow="fold")
    matched = 0
    for path in _dicom_files(paths):
        header = read_header(path, calling_ae)
        if header is None:
            table.add_row(str(path), "-", "[red]not readable as DICOM[/red]", "-")
            continue
        hits = first_matching(settings.rules, header, settings.rule_mode)
        if hits:
            matched += 1
            for rule, decision in hits:
                table.add_row(str(path), rule.level, rule.name, decision.reason)
        else:
            why = "; ".join(f"{r.name}: {rule_decision(r, header).reason}"
                            for r in settings.rules) or "no rules configured"
            table.add_row(str(path), "-", "[yellow]no match (ignored)[/yellow]", why)
    Console(width=200).print(table)
    click.echo(f"{matched} matched")


@click.command()
@click.option("--study", "study_uid", default=None, help="Only this Study Instance UID.")
@pass_ctx
def retry(ctx: Context, study_uid: str | None) -> None:
    """Put dead jobs and dead sends back in the queue (workers pick them up)."""
    from hiprouter import db as dbmod
    from hiprouter.router.queue import retry_dead

    engine = dbmod.make_engine(ctx.settings.database.url)
    try:
        done = retry_dead(dbmod.session_factory(engine), study_uid)
    finally:
        engine.dispose()
    click.echo(f"re-queued {done.jobs} dead jobs and {done.sends} dead sends")


@click.command()
@click.argument("study_uid")
@pass_ctx
def replay(ctx: Context, study_uid: str) -> None:
    """Run STUDY_UID's pipelines again and send their results again."""
    from hiprouter import db as dbmod
    from hiprouter.router.queue import replay_study

    engine = dbmod.make_engine(ctx.settings.database.url)
    try:
        done = replay_study(dbmod.session_factory(engine), ctx.settings, study_uid)
    except LookupError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
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
