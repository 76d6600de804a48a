"""Storage commitment (Storage Commitment Push Model, PS3.4 J) for C-STORE destinations
with `storage_commitment: true`.

After the C-STOREs of a batch, each stored send waits in state `committing` under the
batch's Transaction UID, and the dispatcher asks the peer to commit them with an N-ACTION
(`request`) on the same association. The peer answers later with an N-EVENT-REPORT, on a
new association to this node's SCP (hiprouter/router/net/commitment.py) or on the same one;
either way `apply_report` moves the named sends to `sent` (committed) or `failed` (retried
with backoff: C-STORE and N-ACTION again) or `dead`. A send that gets no report within
`commitment_timeout_s` is failed the same way (`expire`). Only then does the study count as
done. All state is in the `sends` table, so the report may reach any process of the node.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from hiprouter import audit, metrics
from hiprouter.config import Destination, Settings
from hiprouter.db import utcnow, write_transaction
from hiprouter.logs import get_logger
from hiprouter.router.flow import queue, studies
from hiprouter.schema import Send, SendAttempt

log = get_logger(__name__)

STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
"""The well-known SOP Instance of the Storage Commitment Push Model (PS3.4 J.3.3)."""
COMMITMENT = audit.Code("HIP010", "Storage Commitment")


def request(assoc: Any, transaction_uid: str, objects: Sequence[tuple[str, str]]
            ) -> str | None:
    """Send the N-ACTION (Request Storage Commitment) for (SOP Class UID, SOP Instance UID)
    pairs; None on success, else what went wrong."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    items = []
    for sop_class, sop_uid in objects:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_uid
        items.append(item)
    ds.ReferencedSOPSequence = items
    try:
        status, _reply = assoc.send_n_action(ds, 1, STORAGE_COMMITMENT_PUSH,
                                             STORAGE_COMMITMENT_INSTANCE)
    except Exception as exc:
        return f"N-ACTION failed: {type(exc).__name__}: {exc}"
    if "Status" not in status:
        return "no N-ACTION response (association aborted or timed out)"
    code = int(status.Status)
    return None if code == 0x0000 else f"N-ACTION status 0x{code:04X}"


def _fail(session: Session, row: Send, error: str, settings: Settings) -> None:
    retry = settings.queue.retry
    now = utcnow()
    row.last_error = error[:4000]
    row.commit_uid = None
    if row.attempts >= retry.max_attempts:
        row.state = queue.DEAD
        log.error("send dead", sop_instance_uid=row.sop_instance_uid,
                  destination=row.destination, attempts=row.attempts, error=error)
    else:
        row.state = queue.FAILED
        row.next_run_at = now + timedelta(seconds=queue.backoff_s(retry, row.attempts))


def request_failed(factory: sessionmaker[Session], settings: Settings, transaction_uid: str,
                   error: str) -> int:
    """The N-ACTION did not go through: the sends of that transaction are failed."""
    with write_transaction(factory) as session:
        rows = list(session.scalars(select(Send).where(
            Send.commit_uid == transaction_uid, Send.state == queue.COMMITTING)))
        for row in rows:
            _fail(session, row, error, settings)
            metrics.COMMITMENTS.labels(row.destination, "request_failed").inc()
        session.flush()
        studies.settle_studies(session, (r.study_uid for r in rows))
    return len(rows)


