"""Operate an endpoint: min/max workers through RunPod's REST management API, and its health.

The seed's `POST https://api.runpod.ai/v2/{id}/update` does not exist. Min/max workers are set with
RunPod's REST v2 `PATCH https://api.runpod.io/v2/serverless/{id}`. Its spec says a PATCH changes only
the fields in the body, but not whether a nested object such as `workers` is merged or replaced
(https://docs.runpod.io/api-reference-v2/serverless/update-a-serverless-endpoint; the OpenAPI
document it is built from, github.com/runpod/docs api-reference-v2/openapi.json). RunPod's own
command-line tool does not count on a merge: its UpdateEndpoint (github.com/runpod/runpodctl,
internal/api/endpoints.go) reads the endpoint first (`GET /v2/serverless/{id}`) and sends `min`, `max`
and `idleTimeout` together, the current values standing in for those not being changed. `set_workers`
does the same, so that whichever way RunPod reads the object, `wan-i2v workers set 1` cannot reset
the maximum or the idle timeout. `idleTimeout` goes back only when the endpoint reported one: RunPod
omits it, and refuses it, for an endpoint that scales on request count. (GraphQL `saveEndpoint` would
reset every field it is not given.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .api import MANAGEMENT_BASE_URL, QUEUE_BASE_URL, ApiError, ApiSession

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

    def endpoint(self) -> dict:
        """The endpoint as RunPod reports it (`GET /v2/serverless/{id}`): `workers` holds `min`, `max`
        and, unless it scales on request count, `idleTimeout`."""
        answer = self.api.request("GET", self.endpoint_url)
        if not isinstance(answer, dict):
            raise ApiError(f"GET {self.endpoint_url} answered {answer!r}, not an endpoint")
        return answer

    def set_workers(
        self, min_workers: int | None = None, max_workers: int | None = None, idle_timeout_s: int | None = None
    ) -> dict:
        """Sets min and/or max workers (and/or the idle timeout) as RunPod's own tool does: reads the
        endpoint, then sends the whole `workers` object, its current values for what is not given.
        Returns RunPod's answer (the updated endpoint)."""
        given = {}
        if min_workers is not None:
            given["min"] = _non_negative("min workers", min_workers)
        if max_workers is not None:
            given["max"] = _non_negative("max workers", max_workers)
        if idle_timeout_s is not None:
            given["idleTimeout"] = _idle_timeout(idle_timeout_s)
        if not given:
            raise ValueError("give min_workers, max_workers or idle_timeout_s")
        if "min" in given and "max" in given and given["min"] > given["max"]:
            raise ValueError(f"min workers ({given['min']}) cannot exceed max workers ({given['max']})")
        workers = {**self._current_workers(), **given}
        if workers["min"] > workers["max"]:
            if "max" in given:
                raise ValueError(
                    f"max workers ({workers['max']}) cannot be below min workers ({workers['min']}, the "
                    "endpoint's current minimum); give a min as well"
                )
            raise ValueError(
                f"min workers ({workers['min']}) cannot exceed max workers ({workers['max']}, the endpoint's "
                "current maximum); give a max as well (--max)"
            )
        return self.api.request("PATCH", self.endpoint_url, {"workers": workers}) or {}

    def _current_workers(self) -> dict:
        workers = self.endpoint().get("workers")
        if not isinstance(workers, dict) or not all(_is_count(workers.get(name)) for name in ("min", "max")):
            raise ApiError(f"GET {self.endpoint_url} answered without workers.min and workers.max: {workers!r}")
        current = {"min": workers["min"], "max": workers["max"]}
        if workers.get("idleTimeout") is not None:
            current["idleTimeout"] = workers["idleTimeout"]  # sent back as RunPod wrote it
        return current

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


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _non_negative(name: str, value: int) -> int:
    if not _is_count(value):
        raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
    return value


def _idle_timeout(value: int) -> int:
    """RunPod takes a whole number of seconds from 1 to 3600 (EndpointWorkers in its OpenAPI document)."""
    if not _is_count(value) or not 1 <= value <= 3600:
        raise ValueError(f"the idle timeout must be a whole number of seconds from 1 to 3600, got {value!r}")
    return value
