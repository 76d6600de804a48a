"""`hiprouter status [--json]` against a real SQLite database."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import yaml
from click.testing import CliRunner

from hiprouter import db as dbmod
from hiprouter.cli import main
from hiprouter.schema import FindingRow, Instance, Job, Send, Study


def _config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "database": {"url": url},
        "storage": {"spool_dir": str(tmp_path / "spool")},
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 4242}},
    }))
    return path


def _fill(url: str) -> None:
    dbmod.upgrade(url)
    engine = dbmod.make_engine(url)
    now = dbmod.utcnow()
    with dbmod.session_factory(engine)() as session, session.begin():
        for i, state in enumerate(["stored", "stored", "quarantined"]):
            session.add(Instance(
                sop_instance_uid=f"1.2.3.{i}", sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
                study_uid="1.2.3", series_uid="1.2.3.0", transfer_syntax="1.2.840.10008.1.2.1",
                size=10, sha256="0" * 64, spool_path=f"/spool/{i}.dcm",
                received_at=now - timedelta(minutes=i), duplicates=i, state=state))
        session.add(Study(study_uid="1.2.3", state="routed", first_received_at=now,
                          last_received_at=now, instance_count=3))
        for pipeline, state, error in [("hardware", "pending", None),
                                       ("hardware", "dead", "model file missing"),
                                       ("forward", "failed", "boom")]:
            session.add(Job(study_uid="1.2.3", pipeline=pipeline, send_to=["pacs"], state=state,
                            next_run_at=now, created_at=now, updated_at=now, last_error=error))
        session.add(Send(study_uid="1.2.3", sop_instance_uid="9.9.1", sop_class_uid="1.2",
                         destination="pacs", path="/out/1.dcm", state="dead", next_run_at=now,
                         created_at=now, last_error="association rejected"))
        session.add(Send(study_uid="1.2.3", sop_instance_uid="9.9.2", sop_class_uid="1.2",
                         destination="pacs", path="/out/2.dcm", state="sent", next_run_at=now,
                         created_at=now))
        session.add(FindingRow(study_uid="1.2.3", pipeline="hardware", kind="hardware",
                               laterality="R", source_sop_uids=["1.2.3.0"],
                               model_name="hip-hw-demo", model_version="0.1",
                               predicted_class="tha", probability=0.9,
                               probabilities={"tha": 0.9}, measurements=[], regions=[],
                               details={}, latency_ms=5.0, created_at=now))
    engine.dispose()


def test_status_without_database_says_so_and_fails(tmp_path: Path) -> None:
    config = _config(tmp_path, f"sqlite:///{tmp_path / 'missing.db'}")
    result = CliRunner().invoke(main, ["--config", str(config), "status"])
    assert result.exit_code == 1
    assert "does not exist yet" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["--config", str(config), "status", "--json"])
    assert result.exit_code == 1
    assert "does not exist yet" in json.loads(result.stdout.splitlines()[0])["error"]


def test_status_json_reports_every_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    _fill(url)
    config = _config(tmp_path, url)
    result = CliRunner().invoke(main, ["--config", str(config), "status", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["version"] and data["database"] == url
    assert data["node"] == {"ae_title": "HIPROUTER", "host": "0.0.0.0", "port": 11112}
    assert data["instances"] == {"by_state": {"stored": 2, "quarantined": 1}, "duplicates": 3}
    assert data["studies"]["by_state"] == {"routed": 1}
    assert data["jobs"]["by_state"] == {"pending": 1, "dead": 1, "failed": 1}
    assert data["jobs"]["by_pipeline"]["hardware"]["pending"] == 1
    assert data["jobs"]["by_pipeline"]["hardware"]["oldest_pending_next_run_at"]
    assert {f["last_error"] for f in data["jobs"]["recent_failures"]} == {
        "model file missing", "boom"}
    assert data["sends"]["by_destination"] == {"pacs": {"dead": 1, "sent": 1}}
    assert data["sends"]["recent_failures"][0]["last_error"] == "association rejected"
    assert data["models"] == [{"name": "hip-hw-demo", "version": "0.1"}]
    assert data["destinations"]["pacs"]["ae_title"] == "PACS"
    assert data["spool"]["free_mb"] > 0
    assert data["last_received_at"].startswith(str(dbmod.utcnow().year))


def test_status_table_and_password_redaction(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    _fill(url)
    result = CliRunner().invoke(main, ["--config", str(_config(tmp_path, url)), "status"])
    assert result.exit_code == 0, result.output
    for text in ("counts by state", "hip-hw-demo", "association rejected", "pacs"):
        assert text in result.output
    assert dbmod.redact_url("postgresql+psycopg://u:secret@h/db") == \
        "postgresql+psycopg://u:***@h/db"
