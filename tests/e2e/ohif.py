"""A real viewer for end-to-end tests: OHIF Viewer v3 in headless Chromium over Orthanc DICOMweb.

- `ohif_dist()` installs the prebuilt OHIF app (npm package `@ohif/app`, whose tarball holds
  the built `dist/`) into a cache folder keyed by version, `$HIPROUTER_CACHE/ohif/<version>`
  (default `~/.cache/hiprouter/ohif/<version>`). Only the tarball is fetched (`npm pack`, no
  dependency install, no node_modules); a second call finds it there and downloads nothing.
- `OhifServer` serves that `dist/` on loopback with an SPA fallback to index.html, its own
  `app-config.js` (one DICOMweb data source at the same origin), and proxies `/dicom-web/*`
  to Orthanc's DICOMweb plugin, so the browser sees one origin (no CORS).
- `Browser` is headless Chromium (Debian `chromium`) driven through the DevTools protocol
  over `--remote-debugging-pipe` (fds 3 and 4; no port, no websocket, no extra package):
  navigate, wait for a JavaScript condition, click like a user, read the DOM, screenshot.
"""

from __future__ import annotations

import base64
import fcntl
import http.client
import io
import json
import mimetypes
import os
import select
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset

OHIF_VERSION = "3.12.10"
"""Pinned @ohif/app release (its npm tarball ships the production build in dist/)."""

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


class ViewerUnavailable(RuntimeError):
    """A piece of the viewer harness (npm, chromium, the OHIF package) is not available."""


def cache_root() -> Path:
    """The user's cache (HIPROUTER_CACHE as the test session found it): the download is
    kept across sessions."""
    from tests.conftest import USER_CACHE

    return USER_CACHE


def ohif_dist(version: str = OHIF_VERSION, root: Path | None = None) -> Path:
    """The `dist/` folder of @ohif/app `version`, downloaded once with `npm pack`."""
    home = (root or cache_root()) / "ohif" / version
    dist = home / "dist"
    stamp = home / "installed.json"
    if stamp.is_file() and (dist / "index.html").is_file():
        return dist
    npm = shutil.which("npm")
    if npm is None:
        raise ViewerUnavailable("npm not installed (needed once to fetch @ohif/app)")
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time
        if stamp.is_file() and (dist / "index.html").is_file():
            return dist
        with tempfile.TemporaryDirectory(dir=home) as tmp:
            run = subprocess.run(
                [npm, "pack", f"@ohif/app@{version}", "--json", "--pack-destination", tmp],
                capture_output=True, text=True, timeout=600, cwd=tmp)
            if run.returncode != 0:
                raise ViewerUnavailable(f"npm pack @ohif/app@{version} failed: "
                                        f"{run.stderr.strip()[-1500:]}")
            info = json.loads(run.stdout)[0]
            staged = Path(tmp) / "staged"
            with tarfile.open(Path(tmp) / info["filename"]) as tar:
                members = [m for m in tar.getmembers()
                           if m.name.startswith("package/dist/") and (m.isfile() or m.isdir())]
                tar.extractall(staged, members=members, filter="data")
            built = staged / "package" / "dist"
            if not (built / "index.html").is_file():
                raise ViewerUnavailable(f"@ohif/app@{version} has no built dist/index.html")
            if dist.exists():
                shutil.rmtree(dist)
            built.rename(dist)
        stamp.write_text(json.dumps({"package": f"@ohif/app@{version}",
                                     "integrity": info.get("integrity"),
                                     "shasum": info.get("shasum")}, indent=1))
    return dist


def app_config(origin: str) -> str:
    """OHIF's window.config: one DICOMweb data source (Orthanc, behind our proxy)."""
    root = f"{origin}/dicom-web"
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomweb",
        "configuration": {
            "friendlyName": "Orthanc DICOMweb (hiprouter test PACS)",
            "name": "orthanc",
            "qidoRoot": root,
            "wadoRoot": root,
            "wadoUriRoot": root,
            "qidoSupportsIncludeField": False,
            "supportsReject": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 1,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "maxNumRequests": {"interaction": 20, "thumbnail": 4, "prefetch": 4},
        "showErrorDetails": "always",
        "defaultDataSourceName": "dicomweb",
        "dataSources": [source],
    }
    return "window.config = " + json.dumps(config, indent=1) + ";\n"


