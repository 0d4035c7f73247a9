"""DevEndpoint: the queue, the worker pool and the routes glued together behind one lock.

Threads: the HTTP server's (one per request; worker long-polls wait on the condition here) and the
scale loop, the only thread that starts workers (see pool.py for why) and the one that stops them all
when the endpoint closes.
"""

from __future__ import annotations

import json
import logging
import secrets
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path

import requests

from . import pool as pool_mod
from .queue import TERMINAL, Job, JobQueue, is_count
from .routes import handler_class

log = logging.getLogger(__name__)

TAKE_WAIT_S = 2.0  # how long a worker's job-take or job-stop request is held open
SCALE_EVERY_S = 0.25
CLOSE_GRACE_S = 3.0  # a job still running at close has nowhere to report: its worker is not waited for
# RunPod's defaults for an endpoint's `workers` (CreateEndpointRequest in its OpenAPI document,
# github.com/runpod/docs api-reference-v2/openapi.json): what a PATCH that leaves a field out gets here.
WORKERS_DEFAULTS = {"min": 0, "max": 3, "idleTimeout": 10}


class WorkersRefused(ValueError):
    """A `workers` object RunPod's schema refuses; `errors` name the fields, as RunPod's 422 does."""

    def __init__(self, errors: list[str]):
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class EndpointStats:
    """A consistent snapshot of what the endpoint has seen, for tests."""

    submissions: list[dict]  # {"id", "input"} of every /run and /runsync, in order
    handed_out: dict[str, int]  # job id -> times handed to a worker
    finished_by_worker: dict[str, int]  # job id -> final results accepted from workers
    min_workers: int
    max_workers: int
    workers_started: int  # worker processes started so far, in total
    worker_pids: dict[str, int]  # live worker processes: worker id -> pid


