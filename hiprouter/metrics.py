"""Prometheus metrics: one registry per process and a small API for any module.

Any module (a pipeline, the dataset or drift tools, a plugin) declares its metrics here and
updates them; `hiprouter serve` (and `hiprouter worker --metrics-port`) serve the registry
at /metrics when `web.enabled` is set (hiprouter/web/). Declaring the same name twice with
the same type and labels returns the first metric, so a module may declare at import time
without caring whether another did:

    from hiprouter import metrics

    DRIFT = metrics.gauge("hiprouter_model_drift_score", "Input drift score per model",
                          ["model"])
    DRIFT.labels(model="hardware-demo").set(0.12)

Conventions (https://prometheus.io/docs/practices/naming/): names start with
`hiprouter_`, counters end in `_total` (added when missing), durations are in seconds
(`_seconds`), sizes in bytes (`_bytes`); labels have few values (never UIDs, accession
numbers or anything about a patient). Gauges that are facts of the database (studies by
state, queue age) are computed at scrape time by a collector (`register_collector`).

The metrics hiprouter itself updates are declared at the bottom of this module;
docs/operations.md lists every name.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.registry import Collector

disable_created_metrics()  # no `*_created` series next to every counter and histogram

REGISTRY = CollectorRegistry(auto_describe=True)
"""The registry /metrics serves (not prometheus_client's global one, so tests and
embedding applications stay independent)."""

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0, 120.0, 300.0)

_lock = threading.Lock()
_metrics: dict[str, tuple[type, tuple[str, ...], Any]] = {}
_collectors: list[Collector] = []


def _check_name(name: str) -> None:
    if not name.startswith("hiprouter_"):
        raise ValueError(f"metric {name!r}: names start with 'hiprouter_'")


def _get_or_create(kind: type, name: str, documentation: str, labelnames: Sequence[str],
                   **kwargs: Any) -> Any:
    _check_name(name)
    labels = tuple(labelnames)
    with _lock:
        found = _metrics.get(name)
        if found is not None:
            if found[0] is not kind or found[1] != labels:
                raise ValueError(f"metric {name!r} already declared as {found[0].__name__} "
                                 f"with labels {list(found[1])}")
            return found[2]
        metric = kind(name, documentation, labels, registry=REGISTRY, **kwargs)
        _metrics[name] = (kind, labels, metric)
        return metric


def counter(name: str, documentation: str, labelnames: Sequence[str] = ()) -> Counter:
    """A counter (monotonic); `_total` is appended to the name when missing."""
    base = name[: -len("_total")] if name.endswith("_total") else name
    metric: Counter = _get_or_create(Counter, base, documentation, labelnames)
    return metric


def gauge(name: str, documentation: str, labelnames: Sequence[str] = ()) -> Gauge:
    """A gauge: a value that goes up and down, set by the process."""
    metric: Gauge = _get_or_create(Gauge, name, documentation, labelnames)
    return metric


def histogram(name: str, documentation: str, labelnames: Sequence[str] = (),
              buckets: Sequence[float] = LATENCY_BUCKETS) -> Histogram:
    """A histogram, by default with latency buckets from 5 ms to 5 min (seconds)."""
    metric: Histogram = _get_or_create(Histogram, name, documentation, labelnames,
                                       buckets=tuple(buckets))
    return metric


def register_collector(collector: Collector) -> None:
    """Add a collector whose `collect()` yields metric families at scrape time."""
    with _lock:
        if collector in _collectors:
            return
        REGISTRY.register(collector)
        _collectors.append(collector)


def unregister_collector(collector: Collector) -> None:
    with _lock:
        if collector in _collectors:
            REGISTRY.unregister(collector)
            _collectors.remove(collector)


def names() -> list[str]:
    """Names of the metrics declared with this API (counters without `_total`)."""
    with _lock:
        return sorted(_metrics)


# -- what hiprouter itself counts ------------------------------------------------------------

INSTANCES_RECEIVED = counter(
    "hiprouter_instances_received_total",
    "Instances received by C-STORE and acknowledged (stored or duplicate)", ["outcome"])
INSTANCES_REFUSED = counter(
    "hiprouter_instances_refused_total",
    "C-STOREs answered with a failure status, by reason", ["reason"])
RECEIVED_BYTES = counter(
    "hiprouter_received_bytes_total", "Bytes of data sets received by C-STORE")
STORE_REQUESTS = counter(
    "hiprouter_store_requests_total",
    "C-STORE requests served, by receive path (fast: node.fast_store; pynetdicom)", ["path"])
STORE_SECONDS = histogram(
    "hiprouter_store_seconds", "Time to handle one C-STORE (spool, fsync, record)")
ASSOCIATIONS = counter(
    "hiprouter_associations_total",
    "DICOM associations by direction (in, out) and outcome", ["direction", "outcome"])
ASSOCIATIONS_ACTIVE = gauge(
    "hiprouter_associations_active", "Inbound associations open now")
JOBS_FINISHED = counter(
    "hiprouter_jobs_finished_total",
    "Job attempts by job name (pipeline) and outcome (done, failed, dead, lost)",
    ["pipeline", "outcome"])
JOB_SECONDS = histogram(
    "hiprouter_job_seconds", "Duration of one job attempt", ["pipeline"])
INFERENCE_SECONDS = histogram(
    "hiprouter_inference_seconds",
    "Inference latency per finding (one hip or image), per pipeline and model",
    ["pipeline", "model", "version"])
OUTPUTS = counter(
    "hiprouter_outputs_total", "DICOM objects created, by type (SR, SC, SEG, KOS)", ["kind"])
TRIAGE = counter(
    "hiprouter_triage_total", "Reports by triage level (the KOS priority)", ["level"])
FINDINGS = counter(
    "hiprouter_findings_total", "Findings by pipeline and status", ["pipeline", "status"])
SENDS = counter(
    "hiprouter_sends_total",
    "Send attempts by destination, destination type and result (sent, committing, failed, "
    "dead)", ["destination", "type", "result"])
SEND_SECONDS = histogram(
    "hiprouter_send_seconds", "Duration of one batch sent to a destination",
    ["destination", "type"])
SENT_BYTES = counter(
    "hiprouter_sent_bytes_total", "Bytes of objects delivered, per destination",
    ["destination"])
COMMITMENTS = counter(
    "hiprouter_storage_commitments_total",
    "Storage commitment results per destination (committed, failed, timeout, requested)",
    ["destination", "result"])

# -- model monitoring (hiprouter/lifecycle/monitor.py, via service.run_monitoring) -----------

MONITOR_VALUE = gauge(
    "hiprouter_monitor_value",
    "Latest weekly agreement or drift figure per pipeline, mode (active, shadow) and metric",
    ["pipeline", "mode", "metric"])
MONITOR_ALERT = gauge(
    "hiprouter_monitor_alert",
    "1 when the latest figure of that pipeline, mode and metric crossed its threshold",
    ["pipeline", "mode", "metric"])


def set_monitor_check(*, pipeline: str, mode: str, metric: str, value: float | None,
                      alert: bool) -> None:
    """Export one monitoring figure (called by the scheduler's monitoring job)."""
    if value is not None:
        MONITOR_VALUE.labels(pipeline, mode, metric).set(float(value))
    MONITOR_ALERT.labels(pipeline, mode, metric).set(1 if alert else 0)
