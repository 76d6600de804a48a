"""The lean C-STORE receive path (node.fast_store, router/net/fast_store.py).

Real peers (DCMTK storescu, pynetdicom as SCU, raw sockets), a real in-process SCP on
SQLite. Each test checks which path served the request with the
`hiprouter_store_requests_total{path}` counter, so a silent fallback to pynetdicom shows.
"""

from __future__ import annotations

import re
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom import AE
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import create_file_meta, encode_file_meta
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from hiprouter import db as dbmod
from hiprouter import metrics
from hiprouter.config import Settings
from hiprouter.router.net import fast_store, observe
from hiprouter.router.net.receive import OUT_OF_RESOURCES, SUCCESS, StorageSCP
from hiprouter.router.net.spool import Spool
from hiprouter.schema import AuditEvent, Instance
from tests.conftest import free_port
from tests.router.conftest import CR_IMAGE_STORAGE, make_cr_files, sop_instance_uid, storescu
from tests.router.net.test_receive_durability import DiskLog
from tests.router.rawdul import APPLICATION_CONTEXT

EXPLICIT_LE = "1.2.840.10008.1.2.1"


def served(path: str) -> float:
    value = metrics.REGISTRY.get_sample_value("hiprouter_store_requests_total",
                                              {"path": path})
    return value or 0.0


class Node:
    """An instrumented in-process StorageSCP on its own SQLite database and spool."""

    def __init__(self, root: Path, fast: bool, **node: Any) -> None:
        self.url = f"sqlite:///{root / 'db.sqlite'}"
        root.mkdir(parents=True)
        dbmod.upgrade(self.url)
        storage = node.pop("storage", {})
        self.settings = Settings.model_validate({
            "node": {"ae_title": "HIPROUTER", "host": "127.0.0.1", "port": free_port(),
                     "fast_store": fast, **node},
            "database": {"url": self.url},
            "storage": {"spool_dir": str(root / "spool"), "min_free_mb": 10, **storage},
        })
        self.engine = dbmod.make_engine(self.url)
        self.spool = Spool(self.settings.storage.spool_dir)
        self.spool.prepare()
        self.scp = StorageSCP(self.settings, dbmod.session_factory(self.engine), self.spool)
        observe.instrument(self.scp)
        self.scp.start()

    @property
    def port(self) -> int:
        return self.scp.port

    def rows(self) -> dict[str, Instance]:
        """The instance rows, `spool_path` resolved to this node's spool (rows hold
        `spool:` references)."""
        with dbmod.session_factory(self.engine)() as session:
            rows = {r.sop_instance_uid: r for r in session.scalars(select(Instance))}
            for r in rows.values():
                assert r.spool_path.startswith("spool:"), r.spool_path
                r.spool_path = str(self.settings.storage.resolve(r.spool_path))
            session.expunge_all()
            return rows

    def audit(self) -> list[AuditEvent]:
        with dbmod.session_factory(self.engine)() as session:
            return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))

    def spool_files(self) -> list[Path]:
        return sorted(p for p in self.spool.root.rglob("*") if p.is_file())

    def close(self) -> None:
        self.scp.stop()
        self.spool.close()
        self.engine.dispose()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Any]:
    made: list[Node] = []

    def make(fast: bool = True, **node_settings: Any) -> Node:
        started = Node(tmp_path / f"node{len(made)}", fast, **node_settings)
        made.append(started)
        return started

    yield make
    for started in made:
        started.close()


def statuses(done: subprocess.CompletedProcess[str]) -> list[str]:
    return re.findall(r"Received Store Response \(([^)]*)\)", done.stdout + done.stderr)


# -- encodings: byte for byte what pynetdicom produces -------------------------------------