class DevEndpoint:
    """A local endpoint speaking RunPod's v2 queue API, with real `python handler.py` workers.

    `spawn_workers=False` never starts a worker (jobs stay queued, whatever min workers says): for API
    tests that must not pay a worker's cold start. `clock` gives the queue its time."""

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
        spawn_workers: bool = True,
        clock: Callable[[], float] = time.time,
    ):
        self.api_key, self.endpoint_id = api_key, endpoint_id
        self.min_workers, self.max_workers, self.idle_timeout_s = 0, workers_max, idle_timeout_s
        self.spawn_workers, self.clock = spawn_workers, clock
        self.token = secrets.token_hex(16)  # guards the worker routes
        self.cond = threading.Condition()
        self.queue = JobQueue(retention_s, on_finish=self._on_finish)
        self.faults: deque[int] = deque()  # statuses to answer the next queue-API requests with
        self.update_refusals: deque[tuple[int, str, list[str]]] = deque()  # for the next management PATCHes
        self._closing = False
        self._threads: list[threading.Thread] = []
        self.server = ThreadingHTTPServer((host, port), handler_class(self))
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self.pool = pool_mod.WorkerPool(
            Path(handler or Path.cwd() / "handler.py"),
            take_url=f"{self.url}/dev/job-take/$ID?token={self.token}",
            done_url=f"{self.url}/dev/job-done/$RUNPOD_POD_ID/$ID?token={self.token}",
            log_dir=log_dir,
        )

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> DevEndpoint:
        self._threads = [
            threading.Thread(target=self.server.serve_forever, name="dev-endpoint-http", daemon=True),
            threading.Thread(target=self._scale_loop, name="dev-endpoint-scale", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        log.info(
            "dev endpoint %s at %s/v2/%s (workers max %d)",
            self.endpoint_id,
            self.url,
            self.endpoint_id,
            self.max_workers,
        )
        return self

    def close(self) -> None:
        """Stops every worker (the scale loop does, before it returns), then the HTTP server."""
        with self.cond:
            self._closing = True
            self.cond.notify_all()
        if self._threads:
            self._threads[1].join()
            self.server.shutdown()
        self.server.server_close()
        self.pool.cleanup()

    def __enter__(self) -> DevEndpoint:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- for tests --------------------------------------------------------------------------------
    def stats(self) -> EndpointStats:
        with self.cond:
            return EndpointStats(
                submissions=[dict(s) for s in self.queue.submissions],
                handed_out=dict(self.queue.handed_out),
                finished_by_worker=dict(self.queue.finished_by_worker),
                min_workers=self.min_workers,
                max_workers=self.max_workers,
                workers_started=self.pool.started,
                worker_pids=self.pool.pids(),
            )

    def inject_faults(self, statuses) -> int:
        """The next queue-API requests are answered with these statuses (429 with Retry-After: 0).
        Returns how many are now waiting."""
        with self.cond:
            self.faults.extend(int(s) for s in statuses)
            return len(self.faults)

    def next_fault(self) -> int | None:
        with self.cond:
            return self.faults.popleft() if self.faults else None

    # ---- the queue API (routes call these) ---------------------------------------------------------
    def submit(self, body: dict) -> dict:
        with self.cond:
            job = self.queue.submit(body, self.clock())
            self.cond.notify_all()
            return job.view(self.clock())

    def view(self, job_id: str) -> dict | None:
        with self.cond:
            job = self.queue.get(job_id)
            return job.view(self.clock()) if job else None

    def wait_for(self, job_id: str, timeout_s: float) -> dict | None:
        deadline = time.monotonic() + timeout_s
        with self.cond:
            job = self.queue.get(job_id)
            while job is not None and job.status not in TERMINAL and time.monotonic() < deadline:
                self.cond.wait(min(1.0, max(0.0, deadline - time.monotonic())))
            return job.view(self.clock()) if job else None

    def cancel(self, job_id: str) -> dict | None:
        with self.cond:
            job = self.queue.cancel(job_id, self.clock())
            return job.view(self.clock()) if job else None

    def retry(self, job_id: str) -> bool:
        with self.cond:
            retried = self.queue.retry(job_id, self.clock())
            self.cond.notify_all()
            return retried

    def purge(self) -> int:
        with self.cond:
            return self.queue.purge(self.clock())

    def health(self) -> dict:
        """RunPod's /health counts, and (dev endpoint only) each live worker's cold-start report."""
        with self.cond:
            return {**self.queue.health(), "coldStart": self.pool.cold_starts()}

    def settings(self) -> dict:
        """GET /v2/serverless/{id}: the endpoint as RunPod's REST v2 reports one, its worker settings
        under RunPod's names (no scaling, GPU or container settings: this endpoint has none)."""
        with self.cond:
            return self._settings()

    def set_workers(self, workers: dict) -> dict:
        """PATCH /v2/serverless/{id}'s `workers`: the object *replaces* the endpoint's, and a field left
        out takes RunPod's default (WORKERS_DEFAULTS), not its current value. RunPod's spec does not say
        whether it merges or replaces; this endpoint does the harsher, so that a client sending only
        `min` visibly resets the maximum. Raises WorkersRefused, naming the fields, for what RunPod's
        schema refuses and for min above max. Returns the endpoint as `settings` does."""
        new = {**WORKERS_DEFAULTS, **workers}
        unknown = [name for name in workers if name not in WORKERS_DEFAULTS]
        problems = [f"$.workers: additional properties {name!r} not allowed" for name in unknown]
        problems += [
            f"$.workers.{name}: must be a whole number >= 0, got {json.dumps(new[name], default=repr)}"
            for name in ("min", "max")
            if not is_count(new[name])
        ]
        idle = new["idleTimeout"]
        if isinstance(idle, bool) or not isinstance(idle, (int, float)) or not 0 < idle <= 3600:
            # RunPod takes whole seconds from 1; fractions above 0 are this endpoint's, for tests
            got = json.dumps(idle, default=repr)
            problems.append(f"$.workers.idleTimeout: must be seconds above 0, at most 3600, got {got}")
        if not problems and new["min"] > new["max"]:
            problems.append(f"$.workers.min: {new['min']} exceeds $.workers.max: {new['max']}")
        if problems:
            raise WorkersRefused(problems)
        with self.cond:
            self.min_workers, self.max_workers, self.idle_timeout_s = new["min"], new["max"], float(idle)
            self.cond.notify_all()
            return self._settings()

    def refuse_next_update(self, status: int, detail: str, errors: list[str]) -> None:
        """The next PATCH /v2/serverless/{id} is answered with this RFC 9457 problem and changes
        nothing, as RunPod refuses what this endpoint does not model (a quota, a rule of its own): for
        tests of how the tools show RunPod's words."""
        with self.cond:
            self.update_refusals.append((status, detail, list(errors)))

    def next_update_refusal(self) -> tuple[int, str, list[str]] | None:
        with self.cond:
            return self.update_refusals.popleft() if self.update_refusals else None

    def _settings(self) -> dict:  # under the lock
        idle = self.idle_timeout_s
        return {
            "id": self.endpoint_id,
            "name": self.endpoint_id,
            "type": "QUEUE",
            "workers": {
                "min": self.min_workers,
                "max": self.max_workers,
                "idleTimeout": int(idle) if float(idle).is_integer() else idle,
            },
        }

    # ---- the workers' side (long polls) ------------------------------------------------------------
    def take(self, worker_id: str) -> dict | None:
        deadline = time.monotonic() + TAKE_WAIT_S
        with self.cond:
            while not self._closing:
                job = self.queue.take(worker_id, self.clock())
                if job is not None or time.monotonic() >= deadline:
                    return job
                self.cond.wait(max(0.0, deadline - time.monotonic()))  # held open, so no worker spins
            return None

    def done(self, worker_id: str, job_id: str, data: dict) -> None:
        with self.cond:
            if self.queue.done(worker_id, job_id, data, self.clock()):  # stopPod
                self.queue.remove_worker(worker_id, self.clock(), "stopped")
                stopping = self.pool.detach([worker_id])
                threading.Thread(target=pool_mod.stop, args=(stopping,), daemon=True).start()

    def stop_signals(self, worker_id: str) -> list[str]:
        deadline = time.monotonic() + TAKE_WAIT_S
        with self.cond:
            while not self.queue.has_stop_requests(worker_id) and time.monotonic() < deadline and not self._closing:
                self.cond.wait(max(0.0, deadline - time.monotonic()))
            return self.queue.pop_stop_requests(worker_id)

    # ---- internals --------------------------------------------------------------------------------
    def _on_finish(self, job: Job) -> None:  # called by the queue, under the lock
        self.cond.notify_all()
        if job.webhook:
            view = job.view(self.clock())
            threading.Thread(target=_post_webhook, args=(job.webhook, view), daemon=True).start()

    def _scale_loop(self) -> None:
        """Reaps, applies time limits, and starts or stops workers; at close, stops them all.

        It must outlive every round: the workers die with this thread (their parent-death signal), so
        an error in one round is logged and the loop goes on."""
        while True:
            try:
                stopping = self._scale_once()
            except Exception:
                log.exception("dev endpoint: scaling failed; trying again")
                time.sleep(SCALE_EVERY_S)
                continue
            if stopping is None:
                break
            if stopping:
                log.info("stopping idle workers: %d", len(stopping))
                pool_mod.stop(stopping)
        with self.cond:
            stopping = self.pool.detach(list(self.pool.processes))
        pool_mod.stop(stopping, CLOSE_GRACE_S)

    def _scale_once(self) -> list | None:
        """One round: the idle workers to stop (already detached), or None once the endpoint closes."""
        with self.cond:
            if self._closing:
                return None
            now = self.clock()
            for worker_id, _ in self.pool.reap():
                self.queue.remove_worker(worker_id, now)
            self.queue.expire(now)
            to_start, may_stop = pool_mod.scale(len(self.pool), self.queue.demand(), self.min_workers, self.max_workers)
            idle = self.queue.idle_for(self.idle_timeout_s, now)[:may_stop]
            for worker_id in idle:
                self.queue.remove_worker(worker_id, now, "stopped")
            stopping = self.pool.detach(idle)
            for _ in range(to_start if self.spawn_workers else 0):
                self.queue.add_worker(self.pool.start())
            self.cond.notify_all()
            self.cond.wait(SCALE_EVERY_S)
            return stopping


def _post_webhook(url: str, body: dict) -> None:
    for attempt in range(3):  # RunPod: the first try and two retries, 10 s apart
        try:
            if requests.post(url, json=body, timeout=10).ok:
                return
        except requests.RequestException:
            pass
        if attempt < 2:
            time.sleep(10)


def serve_until_signalled(endpoint: DevEndpoint) -> int:
    """Serves until SIGINT, SIGTERM or SIGHUP, then closes the endpoint (stopping its workers) and
    returns the signal's number. Call it from the main thread (only that one may set handlers)."""
    received: list[int] = []
    wake = threading.Event()

    def on_signal(signum, frame) -> None:
        received.append(signum)
        wake.set()

    # A signal the process was started to ignore stays ignored: `nohup wan-i2v dev-endpoint &`
    # must outlive its terminal (SIGHUP), a background job of a script its Ctrl-C (SIGINT).
    names = [name for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]
    names = [name for name in names if signal.getsignal(getattr(signal, name)) is not signal.SIG_IGN]
    previous = {name: signal.signal(getattr(signal, name), on_signal) for name in names}
    try:
        while not wake.wait(1.0):
            pass
    finally:
        endpoint.close()
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)
    log.info("dev endpoint stopped on signal %d", received[0])
    return received[0]
