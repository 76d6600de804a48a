"""The receiver against real peers: DCMTK storescu/echoscu, raw sockets, SQLite, PostgreSQL."""

from __future__ import annotations

import csv
import hashlib
import re
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from sqlalchemy import select

from hiprouter.config import resolve_ref
from hiprouter.schema import Association, AuditEvent, Instance, Study
from tests.conftest import require_tool
from tests.router.conftest import (
    TEST_PATIENT_ID,
    TEST_PATIENT_NAME,
    RouterProcess,
    dataset_bytes,
    echoscu,
    make_cr_files,
    sop_instance_uid,
    storescu,
)
from tests.router.rawdul import closed_by_peer, wait_until

Factory = Callable[..., RouterProcess]


def acknowledged_files(storescu_output: str) -> list[str]:
    """Files for which storescu -v logged a successful C-STORE response."""
    acked, current = [], None
    for line in storescu_output.splitlines():
        sending = re.search(r"Sending file: (.+)$", line)
        if sending:
            current = sending.group(1).strip()
        elif "Received Store Response (Success)" in line and current:
            acked.append(current)
            current = None
    return acked


def store_statuses(storescu_output: str) -> list[str]:
    return re.findall(r"Received Store Response \(([^)]*)\)", storescu_output)


def instances_by_uid(router: RouterProcess) -> dict[str, Instance]:
    with router.session_factory()() as session:
        return {i.sop_instance_uid: i for i in session.scalars(select(Instance))}


def audit_events(router: RouterProcess) -> list[AuditEvent]:
    with router.session_factory()() as session:
        return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))


def spool_files(router: RouterProcess) -> list[Path]:
    return [p for p in router.spool_dir.rglob("*") if p.is_file()]


def assert_stored_identically(router: RouterProcess, files: list[Path]) -> None:
    rows = instances_by_uid(router)
    for path in files:
        uid = sop_instance_uid(path)
        assert uid in rows, f"{path.name} not in the database"
        row = rows[uid]
        assert row.spool_path.startswith("spool:"), "relative to storage.spool_dir"
        spooled = resolve_ref(row.spool_path, router.spool_dir)
        assert spooled.parent.parent == router.spool_dir
        assert uid not in spooled.name  # names are generated, never received values
        data = spooled.read_bytes()
        assert hashlib.sha256(data).hexdigest() == row.sha256
        assert row.size == len(data)
        assert dataset_bytes(spooled) == dataset_bytes(path), f"{path.name} changed"


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _completed(router: RouterProcess, study_uid: str) -> bool:
    """The study left `receiving` (complete, or already routed by the serve command)."""
    with router.session_factory()() as session:
        study = session.scalars(select(Study).where(Study.study_uid == study_uid)).first()
        return study is not None and study.state != "receiving" and bool(study.completed_at)


def test_storescu_study_is_spooled_identically_recorded_and_completed(
    router_process: Factory, tmp_path: Path
) -> None:
    router = router_process()
    files = make_cr_files(tmp_path / "study", 12)
    done = storescu(router.port, files)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(acknowledged_files(done.stdout + done.stderr)) == len(files)
    assert_stored_identically(router, files)
    study_uid = instances_by_uid(router)[sop_instance_uid(files[0])].study_uid
    assert wait_for(lambda: _completed(router, study_uid))
    with router.session_factory()() as session:
        study = session.scalars(select(Study)).one()
        assert study.instance_count == len(files) and study.episode == 1
        assoc = session.scalars(select(Association).where(Association.outcome == "released")
                                ).one()
        assert (assoc.calling_ae, assoc.called_ae, assoc.peer_host) == (
            "STORESCU", "HIPROUTER", "127.0.0.1")
        assert assoc.instances_received == len(files) and assoc.ended_at is not None
    transferred = [e for e in audit_events(router) if e.event_id_code == "110104"]
    assert transferred and study_uid in transferred[-1].objects["study_uids"]

    echo = echoscu(router.port)
    assert echo.returncode == 0, echo.stderr

    # No patient name or ID in any log line of the run.
    router.stop()
    log = router.log_text()
    assert "association accepted" in log
    for secret in (TEST_PATIENT_NAME, TEST_PATIENT_ID, "SECRETNAME", "7731"):
        assert secret not in log


