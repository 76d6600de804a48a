"""The Storage and Verification SCP: receives instances and stores them durably.

For each C-STORE: check disk space and data-set size, read the few identifying UIDs,
write the encoded data set (with its file meta) to the spool (fsync, rename), record the
instance and its study in the database, and only then answer success. If the spool or
the database step fails the peer gets 0xA700 and the spooled file is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.filereader import _read_file_meta_info as read_file_meta_info
from pydicom.filereader import read_preamble
from pydicom.tag import Tag
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from hiprouter import audit
from hiprouter.config import Settings
from hiprouter.db import utcnow
from hiprouter.inference import pixels
from hiprouter.logs import get_logger
from hiprouter.router.flow.studies import note_instance
from hiprouter.router.net.fast_store import FastStore, quick_identifiers
from hiprouter.router.net.gate import Gate, GateLimits
from hiprouter.router.net.pdu_guard import (
    GuardedServer,
    Limits,
    SharedContexts,
    guarded_request_handler,
)
from hiprouter.router.net.spool import Spool, SpooledFile
from hiprouter.router.net.throttle import Throttle
from hiprouter.router.net.tls import refusal_auditor, server_ssl_context
from hiprouter.schema import Association, Instance

log = get_logger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
DEFLATED = "1.2.840.10008.1.2.1.99"

REFUSAL_WINDOW_S = 60.0
REFUSALS_PER_KEY = 3
"""Refused peers are audited `REFUSALS_PER_KEY` times per kind and peer address per
`REFUSAL_WINDOW_S` (and at most 20 events per window in all); the rest are summarised by
`flush_refusals`."""
MAX_SUMMARY_KEYS = 20
PYNETDICOM_SLACK = 64

UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_ID_TAGS = [Tag("SOPClassUID"), Tag("SOPInstanceUID"), Tag("StudyInstanceUID"),
            Tag("SeriesInstanceUID")]


class Refused(Exception):
    """An instance we will not store; carries the DIMSE status and the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class AssociationState:
    """What we track for one inbound association."""

    row_id: int | None = None
    calling_ae: str = ""
    peer_host: str = ""
    stored: int = 0
    duplicates: int = 0
    study_uids: set[str] = field(default_factory=set)
    dataset: bool = False
    """Called AE title was dataset.ae_title: a data-set retrieval, never routed."""


@dataclass(frozen=True)
class Identifiers:
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str


def check_deflated(encoded: bytes | memoryview, limit: int) -> None:
    """Refuse a deflated data set that would inflate to more than `limit` bytes (pydicom
    inflates the whole data set at once when reading it: a deflate bomb)."""
    head = bytes(encoded[:8192])
    if DEFLATED.encode() not in head:
        return
    fp = BytesIO(bytes(encoded))
    try:
        read_preamble(fp, False)
        meta = read_file_meta_info(fp)
    except Exception as exc:
        raise Refused(CANNOT_UNDERSTAND, f"cannot parse file meta: {exc}") from exc
    if str(meta.get("TransferSyntaxUID", "")) != DEFLATED:
        return
    try:
        pixels.inflated_size(memoryview(encoded)[fp.tell():], limit)
    except pixels.PixelDataRefused as exc:
        raise Refused(CANNOT_UNDERSTAND, exc.reason) from exc


