"""Registers kind `onfh` for test processes whose environment lacks its entry point (a
checkout not yet reinstalled); with the entry point installed this changes nothing."""

from __future__ import annotations

from hiprouter.pipelines.onfh import OnfhKind
from hiprouter.pipelines.registry import installed_kinds, register_kind

if "onfh" not in installed_kinds():
    register_kind(OnfhKind)


def plugins() -> list[str]:
    """The `plugins:` entry a test config needs for `hiprouter serve` to find the kind."""
    from importlib.metadata import entry_points

    found = any(ep.name == "onfh" for ep in entry_points(group="hiprouter.pipelines"))
    return [] if found else ["tests.onfh.register"]
