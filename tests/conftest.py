"""Shared test fixtures: real PostgreSQL on loopback, DCMTK peers, the shared corpus."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

# The user's cache (the OHIF download lives there), read before the tests point
# HIPROUTER_CACHE at the session's own folder (`_onnx_cache`).
USER_CACHE = Path(os.environ.get("HIPROUTER_CACHE", Path.home() / ".cache" / "hiprouter"))

# DCMTK tools take ~45 ms per image without TCP_NODELAY in their environment.
os.environ.setdefault("TCP_NODELAY", "1")


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_tool(name: str) -> str:
    """Path of an external tool, or skip the test when it is not installed."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (scripts/test.sh installs it)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip when the project is used without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throw-away PostgreSQL server on 127.0.0.1; yields a URL prefix without database."""
    from tests.pgserver import pg_bin
    from tests.pgserver import postgres_server as server

    bindir = pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not installed (Debian package postgresql)")
    with server(bindir) as url:
        yield url


@pytest.fixture()
def pg_url(postgres_server: str) -> str:
    """A fresh, empty PostgreSQL database for one test."""
    from tests.pgserver import create_database

    return create_database(postgres_server)


@pytest.fixture()
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite file for one test."""
    return f"sqlite:///{tmp_path / 'hiprouter.db'}"


@pytest.fixture(autouse=True)
def _onnx_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep ONNX graphs exported by any test out of the user's cache: one cache for the
    session, shared by this process and the `hiprouter` processes the tests start (through
    HIPROUTER_CACHE), so each model is exported once per session."""
    from hiprouter.inference import runtime

    cache = tmp_path_factory.getbasetemp() / "onnx-cache"
    monkeypatch.setattr(runtime, "CACHE_DIR", cache)
    monkeypatch.setenv("HIPROUTER_CACHE", str(cache))
