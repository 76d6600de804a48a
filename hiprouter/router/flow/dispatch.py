"""Dispatch: send queued objects to their destinations, retrying with backoff.

A destination's `type` says how: `dicom` (C-STORE, here, with optional storage
commitment, commitment.py), `dicomweb` (STOW-RS, stow.py) or `hl7` (one HL7 v2 result
message per report over MLLP, hl7.py). Claims, leases, attempts, backoff, the dead letter,
audit and metrics are the same for all three.

Each destination gets `max_concurrent` sender slots per process, and a claim admits a
slot only while fewer than `max_concurrent` owners (across all processes and hosts) hold
leases on that destination's sends. A slot claims a batch, opens one association for it
(presentation contexts from the files' SOP classes and transfer syntaxes), sends, and
records every attempt in `send_attempts` with its DIMSE status. A failed send waits with
capped exponential backoff and is dead after `queue.retry.max_attempts` attempts.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from hiprouter import audit, metrics
from hiprouter.config import (
    AnyDestination,
    Destination,
    DicomwebDestination,
    Settings,
    StorageConfig,
)
from hiprouter.db import as_utc, utcnow, write_transaction
from hiprouter.inference import pixels
from hiprouter.logs import get_logger
from hiprouter.router.flow import commitment, hl7, queue, stow, studies
from hiprouter.schema import Association, Job, Send, SendAttempt

log = get_logger(__name__)

HL7_RESULT = audit.Code("HIP009", "HL7 Result Message")
SUCCESS_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
"""C-STORE success and warning statuses (PS3.4 B.2.3): the PACS has the object."""
MAX_CONTEXTS = 128
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def claim_sends(factory: sessionmaker[Session], settings: Settings, destination: str,
                owner: str) -> list[Send]:
    """Lease up to `queue.send_batch` due sends for one destination, or none when the
    destination already has `max_concurrent` active senders."""
    dest = settings.destinations[destination]
    q = settings.queue
    if not queue.due(factory, Send, Send.destination == destination):
        return []  # idle polls never take the write lock
    with write_transaction(factory) as session:
        if queue.is_postgres(session):  # serialise claims per destination across hosts
            session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                            {"key": f"hiprouter-send:{destination}"})
        now = utcnow()  # after the wait for the lock: the lease runs from here
        active = session.scalar(
            select(func.count(func.distinct(Send.lease_owner))).where(
                Send.destination == destination, Send.state == queue.RUNNING,
                Send.lease_expires_at >= now, Send.lease_owner != owner)
        ) or 0
        if active >= dest.max_concurrent:
            return []
        query = (
            select(Send)
            .where(Send.destination == destination, queue.runnable(Send, now))
            .order_by(Send.next_run_at, Send.id)
            .limit(q.send_batch)
        )
        if queue.is_postgres(session):
            query = query.with_for_update(skip_locked=True)
        sends = list(session.scalars(query).all())
        for s in sends:
            s.state = queue.RUNNING
            s.lease_owner = owner
            s.lease_expires_at = now + timedelta(seconds=q.lease_s)
        return sends


class _Leases:
    """The leases of a claimed batch while it is sent.

    They are renewed once a third of the lease has passed since the claim or the last
    renewal, and they fence: a send whose lease ran out and was claimed by another sender
    (a slow association, a stalled process) is left to that sender, not sent twice.
    """

    def __init__(self, factory: sessionmaker[Session], owner: str, lease_s: float,
                 sends: Sequence[Send]) -> None:
        self.factory, self.owner, self.lease_s = factory, owner, lease_s
        self.held = {s.id for s in sends}
        self.expires = min((as_utc(s.lease_expires_at) for s in sends
                            if s.lease_expires_at is not None), default=utcnow())
        self.dropped: set[int] = set()

    def holds(self, send: Send) -> bool:
        """Whether this sender still holds `send` (renewing the leases when due)."""
        if utcnow() > self.expires - timedelta(seconds=self.lease_s * 2 / 3):
            self.held, self.expires = _renew(self.factory, self.owner, self.lease_s,
                                             self.held)
        if send.id in self.held:
            return True
        if send.id not in self.dropped:
            self.dropped.add(send.id)
            log.warning("send lease lost; its new owner sends it",
                        sop_instance_uid=send.sop_instance_uid, destination=send.destination)
        return False

    def kept(self, items: list[_Item]) -> list[_Item]:
        """The items this sender went on to send or record (not the ones it left)."""
        return [i for i in items if i.send.id not in self.dropped]


@dataclass
class _Item:
    send: Send
    path: Path
    """The send's file on this host (`storage.resolve` of `send.path`)."""
    transfer_syntax: UID | None = None
    error: str | None = None


