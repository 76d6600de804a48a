"""The composition root: how `hiprouter serve` and `hiprouter worker` are put together.

`serve` runs a `Node` (database, spool, DICOM SCP, scheduler with the study-completion
sweep) whose completed studies are routed in the completing transaction
(`routing_callback`), with job workers, the dispatcher and the retention sweep attached
(`attach_workers`). `worker` runs only `Workers` (job workers and, unless told otherwise,
the dispatcher) against the same database, for scale-out. Both run until SIGTERM or SIGINT
and then stop gracefully. The stages themselves know nothing of each other beyond the
database; only this module wires them together.

A Node takes more with small additions: `on_complete`, callables appended to
`Node.start_hooks` / `Node.stop_hooks`, or `Node.add_interval_job` before `start()`.
`attach_integrations` adds the SCP's metrics, storage commitment reports on the SCP and,
when `web.enabled`, the HTTP server with /metrics and the status page (hiprouter/web/).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.orm import Session, sessionmaker

from hiprouter import __version__, audit, fileperms, metrics, posture
from hiprouter import db as dbmod
from hiprouter.config import SHARED_SPOOL_GRACE_S, ConfigError, Destination, Settings
from hiprouter.inference import pixels, runtime
from hiprouter.lifecycle.registry import RegistryResolver
from hiprouter.logs import get_logger
from hiprouter.pipelines.registry import PipelineSet, validate_pipelines
from hiprouter.router.flow import queue
from hiprouter.router.flow.dispatch import Dispatcher, report_handler
from hiprouter.router.flow.retention import sweep_retention
from hiprouter.router.flow.routing import route_study
from hiprouter.router.flow.studies import CompletionCallback, sweep_complete_studies
from hiprouter.router.flow.worker import JobWorker
from hiprouter.router.net import commitment as net_commitment
from hiprouter.router.net import observe as net_observe
from hiprouter.router.net.receive import (
    REFUSAL_WINDOW_S,
    StorageSCP,
    record_unrecorded_files,
)
from hiprouter.router.net.spool import Spool
from hiprouter.schema import Study

log = get_logger(__name__)

Hook = Callable[["Node"], None]


class Node:
    """Owns the engine and session factory, the spool, the SCP and the scheduler."""

    def __init__(self, settings: Settings, on_complete: CompletionCallback | None = None) -> None:
        self.settings = settings
        self.on_complete = on_complete
        self.engine = dbmod.make_engine(settings.database.url)
        self.factory = dbmod.session_factory(self.engine)
        self.spool = Spool(settings.storage.spool_dir, fsync=settings.storage.fsync)
        self.scp = StorageSCP(settings, self.factory, self.spool)
        self.scheduler = BackgroundScheduler(timezone=UTC)
        self.start_hooks: list[Hook] = []
        """Called in order after the SCP and scheduler started (e.g. start workers)."""
        self.stop_hooks: list[Hook] = []
        """Called in reverse order after the SCP stopped accepting (e.g. stop workers);
        only when the start hooks ran."""
        self._hooks_started = False
        self.add_interval_job(self.sweep_studies, settings.studies.sweep_interval_s,
                              "study-completion")
        self.add_interval_job(self.scp.flush_refusals, REFUSAL_WINDOW_S, "refusal-summary")

    def add_interval_job(self, func: Callable[[], Any], every_s: float, job_id: str) -> None:
        """Run `func` every `every_s` seconds in the scheduler (never two at once)."""
        self.scheduler.add_job(
            func, "interval", seconds=every_s, id=job_id, max_instances=1, coalesce=True,
            misfire_grace_time=None,
        )

    def sweep_studies(self) -> int:
        """Complete idle studies (the scheduler calls this)."""
        try:
            return sweep_complete_studies(self.factory, self.settings, self.on_complete)
        except Exception as exc:
            log.error("study sweep failed", error=str(exc))
            return 0

    def start(self) -> None:
        """Prepare the spool, start the scheduler, the SCP and the start hooks."""
        self.spool.prepare()
        fileperms.make_dirs(self.settings.storage.output_dir)
        fileperms.tighten(self.settings.storage.output_dir)
        # no writer of this process runs yet; on a shared spool other receivers' may
        grace = SHARED_SPOOL_GRACE_S if self.settings.storage.shared_spool else 0.0
        removed = self.spool.remove_stale_temporaries(older_than_s=grace)
        if removed:
            log.warning("removed temporary files left by a crash", count=removed)
        record_unrecorded_files(self.engine, self.spool, min_age_s=grace)
        self.scheduler.start()
        self.scp.start()
        self._hooks_started = True
        for hook in self.start_hooks:
            hook(self)
        node = self.settings.node
        log.info("hiprouter started", ae_title=node.ae_title, host=node.host, port=self.scp.port,
                 database=dbmod.redact_url(self.settings.database.url), version=__version__,
                 spool=str(self.spool.root))
        self._audit_application(audit.APPLICATION_START)

    def stop(self) -> None:
        """Stop accepting, let in-flight stores finish, stop hooks and the scheduler."""
        self.scp.stop()
        self.spool.close()
        for hook in reversed(self.stop_hooks if self._hooks_started else []):
            try:
                hook(self)
            except Exception as exc:
                log.error("stop hook failed", error=str(exc))
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self._audit_application(audit.APPLICATION_STOP)
        log.info("hiprouter stopped")
        self.engine.dispose()

    def _audit_application(self, event_type: audit.Code) -> None:
        try:
            audit.record_now(
                self.factory, audit.APPLICATION_ACTIVITY, "E", audit.SUCCESS,
                event_type=event_type,
                participants=[audit.participant("application", self.settings.node.ae_title,
                                                version=__version__)],
            )
        except Exception as exc:
            log.error("cannot record application activity", error=str(exc))


def configure_decoding(settings: Settings) -> None:
    """Bounds on pixel decoding (`decode.*`) for this process's workers and dispatcher."""
    d = settings.decode
    pixels.configure(pixels.DecodeLimits(max_decoded_mb=d.max_decoded_mb,
                                         memory_limit_mb=d.memory_limit_mb,
                                         timeout_s=d.timeout_s, sandbox=d.sandbox))


