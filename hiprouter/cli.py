"""The `hiprouter` console script.

Sub-commands live next to the code they drive (hiprouter/commands/*.py) and import
their heavy dependencies (torch, pynetdicom) lazily so `hiprouter status` stays fast.
They get the shared `Context` from `hiprouter.commands`, never from here, so importing a
command module first does not import itself again through `_register`.
"""

from __future__ import annotations

import click

from hiprouter import __version__
from hiprouter.commands import Context, pass_ctx


@click.group()
@click.option(
    "--config",
    "config_path",
    envvar="HIPROUTER_CONFIG",
    type=click.Path(dir_okay=False),
    help="Configuration file (default: ./config.yaml if present, else embedded defaults).",
)
@click.version_option(__version__, prog_name="hiprouter")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """hiprouter: route hip/pelvis radiographs to AI models and report back to the PACS."""
    ctx.obj = Context(config_path)


@main.group()
def db() -> None:
    """Database maintenance."""


@db.command("upgrade")
@click.option("--revision", default="heads", show_default=True)
@pass_ctx
def db_upgrade(ctx: Context, revision: str) -> None:
    """Create or migrate the tables (alembic) in the configured database."""
    from hiprouter import db as dbmod

    url = ctx.settings.database.url
    dbmod.upgrade(url, revision)
    click.echo(f"database {dbmod.redact_url(url)} at revision {revision}")


def _register() -> None:
    import importlib
    import pkgutil

    import hiprouter.commands as pkg  # each module's register() adds its commands

    for mod in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f"hiprouter.commands.{mod.name}")
        module.register(main)


_register()
