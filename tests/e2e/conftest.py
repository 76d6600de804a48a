"""End-to-end fixtures: the router subprocess fixtures of tests/router, reused."""

from __future__ import annotations

from tests.router.conftest import router_process  # noqa: F401  (fixture re-export)