_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
               "trailers", "transfer-encoding", "upgrade", "host", "content-length"}
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/javascript", ".mjs")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        self.server.log.append(f"{self.command} {self.path} -> {args[1] if len(args) > 1 else ''}")

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self._dispatch()

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith("/dicom-web/") or path == "/dicom-web":
            self._proxy()
        elif self.command == "POST":
            self.send_error(405)
        elif path == "/app-config.js":
            self._send(200, self.server.config_js.encode(), "text/javascript")
        else:
            self._static(path)

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _static(self, path: str) -> None:
        dist = self.server.dist
        target = (dist / path.lstrip("/")).resolve()
        if not target.is_relative_to(dist) or not target.is_file():
            last = path.rsplit("/", 1)[-1]
            if "." in last:  # a missing asset: 404, not HTML in place of a script
                self._send(404, b"not found", "text/plain")
                return
            target = dist / "index.html"  # SPA route (/viewer, /basic, ...)
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        self._send(200, target.read_bytes(), ctype)

    def _proxy(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        # Orthanc's DICOMweb plugin builds BulkDataURIs from the Host header: keep ours.
        headers["Host"] = self.headers.get("Host", f"127.0.0.1:{self.server.server_port}")
        conn = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=60)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except OSError as exc:
            self._send(502, f"proxy error: {exc}".encode(), "text/plain")
            return
        finally:
            conn.close()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in _HOP_BY_HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    dist: Path
    upstream_port: int
    config_js: str
    log: list[str]


class OhifServer:
    """OHIF's dist/ and a DICOMweb proxy to Orthanc on one loopback origin."""

    def __init__(self, dist: Path, orthanc_http_port: int) -> None:
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.dist = dist.resolve()
        self._httpd.upstream_port = orthanc_http_port
        self._httpd.log = []
        self.origin = f"http://127.0.0.1:{self._httpd.server_port}"
        self._httpd.config_js = app_config(self.origin)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def requests(self) -> list[str]:
        """Request log (method, path, status) for diagnostics."""
        return list(self._httpd.log)

    def study_url(self, study_uid: str, mode: str = "viewer") -> str:
        """The viewer URL of one study (mode route: `viewer` = longitudinal, `basic`, ...)."""
        return f"{self.origin}/{mode}?StudyInstanceUIDs={study_uid}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--no-default-browser-check",
    "--disable-sync", "--disable-extensions", "--disable-dev-shm-usage",
    "--mute-audio", "--hide-scrollbars", "--force-device-scale-factor=1",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
    "--renderer-process-limit=2",
)


class CdpError(RuntimeError):
    pass


