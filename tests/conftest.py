from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import ROOT, free_port, s3_client, wait_for_port


def pytest_addoption(parser):
    parser.addoption(
        "--load-scale",
        choices=("full", "ci"),
        default="full",
        help="size of the load tier: full (the README's figures) or ci (scaled down for .ci/run)",
    )


def pytest_configure(config):
    # For tests whose size is fixed when their module is imported (hypothesis' example counts in test_fuzz.py).
    os.environ["WAN_TEST_LOAD_SCALE"] = config.getoption("--load-scale")


@pytest.fixture(scope="session")
def load_scale(request) -> str:
    return request.config.getoption("--load-scale")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny random Wan2.2 I2V pipeline, written by the builder command itself."""
    dest = tmp_path_factory.mktemp("models") / "tiny"
    subprocess.run([sys.executable, str(ROOT / "builder" / "tiny_model.py"), str(dest)], check=True)
    return dest


@pytest.fixture(scope="session")
def engine(tiny_model):
    from wan_i2v.worker.engine import Engine

    return Engine.load(str(tiny_model))


@pytest.fixture(scope="session")
def engine_with(tiny_model):
    """Engines on the tiny model with other settings (`engine_with(memory_plan="swap")`), one per setting."""
    from wan_i2v.worker.engine import Engine
    from wan_i2v.worker.settings import EngineOptions

    built = {}

    def build(**options):
        key = tuple(sorted(options.items()))
        if key not in built:
            built[key] = Engine.load(str(tiny_model), EngineOptions(**options))
        return built[key]

    return build


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-compatible server (moto) on loopback, started for this test session."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, 30, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def bucket_env(s3_endpoint, request):
    """Environment naming a fresh bucket on the loopback S3 server."""
    name = "wan-" + request.node.name.lower().replace("_", "-")[:40].strip("-[]")
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in name)
    s3_client(s3_endpoint).create_bucket(Bucket=name)
    return {
        "BUCKET_ENDPOINT_URL": s3_endpoint,
        "BUCKET_ACCESS_KEY_ID": "test-access-key",
        "BUCKET_SECRET_ACCESS_KEY": "test-secret-key-do-not-log",
        "BUCKET_NAME": name,
    }


class Route:
    """One canned answer. `stall` waits before the status line; `trickle` sends the body one byte at a
    time with that pause between bytes; `length=False` sends no Content-Length (body ends at close)."""

    def __init__(self, status=200, body=b"", headers=None, delay=0.0, stall=0.0, trickle=0.0, length=True):
        self.status, self.body, self.headers, self.delay = status, body, headers or {}, delay
        self.stall, self.trickle, self.length = stall, trickle, length


@pytest.fixture
def http_server():
    """A loopback HTTP server; tests register routes: server.routes['/a.png'] = Route(body=...).

    `server.hits` lists the paths requested, in order."""
    routes: dict[str, Route] = {}
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            route = routes.get(self.path.split("?")[0])
            if route is None:
                self.send_error(404)
                return
            time.sleep(route.stall)
            self.send_response(route.status)
            for key, value in route.headers.items():
                self.send_header(key, value)
            if route.length:
                self.send_header("Content-Length", str(len(route.body)))
            else:
                self.close_connection = True
            self.end_headers()
            if route.delay:
                time.sleep(route.delay)
            try:
                if route.trickle:
                    for index in range(len(route.body)):
                        self.wfile.write(route.body[index : index + 1])
                        self.wfile.flush()
                        time.sleep(route.trickle)
                else:
                    self.wfile.write(route.body)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.routes = routes
    server.hits = hits
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    server.Route = Route
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def serve_proxy(upstream: str, before, after):
    """A loopback HTTP proxy to `upstream` for injecting faults; returns (server, url).

    `before(handler, body)` runs first and may answer the request itself (then it returns True);
    `after(handler)` runs once upstream has answered, before that answer is passed back."""
    import http.client
    from urllib.parse import urlsplit

    target = urlsplit(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if before(self, body):
                return
            upstream_conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            headers["Host"] = target.netloc
            upstream_conn.request(self.command, self.path, body=body, headers=headers)
            answer = upstream_conn.getresponse()
            data = answer.read()
            upstream_conn.close()
            after(self)
            self.send_response(answer.status)
            for key, value in answer.getheaders():
                if key.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_PATCH = do_HEAD = do_DELETE = _any

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


class FaultyS3:
    """A loopback proxy in front of the S3 server that injects faults: `fail_next` requests answer
    500 InternalError, and while `stall_s` is set each request waits that long and is then dropped.
    `requests` records (method, path, monotonic time) of everything that reached the proxy."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.fail_next = 0
        self.stall_s = 0.0
        self.requests: list[tuple[str, str, float]] = []

    def before(self, handler: BaseHTTPRequestHandler, body: bytes) -> bool:
        self.requests.append((handler.command, handler.path, time.monotonic()))
        if self.stall_s:
            time.sleep(self.stall_s)
            handler.close_connection = True
            return True
        if self.fail_next > 0:
            self.fail_next -= 1
            error = b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"
            handler.send_response(500)
            handler.send_header("Content-Type", "application/xml")
            handler.send_header("Content-Length", str(len(error)))
            handler.end_headers()
            handler.wfile.write(error)
            return True
        return False


