"""The dev endpoint's HTTP routes, as one table: method, path pattern, guard, function.

Guards: "worker" routes (RunPod's job-take protocol) need the `?token=` the endpoint gave its
workers; "api" routes need `Authorization: Bearer <api key>`; "manage" routes (RunPod's REST v2
management API) need the key and answer errors in RFC 9457 form, `{title, status, detail}` plus
`errors` naming the fields, as RunPod's does; "queue" routes need the key, the right endpoint id, and
are where injected faults are answered. A function gets the endpoint, the request and the pattern's
named groups, and returns a Reply.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlparse

log = logging.getLogger(__name__)

RUN_LIMIT_BYTES = 10 * 1000 * 1000  # RunPod's limits on a request body
RUNSYNC_LIMIT_BYTES = 20 * 1000 * 1000


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict = field(default_factory=dict)


class HttpError(Exception):
    """An answer other than success: `{"error": message}` on the queue API, RFC 9457 on management."""

    def __init__(self, status: int, message: str, errors: list[str] | None = None):
        super().__init__(message)
        self.status, self.message, self.errors = status, message, errors or []


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Any
    read: Callable[[int], bytes]

    def raw(self, limit: int | None = None) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if limit is not None and length > limit:
            self.read(length)  # drain it, so the connection stays usable for the answer
            raise HttpError(413, f"request body is {length} bytes; the limit is {limit}")
        return self.read(length) if length else b""

    def json(self, limit: int | None = RUN_LIMIT_BYTES) -> Any:
        raw = self.raw(limit)
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            raise HttpError(400, "request body is not valid JSON") from None


# ---- the worker routes (token-guarded) --------------------------------------------------------------
def job_take(ep, req: Request, worker_id: str) -> Reply:
    job = ep.take(worker_id)
    return Reply(204) if job is None else Reply(200, job)


def job_done(ep, req: Request, worker_id: str, job_id: str) -> Reply:
    ep.done(worker_id, job_id, req.json(limit=None))
    return Reply(200, {})


def job_stop(ep, req: Request, worker_id: str) -> Reply:
    ids = ep.stop_signals(worker_id)
    return Reply(200, {"jobsToStop": ids}) if ids else Reply(204)


# ---- test routes --------------------------------------------------------------------------------
def dev_jobs(ep, req: Request) -> Reply:
    return Reply(200, {"submissions": ep.stats().submissions})


def dev_faults(ep, req: Request) -> Reply:
    body = req.json()
    statuses = body.get("statuses", []) if isinstance(body, dict) else None
    if not isinstance(statuses, list) or not all(isinstance(s, int) and 100 <= s <= 599 for s in statuses):
        raise HttpError(400, 'body must be {"statuses": [HTTP status, ...]}')
    return Reply(200, {"queued_faults": ep.inject_faults(statuses)})


# ---- management (RunPod's REST v2; errors in RFC 9457 form, see dispatch) ---------------------------
def endpoint_get(ep, req: Request, endpoint_id: str) -> Reply:
    _this_endpoint(ep, endpoint_id)
    return Reply(200, ep.settings())


def endpoint_patch(ep, req: Request, endpoint_id: str) -> Reply:
    """Only `workers` is modelled; it replaces the endpoint's (DevEndpoint.set_workers)."""
    body = req.json()  # read first: an answer sent before the body is read would garble the connection
    _this_endpoint(ep, endpoint_id)
    refusal = ep.next_update_refusal()
    if refusal:
        raise HttpError(*refusal)
    if not isinstance(body, dict):
        raise HttpError(400, "the request body must be a JSON object")
    others = [name for name in body if name != "workers"]
    errors = [f"$: additional properties {name!r} not allowed (the dev endpoint has only workers)" for name in others]
    if "workers" in body and not isinstance(body["workers"], dict):
        errors.append(f"$.workers: must be an object, got {json.dumps(body['workers'])}")
    if errors:
        raise HttpError(422, "Request validation failed.", errors)
    if "workers" not in body:
        return Reply(200, ep.settings())  # nothing to change
    try:
        return Reply(200, ep.set_workers(body["workers"]))
    except ValueError as exc:  # DevEndpoint.WorkersRefused: each error names its field
        raise HttpError(422, "Request validation failed.", getattr(exc, "errors", [str(exc)])) from None


def _this_endpoint(ep, endpoint_id: str) -> None:
    if endpoint_id != ep.endpoint_id:
        raise HttpError(404, f"endpoint {endpoint_id} not found")


# ---- the queue API --------------------------------------------------------------------------------
def _submit(ep, req: Request, limit: int) -> dict:
    body = req.json(limit)
    if not isinstance(body, dict) or "input" not in body:
        raise HttpError(400, 'body must be {"input": {...}}')
    try:
        return ep.submit(body)
    except ValueError as exc:  # the queue refuses a malformed policy
        raise HttpError(400, str(exc)) from None


def run(ep, req: Request) -> Reply:
    job = _submit(ep, req, RUN_LIMIT_BYTES)
    return Reply(200, {"id": job["id"], "status": job["status"]})


def runsync(ep, req: Request) -> Reply:
    job = _submit(ep, req, RUNSYNC_LIMIT_BYTES)
    wait_ms = int(req.query.get("wait", ["90000"])[0])
    return Reply(200, ep.wait_for(job["id"], min(max(wait_ms, 1000), 300000) / 1000))


def status(ep, req: Request, job_id: str) -> Reply:
    return Reply(200, _known(ep.view(job_id), job_id))


