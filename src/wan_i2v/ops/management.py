"""Operate an endpoint: min/max workers through RunPod's REST management API, and its health.

The seed's `POST https://api.runpod.ai/v2/{id}/update` does not exist. Min/max workers are set with
RunPod's REST v2 partial update, `PATCH https://api.runpod.io/v2/serverless/{id}` with
`{"workers": {"min": n}}`, which leaves every other setting alone (GraphQL `saveEndpoint` would
reset the fields it is not given).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .api import MANAGEMENT_BASE_URL, QUEUE_BASE_URL, ApiSession

JOB_COUNTS = ("completed", "failed", "inProgress", "inQueue", "retried")
WORKER_COUNTS = ("idle", "initializing", "ready", "running", "throttled", "unhealthy")


@dataclass(frozen=True)
class Health:
    jobs: dict[str, int]
    workers: dict[str, int]

    @classmethod
    def parse(cls, body: object) -> Health:
        """Read /health defensively: missing, unknown or malformed counts are 0."""
        body = body if isinstance(body, dict) else {}

        def counts(section: object, names: tuple[str, ...]) -> dict[str, int]:
            section = section if isinstance(section, dict) else {}
            return {name: _count(section.get(name)) for name in names}

        return cls(jobs=counts(body.get("jobs"), JOB_COUNTS), workers=counts(body.get("workers"), WORKER_COUNTS))

    @property
    def workers_up(self) -> int:
        """Workers that can take a job now. Some answers count a waiting worker as both idle and ready."""
        return self.workers["running"] + max(self.workers["idle"], self.workers["ready"])

    @property
    def busy(self) -> bool:
        return self.jobs["inQueue"] > 0 or self.jobs["inProgress"] > 0

    def line(self) -> str:
        w, j = self.workers, self.jobs
        return (
            f"workers: {w['idle']} idle, {w['ready']} ready, {w['running']} running, "
            f"{w['initializing']} initializing; jobs: {j['inQueue']} queued, {j['inProgress']} in progress, "
            f"{j['completed']} completed, {j['failed']} failed"
        )


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class Management:
    def __init__(
        self,
        endpoint_id: str,
        api: ApiSession,
        queue_base_url: str = QUEUE_BASE_URL,
        management_base_url: str = MANAGEMENT_BASE_URL,
    ):
        self.endpoint_id = endpoint_id
        self.api = api
        self.queue_url = f"{queue_base_url.rstrip('/')}/{endpoint_id}"
        self.endpoint_url = f"{management_base_url.rstrip('/')}/serverless/{endpoint_id}"

    def set_workers(self, min_workers: int | None = None, max_workers: int | None = None) -> dict:
        """Partial update of the worker counts; other endpoint settings are untouched."""
        workers = {}
        if min_workers is not None:
            workers["min"] = _non_negative("min workers", min_workers)
        if max_workers is not None:
            workers["max"] = _non_negative("max workers", max_workers)
        if not workers:
            raise ValueError("give min_workers, max_workers or both")
        if "min" in workers and "max" in workers and workers["min"] > workers["max"]:
            raise ValueError(f"min workers ({workers['min']}) cannot exceed max workers ({workers['max']})")
        return self.api.request("PATCH", self.endpoint_url, {"workers": workers}) or {}

    def enable(self, count: int = 1) -> dict:
        return self.set_workers(min_workers=count)

    def disable(self) -> dict:
        return self.set_workers(min_workers=0)

    def health(self) -> Health:
        return Health.parse(self.api.request("GET", f"{self.queue_url}/health"))

    def wait_ready(
        self,
        timeout_s: float = 420.0,
        poll_s: float = 5.0,
        on_poll: Callable[[Health, float], None] | None = None,
    ) -> Health:
        """Poll /health until a worker is idle, ready or running; TimeoutError after timeout_s."""
        started = time.monotonic()
        while True:
            health = self.health()
            waited = time.monotonic() - started
            if on_poll is not None:
                on_poll(health, waited)
            if health.workers_up > 0:
                return health
            if waited + poll_s > timeout_s:
                raise TimeoutError(f"no worker was ready after {waited:.0f} s ({health.line()})")
            time.sleep(poll_s)

    def scale_down_if_idle(self) -> tuple[bool, Health]:
        """Set min workers to 0 only when nothing is queued or running; returns (done, health)."""
        health = self.health()
        if health.busy:
            return False, health
        self.disable()
        return True, health


def _non_negative(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
    return value
