"""CLI sub-commands; each module defines `register(group)` adding its commands, which
take the shared `Context` with `@pass_ctx`."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

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


def console(**kwargs: Any) -> Any:
    """A rich Console for command output. When stdout is not a terminal (a pipe, a file)
    and COLUMNS is not set, tables get all the width they need instead of 80 columns, so
    `hiprouter models list | cat` or `| grep` never sees a name cut to `hardwa…`."""
    from rich.console import Console

    if not sys.stdout.isatty() and "COLUMNS" not in os.environ and "width" not in kwargs:
        kwargs["width"] = 100_000
    return Console(**kwargs)