class Browser:
    """One headless Chromium page driven through the DevTools protocol over a pipe."""

    def __init__(self, width: int = 1400, height: int = 900, exe: str | None = None) -> None:
        exe = exe or find_chromium()
        if exe is None:
            raise ViewerUnavailable("chromium not installed (Debian package chromium)")
        self.width, self.height = width, height
        self._profile = tempfile.mkdtemp(prefix="hiprouter-chromium-")
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()
        # Chromium reads commands on fd 3 and writes replies on fd 4. Move our ends above
        # 10 first so the redirections cannot clobber each other (bash: dash has no fd > 9).
        a = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
        b = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}",
               f"--window-size={width},{height}", "--remote-debugging-pipe", "about:blank"]
        self._log = open(Path(self._profile) / "chromium.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["/bin/bash", "-c", f'exec "$0" "$@" 3<&{a} 4>&{b} {a}<&- {b}>&-', *cmd],
            pass_fds=(a, b), stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT)
        os.close(a)
        os.close(b)
        self._w = to_chrome_w
        self._r = from_chrome_r
        self._buf = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.console: list[str] = []
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=None,
                           timeout=60)["targetId"]
        self.session = self.send("Target.attachToTarget",
                                 {"targetId": target, "flatten": True}, session=None)["sessionId"]
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    # -- protocol ---------------------------------------------------------------------------
    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply from chromium")
            ready, _, _ = select.select([self._r], [], [], min(left, 1.0))
            if not ready:
                if self.proc.poll() is not None:
                    raise CdpError(f"chromium exited with {self.proc.returncode}: "
                                   f"{self.chromium_log()[-1500:]}")
                continue
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise CdpError(f"chromium closed the pipe: {self.chromium_log()[-1500:]}")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        msg: dict[str, Any] = json.loads(raw)
        return msg

    def _note_event(self, msg: dict[str, Any]) -> None:
        method = msg.get("method", "")
        params = msg.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning"):
            text = " ".join(str(a.get("value", a.get("description", "")))
                            for a in params.get("args", []))
            self.console.append(f"{params['type']}: {text[:500]}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            desc = details.get("exception", {}).get("description") or details.get("text")
            self.console.append(f"exception: {str(desc)[:500]}")
        else:
            self.events.append(msg)
            del self.events[:-200]

    def send(self, method: str, params: dict[str, Any] | None = None,
             session: str | None | bool = True, timeout: float = 30) -> dict[str, Any]:
        """Send one command (to the page session by default) and wait for its result."""
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is True:
            msg["sessionId"] = self.session
        elif session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise CdpError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            if "method" in reply:
                self._note_event(reply)

    # -- page helpers -----------------------------------------------------------------------
    def evaluate(self, expression: str, timeout: float = 30) -> Any:
        """Value of a JavaScript expression in the page (promises awaited)."""
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                             "awaitPromise": True}, timeout=timeout)
        if "exceptionDetails" in res:
            raise CdpError(f"{expression[:80]}: {res['exceptionDetails'].get('text')} "
                           f"{res['exceptionDetails'].get('exception', {}).get('description')}")
        return res.get("result", {}).get("value")

    def add_init_script(self, source: str) -> None:
        """JavaScript run in every new document before the page's own scripts."""
        self.send("Page.addScriptToEvaluateOnNewDocument", {"source": source})

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})

    def wait_for(self, expression: str, timeout: float = 30, interval: float = 0.25) -> Any:
        """Poll a JavaScript expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        wrapped = f"(() => {{ const v = ({expression}); return v instanceof Node ? true : v; }})()"
        while True:
            value = self.evaluate(wrapped)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout} s waiting for: {expression}")
            time.sleep(interval)

    def settle(self, seconds: float) -> None:
        """Let the page run (and drain protocol events) for a while."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self._note_event(self._read_message(deadline))
            except TimeoutError:
                return

    def center_of(self, selector: str) -> tuple[float, float]:
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) "
            "return null; e.scrollIntoView({block: 'center'}); const r = "
            "e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        if not box:
            raise CdpError(f"no element matches {selector}")
        return float(box[0]), float(box[1])

    def click(self, selector: str, count: int = 1) -> None:
        """Click (count=2: double-click) the centre of the first element matching selector,
        with real mouse events, as a user would."""
        x, y = self.center_of(selector)
        self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
        for n in range(1, count + 1):
            for kind in ("mousePressed", "mouseReleased"):
                self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y,
                                                       "button": "left", "clickCount": n})

    def text(self) -> str:
        """The rendered text of the page (document.body.innerText)."""
        return str(self.evaluate("document.body ? document.body.innerText : ''"))

    def html(self) -> str:
        """The live DOM, serialised (what `chromium --dump-dom` prints)."""
        return str(self.evaluate("document.documentElement.outerHTML"))

    def screenshot(self, clip_selector: str | None = None) -> bytes:
        """PNG of the page, or of the box of one element."""
        params: dict[str, Any] = {"format": "png"}
        if clip_selector:
            box = self.evaluate(
                f"(() => {{ const e = document.querySelector({json.dumps(clip_selector)}); "
                "if (!e) return null; const r = e.getBoundingClientRect(); "
                "return [r.x, r.y, r.width, r.height]; })()")
            if not box:
                raise CdpError(f"no element matches {clip_selector}")
            params["clip"] = {"x": box[0], "y": box[1], "width": box[2], "height": box[3],
                              "scale": 1}
        return base64.b64decode(self.send("Page.captureScreenshot", params, timeout=60)["data"])

    def chromium_log(self) -> str:
        try:
            return (Path(self._profile) / "chromium.log").read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.send("Browser.close", session=None, timeout=5)
                except (CdpError, TimeoutError, OSError):
                    pass
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            for fd in (self._w, self._r):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._log.close()
            shutil.rmtree(self._profile, ignore_errors=True)


@contextmanager
def browser(width: int = 1400, height: int = 900) -> Iterator[Browser]:
    b = Browser(width, height)
    try:
        yield b
    finally:
        b.close()


