"""A local endpoint that speaks RunPod's v2 queue API, for development and tests.

RunPod's own local API (`handler.py --rp_serve_api`) has no /cancel, /health, queue or min workers,
so a client cannot be tested against it. This server has them, and runs real workers: each is
`python handler.py` in RunPod's *worker* mode (RUNPOD_WEBHOOK_GET_JOB set), fetching jobs from this
server's job-take route and posting progress and results back, exactly as on RunPod.

    wan-i2v dev-endpoint --port 8080 --api-key dev-key        (WAN_MODEL etc. pass to the workers)
    RUNPOD_ENDPOINT_BASE_URL=http://127.0.0.1:8080/v2 RUNPOD_ENDPOINT_ID=dev ...

Routes under /v2/{endpoint_id}: POST /run, POST /runsync, GET|POST /status/{id}, POST /cancel/{id},
POST /retry/{id}, POST /purge-queue, GET /health; PATCH /v2/serverless/{endpoint_id} sets min/max
workers as RunPod's REST v2 does. All need `Authorization: Bearer <api key>`. Extra routes for tests:
GET /dev/jobs (every submission) and POST /dev/faults {"statuses": [429, 503]} (answers the next
queue-API requests with those statuses).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import requests

log = logging.getLogger(__name__)

RUN_LIMIT_BYTES = 10 * 1000 * 1000
RUNSYNC_LIMIT_BYTES = 20 * 1000 * 1000
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")
TAKE_WAIT_S = 2.0  # how long a worker's job-take or job-stop request is held open


@dataclass
class Job:
    id: str
    input: Any
    webhook: str | None = None
    policy: dict = field(default_factory=dict)
    s3_config: dict | None = None
    status: str = "IN_QUEUE"
    output: Any = None
    error: Any = None
    created: float = field(default_factory=time.time)
    queued: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    worker_id: str | None = None
    retries: int = 0

    def view(self) -> dict:
        now = time.time()
        body = {"id": self.id, "status": self.status}
        body["delayTime"] = int(((self.started or now) - self.queued) * 1000)
        if self.started:
            body["executionTime"] = int(((self.finished or now) - self.started) * 1000)
        if self.output is not None:
            body["output"] = self.output
        if self.error is not None:
            body["error"] = self.error
        if self.worker_id:
            body["workerId"] = self.worker_id
        return body


@dataclass
class WorkerProcess:
    id: str
    process: subprocess.Popen
    state: str = "initializing"  # initializing, idle, running
    job_id: str | None = None
    idle_since: float = field(default_factory=time.time)


class DevEndpoint:
    def __init__(
        self,
        api_key: str,
        endpoint_id: str = "dev",
        port: int = 0,
        host: str = "127.0.0.1",
        workers_max: int = 1,
        idle_timeout_s: float = 5.0,
        retention_s: float = 1800.0,
        handler: Path | None = None,
        log_dir: Path | None = None,
    ):
        self.api_key, self.endpoint_id = api_key, endpoint_id
        self.min_workers, self.max_workers, self.idle_timeout_s = 0, workers_max, idle_timeout_s
        self.retention_s = retention_s
        self.handler = Path(handler or Path.cwd() / "handler.py").resolve()
        self.log_dir = Path(log_dir) if log_dir else None
        self.token = secrets.token_hex(16)  # guards the worker routes
        self.cond = threading.Condition()
        self.jobs: dict[str, Job] = {}
        self.queue: deque[str] = deque()
        self.submissions: list[dict] = []
        self.handed_out: Counter[str] = Counter()  # job id -> times given to a worker
        self.finished_by_worker: Counter[str] = Counter()  # job id -> final results accepted from workers
        self.workers: dict[str, WorkerProcess] = {}
        self.stop_requests: dict[str, set[str]] = {}
        self.faults: deque[int] = deque()
        self.retried = 0
        self._worker_count = 0
        self._closing = False
        self.server = ThreadingHTTPServer((host, port), _handler_class(self))
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "DevEndpoint":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        threading.Thread(target=self._scale_loop, daemon=True).start()
        log.info(
            "dev endpoint %s at %s/v2/%s (workers max %d)",
            self.endpoint_id,
            self.url,
            self.endpoint_id,
            self.max_workers,
        )
        return self

    def close(self) -> None:
        with self.cond:
            self._closing = True
            workers = list(self.workers.values())
            self.workers.clear()
            self.cond.notify_all()
        for worker in workers:
            _stop_process(worker.process)
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "DevEndpoint":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- workers -------------------------------------------------------------------------------
    def _spawn_worker(self) -> None:
        self._worker_count += 1
        worker_id = f"worker-{self._worker_count}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
        env.update(
            RUNPOD_POD_ID=worker_id,
            RUNPOD_WEBHOOK_GET_JOB=f"{self.url}/dev/job-take/$ID?token={self.token}",
            RUNPOD_WEBHOOK_POST_OUTPUT=f"{self.url}/dev/job-done/$RUNPOD_POD_ID/$ID?token={self.token}",
            PYTHONUNBUFFERED="1",
            # The SDK's start-up checks would open a connection to 8.8.8.8: a local endpoint stays on loopback.
            RUNPOD_SKIP_AUTO_SYSTEM_CHECKS="true",
        )
        output = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            output = open(self.log_dir / f"{worker_id}.log", "ab")
        process = subprocess.Popen(
            [sys.executable, str(self.handler)],
            cwd=self.handler.parent,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        if output is not subprocess.DEVNULL:
            output.close()
        self.workers[worker_id] = WorkerProcess(worker_id, process)
        log.info("started %s (pid %d)", worker_id, process.pid)

    def _scale_loop(self) -> None:
        while True:
            to_stop: list[WorkerProcess] = []
            with self.cond:
                if self._closing:
                    return
                self._reap_and_expire()
                live = len(self.workers)
                busy = sum(1 for w in self.workers.values() if w.state == "running")
                wanted = max(self.min_workers, min(self.max_workers, busy + len(self.queue)))
                for _ in range(max(0, min(wanted, self.max_workers) - live)):
                    self._spawn_worker()
                spare = len(self.workers) - max(self.min_workers, busy + len(self.queue))
                now = time.time()
                for worker in list(self.workers.values()):
                    if spare <= 0:
                        break
                    if worker.state == "idle" and now - worker.idle_since > self.idle_timeout_s:
                        del self.workers[worker.id]
                        to_stop.append(worker)
                        spare -= 1
                self.cond.notify_all()
            for worker in to_stop:
                log.info("stopping idle %s", worker.id)
                _stop_process(worker.process)
            time.sleep(0.25)

    def _reap_and_expire(self) -> None:
        now = time.time()
        for worker in list(self.workers.values()):
            if worker.process.poll() is not None:
                del self.workers[worker.id]
                log.warning("%s exited with code %s", worker.id, worker.process.returncode)
                job = self.jobs.get(worker.job_id or "")
                if job and job.status == "IN_PROGRESS":
                    self._finish(job, "FAILED", error=f"worker {worker.id} exited while running the job")
        for job in list(self.jobs.values()):
            timeout = job.policy.get("executionTimeout")
            if job.status == "IN_PROGRESS" and timeout and (now - job.started) * 1000 > timeout:
                self._finish(job, "TIMED_OUT", error=f"execution took longer than {timeout} ms")
                self.stop_requests.setdefault(job.worker_id, set()).add(job.id)
            ttl = job.policy.get("ttl")
            if job.status == "IN_QUEUE" and ttl and (now - job.queued) * 1000 > ttl:
                self.queue.remove(job.id)
                self._finish(job, "TIMED_OUT", error=f"waited in the queue longer than {ttl} ms")
            if job.finished and now - job.finished > self.retention_s:
                del self.jobs[job.id]

    def _finish(self, job: Job, status: str, output: Any = None, error: Any = None) -> None:
        job.status, job.finished = status, time.time()
        job.output, job.error = output, error
        for worker in self.workers.values():
            if worker.job_id == job.id:
                worker.job_id, worker.state, worker.idle_since = None, "idle", time.time()
        self.cond.notify_all()
        if job.webhook:
            threading.Thread(target=_post_webhook, args=(job.webhook, job.view()), daemon=True).start()

    # ---- queue API -----------------------------------------------------------------------------
    def submit(self, body: dict) -> Job:
        job = Job(
            id=f"{uuid.uuid4()}-dev",
            input=body.get("input"),
            webhook=body.get("webhook"),
            policy=body.get("policy") or {},
            s3_config=body.get("s3Config"),
        )
        with self.cond:
            self.jobs[job.id] = job
            self.queue.append(job.id)
            self.submissions.append({"id": job.id, "input": job.input})
            self.cond.notify_all()
        return job

    def wait_for(self, job: Job, timeout_s: float) -> None:
        deadline = time.time() + timeout_s
        with self.cond:
            while job.status not in TERMINAL and time.time() < deadline:
                self.cond.wait(min(1.0, max(0.0, deadline - time.time())))

    def cancel(self, job: Job) -> None:
        with self.cond:
            if job.status == "IN_QUEUE":
                self.queue.remove(job.id)
                self._finish(job, "CANCELLED")
            elif job.status == "IN_PROGRESS":
                self.stop_requests.setdefault(job.worker_id, set()).add(job.id)
                self._finish(job, "CANCELLED")

    def retry(self, job: Job) -> bool:
        with self.cond:
            if job.status not in ("FAILED", "TIMED_OUT"):
                return False
            job.status, job.output, job.error = "IN_QUEUE", None, None
            job.queued, job.started, job.finished, job.worker_id = time.time(), None, None, None
            job.retries += 1
            self.retried += 1
            self.queue.append(job.id)
            self.cond.notify_all()
            return True

    def purge(self) -> int:
        with self.cond:
            removed = list(self.queue)
            self.queue.clear()
            for job_id in removed:
                self._finish(self.jobs[job_id], "CANCELLED")
            return len(removed)

    def health(self) -> dict:
        with self.cond:
            statuses = [job.status for job in self.jobs.values()]
            states = [worker.state for worker in self.workers.values()]
            idle = states.count("idle")
            return {
                "jobs": {
                    "completed": statuses.count("COMPLETED"),
                    "failed": statuses.count("FAILED") + statuses.count("TIMED_OUT"),
                    "inProgress": statuses.count("IN_PROGRESS"),
                    "inQueue": statuses.count("IN_QUEUE"),
                    "retried": self.retried,
                },
                "workers": {
                    "idle": idle,
                    "initializing": states.count("initializing"),
                    "ready": idle,
                    "running": states.count("running"),
                    "throttled": 0,
                    "unhealthy": 0,
                },
            }

    def set_workers(self, workers: dict) -> dict:
        new_min = workers.get("min", self.min_workers)
        new_max = workers.get("max", self.max_workers)
        for name, value in (("min", new_min), ("max", new_max)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"workers.{name} must be an integer >= 0")
        if new_min > new_max:
            raise ValueError(f"workers.min ({new_min}) cannot exceed workers.max ({new_max})")
        with self.cond:
            self.min_workers, self.max_workers = new_min, new_max
            if isinstance(workers.get("idleTimeout"), (int, float)):
                self.idle_timeout_s = float(workers["idleTimeout"])
            self.cond.notify_all()
        return self.endpoint_view()

    def endpoint_view(self) -> dict:
        return {
            "id": self.endpoint_id,
            "workers": {"min": self.min_workers, "max": self.max_workers, "idleTimeout": self.idle_timeout_s},
        }

    # ---- worker side (RunPod's job-take protocol) ---------------------------------------------
    def take(self, worker_id: str) -> dict | None:
        deadline = time.time() + TAKE_WAIT_S
        with self.cond:
            while True:
                worker = self.workers.get(worker_id)
                if worker is None or self._closing:
                    return None
                if worker.state == "initializing":
                    worker.state, worker.idle_since = "idle", time.time()
                if worker.job_id is None and self.queue:
                    job = self.jobs[self.queue.popleft()]
                    job.status, job.started, job.worker_id = "IN_PROGRESS", time.time(), worker_id
                    worker.state, worker.job_id = "running", job.id
                    self.handed_out[job.id] += 1
                    taken = {"id": job.id, "input": job.input}
                    if job.s3_config:
                        taken["s3Config"] = job.s3_config
                    return taken
                if time.time() >= deadline:
                    return None
                self.cond.wait(max(0.0, deadline - time.time()))

    def done(self, worker_id: str, job_id: str, data: dict) -> None:
        with self.cond:
            job = self.jobs.get(job_id)
            if job is None or job.worker_id != worker_id or job.status != "IN_PROGRESS":
                return  # cancelled, timed out or unknown: the late result is dropped
            if data.get("status") == "IN_PROGRESS":
                job.output = data.get("output")
                return
            self.finished_by_worker[job_id] += 1
            if data.get("error"):
                self._finish(job, "FAILED", output=data.get("output"), error=data["error"])
            else:
                self._finish(job, "COMPLETED", output=data.get("output"))
            if data.get("stopPod"):
                worker = self.workers.pop(worker_id, None)
                if worker is not None:
                    threading.Thread(target=_stop_process, args=(worker.process,), daemon=True).start()

    def stop_signals(self, worker_id: str) -> list[str]:
        deadline = time.time() + TAKE_WAIT_S
        with self.cond:
            while not self.stop_requests.get(worker_id) and time.time() < deadline and not self._closing:
                self.cond.wait(max(0.0, deadline - time.time()))
            return sorted(self.stop_requests.pop(worker_id, set()))


def _stop_process(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _post_webhook(url: str, body: dict) -> None:
    for attempt in range(3):  # RunPod: the first try and two retries, 10 s apart
        try:
            if requests.post(url, json=body, timeout=10).ok:
                return
        except requests.RequestException:
            pass
        if attempt < 2:
            time.sleep(10)


def _handler_class(endpoint: DevEndpoint):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            log.debug("%s " + fmt, self.address_string(), *args)

        def do_GET(self):  # noqa: N802 (http.server's naming)
            self._route("GET")

        def do_POST(self):  # noqa: N802
            self._route("POST")

        def do_PATCH(self):  # noqa: N802
            self._route("PATCH")

        def _send(self, status: int, body: Any = None, headers: dict | None = None) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            if body is not None:
                self.send_header("Content-Type", "application/json")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self, limit: int) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            if length > limit:
                self.rfile.read(length)
                raise _HttpError(413, f"request body is {length} bytes; the limit is {limit}")
            raw = self.rfile.read(length) if length else b""
            try:
                return json.loads(raw) if raw else {}
            except ValueError:
                raise _HttpError(400, "request body is not valid JSON") from None

        def _route(self, method: str) -> None:
            url = urlparse(self.path)
            parts = [p for p in url.path.split("/") if p]
            query = parse_qs(url.query)
            try:
                if parts[:1] == ["dev"] and parts[1:2] in (["job-take"], ["job-done"], ["job-stop"]):
                    self._worker_route(method, parts[1:], query)
                    return
                if self.headers.get("Authorization") != f"Bearer {endpoint.api_key}":
                    raise _HttpError(401, "Unauthorized: missing or wrong API key")
                if parts[:1] == ["dev"]:
                    self._dev_route(method, parts[1:])
                elif parts[:2] == ["v2", "serverless"] and len(parts) == 3 and method == "PATCH":
                    self._management(parts[2])
                elif parts[:1] == ["v2"] and len(parts) >= 3:
                    self._queue_route(method, parts[1], parts[2:], query)
                else:
                    raise _HttpError(404, "no such route")
            except _HttpError as exc:
                self._send(exc.status, {"error": exc.message})

        def _worker_route(self, method: str, parts: list[str], query: dict) -> None:
            if query.get("token", [""])[0] != endpoint.token:
                raise _HttpError(403, "bad worker token")
            kind = parts[0]
            if kind == "job-take" and method == "GET":
                job = endpoint.take(parts[1])
                self._send(204) if job is None else self._send(200, job)
            elif kind == "job-done" and method == "POST":
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                endpoint.done(parts[1], parts[2], json.loads(raw or b"{}"))
                self._send(200, {})
            elif kind == "job-stop" and method == "GET":
                ids = endpoint.stop_signals(parts[1])
                self._send(200, {"jobsToStop": ids}) if ids else self._send(204)
            else:
                raise _HttpError(404, "no such worker route")

        def _dev_route(self, method: str, parts: list[str]) -> None:
            if parts == ["jobs"] and method == "GET":
                with endpoint.cond:
                    self._send(200, {"submissions": list(endpoint.submissions)})
            elif parts == ["faults"] and method == "POST":
                statuses = self._body(RUN_LIMIT_BYTES).get("statuses", [])
                with endpoint.cond:
                    endpoint.faults.extend(int(s) for s in statuses)
                self._send(200, {"queued_faults": len(endpoint.faults)})
            else:
                raise _HttpError(404, "no such dev route")

        def _management(self, endpoint_id: str) -> None:
            if endpoint_id != endpoint.endpoint_id:
                raise _HttpError(404, f"endpoint {endpoint_id} not found")
            body = self._body(RUN_LIMIT_BYTES)
            workers = body.get("workers") if isinstance(body, dict) else None
            if not isinstance(workers, dict):
                raise _HttpError(400, 'body must be {"workers": {"min": n, "max": n}}')
            try:
                self._send(200, endpoint.set_workers(workers))
            except ValueError as exc:
                raise _HttpError(400, str(exc)) from None

        def _queue_route(self, method: str, endpoint_id: str, parts: list[str], query: dict) -> None:
            if endpoint_id != endpoint.endpoint_id:
                raise _HttpError(404, f"endpoint {endpoint_id} not found")
            with endpoint.cond:
                fault = endpoint.faults.popleft() if endpoint.faults else None
            if fault:
                self._send(fault, {"error": f"injected fault {fault}"}, {"Retry-After": "0"} if fault == 429 else None)
                return
            action, job_id = parts[0], (parts[1] if len(parts) > 1 else None)
            if action in ("run", "runsync") and method == "POST":
                body = self._body(RUN_LIMIT_BYTES if action == "run" else RUNSYNC_LIMIT_BYTES)
                if not isinstance(body, dict) or "input" not in body:
                    raise _HttpError(400, 'body must be {"input": {...}}')
                job = endpoint.submit(body)
                if action == "runsync":
                    wait_ms = int(query.get("wait", ["90000"])[0])
                    endpoint.wait_for(job, min(max(wait_ms, 1000), 300000) / 1000)
                    self._send(200, job.view())
                else:
                    self._send(200, {"id": job.id, "status": job.status})
            elif action == "health" and method == "GET":
                self._send(200, endpoint.health())
            elif action == "purge-queue" and method == "POST":
                self._send(200, {"removed": endpoint.purge(), "status": "completed"})
            elif job_id is not None and action in ("status", "cancel", "retry"):
                job = endpoint.jobs.get(job_id)
                if job is None:
                    raise _HttpError(404, f"job {job_id} not found")
                if action == "status":
                    self._send(200, job.view())
                elif method != "POST":
                    raise _HttpError(405, f"/{action} takes POST")
                elif action == "cancel":
                    endpoint.cancel(job)
                    self._send(200, {"id": job.id, "status": job.status})
                elif endpoint.retry(job):
                    self._send(200, {"id": job.id, "status": job.status})
                else:
                    raise _HttpError(400, f"job {job_id} is {job.status}; only FAILED or TIMED_OUT jobs can be retried")
            else:
                raise _HttpError(404, f"no route {method} /{'/'.join(parts)}")

    return Handler


class _HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message
