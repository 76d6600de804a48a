"""The web server over real HTTP (waitress on loopback): pages, search, basic auth,
/metrics, no patient data. The browser view of a served study is in
tests/e2e/test_integrations_e2e.py."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from werkzeug.security import generate_password_hash

from hiprouter import audit, db
from hiprouter.config import Settings
from hiprouter.web.server import WebServer
from tests.router.dicomkit import add_study, make_study


def get(port: int, path: str, auth: tuple[str, str] | None = None) -> tuple[int, str, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(
            f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode(), r.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), exc.headers


@pytest.fixture()
def node(tmp_path: Path) -> Any:
    def make(url: str | None = None, **web: Any) -> tuple[WebServer, str]:
        settings = Settings.model_validate({
            "database": {"url": url or f"sqlite:///{tmp_path / 'db.sqlite'}"},
            "storage": {"spool_dir": str(tmp_path / "spool")},
            "web": {"enabled": True, "port": 0, **web}})
        db.upgrade(settings.database.url)
        factory = db.session_factory(db.make_engine(settings.database.url))
        paths = make_study(tmp_path / "in", 1, 2, AccessionNumber="ACC-777")
        uid = add_study(factory, paths, state="done")
        audit.record_now(factory, audit.INSTANCES_TRANSFERRED, "R", audit.MINOR_FAILURE,
                         description="1 of 1 not sent: ACK AE",
                         objects={"study_uid": uid})
        server = WebServer(settings, factory)
        server.start()
        made.append(server)
        return server, uid

    made: list[WebServer] = []
    yield make
    for server in made:
        server.stop()


def test_pages_show_studies_by_uid_and_accession_never_patient_data(node: Any) -> None:
    server, uid = node(viewer_url="https://viewer.example/v?StudyInstanceUIDs={study_uid}")
    status, html, headers = get(server.port, "/")
    assert status == 200 and uid in html and "ACC-777" in html
    assert f"https://viewer.example/v?StudyInstanceUIDs={uid}" in html
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    status, detail, _ = get(server.port, f"/studies/{uid}")
    assert status == 200 and "not sent: ACK AE" in detail
    for page in (html, detail):
        assert "Test^Patient" not in page and "Test Patient" not in page
        assert "T0001" not in page
    assert get(server.port, "/?q=ACC-777")[1].count('data-study-uid="') == 1
    assert get(server.port, "/?q=NOPE")[1].count('data-study-uid="') == 0
    assert get(server.port, f"/?q={uid[:12]}")[1].count('data-study-uid="') == 1
    assert "ACK AE" in get(server.port, "/audit?text=ack+ae")[1]
    assert "ACK AE" not in get(server.port, "/audit?outcome=0")[1]
    assert get(server.port, "/studies/1.2.3.4.5")[0] == 404
    assert get(server.port, "/models")[0] == 200
    status, body, _ = get(server.port, "/api/status")
    assert status == 200 and '"studies"' in body


def test_metrics_content_and_database_gauges(node: Any) -> None:
    server, _uid = node()
    status, text, headers = get(server.port, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert 'hiprouter_studies{state="done"} 1.0' in text
    assert 'hiprouter_instances{state="stored"} 2.0' in text
    assert "hiprouter_spool_free_bytes " in text and "hiprouter_database_up 1.0" in text
    for name in ("hiprouter_instances_received_total", "hiprouter_inference_seconds_bucket",
                 "hiprouter_sends_total", "hiprouter_dead_letters",
                 "hiprouter_queue_oldest_age_seconds"):
        assert f"# TYPE {name.removesuffix('_total').removesuffix('_bucket')}" in text


def test_basic_auth_with_a_password_file_or_hash(node: Any, tmp_path: Path) -> None:
    secret = tmp_path / "web.pass"
    secret.write_text("s3cret\n")
    server, _ = node(basic_auth={"username": "admin", "password_file": str(secret)})
    assert get(server.port, "/")[0] == 401
    assert get(server.port, "/metrics")[0] == 401
    assert get(server.port, "/", ("admin", "wrong"))[0] == 401
    assert get(server.port, "/", ("admin", "s3cret"))[0] == 200
    assert get(server.port, "/healthz")[0] == 200
    server.stop()
    server, _ = node(basic_auth={"username": "admin",
                                 "password_hash": generate_password_hash("pw")})
    assert get(server.port, "/metrics", ("admin", "pw"))[0] == 200
    assert get(server.port, "/metrics", ("root", "pw"))[0] == 401


def test_metrics_only(node: Any) -> None:
    server, _ = node(status_page=False)
    assert get(server.port, "/")[0] == 404
    assert get(server.port, "/metrics")[0] == 200


def test_the_config_snippets_in_the_docs_are_valid() -> None:
    """What a new user copies from docs/operations.md and docs/integrations.md validates."""
    import re

    import yaml

    from tests.conftest import REPO

    checked = 0
    for doc in ("operations.md", "integrations.md"):
        text = (REPO / "docs" / doc).read_text(encoding="utf-8")
        for block in re.findall(r"```yaml\n(.*?)```", text, re.DOTALL):
            data = yaml.safe_load(block)
            if not isinstance(data, dict) or not {"web", "destinations"} & set(data):
                continue
            data.pop("rules", None)
            Settings.model_validate(data)
            checked += 1
    assert checked >= 5


def test_every_metric_is_documented() -> None:
    import hiprouter.web.app  # noqa: F401  (declares hiprouter_web_requests_total)
    from hiprouter import metrics
    from tests.conftest import REPO

    doc = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    collector = (REPO / "hiprouter" / "web" / "collect.py").read_text(encoding="utf-8")
    import re

    from prometheus_client import Counter

    names = set(re.findall(r'"(hiprouter_[a-z_]+)"', collector))
    for name in metrics.names():
        if name.startswith("hiprouter_test_"):
            continue
        kind = metrics._metrics[name][0]
        names.add(name + "_total" if kind is Counter else name)
    missing = sorted(n for n in names if f"`{n}`" not in doc)
    assert missing == []


@pytest.mark.postgres
def test_pages_and_metrics_on_postgresql(node: Any, pg_url: str) -> None:
    server, uid = node(pg_url)
    assert uid in get(server.port, "/?q=ACC-777")[1]
    assert "ACK AE" in get(server.port, "/audit?text=ack+ae&outcome=4")[1]
    assert "ACK AE" in get(server.port, f"/studies/{uid}")[1]
    assert get(server.port, "/models")[0] == 200
    assert 'hiprouter_studies{state="done"} 1.0' in get(server.port, "/metrics")[1]


def test_monitoring_figures_reach_the_metrics() -> None:
    """The lifecycle's monitoring job hands its figures to metrics.set_monitor_check."""
    from types import SimpleNamespace

    from prometheus_client import generate_latest

    from hiprouter import metrics
    from hiprouter.service import _export_gauges

    _export_gauges([SimpleNamespace(pipeline="hardware", mode="shadow", metric="class_psi",
                                    value=0.31, alert=True)])
    text = generate_latest(metrics.REGISTRY).decode()
    assert ('hiprouter_monitor_value{metric="class_psi",mode="shadow",pipeline="hardware"} '
            '0.31') in text
    assert 'hiprouter_monitor_alert{metric="class_psi",mode="shadow",pipeline="hardware"} 1.0' \
        in text


def test_registry_and_monitoring_alerts_are_shown(node: Any, tmp_path: Path) -> None:
    from hiprouter.schema import ModelVersion, MonitorCheck

    server, _ = node()
    with server.factory() as s, s.begin():
        now = db.utcnow()
        s.add(ModelVersion(name="hip-site", version="2.0.0", kind="hardware", path="/m",
                           weights_sha256="0" * 64, device_uid="2.25.1", card={},
                           baseline={}, stage="shadow", registered_at=now,
                           stage_changed_at=now))
        s.add(MonitorCheck(pipeline="hardware", mode="shadow", model_name="hip-site",
                           model_version="2.0.0", week="2026-W47", metric="class_psi",
                           value=0.42, threshold=0.25, n=80, alert=True, details={},
                           checked_at=now))
    page = get(server.port, "/")[1]
    assert "shadow model" in page and "hip-site 2.0.0 (hardware)" in page
    assert 'id="alerts"' in page and "class_psi" in page and "0.420" in page
    assert "hip-site" in get(server.port, "/models")[1]