def test_new_instances_after_completion_start_a_new_episode(
    router_process: Factory, tmp_path: Path
) -> None:
    router = router_process()
    first = make_cr_files(tmp_path / "a", 2, size=64)
    assert storescu(router.port, first).returncode == 0
    study_uid = instances_by_uid(router)[sop_instance_uid(first[0])].study_uid
    assert wait_for(lambda: _completed(router, study_uid))
    more = make_cr_files(tmp_path / "b", 1, size=64, study_uid=study_uid, seed=1)
    assert storescu(router.port, more).returncode == 0
    with router.session_factory()() as session:
        study = session.scalars(select(Study)).one()
        assert study.state == "receiving" and study.episode == 2
    assert wait_for(lambda: _completed(router, study_uid))


def test_duplicates_are_stored_once_counted_and_acknowledged(
    router_process: Factory, tmp_path: Path
) -> None:
    router = router_process()
    files = make_cr_files(tmp_path / "dup", 3, size=64)
    assert storescu(router.port, files).returncode == 0
    again = storescu(router.port, [files[0], files[1], files[0]])
    assert again.returncode == 0
    assert store_statuses(again.stdout + again.stderr) == ["Success"] * 3
    rows = instances_by_uid(router)
    assert len(rows) == 3
    assert rows[sop_instance_uid(files[0])].duplicates == 2
    assert rows[sop_instance_uid(files[1])].duplicates == 1
    assert len(spool_files(router)) == 3
    with router.session_factory()() as session:
        assert session.scalars(select(Study)).one().instance_count == 3


def test_unknown_calling_ae_and_wrong_host_are_rejected_and_audited(
    router_process: Factory, tmp_path: Path
) -> None:
    router = router_process({"node": {"allowed_calling": [
        {"ae_title": "GOODPACS"},
        {"ae_title": "FARAWAY", "host": "192.0.2.10"},
    ]}})
    files = make_cr_files(tmp_path / "x", 1, size=64)
    assert storescu(router.port, files, calling="GOODPACS").returncode == 0
    bad = storescu(router.port, files, calling="INTRUDER")
    assert bad.returncode != 0
    assert "Calling AE Title Not Recognized" in bad.stdout + bad.stderr
    wrong_host = echoscu(router.port, calling="FARAWAY")
    assert wrong_host.returncode != 0
    wrong_called = echoscu(router.port, called="NOTME", calling="GOODPACS")
    assert wrong_called.returncode != 0
    assert "Called AE Title Not Recognized" in wrong_called.stdout + wrong_called.stderr
    def alerts_() -> list[AuditEvent]:
        return [e for e in audit_events(router) if e.event_id_code == "110114"]

    assert wait_for(lambda: len(alerts_()) == 3), [e.outcome_description for e in alerts_()]
    alerts = alerts_()
    assert {e.participants[0]["ae_title"] for e in alerts} == {"INTRUDER", "FARAWAY",
                                                               "GOODPACS"}
    assert all(e.outcome == 4 and e.participants[0]["host"] == "127.0.0.1" for e in alerts)
    with router.session_factory()() as session:
        outcomes = sorted(a.outcome for a in session.scalars(select(Association)))
    assert outcomes == ["rejected", "rejected", "rejected", "released"]
    assert len(instances_by_uid(router)) == 1