def _inspect(sends: list[Send], storage: StorageConfig) -> list[_Item]:
    items = []
    for s in sends:
        path = Path(s.path)
        try:
            path = storage.resolve(s.path)
            ts = read_file_meta_info(path).TransferSyntaxUID
            items.append(_Item(s, path, UID(str(ts))))
        except Exception as exc:
            items.append(_Item(s, path, error=f"cannot read {path.name}: {exc}"))
    return items


def _contexts(items: list[_Item]) -> tuple[list[tuple[str, list[str]]], list[_Item]]:
    """Presentation contexts for the batch, and items that did not fit (sent later).

    Per SOP class one context offering every uncompressed syntax (the fallback), and per
    (SOP class, stored syntax) one context offering only the file's own syntax, so a peer
    that supports it accepts it even where it prefers another: the file then goes out as
    stored, without decoding and re-encoding (a pynetdicom acceptor picks Implicit VR
    first from a list, and re-encoding an SR's content tree costs more than sending it)."""
    contexts: list[tuple[str, list[str]]] = []
    seen: set[tuple[str, str]] = set()
    later: list[_Item] = []
    for item in items:
        if item.transfer_syntax is None:
            continue
        sop_class, ts = item.send.sop_class_uid, str(item.transfer_syntax)
        wanted = []
        if (sop_class, "*") not in seen:
            wanted.append(((sop_class, "*"), [*UNCOMPRESSED]))
        if (sop_class, ts) not in seen:
            wanted.append(((sop_class, ts), [ts]))
        if len(contexts) + len(wanted) > MAX_CONTEXTS:
            later.append(item)
            continue
        for key, syntaxes in wanted:
            seen.add(key)
            contexts.append((sop_class, syntaxes))
    return contexts, later