def read_identifiers(encoded: bytes, sop_instance_uid: str | None,
                     max_inflated: int | None = None) -> Identifiers:
    """Read the UIDs we index from an encoded file (meta + data set) without pixel data.

    `sop_instance_uid` is the one from the C-STORE request (None: do not compare);
    `max_inflated` bounds what a deflated data set may inflate to.
    """
    # The common case (plain Little Endian data set, valid UIDs) without pydicom, which
    # cost about 0.25 ms per instance; anything else is pydicom's, as before.
    values = quick_identifiers(encoded)
    if values is None:
        if max_inflated is not None:
            check_deflated(encoded, max_inflated)
        try:
            ds = dcmread(BytesIO(encoded), stop_before_pixels=True, specific_tags=_ID_TAGS)
            values = {kw: str(ds.get(kw, "") or "").strip("\x00 ") for kw in
                      ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID",
                       "SeriesInstanceUID")}
        except Exception as exc:
            raise Refused(CANNOT_UNDERSTAND, f"cannot parse data set: {exc}") from exc
    for keyword, value in values.items():
        if not value:
            raise Refused(CANNOT_UNDERSTAND, f"data set has no {keyword}")
        if len(value) > 64 or not UID_RE.match(value):
            raise Refused(CANNOT_UNDERSTAND, f"{keyword} is not a valid UID")
    if sop_instance_uid is not None and values["SOPInstanceUID"] != sop_instance_uid:
        raise Refused(
            DATASET_MISMATCH, "data set SOPInstanceUID differs from the C-STORE request"
        )
    return Identifiers(values["SOPClassUID"], values["SOPInstanceUID"],
                       values["StudyInstanceUID"], values["SeriesInstanceUID"])


CLINICAL, DATASET, REPORT = "clinical", "dataset", "report"
"""Instance purposes: only clinical instances count for their study and are routed."""


def record_instance(engine: Engine, ids: Identifiers, transfer_syntax: str,
                    spooled: SpooledFile, *, received_at: datetime,
                    association_id: int | None = None, calling_ae: str | None = None,
                    purpose: str = CLINICAL) -> None:
    """Insert an instance row and count it for its study, committed before returning.

    Core statements on a plain connection: on this hot path the ORM unit of work cost
    more than the SQL itself. Raises IntegrityError for a SOP Instance UID already stored.
    A data-set or report instance is stored but not counted for a study: it never opens an
    episode and is never routed.
    """
    with engine.connect().execution_options(sqlite_immediate=True) as conn:
        with conn.begin():
            conn.execute(_INSERT_INSTANCE, {
                "sop_instance_uid": ids.sop_instance_uid, "sop_class_uid": ids.sop_class_uid,
                "study_uid": ids.study_uid, "series_uid": ids.series_uid,
                "transfer_syntax": transfer_syntax, "size": spooled.size,
                "sha256": spooled.sha256, "spool_path": spooled.ref,
                "received_at": received_at, "association_id": association_id,
                "calling_ae": calling_ae, "duplicates": 0, "state": "stored",
                "purpose": purpose,
            })
            if purpose == CLINICAL:
                note_instance(conn, ids.study_uid, calling_ae, received_at)


# Built once: constructing the statement per instance cost more than running it.
_INSERT_INSTANCE = insert(Instance)


def record_unrecorded_files(engine: Engine, spool: Spool, min_age_s: float = 0.0) -> int:
    """Record spooled files that have no instance row; returns how many were recorded.

    A file is renamed into the spool (and fsynced) before its row is committed. With
    SQLite's synchronous=NORMAL a power cut can lose the last commits but never those
    files, so start-up puts them back. A file whose SOP Instance UID is recorded with
    another file (a send that was never acknowledged and then repeated) is removed.
    Rows refer to spool files as `spool:<relative path>` (older rows: the absolute path).
    Files younger than `min_age_s` are left alone (a shared spool: another receiver may
    be between its rename and its commit).
    """
    cutoff = time.time() - min_age_s
    with engine.connect() as conn:
        known = set(conn.execute(select(Instance.spool_path)).scalars())
    recorded = 0
    for path in spool.files():
        if spool.ref(path) in known or str(path) in known:
            continue
        try:
            if min_age_s and path.stat().st_mtime > cutoff:
                continue
        except FileNotFoundError:
            continue
        data = path.read_bytes()
        try:
            ids = read_identifiers(data, None)
            syntax = str(dcmread(BytesIO(data), stop_before_pixels=True,
                                 specific_tags=[]).file_meta.TransferSyntaxUID)
        except Exception as exc:
            log.error("unreadable file in the spool, left in place", path=str(path),
                      error=str(exc))
            continue
        stat = path.stat()
        spooled = SpooledFile(path, len(data), hashlib.sha256(data).hexdigest(),
                              spool.ref(path))
        received = datetime.fromtimestamp(stat.st_mtime, UTC)
        try:
            record_instance(engine, ids, syntax, spooled, received_at=received)
        except IntegrityError:
            spool.remove(path)
            continue
        recorded += 1
    if recorded:
        log.warning("recorded spooled instances missing from the database", count=recorded)
    return recorded


