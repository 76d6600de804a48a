"""The project's own output validation for tests (hiprouter/report/validate.py)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from hiprouter.report.validate import validate


def assert_valid(paths: Iterable[Path]) -> None:
    """Fail, listing every problem, unless dciodvfy, dsrdump and the read-back all pass."""
    paths = [Path(p) for p in paths]
    assert paths, "no file to validate"
    bad = validate(paths)
    assert not bad, "\n".join(f"{p.name}: {line}" for p, lines in bad.items() for line in lines)