def _check_report_templates(settings: Settings) -> None:
    """Fail at start-up, not on the first job, when a site's SR templates are broken."""
    from hiprouter.report.text import TemplateError, check_templates

    try:
        check_templates(settings)
    except TemplateError as exc:
        raise ConfigError(str(exc)) from exc


def configure_inference(settings: Settings) -> None:
    """Intra-op threads of this process's CPU inference (`inference.threads`)."""
    runtime.set_cpu_threads(settings.inference.threads)


class Workers:
    """Job worker threads plus the dispatcher, started and stopped together."""

    def __init__(self, settings: Settings, factory: sessionmaker[Session], count: int,
                 dispatch: bool = True) -> None:
        validate_pipelines(settings)
        _check_report_templates(settings)
        configure_decoding(settings)
        configure_inference(settings)
        self.factory = factory
        self.stop_event = threading.Event()
        pipelines = PipelineSet(settings, resolver=RegistryResolver(factory, settings.storage))
        self.threads: list[threading.Thread] = [
            JobWorker(factory, settings, pipelines, self.stop_event, i) for i in range(count)
        ]
        self.dispatcher = Dispatcher(settings, factory, self.stop_event) if dispatch else None

    def start(self) -> None:
        queue.expire_orphaned_leases(self.factory, socket.gethostname()[:60])
        for t in self.threads:
            t.start()
        if self.dispatcher is not None:
            self.dispatcher.start()
        log.info("workers started", job_workers=len(self.threads),
                 dispatch=self.dispatcher is not None)

    def stop(self, timeout_s: float = 60.0) -> None:
        """Finish the jobs and sends in hand, then return."""
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout_s)
        if self.dispatcher is not None:
            self.dispatcher.join(timeout_s)
        pixels.shutdown()
        log.info("workers stopped")


def routing_callback(settings: Settings) -> CompletionCallback:
    """The study-completion callback for `Node`: route the study in that transaction."""

    def on_complete(session: Session, study: Study) -> None:
        route_study(session, settings, study)

    return on_complete


def attach_workers(node: Node) -> None:
    """Add `queue.workers` job workers, the dispatcher and the retention job to a node."""
    settings = node.settings
    workers = Workers(settings, node.factory, settings.queue.workers)
    node.start_hooks.append(lambda _node: workers.start())
    node.stop_hooks.append(lambda _node: workers.stop())

    def retention() -> None:
        try:
            sweep_retention(node.factory, settings)
        except Exception as exc:
            log.error("retention sweep failed", error=str(exc))

    node.add_interval_job(retention, settings.storage.retention_check_s, "retention")
    if settings.monitoring.enabled:
        node.add_interval_job(lambda: run_monitoring(node.factory, settings),
                              settings.monitoring.interval_s, "monitoring")


