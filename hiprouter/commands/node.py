"""`hiprouter serve`, `hiprouter status [--json]` and `hiprouter echo TARGET`."""

from __future__ import annotations

import json
import sys

import click

from hiprouter.commands import Context, pass_ctx


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
@pass_ctx
def status(ctx: Context, as_json: bool) -> None:
    """Counts of instances, studies, jobs and sends; free disk; models seen."""
    from hiprouter.status import StatusError, collect_status, render_status

    try:
        data = collect_status(ctx.settings)
    except StatusError as exc:
        if as_json:
            click.echo(json.dumps({"error": str(exc)}))
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(data, sort_keys=True))
        return
    from rich.console import Console

    render_status(data, Console())


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
