from __future__ import annotations

import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import free_port, s3_client, wait_for_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny random Wan2.2 I2V pipeline, written by the builder command itself."""
    dest = tmp_path_factory.mktemp("models") / "tiny"
    subprocess.run([sys.executable, str(ROOT / "builder" / "tiny_model.py"), str(dest)], check=True)
    return dest


@pytest.fixture(scope="session")
def engine(tiny_model):
    from wan_i2v.engine import Engine

    return Engine.load(str(tiny_model))


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
    def __init__(self, status=200, body=b"", headers=None, delay=0.0):
        self.status, self.body, self.headers, self.delay = status, body, headers or {}, delay


@pytest.fixture
def http_server():
    """A loopback HTTP server; tests register routes: server.routes['/a.png'] = Route(body=...)."""
    routes: dict[str, Route] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            route = routes.get(self.path.split("?")[0])
            if route is None:
                self.send_error(404)
                return
            self.send_response(route.status)
            for key, value in route.headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            if route.delay:
                time.sleep(route.delay)
            try:
                self.wfile.write(route.body)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.routes = routes
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    server.Route = Route
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