class AllowList:
    """Calling AE titles allowed to associate, each optionally bound to host addresses."""

    def __init__(self, settings: Settings) -> None:
        entries = settings.node.allowed_calling
        self.open = entries is None
        self._hosts: dict[str, set[str] | None] = {}
        for entry in entries or []:
            if entry.host is None:
                self._hosts[entry.ae_title] = None
                continue
            known = self._hosts.setdefault(entry.ae_title, set())
            if known is not None:
                known.update(_addresses(entry.host))

    @property
    def trusted_hosts(self) -> set[str]:
        """Addresses of the hosts bound to an entry (their connections get reserved
        pending places)."""
        return {h for hosts in self._hosts.values() if hosts for h in hosts}

    def check(self, calling_ae: str, peer_host: str) -> str | None:
        """None if allowed, else the reason for rejecting."""
        if self.open:
            return None
        if calling_ae not in self._hosts:
            return f"calling AE title {calling_ae!r} is not allowed"
        hosts = self._hosts[calling_ae]
        if hosts is not None and peer_host not in hosts:
            return f"calling AE title {calling_ae!r} is not allowed from {peer_host}"
        return None


def _addresses(host: str) -> set[str]:
    found = {host}
    try:
        for info in socket.getaddrinfo(host, None):
            found.add(str(info[4][0]))
    except OSError:
        log.warning("allowed_calling host does not resolve", host=host)
    return found


