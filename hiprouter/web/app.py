"""The web application (Flask): Prometheus metrics and a read-only status page.

Routes: `/` (the facts of `hiprouter status`, recent studies with a search box),
`/studies/<Study Instance UID>` (a study's series, jobs, findings, outputs, sends and audit
trail), `/audit` (searchable audit events), `/models` (model versions that produced
findings), `/api/status` (the JSON of `hiprouter status --json`), `/metrics` (Prometheus
text format) and `/healthz`. Nothing changes state; every page reads SQL. Patient names
and IDs are never read or shown: studies are named by UID and accession number.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any
from urllib.parse import quote

from flask import Flask, Response, abort, jsonify, render_template, request
from prometheus_client.exposition import choose_encoder
from sqlalchemy.orm import Session, sessionmaker

from hiprouter import __version__, metrics
from hiprouter.config import Settings, WebAuth
from hiprouter.status import collect_from, describe_destination
from hiprouter.web import collect

OUTCOMES = {0: "success", 4: "minor failure", 8: "serious failure", 12: "major failure"}
PAGE_REQUESTS = metrics.counter("hiprouter_web_requests_total",
                                "Requests to the web server by route and status",
                                ["route", "status"])


def _password_check(auth: WebAuth) -> Any:
    if auth.password_hash is not None:
        from werkzeug.security import check_password_hash

        stored = auth.password_hash
        return lambda given: check_password_hash(stored, given)
    secret = Path(str(auth.password_file)).read_text(encoding="utf-8").strip()
    if not secret:
        raise ValueError(f"web.basic_auth.password_file {auth.password_file} is empty")
    return lambda given: hmac.compare_digest(given.encode(), secret.encode())


def create_app(settings: Settings, factory: sessionmaker[Session]) -> Flask:
    """The WSGI application for `settings.web`."""
    web = settings.web
    app = Flask(__name__, template_folder=str(Path(__file__).parent / "templates"))
    app.config["JSON_SORT_KEYS"] = True
    headers = collect.HeaderCache(storage=settings.storage)
    check = _password_check(web.basic_auth) if web.basic_auth is not None else None
    username = web.basic_auth.username if web.basic_auth is not None else ""

    @app.before_request
    def _auth() -> Response | None:
        if check is None or request.path == "/healthz":
            return None
        given = request.authorization
        if given is not None and given.type == "basic" and \
                hmac.compare_digest((given.username or "").encode(), username.encode()) and \
                check(given.password or ""):
            return None
        return Response("authentication required\n", 401,
                        {"WWW-Authenticate": 'Basic realm="hiprouter", charset="UTF-8"'})

    @app.after_request
    def _headers(resp: Response) -> Response:
        resp.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["Cache-Control"] = "no-store"
        rule = request.url_rule.rule if request.url_rule is not None else "other"
        PAGE_REQUESTS.labels(rule, str(resp.status_code)).inc()
        return resp

    def viewer(study_uid: str) -> str | None:
        if not web.viewer_url:
            return None
        return web.viewer_url.replace("{study_uid}", quote(study_uid, safe="."))

    @app.context_processor
    def _common() -> dict[str, Any]:
        return {"version": __version__, "node": settings.node, "viewer": viewer,
                "outcomes": OUTCOMES, "status_page": web.status_page}

    def page_enabled() -> None:
        if not web.status_page:
            abort(404)

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok\n", 200, {"Content-Type": "text/plain"})

    if web.metrics:
        @app.get("/metrics")
        def scrape() -> Response:
            # text format, or OpenMetrics when the scraper asks for it (Accept header)
            encoder, content_type = choose_encoder(request.headers.get("Accept"))
            return Response(encoder(metrics.REGISTRY), 200, {"Content-Type": content_type})

    @app.get("/")
    def index() -> str:
        page_enabled()
        query = request.args.get("q", "")[:128]
        with factory() as session:
            status = collect_from(session, settings)
            studies = collect.recent_studies(session, headers, web.recent_studies, query)
        return render_template("index.html", status=status, studies=studies, query=query,
                               destinations={n: describe_destination(d) for n, d in
                                             sorted(settings.destinations.items())})

    @app.get("/api/status")
    def api_status() -> Response:
        page_enabled()
        with factory() as session:
            return jsonify(collect_from(session, settings))

    @app.get("/studies/<study_uid>")
    def study(study_uid: str) -> str:
        page_enabled()
        with factory() as session:
            detail = collect.study_detail(session, headers, study_uid[:64])
        if detail is None:
            abort(404)
        return render_template("study.html", d=detail)

    @app.get("/audit")
    def audit_page() -> str:
        page_enabled()
        args = {k: request.args.get(k, "")[:128] for k in ("study", "text", "event",
                                                             "outcome")}
        before = request.args.get("before", "")
        with factory() as session:
            events = collect.audit_events(
                session, study_uid=args["study"], text=args["text"], event=args["event"],
                outcome=args["outcome"], limit=200,
                before_id=int(before) if before.isdigit() else None)
            codes = collect.event_codes(session)
        return render_template("audit.html", events=events, args=args, codes=codes)

    @app.get("/models")
    def models_page() -> str:
        page_enabled()
        with factory() as session:
            rows = collect.model_versions(session)
            registry = collect_from(session, settings).get("registry", [])
        pipelines = {name: p.kind for name, p in sorted(settings.pipelines.items())}
        return render_template("models.html", rows=rows, pipelines=pipelines,
                               registry=registry)

    return app