@pytest.mark.parametrize("sop_class, sop_instance, syntax", [
    ("1.2.840.10008.5.1.4.1.1.1", "1.2.3.4", "1.2.840.10008.1.2"),
    ("1.2.840.10008.5.1.4.1.1.7", "1.2.826.0.1.3680043.8.498.12345678901234567890123456789012",
     "1.2.840.10008.1.2.1.99"),
    ("1.2.840.10008.5.1.4.1.1.1.1", "9" * 64, "1.2.840.10008.1.2.4.70"),
])
def test_file_meta_is_pynetdicoms(sop_class: str, sop_instance: str, syntax: str) -> None:
    expected = b"\0" * 128 + b"DICM" + encode_file_meta(create_file_meta(
        sop_class_uid=sop_class, sop_instance_uid=sop_instance, transfer_syntax=syntax))
    assert fast_store.file_meta(sop_class, sop_instance, syntax) == expected
    assert len(expected) < fast_store.META_RESERVE


@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xC000, 0xC211])
@pytest.mark.parametrize("message_id", [1, 0xFFFF])
def test_store_response_is_pynetdicoms(status: int, message_id: int) -> None:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    rsp.AffectedSOPInstanceUID = "1.2.3.45"
    rsp.Status = status
    msg = C_STORE_RSP()
    msg.primitive_to_message(rsp)
    pdus = []
    for primitive in msg.encode_msg(3, 16384):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        pdus.append(pdu.encode())
    command = fast_store.StoreCommand(3, message_id, "1.2.840.10008.5.1.4.1.1.1", "1.2.3.45")
    assert [fast_store.store_response_pdu(command, status)] == pdus


def _encoded_command(primitive: Any, message: Any) -> bytes:
    msg = message()
    msg.primitive_to_message(primitive)
    first = next(iter(msg.encode_msg(1, 1 << 20)))
    return bytes(first.presentation_data_value_list[0][1][1:])


def _store_rq(**extra: Any) -> C_STORE:
    rq = C_STORE()
    rq.MessageID = 7
    rq.AffectedSOPClassUID = CR_IMAGE_STORAGE
    rq.AffectedSOPInstanceUID = "1.2.3.4.5"
    rq.Priority = 2
    rq.DataSet = BytesIO(b"\x08\x00\x05\x00")  # any data set: "a data set follows"
    for key, value in extra.items():
        setattr(rq, key, value)
    return rq


def test_command_parser_takes_store_requests_only() -> None:
    plain = _encoded_command(_store_rq(), C_STORE_RQ)
    assert fast_store.parse_command(plain, 5) == fast_store.StoreCommand(
        5, 7, CR_IMAGE_STORAGE, "1.2.3.4.5")
    moved = _encoded_command(_store_rq(MoveOriginatorApplicationEntityTitle="MOVER",
                                       MoveOriginatorMessageID=3), C_STORE_RQ)
    assert fast_store.parse_command(moved, 1) is not None
    echo = C_ECHO()
    echo.MessageID = 1
    echo.AffectedSOPClassUID = Verification
    assert fast_store.parse_command(_encoded_command(echo, C_ECHO_RQ), 1) is None
    # an element a C-STORE-RQ does not have, a truncated set, a bad group length
    unknown = plain + struct.pack("<HHL", 0, 0x0901, 4) + b"\0\0\0\0"
    assert fast_store.parse_command(unknown, 1) is None
    assert fast_store.parse_command(plain[:-3], 1) is None
    assert fast_store.parse_command(plain[:8] + struct.pack("<L", 1) + plain[12:], 1) is None


# -- the path in use, against real peers ---------------------------------------------------

def _compressed(files: list[Path], tool: str, folder: Path) -> list[Path]:
    exe = shutil.which(tool)
    if exe is None:
        pytest.skip(f"needs DCMTK {tool}")
    folder.mkdir()
    out = []
    for path in files:
        target = folder / path.name
        subprocess.run([exe, str(path), str(target)], check=True, capture_output=True)
        out.append(target)
    return out


SENDS = {
    "explicit": (None, []),
    "implicit": (None, ["-xi"]),
    "deflated": (None, ["-xd"]),
    "jpeg-lossless": ("dcmcjpeg", ["-xs", "-R"]),
    "rle": ("dcmcrle", ["-xr", "-R"]),
    "fragmented": (None, ["--max-send-pdu", "4096"]),
}


