"""`hiprouter demo`: synthetic studies through the router to a local PACS, end to end."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hiprouter.commands import Context, pass_ctx


@click.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("var/demo"), show_default=True,
              help="Folder for the demo's database, spool, outputs and PACS.")
@click.option("--studies", default=3, show_default=True, type=click.IntRange(1, 50))
@click.option("--seed", default=2026, show_default=True)
@click.option("--timeout", "timeout_s", default=600.0, show_default=True,
              help="Seconds to wait for all results (then it says what is missing).")
@click.option("--verbose", is_flag=True, help="Show the router's log lines too.")
@pass_ctx
def demo(ctx: Context, workdir: Path, studies: int, seed: int, timeout_s: float,
         verbose: bool) -> None:
    """Run the router and a local PACS, send synthetic studies, show the results."""
    from rich.console import Console

    from hiprouter.demo import run_demo

    try:
        code = run_demo(ctx.settings, workdir, studies, seed, timeout_s, Console(), verbose)
    except RuntimeError as exc:  # a step that gave up says which and why
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    sys.exit(code)


def register(group: click.Group) -> None:
    group.add_command(demo)
