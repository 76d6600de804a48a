"""The pynetdicom internals hiprouter copies or patches are the ones it was checked against.

When one of these fails after a pynetdicom upgrade, read the new upstream source of each
function named in the failure against hiprouter/router/net/pynetdicom_compat.py (its
docstring says what is copied, patched or relied on), adapt the compat module, then update
`UPSTREAM_SHA256`, `PYNETDICOM_VERSION` and the pin in pyproject.toml together.
"""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path

import pynetdicom
import pytest

from hiprouter.router.net import pynetdicom_compat as compat

REPO = Path(__file__).resolve().parents[3]


def test_pyproject_pins_the_checked_pynetdicom_exactly() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [d for d in deps if re.match(r"pynetdicom\b", d)]
    assert pins == [f"pynetdicom=={compat.PYNETDICOM_VERSION}"]


def test_installed_pynetdicom_is_the_checked_version() -> None:
    assert pynetdicom.__version__ == compat.PYNETDICOM_VERSION


@pytest.mark.parametrize("name", sorted(compat.UPSTREAM_SHA256))
def test_upstream_source_is_unchanged(name: str) -> None:
    assert compat.upstream_sha256(name) == compat.UPSTREAM_SHA256[name], (
        f"pynetdicom changed {name}: review hiprouter/router/net/pynetdicom_compat.py")


def test_a_changed_function_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    name = "pynetdicom.dul.DULServiceProvider.run_reactor"
    monkeypatch.setitem(compat.UPSTREAM_SHA256, name, "0" * 64)
    assert compat.changed_upstream() == [name]


def test_copied_dul_loop_differs_from_upstream_only_in_how_it_waits() -> None:
    ours = _statements(compat.HookedDUL.run_reactor)
    theirs = _statements(compat.upstream_object(
        "pynetdicom.dul.DULServiceProvider.run_reactor"))
    assert [s for s in theirs if s not in ours] == [
        'self.socket = cast("AssociationSocket", self.socket)',  # a no-op for the type checker
        "time.sleep(self._run_loop_delay)"]
    assert [s for s in ours if s not in theirs] == ["self.idle_wait()"]


def test_copied_association_loop_differs_from_upstream_only_in_how_it_waits() -> None:
    ours = _statements(compat.run_association_reactor)
    theirs = _statements(compat.upstream_object(
        "pynetdicom.association.Association._run_reactor"))
    assert [s for s in theirs if s not in ours] == [
        "time.sleep(0.001)",
        "self._serve_request(msg, cast(int, context_id))",
        'log_msg = "Association Aborted"',
        'if self.acse.is_aborted("a-p-abort"):',
        'log_msg += " (A-P-ABORT)"',
        "LOGGER.info(log_msg)"]
    assert [s for s in ours if s not in theirs] == [
        "from pynetdicom import evt",
        "wait(self)",
        "self._serve_request(msg, context_id)",
        'LOGGER.info("Association Aborted")']


def _statements(func: object) -> list[str]:
    """Source lines of `func` without signature, docstring, comments and blank lines, with
    the logger's module-specific name folded to LOGGER."""
    source = re.sub(r'"""[\s\S]*?"""', "", inspect.getsource(func))  # type: ignore[arg-type]
    lines = [line.split("#")[0].strip() for line in source.splitlines()]
    body = [line for line in lines if line][1:]
    return [re.sub(r"\b(DUL|ASSOC)_LOGGER\b", "LOGGER", line) for line in body]