def send_batch(factory: sessionmaker[Session], settings: Settings, destination: str,
               sends: list[Send], owner: str) -> int:
    """Send a claimed batch (one association, STOW-RS requests or HL7 messages); returns
    how many were delivered."""
    from pynetdicom import AE, evt

    dest = settings.destinations[destination]
    leases = _Leases(factory, owner, settings.queue.lease_s, sends)
    if not isinstance(dest, Destination):
        return _send_other(factory, settings, destination, dest, sends, owner, leases)
    items = _inspect(sends, settings.storage)
    contexts, later = _contexts(items)
    if later:
        _release(factory, [i.send for i in later], owner)
    later_ids = {i.send.id for i in later}
    todo = [i for i in items if i.send.id not in later_ids]
    for item in todo:
        if item.error:
            _record(factory, settings, item.send, owner, None, item.error)
    todo = [i for i in todo if not i.error and leases.holds(i.send)]
    if not todo:
        return 0

    node = settings.node
    ae = AE(ae_title=dest.calling_ae_title or node.ae_title)
    ae.acse_timeout = node.acse_timeout_s
    ae.dimse_timeout = node.dimse_timeout_s
    ae.network_timeout = node.network_timeout_s
    ae.maximum_pdu_size = node.max_pdu_size
    for sop_class, syntaxes in contexts:
        ae.add_requested_context(sop_class, syntaxes)
    transaction = None
    if dest.storage_commitment:
        transaction = generate_uid()
        ae.add_requested_context(commitment.STORAGE_COMMITMENT_PUSH, [*UNCOMPRESSED])
    started = utcnow()
    clock = time.perf_counter()
    sent: list[str] = []
    outcome, reason = "error", None
    try:
        # a peer may send the commitment report on this association too
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title,
                             tls_args=_tls_args(dest),
                             evt_handlers=[(evt.EVT_N_EVENT_REPORT,
                                            report_handler(factory, settings))])
    except Exception as exc:  # bad TLS files, DNS failure
        assoc, reason = None, f"{type(exc).__name__}: {exc}"
    if assoc is None or not assoc.is_established:
        if assoc is not None:
            outcome = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted \
                else "error"
            reason = f"association {outcome} by {dest.ae_title}@{dest.host}:{dest.port}"
        for item in todo:
            _record(factory, settings, item.send, owner, None, reason or "association failed")
    else:
        outcome = "released"
        _no_delay(assoc)
        try:
            for n, item in enumerate(todo):
                if not leases.holds(item.send):  # renews a long batch's leases
                    continue
                if not assoc.is_established:
                    outcome, reason = "aborted", "association ended by the peer"
                    for rest in todo[n:]:
                        _record(factory, settings, rest.send, owner, None, reason)
                    break
                status, error = _c_store(assoc, item)
                if _record(factory, settings, item.send, owner, status, error,
                           transaction) in (queue.SENT, queue.COMMITTING):
                    sent.append(item.send.sop_instance_uid)
            if transaction is not None and sent:
                objects = [(i.send.sop_class_uid, i.send.sop_instance_uid) for i in todo
                           if i.send.sop_instance_uid in set(sent)]
                problem = commitment.request(assoc, transaction, objects) \
                    if assoc.is_established else "association ended before the N-ACTION"
                if problem is None:
                    metrics.COMMITMENTS.labels(destination, "requested").inc(len(objects))
                else:
                    commitment.request_failed(factory, settings, transaction, problem)
        finally:
            if assoc.is_established:
                assoc.release()
    metrics.SEND_SECONDS.labels(destination, "dicom").observe(time.perf_counter() - clock)
    _finish(factory, settings, destination, dest, started, outcome, reason,
            leases.kept(todo), sent)
    return len(sent)


def report_handler(factory: sessionmaker[Session], settings: Settings) -> Any:
    """A pynetdicom EVT_N_EVENT_REPORT handler for storage commitment reports."""

    def handle(event: Any) -> tuple[int, None]:
        if str(event.request.AffectedSOPClassUID) != commitment.STORAGE_COMMITMENT_PUSH:
            return 0x0112, None  # no such SOP instance
        try:
            info = event.event_information
            transaction, committed, failed = commitment.parse_report(
                int(event.event_type), info)
            assoc = event.assoc
            reporter = {"ae_title": str(assoc.requestor.ae_title or "").strip()
                        if assoc.is_acceptor else str(assoc.acceptor.ae_title).strip(),
                        "host": str(assoc.requestor.address if assoc.is_acceptor
                                    else assoc.acceptor.address)}
            commitment.apply_report(factory, settings, transaction, committed, failed,
                                    reporter)
        except ValueError as exc:
            log.warning("bad storage commitment report", error=str(exc))
            return 0x0110, None  # processing failure
        except Exception as exc:
            log.error("cannot record storage commitment report", error=str(exc))
            return 0x0110, None
        return 0x0000, None

    return handle


