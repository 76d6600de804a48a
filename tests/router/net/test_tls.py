"""TLS with test-made certificates: the SCP (inbound) and the dispatcher (outbound), each
against DCMTK peers, with and without client certificates."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from hiprouter import db
from hiprouter.config import ConfigError, Settings, TLSConfig
from hiprouter.router.flow import queue
from hiprouter.router.flow.dispatch import claim_sends, send_batch
from hiprouter.router.flow.worker import enqueue_sends
from hiprouter.router.net.tls import client_ssl_context, server_ssl_context
from hiprouter.schema import AuditEvent, Instance, Send, SendAttempt
from tests.router.certs import Certificates, make_certificates
from tests.router.conftest import RouterProcess, make_cr_files, storescu
from tests.router.dicomkit import add_study, make_study
from tests.router.pacs import StoreSCP


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


def instances(router: RouterProcess) -> int:
    with router.session_factory()() as s:
        return int(s.scalar(select(func.count()).select_from(Instance)) or 0)


def test_inbound_tls_requires_client_certificate(
    router_process: Callable[..., RouterProcess], certs: Certificates, tmp_path: Path
) -> None:
    router = router_process({"node": {"tls": {
        "enabled": True, "cert_file": str(certs.server_cert), "key_file": str(certs.server_key),
        "ca_file": str(certs.ca), "require_client_cert": True}}})
    files = make_cr_files(tmp_path / "study", 2, size=32)
    with_cert = storescu(router.port, files, extra=[
        "+tls", str(certs.client_key), str(certs.client_cert), "+cf", str(certs.ca)])
    assert with_cert.returncode == 0, with_cert.stderr
    assert instances(router) == 2
    more = make_cr_files(tmp_path / "more", 1, size=32)
    anonymous = storescu(router.port, more, extra=["+tla", "+cf", str(certs.ca)])
    assert anonymous.returncode != 0
    untrusted = storescu(router.port, more, extra=[
        "+tls", str(certs.rogue_key), str(certs.rogue_cert), "+cf", str(certs.ca)])
    assert untrusted.returncode != 0
    plain = storescu(router.port, more, timeout=60)
    assert plain.returncode != 0
    assert instances(router) == 2
    log = router.log_text()
    for reason in ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_VERIFY_FAILED"):
        assert f'"reason": "{reason}"' in log
    with router.session_factory()() as s:
        alerts = s.scalars(select(AuditEvent).where(AuditEvent.event_id_code == "110113",
                                                    AuditEvent.event_type_code == "110126"))
        reasons = " ".join(a.outcome_description for a in alerts)
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in reasons
    assert "CERTIFICATE_VERIFY_FAILED" in reasons
    # the SCP is still serving after the refused handshakes
    assert storescu(router.port, more, extra=[
        "+tls", str(certs.client_key), str(certs.client_cert), "+cf", str(certs.ca)]
    ).returncode == 0
    assert instances(router) == 3


def test_inbound_tls_without_required_client_certificate(
    router_process: Callable[..., RouterProcess], certs: Certificates, tmp_path: Path
) -> None:
    router = router_process({"node": {"tls": {
        "enabled": True, "cert_file": str(certs.server_cert), "key_file": str(certs.server_key)}}})
    files = make_cr_files(tmp_path / "study", 1, size=32)
    done = storescu(router.port, files, extra=["+tla", "+cf", str(certs.ca)])
    assert done.returncode == 0, done.stderr
    assert instances(router) == 1


def _outbound(tmp_path: Path, certs: Certificates, pacs: StoreSCP, **tls: object) -> Settings:
    return Settings.model_validate({
        "database": {"url": f"sqlite:///{tmp_path / 'db.sqlite'}"},
        "storage": {"spool_dir": str(tmp_path / "spool"), "output_dir": str(tmp_path / "out")},
        "destinations": {"pacs": {"ae_title": pacs.ae_title, "host": "127.0.0.1",
                                  "port": pacs.port,
                                  "tls": {"enabled": True, "ca_file": str(certs.ca), **tls}}},
        "queue": {"retry": {"initial_s": 60, "max_attempts": 3}},
    })


def _queue_study(settings: Settings, tmp_path: Path, n: int):  # type: ignore[no-untyped-def]
    db.upgrade(settings.database.url)
    factory = db.session_factory(db.make_engine(settings.database.url))
    uid = add_study(factory, make_study(tmp_path / "in", 1, n, BodyPartExamined="HIP"),
                    state="routed")
    with factory() as s, s.begin():
        job = queue.enqueue(s, study_uid=uid, pipeline="forward", rule="t", send_to=["pacs"])
        paths = [settings.storage.resolve(p) for p in s.scalars(select(Instance.spool_path))]
        enqueue_sends(s, job, paths)
    return factory


def test_outbound_tls_with_client_certificate_to_storescp(
    certs: Certificates, tmp_path: Path
) -> None:
    pacs = StoreSCP(tmp_path / "pacs", extra=[
        "+tls", str(certs.server_key), str(certs.server_cert), "+cf", str(certs.ca), "-rc"]
    ).start()
    try:
        settings = _outbound(tmp_path, certs, pacs, cert_file=str(certs.client_cert),
                             key_file=str(certs.client_key))
        factory = _queue_study(settings, tmp_path, 3)
        sends = claim_sends(factory, settings, "pacs", "t")
        assert send_batch(factory, settings, "pacs", sends, "t") == 3
        received = pacs.received()
    finally:
        pacs.stop()
    assert len(received) == 3 and set(received.values()) == {1}


def test_outbound_tls_refused_without_client_certificate(
    certs: Certificates, tmp_path: Path
) -> None:
    pacs = StoreSCP(tmp_path / "pacs", extra=[
        "+tls", str(certs.server_key), str(certs.server_cert), "+cf", str(certs.ca), "-rc"]
    ).start()
    try:
        settings = _outbound(tmp_path, certs, pacs)
        factory = _queue_study(settings, tmp_path, 2)
        sends = claim_sends(factory, settings, "pacs", "t")
        assert send_batch(factory, settings, "pacs", sends, "t") == 0
        received = pacs.received()
    finally:
        pacs.stop()
    assert not received
    with factory() as s:
        assert s.scalars(select(Send.state)).all() == ["failed", "failed"]
        errors = s.scalars(select(SendAttempt.error)).all()
    assert len(errors) == 2 and all("association" in e for e in errors)


def test_tls_configuration_errors_name_the_key(tmp_path: Path, certs: Certificates) -> None:
    with pytest.raises(ConfigError, match=r"node\.tls\.cert_file is required"):
        server_ssl_context(TLSConfig(enabled=True))
    with pytest.raises(ConfigError, match=r"node\.tls\.ca_file is required"):
        server_ssl_context(TLSConfig(enabled=True, cert_file=certs.server_cert,
                                     key_file=certs.server_key, require_client_cert=True))
    with pytest.raises(ConfigError, match="does not exist"):
        client_ssl_context(TLSConfig(enabled=True, ca_file=tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="key_file is required"):
        client_ssl_context(TLSConfig(enabled=True, cert_file=certs.client_cert))


def test_silent_client_does_not_block_tls_associations(
    router_process: Callable[..., RouterProcess], certs: Certificates, tmp_path: Path
) -> None:
    from tests.router.rawdul import closed_by_peer, connect

    # the silent client may stay for 10 minutes: the store must not wait for it to go
    router = router_process({"node": {"request_timeout_s": 600, "tls": {
        "enabled": True, "cert_file": str(certs.server_cert), "key_file": str(certs.server_key),
        "ca_file": str(certs.ca), "require_client_cert": True}}})
    files = make_cr_files(tmp_path / "study", 1, size=32)
    with connect(router.port) as silent:  # connects, never speaks
        done = storescu(router.port, files, extra=[
            "+tls", str(certs.client_key), str(certs.client_cert), "+cf", str(certs.ca)])
        assert done.returncode == 0, done.stderr
        assert not closed_by_peer(silent), "served only after the silent client was dropped"
    assert instances(router) == 1
