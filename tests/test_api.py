"""HTTP to RunPod's APIs (`ApiSession`): what is retried and how long it waits, what is not, and the key.

The backoff arithmetic runs against canned answers; the same rules are then checked against the local
endpoint's injected faults, through the client."""

import json

import pytest
import requests
from helpers import client_for

from wan_i2v.ops.api import ApiError, ApiSession, job_id_of


class Canned:
    """A stand-in for requests.Session: answers each request with the next canned answer, records it."""

    def __init__(self, *answers):
        self.answers, self.seen = list(answers), []

    def request(self, method, url, json=None, params=None, headers=None, timeout=None):
        self.seen.append((method, url, json, headers))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def response(status: int, body=None, headers=None) -> requests.Response:
    answer = requests.Response()
    answer.status_code, answer.reason = status, "Reason"
    answer._content = json.dumps(body).encode() if body is not None else b""
    answer.headers.update(headers or {})
    return answer


def session(*answers, **settings) -> tuple[ApiSession, Canned, list[float]]:
    sleeps, canned = [], Canned(*answers)
    api = ApiSession("secret-key-123", session=canned, sleep=sleeps.append, **settings)
    return api, canned, sleeps


def test_backoff_doubles_with_jitter_up_to_its_cap_and_honours_retry_after():
    api, canned, sleeps = session(
        *[response(503, {"error": "busy"})] * 6, response(200, {"ok": 1}), retries=6, backoff_s=1.0, max_backoff_s=8.0
    )
    assert api.request("GET", "https://x.invalid/v2/e/health") == {"ok": 1}
    assert len(sleeps) == 6 and len(canned.seen) == 7
    for attempt, delay in enumerate(sleeps):  # half to full of min(2**attempt, cap)
        base = min(2**attempt, 8.0)
        assert base / 2 <= delay <= base, (attempt, delay)

    api, _, sleeps = session(
        response(429, headers={"Retry-After": "2.5"}),
        response(429, headers={"Retry-After": "600"}),
        response(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),  # a date: plain backoff
        response(200),
        backoff_s=0.1,
        max_backoff_s=30.0,
    )
    assert api.request("POST", "https://x.invalid/v2/e/run", {"input": {}}) is None  # an empty body
    assert sleeps[:2] == [2.5, 30.0] and 0.2 <= sleeps[2] <= 0.4


def test_network_errors_are_retried_and_other_4xx_are_not():
    api, canned, sleeps = session(requests.ConnectionError("reset"), response(200, {"id": "j"}), backoff_s=0.01)
    assert job_id_of(api.request("POST", "https://x.invalid/v2/e/run", {})) == "j" and len(sleeps) == 1

    api, canned, sleeps = session(requests.Timeout("slow"), requests.Timeout("slow"), retries=1, backoff_s=0.01)
    with pytest.raises(ApiError, match="GET v2/e/health failed after 2 tries: Timeout") as gave_up:
        api.request("GET", "https://x.invalid/v2/e/health")
    assert gave_up.value.status == 0

    for status, body, said in (
        (400, {"error": "only FAILED or TIMED_OUT jobs can be retried"}, "only FAILED or TIMED_OUT"),
        (404, {"title": "Not Found", "detail": "no endpoint abc"}, "no endpoint abc"),  # RFC 9457
        (401, None, "Reason"),
    ):
        api, canned, sleeps = session(response(status, body), response(200))
        with pytest.raises(ApiError, match=f"HTTP {status}: .*{said}") as refused:
            api.request("PATCH", "https://x.invalid/v2/serverless/abc?x=1")
        assert refused.value.status == status and sleeps == [] and len(canned.seen) == 1
        assert "secret-key-123" not in str(refused.value)
    assert canned.seen[0][3]["Authorization"] == "Bearer secret-key-123"  # sent only as the bearer header
    assert "secret-key-123" not in repr(api)


def test_no_key_and_no_job_id_are_clear_errors():
    with pytest.raises(ApiError, match="no RunPod API key: pass --api-key or set RUNPOD_API_KEY"):
        ApiSession("")
    with pytest.raises(ApiError, match="/run answered without a job id"):
        job_id_of({"status": "IN_QUEUE"})


def test_429_and_5xx_are_retried_with_backoff_4xx_are_not(idle_endpoint):
    endpoint = idle_endpoint
    sleeps = []
    client = client_for(endpoint, backoff_s=1.0, retries=5, sleep=sleeps.append)
    assert endpoint.inject_faults([503, 502, 500, 504]) == 4
    assert client.health().jobs["inQueue"] == 0
    assert len(sleeps) == 4
    for attempt, delay in enumerate(sleeps):  # exponential with jitter: base 2**attempt, half to full
        assert 2**attempt / 2 <= delay <= 2**attempt
    sleeps.clear()
    endpoint.inject_faults([429])  # 429 honours Retry-After (the endpoint sends 0)
    client.health()
    assert sleeps == [0.0]
    sleeps.clear()
    client.health()
    assert sleeps == [], "a fault was left over"

    endpoint.inject_faults([503, 503, 503])
    impatient = client_for(endpoint, retries=1, sleep=sleeps.append)
    with pytest.raises(ApiError, match=r"failed after 2 tries: injected fault 503") as caught:
        impatient.health()
    assert caught.value.status == 503 and len(sleeps) == 1
    client.health()  # the third fault

    sleeps.clear()
    with pytest.raises(ApiError) as missing:
        client.status("no-such-job")
    assert missing.value.status == 404 and sleeps == []


def test_a_bad_api_key_is_refused_clearly(idle_endpoint):
    with pytest.raises(ApiError) as caught:
        client_for(idle_endpoint, api_key="wrong-key-123").health()
    assert caught.value.status == 401 and "wrong-key-123" not in str(caught.value)