def cancel(ep, req: Request, job_id: str) -> Reply:
    job = _known(ep.cancel(job_id), job_id)
    return Reply(200, {"id": job["id"], "status": job["status"]})


def retry(ep, req: Request, job_id: str) -> Reply:
    job = _known(ep.view(job_id), job_id)
    if not ep.retry(job_id):
        raise HttpError(400, f"job {job_id} is {job['status']}; only FAILED or TIMED_OUT jobs can be retried")
    return Reply(200, {"id": job_id, "status": "IN_QUEUE"})


def purge(ep, req: Request) -> Reply:
    return Reply(200, {"removed": ep.purge(), "status": "completed"})


def health(ep, req: Request) -> Reply:
    return Reply(200, ep.health())


def _known(job: dict | None, job_id: str) -> dict:
    if job is None:
        raise HttpError(404, f"job {job_id} not found")
    return job


_ID = r"(?P<{}>[^/]+)"
_V2 = "/v2/" + _ID.format("endpoint_id")
ROUTES: list[tuple[str, str, str, Callable[..., Reply]]] = [
    ("GET", "/dev/job-take/" + _ID.format("worker_id"), "worker", job_take),
    ("POST", "/dev/job-done/" + _ID.format("worker_id") + "/" + _ID.format("job_id"), "worker", job_done),
    ("GET", "/dev/job-stop/" + _ID.format("worker_id"), "worker", job_stop),
    ("GET", "/dev/jobs", "api", dev_jobs),
    ("POST", "/dev/faults", "api", dev_faults),
    ("GET", "/v2/serverless/" + _ID.format("endpoint_id"), "manage", endpoint_get),
    ("PATCH", "/v2/serverless/" + _ID.format("endpoint_id"), "manage", endpoint_patch),
    ("POST", _V2 + "/run", "queue", run),
    ("POST", _V2 + "/runsync", "queue", runsync),
    ("GET", _V2 + "/status/" + _ID.format("job_id"), "queue", status),
    ("POST", _V2 + "/status/" + _ID.format("job_id"), "queue", status),
    ("POST", _V2 + "/cancel/" + _ID.format("job_id"), "queue", cancel),
    ("POST", _V2 + "/retry/" + _ID.format("job_id"), "queue", retry),
    ("POST", _V2 + "/purge-queue", "queue", purge),
    ("GET", _V2 + "/health", "queue", health),
]
_TABLE = [(method, re.compile(pattern + "/?"), guard, fn) for method, pattern, guard, fn in ROUTES]


def dispatch(ep, req: Request) -> Reply:
    """Finds the route and applies its guard. A path no route has is 404; a path some route has with
    another method is 405. Every path but the worker routes' needs the API key first, as on RunPod.
    Management routes answer errors as RunPod's REST v2 does (RFC 9457), the others as its queue API."""
    matches = [(m, match, guard, fn) for m, pattern, guard, fn in _TABLE if (match := pattern.fullmatch(req.path))]
    is_worker = any(guard == "worker" for _, _, guard, _ in matches)
    problem = any(guard == "manage" for _, _, guard, _ in matches)
    try:
        if is_worker:
            if req.query.get("token", [""])[0] != ep.token:
                raise HttpError(403, "bad worker token")
        elif req.headers.get("Authorization") != f"Bearer {ep.api_key}":
            raise HttpError(401, "Unauthorized: missing or wrong API key")
        if not matches:
            raise HttpError(404, f"no route {req.method} {req.path}")
        chosen = [(match, guard, fn) for m, match, guard, fn in matches if m == req.method]
        if not chosen:
            allowed = ", ".join(sorted({m for m, *_ in matches}))
            return _error(HttpError(405, f"{req.path} takes {allowed}"), problem, {"Allow": allowed})
        match, guard, fn = chosen[0]
        params = match.groupdict()
        if guard == "queue":
            if params.pop("endpoint_id") != ep.endpoint_id:
                raise HttpError(404, f"endpoint {match['endpoint_id']} not found")
            fault = ep.next_fault()
            if fault:
                return Reply(fault, {"error": f"injected fault {fault}"}, {"Retry-After": "0"} if fault == 429 else {})
        return fn(ep, req, **params)
    except HttpError as exc:
        return _error(exc, problem)


def _error(exc: HttpError, problem: bool, headers: dict | None = None) -> Reply:
    if not problem:
        return Reply(exc.status, {"error": exc.message}, headers or {})
    try:
        title = HTTPStatus(exc.status).phrase
    except ValueError:  # a status http.HTTPStatus does not name
        title = "Error"
    body = {"title": title, "status": exc.status, "detail": exc.message}
    if exc.errors:
        body["errors"] = exc.errors
    return Reply(exc.status, body, {"Content-Type": "application/problem+json", **(headers or {})})


def handler_class(ep) -> type[BaseHTTPRequestHandler]:
    """A request handler for http.server that answers through `dispatch`."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # the query carries the worker token: debug level only
            log.debug("%s " + fmt, self.address_string(), *args)

        def _any(self) -> None:
            url = urlparse(self.path)
            request = Request(self.command, url.path, parse_qs(url.query), self.headers, self.rfile.read)
            self._send(dispatch(ep, request))

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _any  # http.server calls do_<METHOD>

        def _send(self, reply: Reply) -> None:
            data = b"" if reply.body is None else json.dumps(reply.body).encode()
            self.send_response(reply.status)
            if reply.body is not None and "Content-Type" not in reply.headers:
                self.send_header("Content-Type", "application/json")
            for key, value in reply.headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