@pytest.mark.parametrize("kind", sorted(SENDS))
def test_storescu_is_served_by_the_fast_path_with_the_same_files(
    node: Any, tmp_path: Path, kind: str
) -> None:
    tool, extra = SENDS[kind]
    files = make_cr_files(tmp_path / "in", 3, size=128)
    if tool is not None:
        files = _compressed(files, tool, tmp_path / "compressed")
    fast, slow = node(fast=True), node(fast=False)
    before = served("fast"), served("pynetdicom")
    assert statuses(storescu(fast.port, files, extra=extra)) == ["Success"] * 3
    assert (served("fast") - before[0], served("pynetdicom") - before[1]) == (3, 0)
    assert statuses(storescu(slow.port, files, extra=extra)) == ["Success"] * 3
    assert (served("fast") - before[0], served("pynetdicom") - before[1]) == (3, 3)
    fast_rows, slow_rows = fast.rows(), slow.rows()
    assert sorted(fast_rows) == sorted(slow_rows) == sorted(map(sop_instance_uid, files))
    for uid, row in fast_rows.items():
        other = slow_rows[uid]
        assert Path(row.spool_path).read_bytes() == Path(other.spool_path).read_bytes(), uid
        assert (row.transfer_syntax, row.size, row.sha256, row.study_uid, row.series_uid) == (
            other.transfer_syntax, other.size, other.sha256, other.study_uid,
            other.series_uid)
    dcmread(next(iter(fast_rows.values())).spool_path)  # a readable DICOM file


def test_oversized_dataset_is_a700_and_audited_on_the_fast_path(node: Any,
                                                                tmp_path: Path) -> None:
    scp = node(max_dataset_mb=1)
    big = make_cr_files(tmp_path / "big", 1, size=1024)  # 2 MiB of pixels
    small = make_cr_files(tmp_path / "small", 1, size=64)
    refused = metrics.REGISTRY.get_sample_value("hiprouter_instances_refused_total",
                                                {"reason": "too_large"}) or 0.0
    before = served("fast")
    done = storescu(scp.port, [big[0], small[0]], extra=["-nh"])
    result = statuses(done)
    assert len(result) == 2 and result[0] != "Success" and result[1] == "Success", result
    assert served("fast") - before == 2
    assert list(scp.rows()) == [sop_instance_uid(small[0])]
    resource = [e for e in scp.audit() if e.event_type_code == "HIP005"]
    assert len(resource) == 1 and "larger than 1 MiB" in resource[0].outcome_description
    assert metrics.REGISTRY.get_sample_value("hiprouter_instances_refused_total",
                                             {"reason": "too_large"}) == refused + 1


def test_disk_full_is_a700_with_no_file_or_row_on_the_fast_path(node: Any,
                                                                 tmp_path: Path) -> None:
    scp = node(storage={"min_free_mb": 10**12})
    before = served("fast")
    done = storescu(scp.port, make_cr_files(tmp_path / "in", 2, size=64), extra=["-nh"])
    assert statuses(done) == ["Refused: OutOfResources"] * 2
    assert served("fast") - before == 2
    assert scp.rows() == {} and scp.spool_files() == []
    resource = [e for e in scp.audit() if e.event_type_code == "HIP005"]
    assert len(resource) == 2 and "min_free_mb" in resource[0].outcome_description


def test_unparseable_data_set_is_quarantined_on_the_fast_path(node: Any,
                                                              tmp_path: Path) -> None:
    scp = node()
    path = make_cr_files(tmp_path / "bad", 1, size=64)[0]
    ds = dcmread(path)
    del ds.StudyInstanceUID
    ds.save_as(path)
    before = served("fast")
    result = statuses(storescu(scp.port, [path]))
    assert result and result[0] != "Success"
    assert served("fast") - before == 1
    assert scp.rows() == {}
    quarantined = [e for e in scp.audit() if e.event_type_code == "HIP002"]
    assert len(quarantined) == 1 and quarantined[0].objects["status"] == 0xC000
    assert Path(quarantined[0].objects["quarantine_path"]).read_bytes()[128:132] == b"DICM"