def test_oversized_pdu_probe_leaves_memory_flat_and_server_serving(
    router_process: Factory,
) -> None:
    router = router_process({"node": {"max_pdu_size": 1024 * 1024}})
    proc = psutil.Process(router.pid)
    assert echoscu(router.port).returncode == 0
    before = proc.memory_info().rss
    for pdu_type in (0x01, 0x04):  # A-ASSOCIATE-RQ, and P-DATA before association
        with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
            sock.sendall(struct.pack(">BBL", pdu_type, 0, 200 * 1024 * 1024))
            chunk = b"\x00" * (1024 * 1024)
            try:
                for _ in range(150):
                    sock.sendall(chunk)
            except OSError:
                pass  # the server aborted and closed the connection: what we want
    # both probes were refused (and audited) before the memory is looked at
    assert wait_for(lambda: len([e for e in audit_events(router)
                                 if e.event_id_code == "110113"]) == 2)
    grown = proc.memory_info().rss - before
    assert grown < 30 * 1024 * 1024, f"RSS grew by {grown / 2**20:.0f} MiB"
    assert echoscu(router.port).returncode == 0
    alerts = [e for e in audit_events(router) if e.event_id_code == "110113"]
    assert len(alerts) == 2 and "declares 209715200 bytes" in alerts[0].outcome_description


def test_low_disk_space_answers_a700_and_audits(
    router_process: Factory, tmp_path: Path
) -> None:
    router = router_process({"storage": {"min_free_mb": 10**12}})
    files = make_cr_files(tmp_path / "full", 2, size=64)
    done = storescu(router.port, files, extra=["-nh"])
    assert store_statuses(done.stdout + done.stderr) == ["Refused: OutOfResources"] * 2
    assert instances_by_uid(router) == {}
    assert spool_files(router) == []
    resource = [e for e in audit_events(router) if e.event_type_code == "HIP005"]
    assert len(resource) == 2 and "min_free_mb" in resource[0].outcome_description


def test_oversized_dataset_gets_a700_and_association_goes_on(
    router_process: Factory, tmp_path: Path
) -> None:
    router = router_process({"node": {"max_dataset_mb": 1}})
    big = make_cr_files(tmp_path / "big", 1, size=1024)  # 2 MiB of pixels
    small = make_cr_files(tmp_path / "small", 1, size=64)
    done = storescu(router.port, [big[0], small[0]], extra=["-nh"])
    statuses = store_statuses(done.stdout + done.stderr)
    assert len(statuses) == 2 and statuses[1] == "Success" and statuses[0] != "Success"
    assert list(instances_by_uid(router)) == [sop_instance_uid(small[0])]
    resource = [e for e in audit_events(router) if e.event_type_code == "HIP005"]
    assert len(resource) == 1 and "larger than 1 MiB" in resource[0].outcome_description


def test_unparseable_instance_is_refused_and_quarantined(
    router_process: Factory, tmp_path: Path
) -> None:
    from pydicom import dcmread

    router = router_process()
    path = make_cr_files(tmp_path / "bad", 1, size=64)[0]
    ds = dcmread(path)
    del ds.StudyInstanceUID
    ds.save_as(path)
    done = storescu(router.port, [path])
    statuses = store_statuses(done.stdout + done.stderr)
    assert statuses and statuses[0] != "Success"
    assert instances_by_uid(router) == {}
    quarantined = [e for e in audit_events(router) if e.event_type_code == "HIP002"]
    assert len(quarantined) == 1
    assert "no StudyInstanceUID" in quarantined[0].outcome_description
    assert quarantined[0].objects["status"] == 0xC000
    assert Path(quarantined[0].objects["quarantine_path"]).exists()
    assert echoscu(router.port).returncode == 0