def _send_other(factory: sessionmaker[Session], settings: Settings, destination: str,
                dest: AnyDestination, sends: list[Send], owner: str,
                leases: _Leases) -> int:
    """A batch to a DICOMweb (STOW-RS) or HL7 (MLLP) destination."""
    started = utcnow()
    clock = time.perf_counter()
    kind = dest.type
    sent: list[str] = []
    items = [_Item(s, settings.storage.resolve(s.path)) for s in sends]
    if isinstance(dest, DicomwebDestination):
        try:
            client = stow.make_client(dest)
        except OSError as exc:  # unreadable password or token file
            client, problem = None, f"cannot set up the DICOMweb client: {exc}"
        for start in range(0, len(sends), dest.batch_size):
            chunk = [s for s in sends[start:start + dest.batch_size] if leases.holds(s)]
            if not chunk:
                continue
            uids = [s.sop_instance_uid for s in chunk]
            paths = [str(settings.storage.resolve(s.path)) for s in chunk]
            results = stow.store(client, paths, uids) if client else \
                {u: stow.StowResult(None, problem) for u in uids}
            for s in chunk:
                result = results[s.sop_instance_uid]
                if _record(factory, settings, s, owner, result.status, result.error) \
                        == queue.SENT:
                    sent.append(s.sop_instance_uid)
        parts = [audit.participant("source", settings.node.ae_title, settings.node.host),
                 audit.participant("destination", None, dest.url, destination=destination)]
    else:
        tls = None
        if dest.tls.enabled:
            from hiprouter.router.net.tls import client_ssl_context

            tls = client_ssl_context(dest.tls, where=f"destinations.{destination}.tls")
        controls: dict[str, str] = {}
        for s in sends:
            if not leases.holds(s):
                continue
            try:
                ctrl, _ack = hl7.deliver(factory, settings, destination, dest, s, tls)
                controls[s.sop_instance_uid] = ctrl
                error = None
            except Exception as exc:  # Hl7Error, unreadable files, database
                error = str(exc) if isinstance(exc, hl7.Hl7Error) else \
                    f"{type(exc).__name__}: {exc}"
            if _record(factory, settings, s, owner, None, error) == queue.SENT:
                sent.append(s.sop_instance_uid)
        parts = [audit.participant("source", dest.sending_application, settings.node.host),
                 audit.participant("destination", dest.receiving_application or None,
                                   f"{dest.host}:{dest.port}", destination=destination,
                                   message_control_ids=controls)]
    metrics.SEND_SECONDS.labels(destination, kind).observe(time.perf_counter() - clock)
    _finish(factory, settings, destination, dest, started, "released", None,
            leases.kept(items), sent, participants=parts)
    return len(sent)


def _c_store(assoc: object, item: _Item) -> tuple[int | None, str | None]:
    """One C-STORE. A file whose transfer syntax the peer accepted is streamed from disk
    as stored (no decode); otherwise it is decoded and sent uncompressed."""
    from pynetdicom import _config

    path = str(item.path)
    accepted = {
        (cx.abstract_syntax, cx.transfer_syntax[0])
        for cx in assoc.accepted_contexts  # type: ignore[attr-defined]
    }
    ts = str(item.transfer_syntax)
    dataset: object = path
    try:
        if (item.send.sop_class_uid, ts) not in accepted:
            ds = dcmread(path)
            if ts not in UNCOMPRESSED:  # same object, same UID; bounded (pixels.py)
                ds = pixels.decompress(ds)
            dataset = ds  # pynetdicom converts between the uncompressed syntaxes
        _config.STORE_SEND_CHUNKED_DATASET = True  # paths: send the file's bytes as is
        rsp = assoc.send_c_store(dataset)  # type: ignore[attr-defined]
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if "Status" not in rsp:
        return None, "no C-STORE response (association aborted or timed out)"
    status = int(rsp.Status)
    return status, None if status in SUCCESS_STATUSES else f"C-STORE status 0x{status:04X}"


def _no_delay(assoc: object) -> None:
    """Disable Nagle: small PDUs (the C-STORE command) would otherwise wait for the
    peer's delayed ACK, about 40 ms per object."""
    try:
        sock = assoc.dul.socket.socket  # type: ignore[attr-defined]
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):
        pass


def _tls_args(dest: Destination) -> tuple[object, str | None] | None:
    if not dest.tls.enabled:
        return None
    from hiprouter.router.net.tls import client_ssl_context

    return client_ssl_context(dest.tls), dest.host if dest.tls.check_hostname else None


