"""The running node: database, spool, DICOM SCP and scheduler, started and stopped together.

Other stages plug in with small additions: pass `on_complete` (routing) to `Node`, append
callables to `Node.start_hooks` / `Node.stop_hooks` (workers), or call `Node.add_interval_job`
before `start()` (retention, more sweeps).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from datetime import UTC
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from hiprouter import __version__, audit
from hiprouter import db as dbmod
from hiprouter.config import Settings
from hiprouter.logs import get_logger
from hiprouter.router.flow.studies import CompletionCallback, sweep_complete_studies
from hiprouter.router.net.receive import StorageSCP, record_unrecorded_files
from hiprouter.router.net.spool import Spool

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
        removed = self.spool.remove_stale_temporaries(older_than_s=0)  # no writer runs yet
        if removed:
            log.warning("removed temporary files left by a crash", count=removed)
        record_unrecorded_files(self.engine, self.spool)
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


def serve(settings: Settings, on_complete: CompletionCallback | None = None,
          configure: Hook | None = None) -> None:
    """Upgrade the database, run the node until SIGTERM/SIGINT, then stop gracefully.

    `configure(node)` runs before start (to add hooks and jobs).
    """
    dbmod.upgrade(settings.database.url)
    node = Node(settings, on_complete=on_complete)
    if configure is not None:
        configure(node)
    stop = threading.Event()

    def _signal(signum: int, _frame: Any) -> None:
        log.info("signal received, stopping", signal=signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, _signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            node.start()
        except OSError as exc:
            node_cfg = settings.node
            log.error("cannot listen", host=node_cfg.host, port=node_cfg.port, error=str(exc))
            raise SystemExit(1) from exc
        stop.wait()
    finally:
        node.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
