"""HTTP to RunPod's APIs, used plainly: bearer auth, JSON, retries with backoff on 429 and 5xx.

4xx other than 429 are never retried: they mean the request itself is wrong (bad key, unknown job).
The API key is sent only in the Authorization header and never appears in errors or logs.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

log = logging.getLogger(__name__)

QUEUE_BASE_URL = "https://api.runpod.ai/v2"  # the job queue: /{endpoint_id}/run, /status, ...
MANAGEMENT_BASE_URL = "https://api.runpod.io/v2"  # REST v2 management: GET, PATCH /serverless/{endpoint_id}
RETRY_STATUSES = {429, 500, 502, 503, 504}


class ApiError(Exception):
    """A RunPod API call failed; `status` is the HTTP status (0 when no answer came)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


@dataclass
class ApiSession:
    api_key: str
    timeout_s: float = 30.0
    retries: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    session: requests.Session = field(default_factory=requests.Session, repr=False)
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)  # tests record the backoff

    def __post_init__(self):
        if not self.api_key:
            raise ApiError("no RunPod API key: pass --api-key or set RUNPOD_API_KEY")

    def __repr__(self) -> str:
        return f"ApiSession(retries={self.retries})"

    def request(self, method: str, url: str, body: Any = None, params: dict | None = None) -> Any:
        """One call with retries; returns the decoded JSON body (or None when empty)."""
        headers = {"Authorization": f"Bearer {self.api_key}", "Accept": "application/json"}
        for attempt in range(self.retries + 1):
            try:
                response = self.session.request(
                    method, url, json=body, params=params, headers=headers, timeout=self.timeout_s
                )
            except requests.RequestException as exc:
                problem, status, retry_after = f"{type(exc).__name__}", 0, None
            else:
                if response.status_code < 400:
                    return response.json() if response.content else None
                problem, status = _describe(response), response.status_code
                retry_after = response.headers.get("Retry-After")
                if status not in RETRY_STATUSES:
                    raise ApiError(f"{method} {_path(url)} failed: HTTP {status}: {problem}", status)
            if attempt == self.retries:
                raise ApiError(f"{method} {_path(url)} failed after {attempt + 1} tries: {problem}", status)
            delay = self._delay(attempt, retry_after)
            log.warning("%s %s: %s; retrying in %.1f s", method, _path(url), problem, delay)
            self.sleep(delay)
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after and retry_after.replace(".", "", 1).isdigit():
            return min(float(retry_after), self.max_backoff_s)
        base = min(self.backoff_s * 2**attempt, self.max_backoff_s)
        return base * (0.5 + random.random() / 2)  # jitter, so many clients do not retry in step


def job_id_of(answer: Any) -> str:
    """The job id in /run's answer."""
    if not isinstance(answer, dict) or not answer.get("id"):
        raise ApiError(f"/run answered without a job id: {answer!r}")
    return answer["id"]


def _describe(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason
    if isinstance(body, dict):  # the queue API answers {"error": ...}; REST v2 answers RFC 9457
        return str(body.get("error"))[:300] if body.get("error") else _problem(body) or str(body)[:300]
    return str(body)[:300]


def _problem(body: dict) -> str:
    """An RFC 9457 answer in RunPod's own words: `title: detail`, then each validation failure as
    written, each naming its field. RunPod's REST v2 lists them in `errors`, as strings such as
    "$: additional properties 'bogus' not allowed" (ErrorResponse in its OpenAPI document); RFC 9457's
    own example extension is `invalid-params`, [{"name", "reason"}]."""
    words = ": ".join(str(body[key]) for key in ("title", "detail") if body.get(key))
    entries = []
    for key in ("errors", "invalid-params"):
        items = body.get(key)
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and "name" in item:
                entries.append(f"{item['name']}: {item.get('reason', '')}".rstrip(": "))
            else:
                entries.append(item if isinstance(item, str) else json.dumps(item))
    if entries:
        words = f"{words} ({'; '.join(entries)})" if words else "; ".join(entries)
    return words[:1000]


def _path(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0]