# -- OHIF v3 (longitudinal "viewer" mode) as a user drives it ----------------------------------

# OHIF shows an onboarding tour on first use; mark it as seen so it covers nothing.
_NO_TOURS = ("try { localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour'])); } "
             "catch (e) {}")
_VIEWPORT = "cornerstone.getEnabledElements()[0].viewport"


class OhifViewer:
    """OHIF v3 in a `Browser`: open a study, open a series, read SR drawings and panels.

    Selectors are OHIF's own `data-cy` test hooks (stable across 3.x releases).
    """

    def __init__(self, browser: Browser, server: OhifServer) -> None:
        self.b = browser
        self.server = server
        self.b.add_init_script(_NO_TOURS)

    def open_study(self, study_uid: str, timeout: float = 60) -> None:
        """Load /viewer?StudyInstanceUIDs=... and wait until the first image is drawn."""
        self.b.navigate(self.server.study_url(study_uid))
        self.b.wait_for("document.querySelector('[data-cy^=\"study-browser-thumbnail\"]')",
                        timeout)
        self.wait_image(timeout)

    def wait_image(self, timeout: float = 30) -> None:
        """Wait until the (first) viewport has an image loaded and rendered."""
        self.b.wait_for(f"window.cornerstone && cornerstone.getEnabledElements().length && "
                        f"!!{_VIEWPORT}.getImageData && !!{_VIEWPORT}.getImageData()", timeout)
        self.b.settle(0.5)

    @staticmethod
    def thumbnail(series_number: int) -> str:
        return f'[data-cy^="study-browser-thumbnail"][data-series="{int(series_number)}"]'

    def series_listed(self) -> list[str]:
        """Series descriptions shown in the study browser."""
        return list(self.b.evaluate(
            "[...document.querySelectorAll('[data-cy=\"series-description-label\"]')]"
            ".map(e => e.innerText)"))

    def open_series(self, series_number: int, timeout: float = 30) -> None:
        """Double-click a series in the study browser: it opens in the active viewport (an SR
        opens in OHIF's SR viewport, which draws its SCOORDs on the referenced image)."""
        sel = self.thumbnail(series_number)
        self.b.wait_for(f"document.querySelector('{sel}')", timeout)
        self.b.click(sel, count=2)

    def wait_sr_loaded(self, timeout: float = 30) -> None:
        """Wait for the SR viewport (its 'SR' load badge) and its image."""
        self.b.wait_for("document.querySelector('[data-cy^=\"ModalityLoadBadge\"]')", timeout)
        self.wait_image(timeout)

    def sr_labels(self) -> dict[str, str]:
        """Text boxes OHIF draws for SR measurements: {Tracking Unique Identifier: text}."""
        return dict(self.b.evaluate(
            "Object.fromEntries([...document.querySelectorAll('svg.svg-layer "
            "g[data-annotation-uid]')].map(g => [g.getAttribute('data-annotation-uid'), "
            "[...g.querySelectorAll('tspan')].map(t => t.textContent).join('\\n')]))"))

    def svg_points(self) -> list[tuple[float, float]]:
        """End points of every line and vertices of every polyline drawn in the viewport's
        SVG annotation layer (canvas px)."""
        pts = self.b.evaluate(
            "[...document.querySelectorAll('svg.svg-layer line')].flatMap(l => "
            "[[+l.getAttribute('x1'), +l.getAttribute('y1')], "
            "[+l.getAttribute('x2'), +l.getAttribute('y2')]]).concat("
            "[...document.querySelectorAll('svg.svg-layer polyline')].flatMap(p => "
            "(p.getAttribute('points') || '').trim().split(/\\s+/).map(xy => "
            "xy.split(',').map(Number))))")
        return [(float(p[0]), float(p[1])) for p in pts if len(p) == 2]

    def canvas_point(self, column: float, row: float) -> tuple[float, float]:
        """Where image pixel (column, row) of the displayed image is, in viewport canvas px."""
        xy = self.b.evaluate(
            f"(() => {{ const vp = {_VIEWPORT}; const w = cornerstone.utilities"
            f".imageToWorldCoords(vp.getCurrentImageId(), [{float(column)}, {float(row)}]); "
            "return vp.worldToCanvas(w); })()")
        return float(xy[0]), float(xy[1])

    def page_point(self, column: float, row: float) -> tuple[float, float]:
        """Where image pixel (column, row) is on the page (screenshot px)."""
        x, y = self.canvas_point(column, row)
        box = self.b.evaluate(f"(() => {{ const r = {_VIEWPORT}.canvas.getBoundingClientRect();"
                              " return [r.x, r.y]; })()")
        return x + float(box[0]), y + float(box[1])

    def displayed_sop_uid(self) -> str:
        return str(self.b.evaluate(f"{_VIEWPORT}.getCurrentImageId()")).split(
            "/instances/")[-1].split("/")[0]

    def accept_tracking(self, timeout: float = 15) -> None:
        """Answer 'Yes' to "Do you want to continue tracking measurements for this study?":
        OHIF then hydrates the SR into its measurement panel (only for SRs whose groups its
        Cornerstone adapters can read back)."""
        self.b.wait_for("document.querySelector('[data-cy=\"yes-hydrate-btn\"]')", timeout)
        self.b.click('[data-cy="yes-hydrate-btn"]')

    def tracking_offered(self) -> bool:
        return bool(self.b.evaluate("!!document.querySelector('[data-cy=\"yes-hydrate-btn\"]')"))

    def open_measurements(self, timeout: float = 15) -> str:
        """Open the right-hand measurement panel; returns its text."""
        panel = "document.querySelector('[data-cy=\"trackedMeasurements-panel\"]')"
        if not self.b.evaluate(f"!!{panel}"):
            self.b.click('[data-cy="trackedMeasurements-btn"]')
        self.b.wait_for(panel, timeout)
        self.b.settle(0.5)
        return str(self.b.evaluate(f"{panel}.innerText"))

    def measurement_rows(self) -> list[str]:
        """Text of each measurement in the panel: its row (label) and its detail lines."""
        return list(self.b.evaluate(
            "[...document.querySelectorAll('[data-cy=\"trackedMeasurements-panel\"] "
            "[data-cy=\"data-row\"]')].map(e => e.parentElement.innerText)"))

    def sr_annotation_uids(self) -> list[str]:
        """Tracking UIDs of the SR annotations OHIF holds (drawn or not)."""
        return list(self.b.evaluate(
            "window.cornerstoneTools ? cornerstoneTools.annotation.state.getAllAnnotations()"
            ".filter(a => a.metadata && a.metadata.toolName === 'DICOMSRDisplay')"
            ".map(a => a.data.TrackingUniqueIdentifier) : []"))

    def rerender(self) -> None:
        """Render every viewport again, with its annotations (what any mouse move does)."""
        self.b.evaluate("cornerstone.getEnabledElements().forEach(e => e.viewport.render())")
        self.b.settle(1.0)

    def look_at(self, graphics: Sequence[SrGraphic], wait_s: float = 30) -> SrDrawing:
        """What OHIF drew for these SR graphics (waits up to wait_s for a text box per
        tracking UID), with a screenshot of the page.

        When OHIF holds the SR annotations but has not drawn them by then (a race in OHIF
        3.12: the SR annotations can be added before the SR viewport has its image actor,
        and nothing renders them again until the user moves the mouse), the viewports are
        rendered once more, as a mouse move would, and `rerendered` says so.
        """
        uids = sorted({g.tracking_uid for g in graphics})
        all_drawn = ("(() => { const have = [...document.querySelectorAll('svg.svg-layer "
                     "g[data-annotation-uid]')].map(g => g.getAttribute('data-annotation-uid'));"
                     f" return {json.dumps(uids)}.every(u => have.includes(u)); }})()")
        rerendered = False
        try:
            self.b.wait_for(all_drawn, wait_s)
        except TimeoutError:
            held = set(self.sr_annotation_uids())
            if uids and set(uids) <= held:
                rerendered = True
                self.rerender()
        self.b.settle(1.0)
        png = self.b.screenshot()
        labels = {u: t for u, t in self.sr_labels().items() if u in uids}
        try:
            canvas = [self.canvas_point(*g.points[0]) for g in graphics]
            page = [self.page_point(*g.points[0]) for g in graphics]
        except (CdpError, TypeError, IndexError):  # no image in the viewport
            return SrDrawing(labels, [False] * len(graphics), [0] * len(graphics), png,
                             rerendered)
        ends = self.svg_points()
        line_ends = [any(abs(px - x) <= 3 and abs(py - y) <= 3 for px, py in ends)
                     for x, y in canvas]
        colour = [coloured_pixels(png, x, y) for x, y in page]
        return SrDrawing(labels, line_ends, colour, png, rerendered)


