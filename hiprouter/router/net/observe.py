"""Metrics of the inbound DICOM service (hiprouter/metrics.py), added around the SCP's
event handlers without changing them: associations by outcome and open now, instances
received (stored or duplicate) and refused (by DIMSE status), bytes received, time per
C-STORE."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pynetdicom import evt

from hiprouter import metrics
from hiprouter.router.net.receive import StorageSCP

REFUSAL_REASONS = {0xA700: "out_of_resources", 0xA900: "dataset_mismatch",
                   0xC000: "cannot_understand"}


def _store(handler: Callable[[Any], int]) -> Callable[[Any], int]:
    def store(event: Any) -> int:
        started = time.perf_counter()
        state = getattr(event.assoc, "hiprouter_state", None)
        duplicates = state.duplicates if state is not None else 0
        too_large = bool(getattr(event.assoc.dul, "dataset_too_large", False))
        status = handler(event)
        metrics.STORE_SECONDS.observe(time.perf_counter() - started)
        metrics.STORE_REQUESTS.labels(
            "fast" if getattr(event, "fast_path", False) else "pynetdicom").inc()
        try:
            size = len(event.request.DataSet.getbuffer())
        except (AttributeError, TypeError, ValueError):
            size = 0
        if status == 0x0000:
            state = getattr(event.assoc, "hiprouter_state", None)
            dup = state is not None and state.duplicates > duplicates
            metrics.INSTANCES_RECEIVED.labels("duplicate" if dup else "stored").inc()
            metrics.RECEIVED_BYTES.inc(size)
        else:
            reason = "too_large" if too_large else \
                REFUSAL_REASONS.get(status, f"status_{status:04x}")
            metrics.INSTANCES_REFUSED.labels(reason).inc()
        return status

    return store


def _accepted(handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def accepted(event: Any) -> Any:
        event.assoc.hiprouter_counted = True
        metrics.ASSOCIATIONS_ACTIVE.inc()
        return handler(event)

    return accepted


def _ended(handler: Callable[[Any], Any], outcome: str) -> Callable[[Any], Any]:
    def ended(event: Any) -> Any:
        if getattr(event.assoc, "hiprouter_counted", False):
            event.assoc.hiprouter_counted = False
            metrics.ASSOCIATIONS_ACTIVE.dec()
            metrics.ASSOCIATIONS.labels("in", outcome).inc()
        return handler(event)

    return ended


def instrument(scp: StorageSCP) -> None:
    """Count what the SCP does; call before `scp.start()`."""
    original = scp.handlers

    def handlers() -> list[tuple[Any, Any]]:
        out = []
        for event, handler in original():
            if event is evt.EVT_C_STORE:
                handler = _store(handler)
            elif event is evt.EVT_ACCEPTED:
                handler = _accepted(handler)
            elif event is evt.EVT_RELEASED:
                handler = _ended(handler, "released")
            elif event is evt.EVT_ABORTED:
                handler = _ended(handler, "aborted")
            out.append((event, handler))
        return out

    scp.handlers = handlers  # type: ignore[method-assign]
    record_rejection = getattr(scp, "_record_rejection", None)
    if record_rejection is not None:  # both rejection paths (allow-list, ACSE) end here
        def rejected(*args: Any, **kwargs: Any) -> Any:
            metrics.ASSOCIATIONS.labels("in", "rejected").inc()
            return record_rejection(*args, **kwargs)

        scp._record_rejection = rejected  # type: ignore[method-assign]
