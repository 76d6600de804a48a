"""Dispatch to real peers: backoff and dead letters, DIMSE statuses, per-destination
concurrency, transfer syntax negotiation, missing files."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import JPEGLSLossless, RLELossless
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from hiprouter import db
from hiprouter.config import Settings
from hiprouter.router.flow import ops, queue
from hiprouter.router.flow.dispatch import Dispatcher, claim_sends, send_batch
from hiprouter.router.flow.worker import enqueue_sends
from hiprouter.schema import Association, AuditEvent, Instance, Send, SendAttempt
from tests.conftest import free_port
from tests.router.dicomkit import add_study, make_dataset, make_study, write_dataset
from tests.router.pacs import StoreSCP


def settings_for(tmp_path: Path, port: int, url: str | None = None, **dest: object) -> Settings:
    return Settings.model_validate({
        "database": {"url": url or f"sqlite:///{tmp_path / 'db.sqlite'}"},
        "storage": {"spool_dir": str(tmp_path / "spool"), "output_dir": str(tmp_path / "out")},
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": port,
                                  **dest}},
        "queue": {"poll_interval_s": 0.05, "send_batch": 1,
                  "retry": {"initial_s": 0.05, "factor": 2, "max_s": 0.1, "max_attempts": 3}},
    })


def queue_files(settings: Settings, paths: list[Path]) -> sessionmaker[Session]:
    db.upgrade(settings.database.url)
    factory = db.session_factory(db.make_engine(settings.database.url))
    uid = add_study(factory, paths, state="routed")
    with factory() as s, s.begin():
        job = queue.enqueue(s, study_uid=uid, pipeline="forward", rule="t", send_to=["pacs"])
        enqueue_sends(s, job, [Path(p) for p in s.scalars(select(Instance.spool_path))])
    return factory


def make_due(factory: sessionmaker[Session]) -> None:
    with factory() as s, s.begin():
        s.execute(update(Send).values(next_run_at=db.utcnow() - timedelta(seconds=1)))


def test_unreachable_destination_backs_off_then_dead_then_retry(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, free_port())  # nothing listens there
    factory = queue_files(settings, make_study(tmp_path / "in", 1, 1))
    for _ in range(3):
        sends = claim_sends(factory, settings, "pacs", "o")
        assert len(sends) == 1
        assert send_batch(factory, settings, "pacs", sends, "o") == 0
        assert claim_sends(factory, settings, "pacs", "o") == []  # backing off
        make_due(factory)
    with factory() as s:
        row = s.scalars(select(Send)).one()
        attempts = s.scalars(select(SendAttempt).order_by(SendAttempt.attempt)).all()
    assert (row.state, row.attempts) == ("dead", 3)
    assert [(a.attempt, a.status) for a in attempts] == [(1, None), (2, None), (3, None)]
    assert all("association" in a.error for a in attempts)
    assert claim_sends(factory, settings, "pacs", "o") == []
    assert ops.retry_dead(factory).sends == 1
    assert len(claim_sends(factory, settings, "pacs", "o")) == 1


def test_dimse_failure_status_is_recorded_and_retried(tmp_path: Path) -> None:
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    answers = [0xA700, 0x0000]
    got: list[str] = []

    def on_store(event: evt.Event) -> int:
        got.append(str(event.request.AffectedSOPInstanceUID))
        return answers.pop(0)

    scp = AE(ae_title="PACS")
    scp.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False,
                              evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        settings = settings_for(tmp_path, port)
        factory = queue_files(settings, make_study(tmp_path / "in", 1, 1))
        assert send_batch(factory, settings, "pacs",
                          claim_sends(factory, settings, "pacs", "o"), "o") == 0
        make_due(factory)
        assert send_batch(factory, settings, "pacs",
                          claim_sends(factory, settings, "pacs", "o"), "o") == 1
    finally:
        server.shutdown()
    with factory() as s:
        attempts = s.scalars(select(SendAttempt).order_by(SendAttempt.attempt)).all()
        row = s.scalars(select(Send)).one()
    assert [(a.attempt, a.status) for a in attempts] == [(1, 0xA700), (2, 0)]
    assert "0xA700" in attempts[0].error and attempts[1].error is None
    assert row.state == "sent" and len(got) == 2 and len(set(got)) == 1


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_per_destination_concurrency_across_owners(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    settings = settings_for(tmp_path, free_port(), url=url, max_concurrent=2)
    factory = queue_files(settings, make_study(tmp_path / "in", 1, 4))
    a = claim_sends(factory, settings, "pacs", "host1:a")
    b = claim_sends(factory, settings, "pacs", "host2:b")
    assert len(a) == len(b) == 1 and a[0].id != b[0].id
    assert claim_sends(factory, settings, "pacs", "host3:c") == []  # two senders active
    send_batch(factory, settings, "pacs", a, "host1:a")  # fails fast, releases its lease
    assert len(claim_sends(factory, settings, "pacs", "host3:c")) == 1


def test_dispatcher_threads_respect_max_concurrent(tmp_path: Path) -> None:
    """A storescp that accepts slowly: never more than max_concurrent associations."""
    pacs = StoreSCP(tmp_path / "pacs").start()
    try:
        settings = settings_for(tmp_path, pacs.port, max_concurrent=2)
        factory = queue_files(settings, make_study(tmp_path / "in", 1, 12))
        stop = threading.Event()
        dispatcher = Dispatcher(settings, factory, stop)
        assert len(dispatcher.threads) == 2
        peak = 0
        dispatcher.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with factory() as s:
                states = s.scalars(select(Send.state)).all()
                owners = set(s.scalars(select(Send.lease_owner)
                                       .where(Send.state == "running")))
            peak = max(peak, len(owners))
            if states.count("sent") == 12:
                break
        stop.set()
        dispatcher.join(10)
        received = pacs.received()
    finally:
        pacs.stop()
    assert peak <= 2
    assert len(received) == 12 and set(received.values()) == {1}


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless])  # JPEG-LS: report SCs
def test_compressed_file_is_decompressed_when_peer_accepts_only_uncompressed(
    tmp_path: Path, syntax: str
) -> None:
    ds = make_dataset(BodyPartExamined="HIP")
    ds.compress(syntax, generate_instance_uid=False)
    path = write_dataset(ds, tmp_path / "in" / "compressed.dcm")
    assert dcmread(path).file_meta.TransferSyntaxUID == syntax
    for name, extra in (("plain", []), ("accept-all", ["+xa"])):
        pacs = StoreSCP(tmp_path / name, extra=extra).start()
        try:
            settings = settings_for(tmp_path / f"{name}-router", pacs.port)
            factory = queue_files(settings, [path])
            assert send_batch(factory, settings, "pacs",
                              claim_sends(factory, settings, "pacs", "o"), "o") == 1
            (stored,) = [f for f in (tmp_path / name).iterdir() if f.is_file()]
            got = dcmread(stored)
        finally:
            pacs.stop()
        assert got.SOPInstanceUID == ds.SOPInstanceUID
        expected = syntax if name == "accept-all" else None
        if expected:
            assert got.file_meta.TransferSyntaxUID == expected
        else:
            assert not got.file_meta.TransferSyntaxUID.is_compressed
        assert (got.pixel_array == ds.pixel_array).all()


def test_missing_file_is_an_attempt_with_a_reason(tmp_path: Path) -> None:
    pacs = StoreSCP(tmp_path / "pacs").start()
    try:
        settings = settings_for(tmp_path, pacs.port)
        paths = make_study(tmp_path / "in", 1, 2)
        factory = queue_files(settings, paths)
        paths[0].unlink()
        sent = 0
        for _ in range(2):
            sent += send_batch(factory, settings, "pacs",
                               claim_sends(factory, settings, "pacs", "o"), "o")
    finally:
        pacs.stop()
    assert sent == 1
    with factory() as s:
        errors = s.scalars(select(SendAttempt.error).where(SendAttempt.error.is_not(None))).all()
    assert len(errors) == 1 and "cannot read" in errors[0]


class _Clock:
    """A clock for the dispatcher that moves only when told to (leases without sleeps)."""

    def __init__(self) -> None:
        self.offset = 0.0
        self._real = db.utcnow()

    def utcnow(self):  # type: ignore[no-untyped-def]
        return self._real + timedelta(seconds=self.offset)


@pytest.mark.parametrize("association_leases", [0.0, 0.8],
                         ids=["prompt-association", "slow-association"])
def test_long_batch_renews_its_leases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      association_leases: float) -> None:
    """Sends slower than the lease: no other sender may take them over mid-batch.

    Answering the association request moves the dispatcher's clock on by
    `association_leases` (a PACS busy with another association), and each store by 0.4
    lease, so six stores span 2.4 leases more; after each step a second sender tries to
    claim (the peer answers only then). Only renewals counted from the claim, not from
    the association, keep the leases; no real time has to pass.
    """
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    from hiprouter.router.flow import dispatch

    clock = _Clock()
    lease_s = 10.0
    got: list[str] = []
    moved, tried = threading.Event(), threading.Event()

    def step(leases: float) -> None:
        clock.offset += leases * lease_s
        moved.set()
        assert tried.wait(60), "the second sender did not try"
        tried.clear()

    def slow_association(event: evt.Event) -> None:
        if association_leases:
            step(association_leases)

    def slow_store(event: evt.Event) -> int:
        step(0.4)
        got.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    scp = AE(ae_title="PACS")
    scp.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False,
                              evt_handlers=[(evt.EVT_REQUESTED, slow_association),
                                            (evt.EVT_C_STORE, slow_store)])
    try:
        settings = settings_for(tmp_path, port, max_concurrent=2)
        settings.queue.lease_s = lease_s
        settings.queue.send_batch = 6
        factory = queue_files(settings, make_study(tmp_path / "in", 1, 6))
        clock.__init__()  # type: ignore[misc]  # starts now, after the sends were queued
        monkeypatch.setattr(dispatch, "utcnow", clock.utcnow)
        monkeypatch.setattr(queue, "utcnow", clock.utcnow)
        batch = claim_sends(factory, settings, "pacs", "first")
        assert len(batch) == 6
        worker = threading.Thread(target=send_batch,
                                  args=(factory, settings, "pacs", batch, "first"))
        worker.start()
        stolen = []
        while worker.is_alive() or moved.is_set():
            if moved.wait(0.05):
                moved.clear()
                stolen += claim_sends(factory, settings, "pacs", "second")
                tried.set()
        worker.join()
    finally:
        server.shutdown()
    assert stolen == []
    assert len(got) == 6 and len(set(got)) == 6
    assert clock.offset == pytest.approx((association_leases + 2.4) * lease_s)
    with factory() as s:
        assert s.scalars(select(Send.state)).all() == ["sent"] * 6


def test_send_whose_lease_passed_to_another_sender_goes_out_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sender that stalled past its lease while another claimed its batch leaves the
    batch to that one: the PACS (DCMTK storescp) gets each object once, the stalled
    sender opens no association and records no failure."""
    from hiprouter.router.flow import dispatch

    clock = _Clock()
    pacs = StoreSCP(tmp_path / "pacs").start()
    try:
        settings = settings_for(tmp_path, pacs.port, max_concurrent=2)
        settings.queue.lease_s = 10.0
        settings.queue.send_batch = 3
        factory = queue_files(settings, make_study(tmp_path / "in", 1, 3))
        clock.__init__()  # type: ignore[misc]
        monkeypatch.setattr(dispatch, "utcnow", clock.utcnow)
        monkeypatch.setattr(queue, "utcnow", clock.utcnow)
        stalled = claim_sends(factory, settings, "pacs", "stalled")
        clock.offset = 11.0  # the stalled sender's leases ran out
        taken = claim_sends(factory, settings, "pacs", "second")
        assert len(stalled) == len(taken) == 3
        assert send_batch(factory, settings, "pacs", stalled, "stalled") == 0
        assert send_batch(factory, settings, "pacs", taken, "second") == 3
        received = pacs.wait_for(3, timeout=10)
    finally:
        pacs.stop()
    assert len(received) == 3 and set(received.values()) == {1}
    with factory() as s:
        assert s.scalars(select(Send.state)).all() == ["sent"] * 3
        attempts = s.scalars(select(SendAttempt)).all()
        assert len(attempts) == 3 and {a.status for a in attempts} == {0}
        outbound = s.scalars(select(Association).where(Association.direction == "out")).all()
        assert len(outbound) == 1 and outbound[0].instances_received == 3
        assert not s.scalars(select(AuditEvent).where(
            AuditEvent.outcome != 0)).all(), "no failure audited for the handed-over sends"