@dataclass
class SrGraphic:
    """One spatial coordinate of an SR measurement group, as OHIF looks for it."""

    tracking_uid: str
    tracking_id: str
    graphic_type: str
    points: list[tuple[float, float]]
    """(column, row) image coordinates."""
    sop_instance_uid: str
    nested_in_num: bool
    """True when the SCOORD is under a NUM (TID 300 INFERRED FROM), not at group level."""


def _code(item: Dataset) -> tuple[str, str]:
    seq = item.get("ConceptNameCodeSequence")
    if not seq:
        return "", ""
    return str(seq[0].CodingSchemeDesignator), str(seq[0].CodeValue)


def sr_graphics(sr: Dataset) -> list[SrGraphic]:
    """The SCOORDs of a TID 1500 SR's measurement groups (DCM 125007), with their tracking
    UID: what OHIF's SR viewport can draw. Works on any SR; empty when it has none."""
    out: list[SrGraphic] = []

    def groups(items: Any) -> Iterator[Dataset]:
        for item in items or []:
            if _code(item) == ("DCM", "125007"):
                yield item
            else:
                yield from groups(item.get("ContentSequence"))

    for group in groups(sr.get("ContentSequence")):
        children = list(group.get("ContentSequence", []))
        uid = next((str(c.UID) for c in children if _code(c) == ("DCM", "112040")), "")
        tid = next((str(c.TextValue) for c in children if _code(c) == ("DCM", "112039")), "")
        scoords = [(c, False) for c in children if c.ValueType == "SCOORD"]
        scoords += [(n, True) for c in children if c.ValueType == "NUM"
                    for n in c.get("ContentSequence", []) if n.ValueType == "SCOORD"]
        for scoord, nested in scoords:
            data = [float(v) for v in scoord.GraphicData]
            image = next((c for c in scoord.get("ContentSequence", [])
                          if c.ValueType == "IMAGE"), None)
            sop = str(image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) if image else ""
            out.append(SrGraphic(uid, tid, str(scoord.GraphicType),
                                 list(zip(data[0::2], data[1::2], strict=True)), sop, nested))
    return out