def test_kill9_mid_send_loses_nothing_acknowledged(
    router_process: Factory, tmp_path: Path
) -> None:
    router = router_process()
    files = make_cr_files(tmp_path / "kill", 200, size=256)
    out_path = tmp_path / "storescu.out"
    with open(out_path, "w") as out:
        sender = subprocess.Popen(
            ["storescu", "-v", "-aec", "HIPROUTER", "127.0.0.1", str(router.port),
             *map(str, files)],
            stdout=out, stderr=subprocess.STDOUT, env={"TCP_NODELAY": "1", "PATH": "/usr/bin"},
        )
    assert wait_for(lambda: len(spool_files(router)) >= 40, timeout=60)
    router.kill()
    sender.wait(60)
    acked = acknowledged_files(out_path.read_text())
    # storescu sends one instance at a time and the router spools before it answers, so
    # the kill may catch the 40th spooled file before its response went out: >= 39 acked
    assert 39 <= len(acked) < len(files), "the kill should land in the middle of the send"

    router.start()
    acked_paths = [Path(p) for p in acked]
    assert_stored_identically(router, acked_paths)
    # the rest can be sent again: nothing is stored twice
    done = storescu(router.port, files)
    assert done.returncode == 0
    assert len(instances_by_uid(router)) == len(files)
    assert_stored_identically(router, files)


@pytest.mark.postgres
def test_receiver_on_postgresql(router_process: Factory, pg_url: str, tmp_path: Path) -> None:
    router = router_process(database_url=pg_url)
    files = make_cr_files(tmp_path / "pg", 6, size=128)
    done = storescu(router.port, files)
    assert done.returncode == 0, done.stdout
    again = storescu(router.port, files[:2])
    assert again.returncode == 0
    assert_stored_identically(router, files)
    rows = instances_by_uid(router)
    assert sum(r.duplicates for r in rows.values()) == 2
    study_uid = rows[sop_instance_uid(files[0])].study_uid
    assert wait_for(lambda: _completed(router, study_uid))


# storescu proposes uncompressed syntaxes unless told otherwise; these options make it
# propose (and so send unchanged) one file's own transfer syntax.
STORESCU_PROPOSE = {
    "1.2.840.10008.1.2": "-xi", "1.2.840.10008.1.2.1": "-xe", "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd", "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs", "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu", "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
}


def _sendable(path: Path) -> bool:
    """A file of a standard storage SOP class with the UIDs a C-STORE needs."""
    from pydicom import dcmread
    from pynetdicom import AllStoragePresentationContexts

    storage = {cx.abstract_syntax for cx in AllStoragePresentationContexts}
    try:
        ds = dcmread(path, stop_before_pixels=True)
        return bool(ds.file_meta.get("MediaStorageSOPClassUID") in storage
                    and ds.get("SOPClassUID") and ds.get("SOPInstanceUID"))
    except Exception:
        return False