def apply_report(factory: sessionmaker[Session], settings: Settings, transaction_uid: str,
                 committed: Sequence[str], failed: dict[str, str],
                 reporter: dict[str, Any] | None = None) -> int:
    """An N-EVENT-REPORT for `transaction_uid`: committed SOP Instance UIDs become `sent`,
    failed ones are retried. Returns how many sends it settled (0: unknown transaction,
    e.g. one that already timed out)."""
    now = utcnow()
    committed_set = set(committed)
    with write_transaction(factory) as session:
        rows = list(session.scalars(select(Send).where(
            Send.commit_uid == transaction_uid, Send.state == queue.COMMITTING)))
        done: dict[str, list[str]] = {}
        for row in rows:
            if row.sop_instance_uid in committed_set:
                row.state, row.sent_at, row.committed_at = queue.SENT, now, now
                row.last_error = None
                done.setdefault(row.study_uid, []).append(row.sop_instance_uid)
                metrics.COMMITMENTS.labels(row.destination, "committed").inc()
            elif row.sop_instance_uid in failed:
                reason = f"storage commitment failed: {failed[row.sop_instance_uid]}"
                session.add(SendAttempt(send_id=row.id, sop_instance_uid=row.sop_instance_uid,
                                        destination=row.destination, attempt=row.attempts,
                                        status=None, error=reason, at=now))
                _fail(session, row, reason, settings)
                metrics.COMMITMENTS.labels(row.destination, "failed").inc()
        session.flush()
        parts = [audit.participant("destination", **(reporter or {}))]
        for study_uid, uids in done.items():
            audit.record(session, COMMITMENT, "R", audit.SUCCESS,
                         description=f"{len(uids)} instances committed",
                         participants=parts,
                         objects={"study_uid": study_uid, "sop_instance_uids": uids,
                                  "transaction_uid": transaction_uid})
        bad = [r for r in rows if r.sop_instance_uid in failed]
        if bad:
            audit.record(session, COMMITMENT, "R", audit.MINOR_FAILURE,
                         description=f"{len(bad)} instances not committed",
                         participants=parts,
                         objects={"study_uids": sorted({r.study_uid for r in bad}),
                                  "sop_instance_uids": [r.sop_instance_uid for r in bad],
                                  "transaction_uid": transaction_uid})
        studies.settle_studies(session, (r.study_uid for r in rows))
    if not rows:
        log.warning("storage commitment report for an unknown transaction",
                    transaction_uid=transaction_uid)
    else:
        log.info("storage commitment report", transaction_uid=transaction_uid,
                 committed=sum(len(v) for v in done.values()), failed=len(bad))
    return len(rows)


def expire(factory: sessionmaker[Session], settings: Settings, destination: str,
           dest: Destination) -> int:
    """Fail the sends of `destination` whose report is overdue."""
    limit = utcnow() - timedelta(seconds=dest.commitment_timeout_s)
    with factory() as session:
        overdue = session.scalar(select(Send.id).where(
            Send.destination == destination, Send.state == queue.COMMITTING,
            Send.commit_requested_at < limit).limit(1))
    if overdue is None:
        return 0  # the usual case: no write transaction
    with write_transaction(factory) as session:
        rows = list(session.scalars(select(Send).where(
            Send.destination == destination, Send.state == queue.COMMITTING,
            Send.commit_requested_at < limit)))
        error = f"no storage commitment report within {dest.commitment_timeout_s:g} s"
        for row in rows:
            _fail(session, row, error, settings)
            metrics.COMMITMENTS.labels(destination, "timeout").inc()
        session.flush()
        studies.settle_studies(session, (r.study_uid for r in rows))
    log.warning("storage commitment overdue", destination=destination, sends=len(rows))
    return len(rows)


def parse_report(event_type: int, info: Dataset | None) -> tuple[str, list[str],
                                                                   dict[str, str]]:
    """(Transaction UID, committed SOP Instance UIDs, {failed UID: reason}) of the Event
    Information of a storage commitment N-EVENT-REPORT (Event Type 1 or 2)."""
    if info is None or "TransactionUID" not in info:
        raise ValueError("N-EVENT-REPORT without a Transaction UID")
    committed = [str(i.ReferencedSOPInstanceUID) for i in info.get("ReferencedSOPSequence", [])
                 if "ReferencedSOPInstanceUID" in i]
    failed = {}
    for item in info.get("FailedSOPSequence", []):
        if "ReferencedSOPInstanceUID" in item:
            code = item.get("FailureReason")
            failed[str(item.ReferencedSOPInstanceUID)] = (
                f"failure reason 0x{int(code):04X}" if code is not None else "no reason given")
    return str(info.TransactionUID), committed, failed
