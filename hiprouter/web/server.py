"""The HTTP server of `serve` (and of `hiprouter worker --metrics-port`): the Flask app of
app.py under waitress (a production WSGI server in pure Python), in background threads."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from hiprouter import metrics
from hiprouter.config import Settings
from hiprouter.logs import get_logger
from hiprouter.web.app import create_app
from hiprouter.web.collect import DatabaseCollector

log = get_logger(__name__)


class WebServer:
    """Start and stop the web server for `settings.web` (host, port, threads)."""

    def __init__(self, settings: Settings, factory: sessionmaker[Session],
                 port: int | None = None, status_page: bool | None = None) -> None:
        web = settings.web
        if port is not None or status_page is not None:
            web = web.model_copy(update={
                k: v for k, v in (("port", port), ("status_page", status_page))
                if v is not None})
            settings = settings.model_copy(update={"web": web})
        self.settings = settings
        self.factory = factory
        self.collector = DatabaseCollector(factory, Path(settings.storage.spool_dir))
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.effective_port)

    def start(self) -> None:
        from waitress.server import create_server

        web = self.settings.web
        app = create_app(self.settings, self.factory)
        if web.metrics:
            metrics.register_collector(self.collector)
        self._server = create_server(app, host=web.host, port=web.port, threads=web.threads,
                                     ident="hiprouter", clear_untrusted_proxy_headers=True,
                                     channel_timeout=60)
        self._thread = threading.Thread(target=self._server.run, name="hiprouter-web",
                                        daemon=True)
        self._thread.start()
        log.info("web server listening", host=web.host, port=self.port,
                 metrics=web.metrics, status_page=web.status_page,
                 basic_auth=web.basic_auth is not None)
        if web.host not in ("127.0.0.1", "::1", "localhost") and web.basic_auth is None:
            log.warning("web server reachable beyond this host without basic auth",
                        host=web.host)

    def stop(self, timeout_s: float = 5.0) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        metrics.unregister_collector(self.collector)

        def close_all() -> None:  # runs in the server's loop thread
            for channel in list(server._map.values()):
                try:
                    channel.close()
                except Exception:
                    pass

        try:
            server.trigger.pull_trigger(close_all)
        except Exception:
            pass
        if self._thread is not None:
            self._thread.join(timeout_s)
        server.task_dispatcher.shutdown()
        log.info("web server stopped")
