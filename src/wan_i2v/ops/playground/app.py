"""The playground's web server: Flask routes over `Playground`, and the guards around them.

Safe by default: it binds 127.0.0.1 and answers only requests whose Host names it (a page on another
site cannot reach it through DNS rebinding); every request that changes something carries the
per-launch token in `X-Playground-Token` (another site's page cannot read it, so it cannot forge one);
request bodies are capped at what two maximum-size images take. Bound to another address (an explicit
flag), every request needs the token: the printed address carries it once (`/?token=...`), which
sets a same-site cookie for the page's own requests.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
import sys
import threading
from importlib import resources
from pathlib import Path

from flask import Flask, Response, jsonify, request, send_file
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.serving import WSGIRequestHandler, make_server

from ...framing import MAX_IMAGE_BYTES
from .backend import Playground, PlaygroundError, image_type
from .history import UnknownJob

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-Playground-Token"
COOKIE = "wan_playground_{port}"  # cookies ignore ports: two playgrounds on one host keep their own
BODY_LIMIT = 2 * (MAX_IMAGE_BYTES * 4 // 3 + 4) + 1024 * 1024  # image and last image as base64, and the rest
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob: http: https:; "
    "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
STATIC = resources.files(__package__) / "static"
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}


def static_files() -> dict[str, str]:
    """What /static/<name> serves: the plain files directly in static/ with a known type (the page's ES
    modules among them, as text/javascript), by name. Listed per request, so an edited page needs no restart."""
    found = {}
    for item in STATIC.iterdir():
        kind = STATIC_TYPES.get(Path(item.name).suffix)
        if kind and item.is_file():
            found[item.name] = kind
    return found


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_host(host: str) -> str:
    """How an address is written in a URL and a Host header: 127.0.0.1 for localhost, IPv6 in brackets."""
    if host == "localhost":
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def host_names(host: str, port: int) -> set[str]:
    """The Host headers a loopback playground answers: its own address and the loopback names, with the
    port (and without it on port 80, where browsers leave it out)."""
    names = {url_host(host), "127.0.0.1", "localhost", "[::1]"}
    return {f"{name}:{port}" for name in names} | (names if port == 80 else set())


def create_app(playground: Playground, token: str, host: str, port: int) -> Flask:
    app = Flask(__name__, static_folder=None)
    app.json.sort_keys = False  # the form follows the schema's field order
    app.config["MAX_CONTENT_LENGTH"] = BODY_LIMIT
    local = is_loopback(host)
    names = host_names(host, port) if local else None
    cookie = COOKIE.format(port=port)

    def token_ok(given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), token.encode())

    @app.before_request
    def guard():
        if names is not None and request.host not in names:
            return _error(403, f"this playground answers as {url_host(host)}:{port} only")
        changes = request.method not in ("GET", "HEAD", "OPTIONS")
        if changes and not token_ok(request.headers.get(TOKEN_HEADER)):
            return _error(403, "missing or wrong playground token: reload the page")
        if not local and request.path != "/" and not token_ok(request.cookies.get(cookie)):
            return _error(401, "open the address the playground printed (it carries ?token=...)")
        return None

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(PlaygroundError)
    def playground_error(exc: PlaygroundError):
        return jsonify({"message": exc.message, "errors": exc.fields}), exc.status

    @app.errorhandler(UnknownJob)
    def unknown_job(exc: UnknownJob):
        return _error(404, f"no job {exc.args[0]!r} here")

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_exc):
        text = f"image: the request is over {BODY_LIMIT // (1024 * 1024)} MB; images may be at most "
        text += f"{MAX_IMAGE_BYTES // (1024 * 1024)} MB each"
        return jsonify({"message": text, "errors": {"image": text}}), 413

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return _error(exc.code or 500, exc.description or exc.name)

    @app.get("/")
    def page():
        given = request.args.get("token")
        if not local and not token_ok(given) and not token_ok(request.cookies.get(cookie)):
            return Response(
                "Open the address the playground printed when it started (it carries ?token=...).",
                status=401,
                mimetype="text/plain",
            )
        html = (STATIC / "index.html").read_text(encoding="utf-8").replace("{{TOKEN}}", token)
        response = Response(html, mimetype="text/html")
        if not local and token_ok(given):
            response.set_cookie(cookie, token, httponly=True, samesite="Strict")
        return response

    @app.get("/static/<name>")
    def static_file(name: str):
        kind = static_files().get(name)  # only a name the listing holds: no path from the request
        if kind is None:
            return _error(404, "no such file")
        return Response((STATIC / name).read_bytes(), mimetype=kind)

    @app.get("/api/config")
    def config():
        return jsonify(playground.config())

    @app.post("/api/preview")
    def preview():
        return jsonify(playground.preview(request.get_json(silent=True)))

    @app.post("/api/jobs")
    def submit():
        return jsonify(playground.submit(request.get_json(silent=True)))

    @app.get("/api/history")
    def history():
        return jsonify({"jobs": playground.jobs()})

    @app.get("/api/jobs/<job_id>")
    def job(job_id: str):
        return jsonify(playground.job(job_id))

    @app.post("/api/jobs/<job_id>/cancel")
    def cancel(job_id: str):
        return jsonify(playground.cancel(job_id))

    @app.get("/api/jobs/<job_id>/snippets")
    def snippets(job_id: str):
        return jsonify(playground.snippets(job_id))

    @app.get("/api/jobs/<job_id>/video")
    def video(job_id: str):
        return _file(playground.history.video_path(job_id), "video/mp4")

    @app.get("/api/jobs/<job_id>/poster")
    def poster(job_id: str):
        return _file(playground.history.poster_path(job_id), "image/png")

    @app.put("/api/jobs/<job_id>/poster")
    def save_poster(job_id: str):
        playground.save_poster(job_id, request.get_data(cache=False))
        return Response(status=204)

    @app.get("/api/jobs/<job_id>/image")
    def image(job_id: str):
        found = playground.history.image(job_id)
        if found is None:
            return _error(404, "this job's image was a URL, or the job is not in the history")
        data, _ = found
        return Response(data, mimetype=image_type(data))  # never as the sender named it (SVG, HTML)

    return app


def _file(path: Path, kind: str):
    if not path.is_file():
        return _error(404, "not here (yet)")
    return send_file(path, mimetype=kind, conditional=True, max_age=0)


def _error(status: int, message: str):
    return jsonify({"message": message, "errors": {}}), status


class _QuietRequests(WSGIRequestHandler):
    """The page polls every second or so: a log line per request would bury the command's own output."""

    def log_request(self, code="-", size="-") -> None:
        if str(code).startswith("5"):
            super().log_request(code, size)


class PlaygroundServer:
    """The app on a threaded server in a background thread (`serve_forever` for the command)."""

    def __init__(self, playground: Playground, host: str = "127.0.0.1", port: int = 7860, token: str | None = None):
        self.token = token or secrets.token_urlsafe(24)
        self.host = host
        self._server = make_server(
            host, port, create_app(playground, self.token, host, port), threaded=True, request_handler=_QuietRequests
        )
        self._server.handle_error = self._handle_error
        self.port = self._server.server_port
        if port == 0:  # the app checks Host against the real port
            self._server.app = create_app(playground, self.token, host, self.port)
        self._thread: threading.Thread | None = None

    def _handle_error(self, request, client_address) -> None:
        """A browser that drops a connection (a video seek, a closed tab) is not an error worth a traceback."""
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        type(self._server).handle_error(self._server, request, client_address)

    @property
    def url(self) -> str:
        return f"http://{url_host(self.host)}:{self.port}/"

    @property
    def url_with_token(self) -> str:
        return f"{self.url}?token={self.token}"

    def start(self) -> PlaygroundServer:
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), name="playground", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