def run_monitoring(factory: sessionmaker[Session], settings: Settings) -> list[Any]:
    """Labels from newly received final reports, then the weekly agreement and drift
    figures of every pipeline; alerts go to the log, `status` and /metrics."""
    from hiprouter.lifecycle import monitor  # only when monitoring runs: lean worker start

    try:
        monitor.extract_received_reports(factory, settings)
        checks = monitor.run_checks(factory, settings)
    except Exception as exc:
        log.error("monitoring failed", error=str(exc))
        return []
    for check in checks:
        if check.alert:
            log.warning("drift alert", pipeline=check.pipeline, mode=check.mode,
                        model=f"{check.model_name} {check.model_version}", week=check.week,
                        metric=check.metric, value=check.value, threshold=check.threshold,
                        n=check.n)
    _export_gauges(checks)
    return checks


def _export_gauges(checks: list[Any]) -> None:
    """Set the monitoring gauges of /metrics (`hiprouter_monitor_value`, `_alert`)."""
    for check in checks:
        try:
            metrics.set_monitor_check(pipeline=check.pipeline, mode=check.mode,
                                      metric=check.metric, value=check.value,
                                      alert=check.alert)
        except Exception as exc:  # never let monitoring export stop the node
            log.warning("cannot export monitoring gauge", error=str(exc))


def attach_integrations(node: Node) -> None:
    """Metrics of the SCP, storage commitment reports on the SCP (when a destination asks
    for commitment) and the web server (`web.enabled`)."""
    settings = node.settings
    net_observe.instrument(node.scp)
    if any(isinstance(d, Destination) and d.storage_commitment
           for d in settings.destinations.values()):
        net_commitment.accept_reports(node.scp, report_handler(node.factory, settings))
    if settings.web.enabled:
        from hiprouter.web.server import WebServer

        web = WebServer(settings, node.factory)
        node.start_hooks.append(lambda _node: web.start())
        node.stop_hooks.append(lambda _node: web.stop())
        node.web = web  # type: ignore[attr-defined]


def build_node(settings: Settings) -> Node:
    """The node `serve` runs: routing on study completion, workers, dispatcher, retention,
    metrics, storage commitment and the web server.

    Raises ConfigError when a pipeline kind, plugin or SR template is not usable.
    """
    node = Node(settings, on_complete=routing_callback(settings))
    attach_workers(node)
    attach_integrations(node)
    return node


@contextlib.contextmanager
def _stop_on_signal(stop: threading.Event, message: str) -> Iterator[None]:
    """Set `stop` on SIGTERM or SIGINT while the block runs; restore the old handlers."""

    def _signal(signum: int, _frame: Any) -> None:
        log.info(message, signal=signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, _signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def warn_insecure(settings: Settings, listening: bool = True) -> None:
    """Log each gap of the hardening checklist (docs/security.md) at start-up (a process
    that does not listen only the database's)."""
    for gap in posture.warnings(settings):
        if listening or not gap.key.startswith("node."):
            log.warning("insecure configuration", key=gap.key, warning=gap.message)


def private_files(settings: Settings) -> None:
    """Files and folders this process creates from now on are the service's only
    (`hiprouter.fileperms`), whatever umask it was started with."""
    try:
        fileperms.apply(settings.storage.group)
    except fileperms.GroupError as exc:
        raise ConfigError(str(exc)) from exc


def serve(settings: Settings) -> None:
    """`hiprouter serve`: upgrade the database, run the node until SIGTERM/SIGINT, then
    stop gracefully."""
    private_files(settings)
    warn_insecure(settings)
    dbmod.upgrade(settings.database.url)
    node = build_node(settings)
    stop = threading.Event()
    with _stop_on_signal(stop, "signal received, stopping"):
        try:
            try:
                node.start()
            except OSError as exc:
                node_cfg = settings.node
                log.error("cannot listen", host=node_cfg.host, port=node_cfg.port,
                          error=str(exc))
                raise SystemExit(1) from exc
            stop.wait()
        finally:
            node.stop()


def run_workers(settings: Settings, count: int, dispatch: bool = True,
                metrics_port: int | None = None) -> None:
    """`hiprouter worker`: run workers in this process until SIGTERM or SIGINT; with
    `metrics_port`, this process's metrics at http://<web.host>:<metrics_port>/metrics."""
    private_files(settings)
    warn_insecure(settings, listening=False)
    engine = dbmod.make_engine(settings.database.url)
    factory = dbmod.session_factory(engine)
    workers = Workers(settings, factory, count, dispatch)
    web = None
    if metrics_port is not None:
        from hiprouter.web.server import WebServer

        web = WebServer(settings, factory, port=metrics_port, status_page=False)
    done = threading.Event()
    with _stop_on_signal(done, "signal received, stopping workers"):
        try:
            workers.start()
            if web is not None:
                web.start()
            log.info("worker process ready", pid=os.getpid())
            done.wait()
        finally:
            if web is not None:
                web.stop()
            workers.stop()
            engine.dispose()
