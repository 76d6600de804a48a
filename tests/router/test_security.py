"""Secure defaults, loudly: `serve` and `status` say when the allow-list is open, TLS is off
on a non-loopback address, or the database password is in the configuration file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from hiprouter import db as dbmod
from hiprouter import posture
from hiprouter.cli import main
from hiprouter.config import ConfigError, load_settings
from tests.router.conftest import RouterProcess

PG = "postgresql+psycopg://hiprouter:s3cret@db.example.org/hiprouter"


def _load(tmp_path: Path, data: dict) -> object:  # type: ignore[type-arg]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_settings(path)


def _keys(settings: object) -> set[str]:
    return {w.key for w in posture.warnings(settings)}  # type: ignore[arg-type]


def test_embedded_defaults_are_flagged(tmp_path: Path) -> None:
    assert _keys(_load(tmp_path, {})) == {"node.allowed_calling", "node.tls"}


def test_hardened_configuration_has_no_warnings(tmp_path: Path) -> None:
    settings = _load(tmp_path, {"node": {"host": "127.0.0.1",
                                         "allowed_calling": [{"ae_title": "PACS"}]}})
    assert _keys(settings) == set()
    assert posture.is_loopback("localhost") and posture.is_loopback("::1")
    assert not posture.is_loopback("0.0.0.0") and not posture.is_loopback("192.0.2.7")


def test_database_password_only_outside_the_configuration_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secure = {"node": {"host": "127.0.0.1", "allowed_calling": [{"ae_title": "PACS"}]}}
    in_file = _load(tmp_path, {**secure, "database": {"url": PG}})
    assert _keys(in_file) == {"database.url"}

    pw = tmp_path / "db.password"
    pw.write_text("s3cret\n")
    from_file = _load(tmp_path, {**secure, "database": {
        "url": "postgresql+psycopg://hiprouter@db.example.org/hiprouter",
        "password_file": "db.password"}})
    assert _keys(from_file) == set()
    assert from_file.database.url == PG  # type: ignore[attr-defined]
    assert from_file.database_url_source == "password_file"  # type: ignore[attr-defined]

    monkeypatch.setenv("HIPROUTER_DATABASE_URL", PG)
    from_env = _load(tmp_path, {**secure})
    assert _keys(from_env) == set() and from_env.database.url == PG  # type: ignore[attr-defined]
    monkeypatch.delenv("HIPROUTER_DATABASE_URL")

    pw.write_text("")
    with pytest.raises(ConfigError, match="password_file.*empty"):
        _load(tmp_path, {"database": {"url": PG, "password_file": "db.password"}})


def test_status_shows_the_warnings(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    dbmod.upgrade(url)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"database": {"url": url}}))
    result = CliRunner().invoke(main, ["--config", str(config), "status", "--json"])
    assert result.exit_code == 0, result.output
    keys = {w["key"] for w in json.loads(result.stdout)["security_warnings"]}
    assert keys == {"node.allowed_calling", "node.tls"}
    result = CliRunner().invoke(main, ["--config", str(config), "status"])
    assert "security warnings" in result.output and "allow-list is open" in result.output


def test_serve_warns_at_start_up(router_process: Callable[..., RouterProcess]) -> None:
    router = router_process()  # loopback, no allow-list
    router.stop()
    lines = [json.loads(line) for line in router.log_text().splitlines()
             if line.startswith("{") and "insecure configuration" in line]
    assert [w["key"] for w in lines] == ["node.allowed_calling"]
    assert all(w["level"] == "warning" for w in lines)