def _record(factory: sessionmaker[Session], settings: Settings, send: Send, owner: str,
            status: int | None, error: str | None,
            commit_uid: str | None = None) -> str | None:
    """Record one attempt and move the send to sent (or committing, when `commit_uid`
    names the storage commitment transaction it waits for), failed (backoff) or dead."""
    retry = settings.queue.retry
    with write_transaction(factory) as session:
        row = session.scalars(
            select(Send).where(Send.id == send.id, Send.lease_owner == owner,
                               Send.state == queue.RUNNING)
        ).first()
        if row is None:
            return None  # lease lost; the new owner records its own attempt
        now = utcnow()
        row.attempts += 1
        session.add(SendAttempt(send_id=row.id, sop_instance_uid=row.sop_instance_uid,
                                destination=row.destination, attempt=row.attempts,
                                status=status, error=error, at=now))
        row.last_status, row.last_error = status, error
        send.last_error = error  # the caller's copy, for its audit of failures
        row.lease_owner = row.lease_expires_at = None
        if error is None and commit_uid is not None:
            row.state, row.commit_uid, row.commit_requested_at = queue.COMMITTING, \
                commit_uid, now
        elif error is None:
            row.state, row.sent_at = queue.SENT, now
        elif row.attempts >= retry.max_attempts:
            row.state = queue.DEAD
            log.error("send dead", sop_instance_uid=row.sop_instance_uid,
                      destination=row.destination, attempts=row.attempts, error=error)
        else:
            row.state = queue.FAILED
            row.next_run_at = now + timedelta(seconds=queue.backoff_s(retry, row.attempts))
        kind = settings.destinations[row.destination].type \
            if row.destination in settings.destinations else "unknown"
        metrics.SENDS.labels(row.destination, kind, row.state).inc()
        if row.state in (queue.SENT, queue.COMMITTING):
            size = _size(settings.storage.resolve(row.path))
            metrics.SENT_BYTES.labels(row.destination).inc(size)
        return row.state


def _size(path: Path) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _renew(factory: sessionmaker[Session], owner: str, lease_s: float,
           ids: set[int]) -> tuple[set[int], datetime]:
    """Extend the leases `owner` still holds among sends `ids`; returns those and the new
    expiry. A send another sender claimed after its lease ran out is not among them."""
    expires = utcnow() + timedelta(seconds=lease_s)
    if not ids:
        return set(), expires
    with factory() as session, session.begin():
        held = session.scalars(
            update(Send).where(Send.id.in_(sorted(ids)), Send.lease_owner == owner,
                               Send.state == queue.RUNNING)
            .values(lease_expires_at=expires)
            .returning(Send.id)
            .execution_options(synchronize_session=False)).all()
    return set(held), expires


def _release(factory: sessionmaker[Session], sends: list[Send], owner: str) -> None:
    with write_transaction(factory) as session:
        for s in sends:
            row = session.get(Send, s.id)
            if row is not None and row.lease_owner == owner:
                row.state, row.lease_owner, row.lease_expires_at = queue.PENDING, None, None


