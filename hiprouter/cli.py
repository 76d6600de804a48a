"""The `hiprouter` console script.

Sub-commands live next to the code they drive (hiprouter/commands/*.py) and import
their heavy dependencies (torch, pynetdicom) lazily so `hiprouter status` stays fast.
"""

from __future__ import annotations

import sys

import click

from hiprouter import __version__
from hiprouter.config import ConfigError, Settings, load_settings


class Context:
    """Lazily loaded settings shared by all sub-commands."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings(self.config_path)
            except ConfigError as exc:
                click.echo(f"error: {exc}", err=True)
                sys.exit(2)
            from hiprouter import logs

            logs.configure(self._settings.logging.level, self._settings.logging.json_logs)
        return self._settings


pass_ctx = click.make_pass_decorator(Context)


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

    import hiprouter.commands as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f"hiprouter.commands.{mod.name}")
        module.register(main)


_register()