@pytest.fixture
def faulty_s3(s3_endpoint):
    state = FaultyS3(s3_endpoint)
    server, state.url = serve_proxy(s3_endpoint, state.before, lambda handler: None)
    yield state
    server.shutdown()
    server.server_close()


class HeldRuns:
    """A loopback proxy in front of a dev endpoint. While `hold` is set, each POST .../run reaches the
    endpoint (the job is queued) but its answer is kept back until `release` is set: the moment in
    which a client has sent a job and does not know its id yet. `held` is set when that happens."""

    def __init__(self):
        self.hold = threading.Event()
        self.held = threading.Event()
        self.release = threading.Event()
        self.requests: list[tuple[str, str]] = []

    def before(self, handler: BaseHTTPRequestHandler, body: bytes) -> bool:
        self.requests.append((handler.command, handler.path))
        return False

    def after(self, handler: BaseHTTPRequestHandler) -> None:
        if handler.command == "POST" and handler.path.endswith("/run") and self.hold.is_set():
            self.held.set()
            assert self.release.wait(120), "the held /run answer was never released"


@pytest.fixture
def held_runs():
    """start(endpoint) -> HeldRuns with `.url` standing in for `endpoint.url`."""
    servers = []

    def start(endpoint) -> HeldRuns:
        state = HeldRuns()
        server, state.url = serve_proxy(endpoint.url, state.before, state.after)
        servers.append((state, server))
        return state

    yield start
    for state, server in servers:
        state.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def endpoint_factory(tiny_model, tmp_path, monkeypatch):
    """Starts local RunPod-compatible endpoints whose workers run `python handler.py` on the tiny model."""
    from helpers import KEY

    from wan_i2v.ops.devserver import DevEndpoint

    for name in [n for n in os.environ if n.startswith(("BUCKET_", "RUNPOD_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("WAN_MODEL", str(tiny_model))
    monkeypatch.setenv("WAN_OUTPUT_DIR", str(tmp_path / "worker-out"))
    started = []

    def start(workers_max=1, idle_timeout_s=1.0, spawn_workers=True, retention_s=1800.0):
        endpoint = DevEndpoint(
            api_key=KEY,
            handler=ROOT / "handler.py",
            workers_max=workers_max,
            idle_timeout_s=idle_timeout_s,
            log_dir=tmp_path / "worker-logs",
            spawn_workers=spawn_workers,
            retention_s=retention_s,
        ).start()
        started.append(endpoint)
        return endpoint

    yield start
    for endpoint in started:
        endpoint.close()


@pytest.fixture
def idle_endpoint(endpoint_factory):
    """A local endpoint that never starts a worker: jobs stay queued, nothing costs a cold start."""
    return endpoint_factory(spawn_workers=False)
