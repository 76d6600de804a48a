"""`hiprouter serve`, `hiprouter status [--json]` and `hiprouter echo TARGET`."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from hiprouter.commands import Context, console, pass_ctx


@click.command()
@pass_ctx
def serve(ctx: Context) -> None:
    """Run the DICOM node (SCP, study completion, workers) until SIGTERM/SIGINT."""
    from hiprouter.config import ConfigError
    from hiprouter.service import serve as run

    try:
        run(ctx.settings)
    except ConfigError as exc:  # TLS files, pipeline kinds and plugins are checked here
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--watch", is_flag=True,
              help="Refresh every --interval seconds until Ctrl-C (with --json: one JSON "
                   "object per line).")
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(0.2),
              help="Seconds between refreshes with --watch.")
@pass_ctx
def status(ctx: Context, as_json: bool, watch: bool, interval: float) -> None:
    """Counts of instances, studies, jobs and sends; free disk; models seen."""
    from hiprouter.status import StatusError, collect_status, render_status

    def collect() -> dict[str, Any]:
        try:
            return collect_status(ctx.settings)
        except StatusError as exc:
            if as_json:
                click.echo(json.dumps({"error": str(exc)}))
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)

    if watch:
        _watch(collect, as_json, interval)
        return
    data = collect()
    if as_json:
        click.echo(json.dumps(data, sort_keys=True))
        return
    render_status(data, console())


def _watch(collect: Any, as_json: bool, interval: float) -> None:
    import time
    from datetime import datetime

    from rich.console import Group
    from rich.live import Live

    from hiprouter.status import status_tables

    try:
        if as_json:
            while True:
                click.echo(json.dumps(collect(), sort_keys=True), nl=True)
                sys.stdout.flush()
                time.sleep(interval)
        out = console()

        def view() -> Any:
            stamp = datetime.now().astimezone().strftime("%H:%M:%S")
            return Group(*status_tables(collect()),
                         f"[dim]{stamp}, every {interval:g} s; Ctrl-C to stop[/]")

        if not out.is_terminal:  # a pipe or file: one snapshot after another
            while True:
                out.print(view())
                time.sleep(interval)
        with Live(view(), console=out, auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(interval)
                live.update(view(), refresh=True)
    except KeyboardInterrupt:
        pass


@click.command()
@click.argument("target")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds per step.")
@pass_ctx
def echo(ctx: Context, target: str, timeout: float) -> None:
    """Send a C-ECHO to TARGET: a configured destination name or AE@HOST:PORT."""
    from hiprouter.router.net.echo import echo as send_echo
    from hiprouter.router.net.echo import parse_target

    settings = ctx.settings
    try:
        peer = parse_target(target, settings)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="TARGET") from exc
    result = send_echo(peer, settings.node.ae_title, timeout)
    click.echo(f"{peer.ae_title}@{peer.host}:{peer.port}: {result.message}")
    if not result.ok:
        sys.exit(1)


def register(group: click.Group) -> None:
    group.add_command(serve)
    group.add_command(status)
    group.add_command(echo)