def coloured_pixels(png: bytes, x: float, y: float, radius: int = 14) -> int:
    """Pixels within `radius` of (x, y) that are clearly not grey: annotation strokes on a
    greyscale radiograph (OHIF draws SR graphics green/yellow)."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    x0, y0 = max(int(x) - radius, 0), max(int(y) - radius, 0)
    patch = rgb[y0:int(y) + radius + 1, x0:int(x) + radius + 1]
    if patch.size == 0:
        return 0
    return int(((patch.max(axis=2) - patch.min(axis=2)) > 80).sum())


@dataclass
class SrDrawing:
    """What the viewport shows for some SR graphics."""

    labels: dict[str, str]
    """Text box per tracking UID."""
    line_ends: list[bool]
    """Per graphic: an SVG line/polyline point lies within 3 px of its first point."""
    colour: list[int]
    """Per graphic: coloured screenshot pixels around its first point."""
    png: bytes
    rerendered: bool = False
    """OHIF held the annotations but drew them only after one more render."""

    def drawn(self, n: int) -> bool:
        return (len(self.labels) == n and len(self.line_ends) == n and all(self.line_ends)
                and all(c >= 8 for c in self.colour))

    def __repr__(self) -> str:
        return (f"SrDrawing(labels={self.labels}, line_ends={self.line_ends}, "
                f"colour={self.colour}, rerendered={self.rerendered})")


@contextmanager
def ohif_viewer(orthanc_http_port: int, width: int = 1400, height: int = 900,
                version: str = OHIF_VERSION) -> Iterator[OhifViewer]:
    """OHIF (served on loopback, DICOMweb proxied to Orthanc) in headless Chromium."""
    server = OhifServer(ohif_dist(version), orthanc_http_port)
    try:
        with browser(width, height) as b:
            yield OhifViewer(b, server)
    finally:
        server.close()