class StorageSCP:
    """The inbound DICOM service: C-ECHO and C-STORE for all storage SOP classes."""

    def __init__(
        self, settings: Settings, factory: sessionmaker[Session], spool: Spool
    ) -> None:
        self.settings = settings
        self.factory = factory
        self.engine = factory.kw["bind"]
        self.spool = spool
        self.allow = AllowList(settings)
        self.dataset_ae = settings.dataset.ae_title
        self.report_classes = frozenset(settings.monitoring.report_sop_classes)
        self.server: GuardedServer | None = None
        # SQLite has one writer at a time and its busy handler sleeps 1-100 ms between
        # tries; associations of this process queue on a lock instead (woken at once).
        self._write_lock: threading.Lock | contextlib.nullcontext[None] = (
            threading.Lock() if self.engine.dialect.name == "sqlite"
            else contextlib.nullcontext())
        node = settings.node
        self.limits = Limits(
            max_pdu=node.max_pdu_size,
            max_dataset=node.max_dataset_mb * 1024 * 1024,
            read_timeout_s=node.network_timeout_s,
            request_timeout_s=node.request_timeout_s,
            on_violation=self._on_violation,
            on_silent=self._on_silent,
        )
        reserved = 0 if self.allow.open else min(node.reserved_associations,
                                                 node.max_associations - 1)
        self.gate = Gate(
            GateLimits(max_associations=node.max_associations, reserved=reserved,
                       per_host=node.max_associations_per_host,
                       max_pending=node.max_pending_connections,
                       pending_per_host=node.max_pending_per_host,
                       preempt_idle_s=node.preempt_idle_s),
            self.allow.trusted_hosts, on_event=self._on_gate_event)
        self.throttle = Throttle(window_s=REFUSAL_WINDOW_S, per_key=REFUSALS_PER_KEY)
        self.ae = self._make_ae()

    def _make_ae(self) -> AE:
        node = self.settings.node
        ae = AE(ae_title=node.ae_title)
        ae.maximum_pdu_size = node.max_pdu_size
        # The gate admits associations (pynetdicom would count connections that never
        # sent a request against its limit); this only bounds threads in the worst case.
        ae.maximum_associations = (node.max_associations + node.max_pending_connections
                                   + PYNETDICOM_SLACK)
        ae.acse_timeout = node.acse_timeout_s
        ae.dimse_timeout = node.dimse_timeout_s
        ae.network_timeout = node.network_timeout_s
        ae.require_called_aet = True
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        return ae

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Listen on node.host:node.port in background threads."""
        node = self.settings.node
        handlers = self.handlers()
        # the lean C-STORE path calls the same (possibly instrumented) handler
        self.limits.fast_store = FastStore(dict(handlers)[evt.EVT_C_STORE]) \
            if node.fast_store else None
        handler = guarded_request_handler(self.limits, node.network_timeout_s, self.gate)
        server = self.ae.make_server(
            (node.host, node.port),
            evt_handlers=handlers,
            server_class=GuardedServer,
            request_handler=handler,
            ssl_context=server_ssl_context(
                node.tls, on_refused=refusal_auditor(self.factory, node.ae_title,
                                                     self.throttle)
            ) if node.tls.enabled else None,
        )
        server.daemon_threads = True
        server.contexts = SharedContexts(server.contexts)
        self.ae._servers.append(server)
        thread = threading.Thread(target=server.serve_forever, name="hiprouter-scp",
                                  daemon=True)
        thread.start()
        self.server = server

    @property
    def port(self) -> int:
        """The port actually bound (useful when node.port is 0)."""
        assert self.server is not None
        return int(self.server.server_address[1])

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop accepting, then wait for running associations to finish."""
        if self.server is None:
            return
        server, self.server = self.server, None
        server.shutdown()
        self.gate.close_pending()
        for assoc in list(server.active_associations):
            assoc.join(timeout_s)
        self.flush_refusals(force=True)

    def handlers(self) -> list[tuple[Any, Any]]:
        return [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_ended),
            (evt.EVT_ABORTED, self._on_ended),
            (evt.EVT_C_ECHO, self._on_c_echo),
            (evt.EVT_C_STORE, self._on_c_store),
        ]

    # -- association bookkeeping -----------------------------------------------------

    def _state(self, assoc: Any) -> AssociationState:
        state = getattr(assoc, "hiprouter_state", None)
        if state is None:
            state = AssociationState(
                calling_ae=str(assoc.requestor.ae_title or "").strip(),
                peer_host=str(assoc.requestor.address),
            )
            assoc.hiprouter_state = state
        return state

    def _participants(self, assoc: Any) -> list[dict[str, Any]]:
        state = self._state(assoc)
        return [
            audit.participant("source", state.calling_ae, state.peer_host),
            audit.participant("destination", self.settings.node.ae_title),
        ]

    def _on_requested(self, event: Any) -> None:
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        if not isinstance(primitive, A_ASSOCIATE):  # aborted by the PDU guard
            return
        calling = str(primitive.calling_ae_title).strip()
        called = str(primitive.called_ae_title).strip()
        state = self._state(assoc)
        state.calling_ae = calling
        if called == self.dataset_ae:
            # Our second AE title: pynetdicom checks the called AE against this one.
            assoc.acceptor.ae_title = called
            state.dataset = True
        reason = self.allow.check(calling, state.peer_host)
        if reason is not None:
            assoc.acse.send_reject(0x01, 0x01, 0x03)
            self._record_rejection(assoc, called, reason, "allow-list")
            assoc.kill()  # waits until the DUL has sent the A-ASSOCIATE-RJ
            return
        conn = getattr(assoc, "hiprouter_conn", None)
        if conn is None:
            return
        reason = self.gate.request(conn, calling, allowed=not self.allow.open)
        if reason is None:
            return
        # transient, service-provider (presentation related), local limit exceeded
        assoc.acse.send_reject(0x02, 0x03, 0x02)
        self._record_rejection(assoc, called, f"too many associations: {reason}", "limit",
                               alert=True)
        assoc.kill()

    def _on_rejected(self, event: Any) -> None:
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        called = str(getattr(primitive, "called_ae_title", "") or "").strip()
        rsp = assoc.acceptor.primitive
        diagnostic = getattr(rsp, "diagnostic", None)
        reasons = {0x03: "calling AE title not recognised", 0x07: "called AE title not recognised",
                   0x02: "too many associations (local limit exceeded)"}
        reason = reasons.get(diagnostic or 0, f"rejected (diagnostic {diagnostic})")
        if diagnostic == 0x07:
            reason = f"called AE title {called!r} is not {self.settings.node.ae_title!r}"
        self._record_rejection(assoc, called, reason, f"diagnostic-{diagnostic}")

    def _record_rejection(self, assoc: Any, called: str, reason: str, kind: str,
                          alert: bool = False) -> None:
        """Log and audit a rejected association (rate-limited per peer and kind);
        `alert`: a Security Alert (a limit) rather than a failed node authentication."""
        state = self._state(assoc)
        held = self.throttle.admit(("rejected", kind, state.peer_host, state.calling_ae))
        if held is None:
            return
        if held:
            reason += f" ({held} more such rejections held back before this one)"
        log.warning("association rejected", calling_ae=state.calling_ae, called_ae=called,
                    peer=state.peer_host, reason=reason)
        now = utcnow()
        try:
            with self.factory() as session, session.begin():
                session.add(Association(
                    direction="in", calling_ae=state.calling_ae[:16], called_ae=called[:16],
                    peer_host=state.peer_host, peer_port=int(assoc.requestor.port or 0),
                    started_at=now, ended_at=now, outcome="rejected", reason=reason,
                    instances_received=0,
                ))
                audit.record(
                    session, audit.SECURITY_ALERT if alert else audit.USER_AUTHENTICATION,
                    "E", audit.MINOR_FAILURE,
                    event_type=audit.RESOURCE if alert else audit.NODE_AUTHENTICATION,
                    description=reason,
                    participants=[
                        audit.participant("source", state.calling_ae, state.peer_host),
                        audit.participant("destination", called),
                    ],
                )
        except Exception as exc:
            log.error("cannot record rejected association", error=str(exc))

    def _on_accepted(self, event: Any) -> None:
        assoc = event.assoc
        state = self._state(assoc)
        try:
            with self.factory() as session, session.begin():
                row = Association(
                    direction="in", calling_ae=state.calling_ae[:16],
                    called_ae=self.dataset_ae if state.dataset else self.settings.node.ae_title,
                    peer_host=state.peer_host,
                    peer_port=int(assoc.requestor.port or 0), started_at=utcnow(),
                    outcome="accepted", instances_received=0,
                )
                session.add(row)
                session.flush()
                state.row_id = row.id
        except Exception as exc:
            log.error("cannot record association", error=str(exc))
        log.info("association accepted", calling_ae=state.calling_ae, peer=state.peer_host,
                 association_id=state.row_id)

    def _on_ended(self, event: Any) -> None:
        assoc = event.assoc
        state = self._state(assoc)
        outcome = "released" if event.event is evt.EVT_RELEASED else "aborted"
        log.info("association ended", outcome=outcome, association_id=state.row_id,
                 stored=state.stored, duplicates=state.duplicates)
        if state.row_id is None:
            return
        try:
            with self.factory() as session, session.begin():
                session.execute(
                    update(Association).where(Association.id == state.row_id).values(
                        ended_at=utcnow(), outcome=outcome,
                        instances_received=state.stored + state.duplicates,
                    )
                )
                if state.stored or state.duplicates:
                    audit.record(
                        session, audit.INSTANCES_TRANSFERRED, "C", audit.SUCCESS,
                        description=f"{state.stored} stored, {state.duplicates} duplicates",
                        participants=self._participants(assoc),
                        objects={"study_uids": sorted(state.study_uids),
                                 "association_id": state.row_id},
                    )
        except Exception as exc:
            log.error("cannot record association end", error=str(exc))

    def _on_violation(self, assoc: Any, reason: str) -> None:
        self._alert("violation", assoc, reason, audit.SERIOUS_FAILURE,
                    "peer violated limits, aborting")

    def _on_silent(self, host: str, reason: str) -> None:
        self._alert("silent", None, reason, audit.MINOR_FAILURE,
                    "connection without an association request closed", host=host)

    def _on_gate_event(self, kind: str, host: str, description: str) -> None:
        self._alert(kind, None, description, audit.MINOR_FAILURE,
                    "connection gate closed a connection", host=host)

    def _alert(self, kind: str, assoc: Any, reason: str, outcome: int, message: str,
               host: str | None = None) -> None:
        """Log and audit a Security Alert about a peer, rate-limited per kind and host."""
        peer = host or (self._state(assoc).peer_host if assoc is not None else "")
        held = self.throttle.admit((kind, peer))
        if held is None:
            return
        if held:
            reason += f" ({held} more such events from {peer} held back before this one)"
        log.warning(message, peer=peer, reason=reason)
        participants = (self._participants(assoc) if assoc is not None else
                        [audit.participant("source", host=peer),
                         audit.participant("destination", self.settings.node.ae_title)])
        try:
            audit.record_now(
                self.factory, audit.SECURITY_ALERT, "E", outcome,
                description=reason, participants=participants,
            )
        except Exception as exc:
            log.error("cannot record security alert", error=str(exc))

    def flush_refusals(self, force: bool = False) -> int:
        """Record one summary Security Alert for the refusals the rate limit held back
        (per kind and peer, for windows that are over; all with `force`). Returns how
        many events were summarised."""
        held = self.throttle.drain(force=force)
        if not held:
            return 0
        parts = [f"{n} x {key[0]} {'/'.join(str(k) for k in key[1:] if k)}"
                 for key, n in sorted(held.items(), key=lambda kv: -kv[1])]
        shown = "; ".join(parts[:MAX_SUMMARY_KEYS])
        if len(parts) > MAX_SUMMARY_KEYS:
            shown += f"; and {len(parts) - MAX_SUMMARY_KEYS} more peers"
        total = sum(held.values())
        description = (f"{total} refused connections or associations not audited one by "
                       f"one (rate limit): {shown}")
        log.warning("refusals held back by the rate limit", count=total, detail=shown)
        try:
            audit.record_now(
                self.factory, audit.SECURITY_ALERT, "E", audit.MINOR_FAILURE,
                description=description,
                participants=[audit.participant("destination", self.settings.node.ae_title)],
            )
        except Exception as exc:
            log.error("cannot record security alert", error=str(exc))
        return total

    # -- DIMSE services --------------------------------------------------------------

    def _on_c_echo(self, event: Any) -> int:
        conn = getattr(event.assoc, "hiprouter_conn", None)
        if conn is not None:
            conn.in_message = False
        return SUCCESS

    def _on_c_store(self, event: Any) -> int:
        assoc = event.assoc
        state = self._state(assoc)
        request = event.request
        sop_uid = str(request.AffectedSOPInstanceUID or "")
        conn = getattr(assoc, "hiprouter_conn", None)
        if conn is not None:  # an association serving a request is never idle
            conn.busy += 1
        try:
            return self._store(event, state, sop_uid)
        except Refused as exc:
            self._refuse(event, state, sop_uid, exc)
            return exc.status
        except Exception as exc:
            log.error("store failed", sop_instance_uid=sop_uid, error=str(exc))
            self._audit_failure(assoc, audit.RESOURCE, f"store failed: {exc}", sop_uid)
            return OUT_OF_RESOURCES
        finally:
            if conn is not None:
                conn.busy -= 1
                conn.in_message = False
                conn.touch()

    def _store(self, event: Any, state: AssociationState, sop_uid: str) -> int:
        dul = event.assoc.dul
        if getattr(dul, "dataset_too_large", False):
            dul.dataset_too_large = False
            limit = self.settings.node.max_dataset_mb
            raise Refused(OUT_OF_RESOURCES, f"data set larger than {limit} MiB")
        free = self.spool.free_mb()
        if free < self.settings.storage.min_free_mb:
            raise Refused(
                OUT_OF_RESOURCES,
                f"spool has {free:.0f} MiB free, below storage.min_free_mb "
                f"{self.settings.storage.min_free_mb}",
            )
        encoded = event.encoded_dataset()
        # The file's fsync runs while the identifiers are parsed and the data hashed.
        # The row is written only once the renamed file is durable: a row must never
        # point to a file a power cut can still lose (and on SQLite, waiting for an fsync
        # inside the write transaction would serialise all associations behind it).
        pending = self.spool.begin(encoded)
        try:
            ids = read_identifiers(encoded, sop_uid,
                                   self.settings.node.max_dataset_mb * 1024 * 1024)
            pending.rename()
            spooled = pending.wait_durable()
            purpose = DATASET if state.dataset else (
                REPORT if ids.sop_class_uid in self.report_classes else CLINICAL)
            with self._write_lock:
                record_instance(self.engine, ids, str(event.context.transfer_syntax),
                                spooled, received_at=utcnow(), association_id=state.row_id,
                                calling_ae=state.calling_ae[:16] or None, purpose=purpose)
        except IntegrityError:
            # Duplicates are rare: the unique SOP Instance UID finds them, after the
            # write, which spares every other instance a look-up.
            pending.discard()
            if not self._count_duplicate(ids.sop_instance_uid):
                raise
            state.duplicates += 1
            state.study_uids.add(ids.study_uid)
            return SUCCESS
        except BaseException:
            pending.discard()
            raise
        state.stored += 1
        state.study_uids.add(ids.study_uid)
        log.debug("instance stored", sop_instance_uid=ids.sop_instance_uid,
                  study_uid=ids.study_uid, size=spooled.size)
        return SUCCESS

    def _count_duplicate(self, sop_uid: str) -> bool:
        """If `sop_uid` is already stored, count one more duplicate and return True."""
        with self.engine.connect().execution_options(sqlite_immediate=True) as conn:
            with conn.begin():
                found = conn.execute(
                    update(Instance).where(Instance.sop_instance_uid == sop_uid)
                    .values(duplicates=Instance.duplicates + 1)
                ).rowcount
        if found:
            log.info("duplicate instance", sop_instance_uid=sop_uid)
        return bool(found)

    def _refuse(self, event: Any, state: AssociationState, sop_uid: str,
                exc: Refused) -> None:
        log.warning("instance refused", sop_instance_uid=sop_uid, status=f"0x{exc.status:04X}",
                    reason=exc.reason)
        if exc.status == OUT_OF_RESOURCES:
            self._audit_failure(event.assoc, audit.RESOURCE, exc.reason, sop_uid)
            return
        path = None
        try:
            path = str(self.spool.write(event.encoded_dataset(), quarantine=True).path)
        except Exception as write_exc:
            log.error("cannot write quarantine file", error=str(write_exc))
        self._audit_failure(event.assoc, audit.QUARANTINE, exc.reason, sop_uid,
                            quarantine_path=path, status=exc.status)

    def _audit_failure(self, assoc: Any, event_type: audit.Code, reason: str, sop_uid: str,
                       **objects: Any) -> None:
        try:
            audit.record_now(
                self.factory, audit.INSTANCES_TRANSFERRED, "C", audit.SERIOUS_FAILURE,
                event_type=event_type, description=reason,
                participants=self._participants(assoc),
                objects={"sop_instance_uids": [sop_uid], **objects},
            )
        except Exception as exc:
            log.error("cannot record audit event", error=str(exc))