def test_implicit_vr_file_is_converted_for_a_peer_that_takes_only_explicit(
        tmp_path: Path) -> None:
    """An Implicit VR file goes out as stored to a peer that merely prefers Explicit VR
    (storescp +xe: every SCP takes Implicit VR), and is converted for a peer that takes
    Explicit VR only (its own-syntax context rejected, the fallback accepted)."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import ComputedRadiographyImageStorage

    ds = make_dataset(BodyPartExamined="HIP")
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path = write_dataset(ds, tmp_path / "in" / "implicit.dcm")
    pacs = StoreSCP(tmp_path / "pacs", extra=["+xe"]).start()  # prefers explicit VR LE
    try:
        settings = settings_for(tmp_path / "router", pacs.port)
        factory = queue_files(settings, [path])
        assert send_batch(factory, settings, "pacs",
                          claim_sends(factory, settings, "pacs", "o"), "o") == 1
        (stored,) = [f for f in (tmp_path / "pacs").iterdir() if f.is_file()]
    finally:
        pacs.stop()
    assert dcmread(stored).file_meta.TransferSyntaxUID == ImplicitVRLittleEndian

    received: list[str] = []
    got: list = []

    def on_store(event: evt.Event) -> int:
        received.append(str(event.context.transfer_syntax))
        got.append(event.dataset)
        return 0x0000

    scp = AE(ae_title="PACS")
    scp.add_supported_context(ComputedRadiographyImageStorage, [ExplicitVRLittleEndian])
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False,
                              evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        settings = settings_for(tmp_path / "router2", port)
        factory = queue_files(settings, [path])
        assert send_batch(factory, settings, "pacs",
                          claim_sends(factory, settings, "pacs", "o"), "o") == 1
    finally:
        server.shutdown()
    assert received == [ExplicitVRLittleEndian]
    assert got[0].SOPInstanceUID == ds.SOPInstanceUID
    assert got[0].PixelData == ds.PixelData


def test_file_goes_out_as_stored_to_a_peer_that_prefers_another_syntax(tmp_path: Path) -> None:
    """A pynetdicom PACS prefers Implicit VR: offered the stored Explicit VR file's syntax in
    a context of its own, it accepts it there, and the bytes arrive as stored (no decode and
    re-encode); the fallback context still carries what only it can take."""
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    received: list[tuple[str, bytes]] = []

    def on_store(event: evt.Event) -> int:
        received.append((str(event.context.transfer_syntax), event.request.DataSet.getvalue()))
        return 0x0000

    scp = AE(ae_title="PACS")
    scp.supported_contexts = AllStoragePresentationContexts
    assert str(scp.supported_contexts[0].transfer_syntax[0]) == "1.2.840.10008.1.2"  # implicit
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False,
                              evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        path = make_study(tmp_path / "in", 1, 1)[0]
        assert dcmread(path).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        settings = settings_for(tmp_path, port)
        factory = queue_files(settings, [path])
        assert send_batch(factory, settings, "pacs",
                          claim_sends(factory, settings, "pacs", "o"), "o") == 1
    finally:
        server.shutdown()
    ((syntax, data),) = received
    assert syntax == ExplicitVRLittleEndian
    stored = Path(path).read_bytes()
    assert stored.endswith(data) and len(data) > len(stored) // 2  # the data set as stored
