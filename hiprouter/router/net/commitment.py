"""The SCU side of storage commitment on the node's SCP: a PACS that was asked to commit
objects (N-ACTION, sent by the dispatcher) opens an association to this node's AE title
and sends the result as an N-EVENT-REPORT of the Storage Commitment Push Model SOP Class,
taking the SCP role (PS3.4 J.3; SCP/SCU role selection, PS3.7 D.3.3.4)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pynetdicom import ALL_TRANSFER_SYNTAXES, evt

from hiprouter.router.net.receive import StorageSCP

STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"


def accept_reports(scp: StorageSCP, handler: Callable[[Any], Any]) -> None:
    """Let peers send storage commitment reports to `scp`; `handler` is a pynetdicom
    EVT_N_EVENT_REPORT handler. Call before `scp.start()`."""
    # the requestor (the PACS) may propose the SCP role for itself, and the SCU role
    scp.ae.add_supported_context(STORAGE_COMMITMENT_PUSH, ALL_TRANSFER_SYNTAXES[:2],
                                 scu_role=True, scp_role=True)
    original = scp.handlers

    def handlers() -> list[tuple[Any, Any]]:
        return [*original(), (evt.EVT_N_EVENT_REPORT, handler)]

    scp.handlers = handlers  # type: ignore[method-assign]