def _pynetdicom_send(port: int, steps: list[Any], max_pdu: int = 16382,
                     disk_log: DiskLog | None = None) -> list[int]:
    """Run C-ECHOs ("echo") and C-STOREs (paths) on one association; their statuses."""
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CR_IMAGE_STORAGE)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="HIPROUTER", max_pdu=max_pdu)
    assert assoc.is_established
    out = []
    try:
        for step in steps:
            if step == "echo":
                out.append(int(assoc.send_c_echo().Status))
                continue
            ds = dcmread(step)
            out.append(int(assoc.send_c_store(ds).Status))
            if disk_log is not None:
                disk_log.add("ack", str(ds.SOPInstanceUID))
    finally:
        assoc.release()
    return out


def test_echo_between_stores_on_one_association(node: Any, tmp_path: Path) -> None:
    scp = node()
    files = make_cr_files(tmp_path / "in", 2, size=64)
    before = served("fast"), served("pynetdicom")
    steps = ["echo", files[0], "echo", files[1], "echo"]
    assert _pynetdicom_send(scp.port, steps) == [SUCCESS] * 5
    assert (served("fast") - before[0], served("pynetdicom") - before[1]) == (2, 0)
    assert sorted(scp.rows()) == sorted(map(sop_instance_uid, files))


def test_peer_with_a_tiny_maximum_pdu_is_served_by_pynetdicom(node: Any,
                                                             tmp_path: Path) -> None:
    scp = node()
    files = make_cr_files(tmp_path / "in", 2, size=64)
    before = served("fast"), served("pynetdicom")
    assert _pynetdicom_send(scp.port, files, max_pdu=512) == [SUCCESS] * 2
    assert (served("fast") - before[0], served("pynetdicom") - before[1]) == (0, 2)
    assert sorted(scp.rows()) == sorted(map(sop_instance_uid, files))


def test_fast_store_off_serves_everything_with_pynetdicom(node: Any, tmp_path: Path) -> None:
    scp = node(fast=False)
    before = served("fast")
    files = make_cr_files(tmp_path / "in", 2, size=64)
    assert statuses(storescu(scp.port, files)) == ["Success"] * 2
    assert served("fast") == before