def _corpus_files_by_syntax(shared_data: Path) -> dict[str, list[Path]]:
    """Sendable images of each transfer syntax in the shared corpus, smallest first."""
    corpus = shared_data / "dicom-corpus"
    candidates: dict[str, list[tuple[int, Path]]] = {}
    with open(corpus / "index.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            uid = row["transfer_syntax"].split(" ")[0]
            if not uid.startswith("1.2.840.10008.1.2") or row["note"]:
                continue
            candidates.setdefault(uid, []).append((int(row["size_bytes"] or 0),
                                                   corpus / row["file"]))
    return {uid: [p for _size, p in sorted(files) if _sendable(p)]
            for uid, files in candidates.items()}


def _send_with_pynetdicom(port: int, path: Path, syntax: str) -> int:
    from pydicom import dcmread
    from pynetdicom import AE

    ds = dcmread(path)
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(ds.SOPClassUID, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="HIPROUTER")
    assert assoc.is_established, syntax
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def _prepared(path: Path, folder: Path, seen: set[str], dcmtk: bool) -> Path | None:
    """A copy of `path` with the UIDs a receiver needs (pixel data left encoded as is).

    Some corpus files lack Study/Series UIDs (the receiver refuses those) and several
    are one image in different syntaxes sharing a SOP Instance UID (a duplicate). The
    copy is in the encoding the sending tool puts on the wire (storescu re-encodes what
    it reads, e.g. drops odd padding), so "stored as received" can be compared bytewise.
    None when DCMTK has to repair the file (odd lengths and the like).
    """
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    ds = dcmread(path)
    changed = False
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        if not ds.get(keyword):
            setattr(ds, keyword, generate_uid())
            changed = True
    if ds.SOPInstanceUID in seen:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        changed = True
    seen.add(ds.SOPInstanceUID)
    folder.mkdir(exist_ok=True)
    copy = folder / path.name
    if changed or not dcmtk:
        ds.save_as(copy, enforce_file_format=True)
        path = copy
    if dcmtk:
        canonical = folder / f"dcmtk-{path.name}"
        conv = subprocess.run([require_tool("dcmconv"), str(path), str(canonical)],
                              capture_output=True, text=True)
        return canonical if conv.returncode == 0 and not conv.stderr.strip() else None
    return copy


def test_every_transfer_syntax_in_the_corpus_is_stored_as_received(
    router_process: Factory, shared_data: Path, tmp_path: Path
) -> None:
    router = router_process()
    seen: set[str] = set()
    by_syntax: dict[str, Path] = {}
    for uid, paths in _corpus_files_by_syntax(shared_data).items():
        for path in paths:
            ready = _prepared(path, tmp_path / uid, seen, uid in STORESCU_PROPOSE)
            if ready is not None:
                by_syntax[uid] = ready
                break
    required = {"1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
                "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90",
                "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.5",
                "1.2.840.10008.1.2.1.99"}
    assert required <= set(by_syntax), sorted(required - set(by_syntax))
    for uid, path in sorted(by_syntax.items()):
        if uid in STORESCU_PROPOSE:
            done = storescu(router.port, [path], extra=[STORESCU_PROPOSE[uid], "-R"])
            out = done.stdout + done.stderr
            assert store_statuses(out) == ["Success"], f"{uid} {path.name}: {out}"
        else:  # DCMTK 3.6.7 cannot propose these (HTJ2K, JPEG process 14, ...)
            assert _send_with_pynetdicom(router.port, path, uid) == 0, uid
    rows = instances_by_uid(router)
    by_uid = {sop_instance_uid(p): (ts, p) for ts, p in by_syntax.items()}
    for sop_uid, (ts, path) in by_uid.items():
        assert rows[sop_uid].transfer_syntax == ts, path.name
    assert_stored_identically(router, list(by_syntax.values()))


def test_peer_trickling_a_pdu_is_cut_off(router_process: Factory) -> None:
    # a byte per poll (every 0.05 s): the 1000-byte A-ASSOCIATE-RQ would take 50 s
    router = router_process({"node": {"network_timeout_s": 2, "request_timeout_s": 2}})
    with socket.create_connection(("127.0.0.1", router.port)) as sock:
        sock.sendall(struct.pack(">BBL", 0x01, 0, 1000))

        def cut_off() -> bool:
            try:
                sock.sendall(b"\x00")
            except OSError:
                return True
            return closed_by_peer(sock)

        wait_until(lambda: cut_off(), 120, "the server to cut the trickling peer off")
    assert echoscu(router.port).returncode == 0


def test_restart_records_spooled_files_whose_rows_were_lost(
    router_process: Factory, tmp_path: Path
) -> None:
    from sqlalchemy import delete

    router = router_process()
    files = make_cr_files(tmp_path / "lost", 4, size=64)
    assert storescu(router.port, files).returncode == 0
    router.stop()
    rows = instances_by_uid(router)
    lost = [sop_instance_uid(f) for f in files[:2]]
    kept = rows[sop_instance_uid(files[2])]
    # what a power cut after the fsync of the files but before the commit leaves behind
    with router.session_factory()() as session, session.begin():
        session.execute(delete(Instance).where(Instance.sop_instance_uid.in_(lost)))
    kept_path = resolve_ref(kept.spool_path, router.spool_dir)
    copy = kept_path.with_name("0" * 32 + ".dcm")  # an unacknowledged resend
    copy.write_bytes(kept_path.read_bytes())
    stale_tmp = kept_path.with_name(".1234.tmp")
    stale_tmp.write_bytes(b"half")
    router.start()
    assert_stored_identically(router, files)
    assert not copy.exists() and not stale_tmp.exists()
    assert len(spool_files(router)) == 4