def _finish(factory: sessionmaker[Session], settings: Settings, destination: str,
            dest: AnyDestination, started: object, outcome: str, reason: str | None,
            items: list[_Item], sent: list[str],
            participants: list[dict[str, Any]] | None = None) -> None:
    """Record the outbound association (DICOM) and audit what was transferred (an HL7
    message is audited as an Export, DCM 110106)."""
    by_study: dict[str, list[str]] = defaultdict(list)
    sent_set = set(sent)
    for item in items:
        if item.send.sop_instance_uid in sent_set:
            by_study[item.send.study_uid].append(item.send.sop_instance_uid)
    event = audit.DATA_EXPORT if dest.type == "hl7" else audit.INSTANCES_TRANSFERRED
    with write_transaction(factory) as session:
        parts = participants or []
        if isinstance(dest, Destination):
            calling = dest.calling_ae_title or settings.node.ae_title
            session.add(Association(
                direction="out", calling_ae=calling, called_ae=dest.ae_title,
                peer_host=dest.host, peer_port=dest.port, started_at=started,
                ended_at=utcnow(), outcome=outcome, reason=reason, instances_received=len(sent),
            ))
            metrics.ASSOCIATIONS.labels("out", outcome).inc()
            parts = [audit.participant("source", calling, settings.node.host),
                     audit.participant("destination", dest.ae_title, dest.host,
                                       destination=destination)]
        for study_uid, uids in by_study.items():
            audit.record(session, event, "R", audit.SUCCESS,
                         event_type=HL7_RESULT if dest.type == "hl7" else None,
                         description=f"HL7 {dest.message_type} accepted"
                         if dest.type == "hl7" else None,
                         participants=parts,
                         objects={"study_uid": study_uid, "sop_instance_uids": uids})
        studies.settle_studies(session, (i.send.study_uid for i in items))
        failed = len(items) - len(sent)
        if failed:
            errors = sorted({i.send.last_error or "" for i in items
                             if i.send.sop_instance_uid not in sent_set} - {""})
            why = reason or "; ".join(errors)[:500] or "status"
            audit.record(session, event, "R", audit.MINOR_FAILURE,
                         event_type=HL7_RESULT if dest.type == "hl7" else None,
                         description=f"{failed} of {len(items)} not sent: {why}",
                         participants=parts,
                         objects={"study_uids": sorted({i.send.study_uid for i in items})})
    log.info("dispatch batch", destination=destination, outcome=outcome, sent=len(sent),
             failed=len(items) - len(sent))


def objects_for(session: Session, settings: Settings, job: Job, destination: str,
                objects: Sequence[tuple[Path, str, str]]) -> list[tuple[Path, str, str]]:
    """What a job sends to one destination: every object, except that an `hl7` destination
    gets one message per report (keyed on its SR), and none when `send_when` says so (that
    decision is audited)."""
    dest = settings.destinations.get(destination)
    if dest is None or dest.type != "hl7":
        return list(objects)
    picked = hl7.pick_object(objects)
    if picked is None:
        return []
    why = hl7.wanted(session, job, dest, settings.report.default_priority)
    if why is None:
        return [picked]
    audit.record(session, audit.DATA_EXPORT, "R", audit.SUCCESS, event_type=HL7_RESULT,
                 description=f"no HL7 message: {why} (send_when: {dest.send_when})",
                 participants=[audit.participant("destination", None,
                                                 f"{dest.host}:{dest.port}",
                                                 destination=destination)],
                 objects={"study_uid": job.study_uid, "job_id": job.id,
                          "sop_instance_uids": [picked[1]]})
    log.info("no HL7 message", study_uid=job.study_uid, destination=destination, reason=why)
    return []


class Dispatcher:
    """`max_concurrent` sender threads per destination, stopped with a shared event."""

    def __init__(self, settings: Settings, factory: sessionmaker[Session],
                 stop: threading.Event) -> None:
        self.settings, self.factory, self.stop = settings, factory, stop
        self.threads = [
            threading.Thread(target=self._loop, args=(name, slot), daemon=True,
                             name=f"dispatch-{name}-{slot}")
            for name, dest in settings.destinations.items()
            for slot in range(dest.max_concurrent)
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self, timeout_s: float | None = None) -> None:
        for t in self.threads:
            t.join(timeout_s)

    def _loop(self, destination: str, slot: int) -> None:
        owner = queue.owner_id(f"send-{destination}-{slot}")
        poll = self.settings.queue.poll_interval_s
        dest = self.settings.destinations[destination]
        watch = slot == 0 and isinstance(dest, Destination) and dest.storage_commitment
        while not self.stop.is_set():
            try:
                if watch:
                    commitment.expire(self.factory, self.settings, destination, dest)
                sends = claim_sends(self.factory, self.settings, destination, owner)
                if sends:
                    send_batch(self.factory, self.settings, destination, sends, owner)
                    continue
            except Exception as exc:
                log.error("dispatch failed", destination=destination, error=str(exc))
            self.stop.wait(poll)
