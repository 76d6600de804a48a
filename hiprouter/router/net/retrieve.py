"""Query/Retrieve SCU: C-FIND (study, series), C-MOVE and C-GET at a PACS.

`hiprouter dataset pull` uses it to find studies and series and to retrieve them. C-MOVE
asks the PACS to send the series to a destination AE it knows (hiprouter's dataset AE
title, served by `hiprouter serve`); C-GET brings the instances back on the same
association, and `get_series` stores them in the spool with purpose ``dataset`` itself.
Identifiers returned by C-FIND are handed to the caller and never logged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from hiprouter.config import Destination, NodeConfig
from hiprouter.db import utcnow
from hiprouter.logs import get_logger
from hiprouter.router.net.receive import DATASET, Refused, read_identifiers, record_instance
from hiprouter.router.net.spool import Spool

log = get_logger(__name__)

FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND
MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
GET = "1.2.840.10008.5.1.4.1.2.2.3"
PENDING = (0xFF00, 0xFF01)


class RetrieveError(Exception):
    """A query or retrieval that failed (association refused, failure status)."""


@dataclass
class RetrieveResult:
    completed: int = 0
    failed: int = 0
    warning: int = 0
    status: int | None = None
    stored: int = 0
    """C-GET: instances stored in the spool by this call."""

    @property
    def ok(self) -> bool:
        return self.status in (0x0000, 0xB000) and self.failed == 0


def _ae(node: NodeConfig, dest: Destination, contexts: list[str]) -> Any:
    from pynetdicom import AE

    ae = AE(ae_title=dest.calling_ae_title or node.ae_title)
    ae.acse_timeout = node.acse_timeout_s
    ae.dimse_timeout = node.dimse_timeout_s
    ae.network_timeout = node.network_timeout_s
    ae.maximum_pdu_size = node.max_pdu_size
    for cx in contexts:
        ae.add_requested_context(cx)
    return ae


def _associate(ae: Any, dest: Destination, **kwargs: Any) -> Any:
    tls = None
    if dest.tls.enabled:
        from hiprouter.router.net.tls import client_ssl_context

        tls = (client_ssl_context(dest.tls), dest.host if dest.tls.check_hostname else None)
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls, **kwargs)
    if not assoc.is_established:
        raise RetrieveError(f"association with {dest.ae_title}@{dest.host}:{dest.port} "
                            f"{'rejected' if assoc.is_rejected else 'failed'}")
    return assoc


def find(node: NodeConfig, dest: Destination, level: str, query: dict[str, Any]
         ) -> list[Dataset]:
    """C-FIND at `level` (STUDY, SERIES, IMAGE); `query` keywords -> matching values ('' to
    return a key). Returns the identifiers (with PHI: for the caller only, never logged)."""
    ae = _ae(node, dest, [FIND])
    assoc = _associate(ae, dest)
    ident = Dataset()
    ident.QueryRetrieveLevel = level
    for keyword, value in query.items():
        setattr(ident, keyword, value)
    out: list[Dataset] = []
    try:
        for status, found in assoc.send_c_find(ident, FIND):
            if not status or "Status" not in status:
                raise RetrieveError("C-FIND: no response (association aborted or timed out)")
            code = int(status.Status)
            if code in PENDING and found is not None:
                out.append(found)
            elif code != 0x0000:
                raise RetrieveError(f"C-FIND failed with status 0x{code:04X}")
    finally:
        if assoc.is_established:
            assoc.release()
    return out


def _result(responses: Any) -> RetrieveResult:
    result = RetrieveResult()
    for status, _ident in responses:
        if not status or "Status" not in status:
            raise RetrieveError("no response (association aborted or timed out)")
        result.status = int(status.Status)
        for attr, key in (("completed", "NumberOfCompletedSuboperations"),
                          ("failed", "NumberOfFailedSuboperations"),
                          ("warning", "NumberOfWarningSuboperations")):
            if key in status and status.get(key) is not None:
                setattr(result, attr, int(status.get(key)))
    return result


def _keys(study_uid: str, series_uid: str | None) -> Dataset:
    ident = Dataset()
    ident.QueryRetrieveLevel = "SERIES" if series_uid else "STUDY"
    ident.StudyInstanceUID = study_uid
    if series_uid:
        ident.SeriesInstanceUID = series_uid
    return ident


def move_series(node: NodeConfig, dest: Destination, move_to: str, study_uid: str,
                series_uid: str | None = None) -> RetrieveResult:
    """C-MOVE a series (or a whole study) to the AE title `move_to` (known to the PACS)."""
    ae = _ae(node, dest, [MOVE])
    assoc = _associate(ae, dest)
    try:
        return _result(assoc.send_c_move(_keys(study_uid, series_uid), move_to, MOVE))
    finally:
        if assoc.is_established:
            assoc.release()


def get_series(node: NodeConfig, dest: Destination, engine: Engine, spool: Spool,
               study_uid: str, series_uid: str | None = None,
               sop_classes: list[str] | None = None,
               on_stored: Callable[[str], None] | None = None) -> RetrieveResult:
    """C-GET a series (or study); each instance is spooled and recorded with purpose
    ``dataset`` before it is acknowledged."""
    from pynetdicom import ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, build_role, evt

    classes = sop_classes or [str(cx.abstract_syntax) for cx in StoragePresentationContexts]
    classes = classes[:127]  # one context is the GET model
    ae = _ae(node, dest, [])
    ae.add_requested_context(GET)
    for uid in classes:
        ae.add_requested_context(uid, ALL_TRANSFER_SYNTAXES[:4])
    roles = [build_role(uid, scp_role=True) for uid in classes]
    stored = 0

    def on_store(event: Any) -> int:
        nonlocal stored
        encoded = event.encoded_dataset()
        try:
            ids = read_identifiers(encoded, str(event.request.AffectedSOPInstanceUID or ""))
        except Refused as exc:
            return exc.status
        pending = spool.begin(encoded)
        try:
            pending.rename()
            spooled = pending.wait_durable()
            record_instance(engine, ids, str(event.context.transfer_syntax), spooled,
                            received_at=utcnow(), calling_ae=dest.ae_title[:16],
                            purpose=DATASET)
        except IntegrityError:
            pending.discard()  # already stored: the copy we have serves
        except Exception:
            pending.discard()
            return 0xA700
        stored += 1
        if on_stored is not None:
            on_stored(ids.sop_instance_uid)
        return 0x0000

    assoc = _associate(ae, dest, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        result = _result(assoc.send_c_get(_keys(study_uid, series_uid), GET))
    finally:
        if assoc.is_established:
            assoc.release()
    result.stored = stored
    return result


def echo(node: NodeConfig, host: str, port: int, called: str, calling: str | None = None
         ) -> bool:
    """C-ECHO any AE (e.g. our own dataset AE title before a C-MOVE to it)."""
    from pynetdicom import AE

    ae = AE(ae_title=calling or node.ae_title)
    ae.acse_timeout = ae.network_timeout = min(node.acse_timeout_s, 10)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == 0
    finally:
        assoc.release()


def digest(*parts: str) -> str:
    """A short stable id for log lines about a query (never the query values)."""
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]
