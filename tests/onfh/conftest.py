"""Fixtures of the ONFH tests: the plumbing model fitted once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

import tests.onfh.register  # noqa: F401  (kind onfh without a reinstalled entry point)
from tests.onfh.helpers import tiny_onfh_model


@pytest.fixture(scope="session")
def onfh_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ONFH model fitted by the test session (see tests/onfh/helpers.py)."""
    return tiny_onfh_model(tmp_path_factory.mktemp("onfh-model"))