def test_durability_order_holds_on_the_fast_path(node: Any, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    disk_log = DiskLog(monkeypatch)
    scp = node()
    from sqlalchemy import event
    event.listen(scp.engine, "commit", lambda _conn: disk_log.add("commit", ""))
    files = make_cr_files(tmp_path / "in", 4, size=64)
    before = served("fast")
    assert _pynetdicom_send(scp.port, files, disk_log=disk_log) == [SUCCESS] * 4
    assert served("fast") - before == 4
    rows = scp.rows()
    disk_log.assert_durable_before_ack(
        [(uid, Path(rows[uid].spool_path)) for uid in map(sop_instance_uid, files)])


def test_failing_fsync_is_a700_with_no_file_or_row_on_the_fast_path(
    node: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scp = node()
    DiskLog(monkeypatch, fail_fsync_under=scp.spool.root)
    before = served("fast")
    files = make_cr_files(tmp_path / "in", 2, size=64)
    assert _pynetdicom_send(scp.port, files) == [OUT_OF_RESOURCES] * 2
    assert served("fast") - before == 2
    monkeypatch.undo()
    assert scp.spool_files() == [] and scp.rows() == {}
    assert _pynetdicom_send(scp.port, files) == [SUCCESS] * 2


# -- raw peers: what the lean path leaves to pynetdicom, and what it refuses ----------------

def _raw_association(port: int) -> socket.socket:
    """A raw association proposing CR Image Storage (context 1, Explicit VR LE)."""
    def item(kind: int, value: bytes) -> bytes:
        return struct.pack(">BBH", kind, 0, len(value)) + value

    pc = struct.pack(">BBBB", 1, 0, 0, 0) + item(0x30, CR_IMAGE_STORAGE.encode()) + \
        item(0x40, EXPLICIT_LE.encode())
    user = item(0x51, struct.pack(">L", 65536)) + item(0x52, b"1.2.3.4")
    body = (struct.pack(">HH", 1, 0) + b"HIPROUTER".ljust(16) + b"RAWSCU".ljust(16)
            + b"\0" * 32 + item(0x10, APPLICATION_CONTEXT.encode()) + item(0x20, pc)
            + item(0x50, user))
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(struct.pack(">BBL", 0x01, 0, len(body)) + body)
    assert _read_pdu(sock)[0] == 0x02  # A-ASSOCIATE-AC
    return sock


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    kind, _, length = struct.unpack(">BBL", exactly(6))
    return kind, exactly(length)


def _pdv(data: bytes, control: int, context_id: int = 1) -> bytes:
    return struct.pack(">LBB", len(data) + 2, context_id, control) + data


def _pdata(*pdvs: bytes) -> bytes:
    body = b"".join(pdvs)
    return struct.pack(">BBL", 0x04, 0, len(body)) + body


def _dataset(path: Path) -> bytes:
    ds = dcmread(path)
    del ds.file_meta
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, Dataset(ds))
    return buffer.getvalue()


def _store_status(sock: socket.socket) -> int:
    kind, body = _read_pdu(sock)
    assert kind == 0x04
    command = body[6:]
    at = command.index(struct.pack("<HHL", 0, 0x0900, 2))
    return int(struct.unpack_from("<H", command, at + 8)[0])


def test_unusual_requests_go_to_pynetdicom(node: Any, tmp_path: Path) -> None:
    scp = node()
    files = make_cr_files(tmp_path / "in", 3, size=64)
    sock = _raw_association(scp.port)
    try:
        before = served("fast"), served("pynetdicom")
        # 1. a command field the lean parser does not know (pynetdicom ignores it)
        rq = _store_rq(AffectedSOPInstanceUID=sop_instance_uid(files[0]))
        odd = _encoded_command(rq, C_STORE_RQ)
        extra = struct.pack("<HHL", 0, 0x0901, 4) + b"\x10\x00\x20\x00"
        length = struct.unpack_from("<L", odd, 8)[0] + len(extra)
        odd = odd[:8] + struct.pack("<L", length) + odd[12:] + extra
        sock.sendall(_pdata(_pdv(odd, 0x03)) + _pdata(_pdv(_dataset(files[0]), 0x02)))
        assert _store_status(sock) == SUCCESS
        # 2. the command set split over two fragments
        rq = _store_rq(AffectedSOPInstanceUID=sop_instance_uid(files[1]))
        command = _encoded_command(rq, C_STORE_RQ)
        sock.sendall(_pdata(_pdv(command[:20], 0x01)) + _pdata(_pdv(command[20:], 0x03))
                     + _pdata(_pdv(_dataset(files[1]), 0x02)))
        assert _store_status(sock) == SUCCESS
        assert (served("fast") - before[0], served("pynetdicom") - before[1]) == (0, 2)
        # 3. the plain form on the same association, command and data in one PDU
        rq = _store_rq(AffectedSOPInstanceUID=sop_instance_uid(files[2]))
        data = _dataset(files[2])
        sock.sendall(_pdata(_pdv(_encoded_command(rq, C_STORE_RQ), 0x03),
                            _pdv(data[:100], 0x00), _pdv(data[100:], 0x02)))
        assert _store_status(sock) == SUCCESS
        assert (served("fast") - before[0], served("pynetdicom") - before[1]) == (1, 2)
    finally:
        sock.close()
    assert sorted(scp.rows()) == sorted(map(sop_instance_uid, files))


def test_a_command_fragment_inside_a_data_set_aborts(node: Any, tmp_path: Path) -> None:
    scp = node()
    path = make_cr_files(tmp_path / "in", 1, size=64)[0]
    sock = _raw_association(scp.port)
    try:
        rq = _store_rq(AffectedSOPInstanceUID=sop_instance_uid(path))
        command = _encoded_command(rq, C_STORE_RQ)
        data = _dataset(path)
        sock.sendall(_pdata(_pdv(command, 0x03)) + _pdata(_pdv(data[:100], 0x00))
                     + _pdata(_pdv(command, 0x03)))
        kind, _ = _read_pdu(sock)
        assert kind == 0x07  # A-ABORT
    finally:
        sock.close()
    assert scp.rows() == {} and scp.spool_files() == []
    alerts = [e for e in scp.audit() if e.event_id_code == "110113"]
    assert any("unexpected fragment" in (e.outcome_description or "") for e in alerts)
    # the node goes on serving
    other = make_cr_files(tmp_path / "again", 1, size=64)
    assert _pynetdicom_send(scp.port, other) == [SUCCESS]


# -- the identifiers read without pydicom: the same values, or pydicom decides ----------------

def _pydicom_identifiers(data: bytes) -> dict[str, str] | None:
    from pydicom.tag import Tag

    keywords = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
    try:
        ds = dcmread(BytesIO(data), stop_before_pixels=True,
                     specific_tags=[Tag(k) for k in keywords])
        return {k: str(ds.get(k, "") or "").strip("\x00 ") for k in keywords}
    except Exception:
        return None


def test_quick_identifiers_agree_with_pydicom_on_made_files(tmp_path: Path) -> None:
    files = make_cr_files(tmp_path / "in", 2, size=16)
    implicit = tmp_path / "implicit.dcm"
    subprocess.run(["dcmconv", "+ti", str(files[0]), str(implicit)], check=True)
    for path in [*files, implicit]:
        data = path.read_bytes()
        quick = fast_store.quick_identifiers(data)
        assert quick is not None and quick == _pydicom_identifiers(data), path.name
    # a multi-valued, a missing and a padded-with-junk UID are left to pydicom
    for change in ("multi", "missing", "junk"):
        ds = dcmread(files[1])
        if change == "multi":
            ds.SeriesInstanceUID = "1.2.3\\4.5.6"
        elif change == "missing":
            del ds.StudyInstanceUID
        else:
            ds.SOPClassUID = "1.2.840.abc"
        path = tmp_path / f"{change}.dcm"
        ds.save_as(path)
        assert fast_store.quick_identifiers(path.read_bytes()) is None, change


def test_quick_identifiers_agree_with_pydicom_on_the_corpus(shared_data: Path) -> None:
    quick_count = 0
    for path in sorted((shared_data / "dicom-corpus").rglob("*")):
        if not path.is_file() or path.stat().st_size > 64 * 1024 * 1024:
            continue
        data = path.read_bytes()
        quick = fast_store.quick_identifiers(data)
        if quick is not None:
            quick_count += 1
            assert quick == _pydicom_identifiers(data), path.name
    assert quick_count >= 20


def test_tls_store_is_served_by_the_fast_path(node: Any, tmp_path: Path) -> None:
    from tests.router.certs import make_certificates

    certs = make_certificates(tmp_path / "certs")
    secure = node(tls={"enabled": True, "cert_file": str(certs.server_cert),
                       "key_file": str(certs.server_key), "ca_file": str(certs.ca),
                       "require_client_cert": True})
    plain = node(fast=False)
    files = make_cr_files(tmp_path / "in", 3, size=256)  # 128 KiB each: several records
    before = served("fast")
    done = storescu(secure.port, files, extra=[
        "+tls", str(certs.client_key), str(certs.client_cert), "+cf", str(certs.ca)])
    assert statuses(done) == ["Success"] * 3, done.stderr
    assert served("fast") - before == 3
    assert statuses(storescu(plain.port, files)) == ["Success"] * 3
    tls_rows, plain_rows = secure.rows(), plain.rows()
    for uid, row in tls_rows.items():
        assert Path(row.spool_path).read_bytes() == \
            Path(plain_rows[uid].spool_path).read_bytes()


def test_store_buffer_grows_keeps_bytes_and_shrinks_after_a_large_instance() -> None:
    buffer = fast_store.StoreBuffer()
    meta = fast_store.file_meta(CR_IMAGE_STORAGE, "1.2.3", "1.2.840.10008.1.2.1")
    buffer.begin(meta)
    chunks = [bytes([i]) * (300_000 + i) for i in range(70)]  # ~21 MB, many growths
    held = buffer.encoded()  # an exported view must not stop the buffer from growing
    for chunk in chunks:
        view = buffer.reserve(len(chunk))
        view[:] = chunk
        buffer.commit(len(chunk))
    assert bytes(buffer.encoded()) == meta + b"".join(chunks)
    assert bytes(buffer.dataset()) == b"".join(chunks)
    assert bytes(held[:len(meta)]) == meta
    buffer.release()
    buffer.begin(meta)
    buffer.append(b"abc")
    assert bytes(buffer.encoded()) == meta + b"abc"
    assert len(buffer._buf) <= fast_store.KEEP_BUFFER
