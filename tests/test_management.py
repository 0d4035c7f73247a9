"""Min/max workers and health (`Management`): /health read defensively, worker counts checked before
they are sent and sent as RunPod's own tool sends them (the endpoint read first, min, max and
idleTimeout together), RunPod's refusals shown in its own words, and min workers set to 0 only while
the endpoint is idle."""

import pytest
import requests
from helpers import CHEAP, KEY, client_for

from wan_i2v.ops.api import ApiError
from wan_i2v.ops.devserver import DevEndpoint
from wan_i2v.ops.management import Health, Management


class Recorder:
    """Stands in for ApiSession: records each request, answers the next canned body."""

    def __init__(self, *answers):
        self.answers, self.requests = list(answers), []

    def request(self, method, url, body=None, params=None):
        self.requests.append((method, url, body))
        return self.answers.pop(0) if self.answers else None


def test_health_is_read_defensively():
    health = Health.parse({"jobs": {"completed": 3, "inQueue": "x", "weird": 5}, "workers": {"idle": True, "ready": 2}})
    assert health.jobs == {"completed": 3, "failed": 0, "inProgress": 0, "inQueue": 0, "retried": 0}
    assert health.workers["idle"] == 0 and health.workers_up == 2
    assert Health.parse(None).workers_up == 0 and Health.parse({"workers": []}).busy is False
    busy = Health.parse({"jobs": {"inProgress": 1, "failed": -4}, "workers": {"running": 1, "idle": 1, "ready": 1}})
    assert busy.busy and busy.jobs["failed"] == 0 and busy.workers_up == 2  # idle and ready count one worker once
    assert busy.line() == (
        "workers: 1 idle, 1 ready, 1 running, 0 initializing; jobs: 0 queued, 1 in progress, 0 completed, 0 failed"
    )


def endpoint_with(workers: dict) -> dict:
    """GET /v2/serverless/{id} as RunPod answers it (its OpenAPI example, trimmed)."""
    return {"id": "abc", "name": "wan", "type": "QUEUE", "workers": workers, "flashboot": "OFF"}


def test_worker_counts_are_checked_before_anything_is_sent():
    api = Recorder()
    management = Management("abc", api, "https://q.invalid/v2", "https://m.invalid/v2")
    for bad, message in (
        ({"min_workers": -1}, "min workers must be a whole number >= 0, got -1"),
        ({"max_workers": True}, "max workers must be a whole number >= 0, got True"),
        ({"min_workers": 1.5}, "got 1.5"),
        ({"min_workers": 3, "max_workers": 2}, r"min workers \(3\) cannot exceed max workers \(2\)"),
        ({"idle_timeout_s": 0}, "the idle timeout must be a whole number of seconds from 1 to 3600, got 0"),
        ({}, "give min_workers, max_workers or idle_timeout_s"),
    ):
        with pytest.raises(ValueError, match=message):
            management.set_workers(**bad)
    assert api.requests == []


def test_the_endpoint_is_read_first_and_min_max_and_idle_timeout_are_sent_together():
    """As runpodctl's UpdateEndpoint does: whatever RunPod makes of a partial `workers` object, the
    counts not being changed go back as they were."""
    url = "https://m.invalid/v2/serverless/abc"
    current = endpoint_with({"min": 0, "max": 5, "idleTimeout": 7})
    api = Recorder(current, {"answer": 1}, current, None, current, None)
    management = Management("abc", api, "https://q.invalid/v2", "https://m.invalid/v2")
    assert management.enable(1) == {"answer": 1}  # RunPod's answer, the updated endpoint
    management.set_workers(max_workers=3)
    management.set_workers(idle_timeout_s=60)
    assert api.requests == [
        ("GET", url, None),
        ("PATCH", url, {"workers": {"min": 1, "max": 5, "idleTimeout": 7}}),
        ("GET", url, None),
        ("PATCH", url, {"workers": {"min": 0, "max": 3, "idleTimeout": 7}}),
        ("GET", url, None),
        ("PATCH", url, {"workers": {"min": 0, "max": 5, "idleTimeout": 60}}),
    ]

    # an endpoint scaling on request count reports no idleTimeout (and RunPod refuses one): none is sent
    api = Recorder(endpoint_with({"min": 2, "max": 4}))
    Management("abc", api, "https://q.invalid/v2", "https://m.invalid/v2").disable()
    assert api.requests[1] == ("PATCH", url, {"workers": {"min": 0, "max": 4}})


def test_min_and_max_are_checked_against_the_endpoints_current_values():
    url = "https://m.invalid/v2/serverless/abc"
    current = endpoint_with({"min": 2, "max": 2, "idleTimeout": 5})
    api = Recorder(current, current, {"workers": {"min": 2}}, "not an endpoint")
    management = Management("abc", api, "https://q.invalid/v2", "https://m.invalid/v2")
    with pytest.raises(
        ValueError, match=r"min workers \(3\) cannot exceed max workers \(2, the endpoint's current maximum\)"
    ):
        management.set_workers(min_workers=3)
    with pytest.raises(ValueError, match=r"max workers \(1\) cannot be below min workers \(2, the endpoint's current"):
        management.set_workers(max_workers=1)
    with pytest.raises(ApiError, match="answered without workers.min and workers.max"):
        management.set_workers(min_workers=1)
    with pytest.raises(ApiError, match="answered 'not an endpoint', not an endpoint"):
        management.set_workers(min_workers=1)
    assert [method for method, _, _ in api.requests] == ["GET"] * 4  # nothing was sent
    assert all(sent_to == url for _, sent_to, _ in api.requests)


@pytest.fixture
def bare_endpoint():
    """A dev endpoint with no worker process and no model: management calls only."""
    with DevEndpoint(api_key=KEY, spawn_workers=False, idle_timeout_s=7) as endpoint:
        yield endpoint


def test_setting_only_min_workers_keeps_the_maximum_on_an_endpoint_that_replaces_workers(bare_endpoint):
    """The dev endpoint's PATCH replaces the whole `workers` object (the raw PATCH below proves it: max
    and idleTimeout go back to RunPod's defaults), and set_workers(min_workers=1) still keeps both."""
    management = client_for(bare_endpoint).management
    management.set_workers(min_workers=0, max_workers=2)
    answer = management.set_workers(min_workers=1)
    assert answer["workers"] == management.endpoint()["workers"] == {"min": 1, "max": 2, "idleTimeout": 7}
    stats = bare_endpoint.stats()
    assert (stats.min_workers, stats.max_workers, bare_endpoint.idle_timeout_s) == (1, 2, 7.0)

    url = f"{bare_endpoint.url}/v2/serverless/dev"
    raw = requests.patch(url, json={"workers": {"min": 1}}, headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert raw.json()["workers"] == {"min": 1, "max": 3, "idleTimeout": 10}, "a min-only PATCH did not reset max"


def test_a_refusal_is_raised_in_runpods_own_words(bare_endpoint):
    """The dev endpoint's own 422 (a malformed value) and a refusal it passes on as RunPod would word
    one: title, detail and each field-naming entry, as written, with the status."""
    management = client_for(bare_endpoint).management
    with pytest.raises(ApiError) as malformed:
        management.api.request("PATCH", management.endpoint_url, {"workers": {"min": -1, "max": 1}})
    assert malformed.value.status == 422
    assert str(malformed.value) == (
        "PATCH v2/serverless/dev failed: HTTP 422: Unprocessable Entity: Request validation failed. "
        "($.workers.min: must be a whole number >= 0, got -1)"
    )
    bare_endpoint.refuse_next_update(422, "Request validation failed.", ["$.workers.max: over quota", "$.x: y"])
    with pytest.raises(ApiError, match=r"HTTP 422: .*\(\$\.workers\.max: over quota; \$\.x: y\)$") as quota:
        management.set_workers(max_workers=9)
    assert quota.value.status == 422 and bare_endpoint.stats().max_workers == 1  # nothing changed
    with pytest.raises(ApiError, match=r"GET v2/serverless/nope failed: HTTP 404: Not Found: endpoint nope not found"):
        Management("nope", management.api, bare_endpoint.url + "/v2", bare_endpoint.url + "/v2").enable()


def test_min_workers_go_to_0_only_when_nothing_is_queued_or_running(idle_endpoint):
    endpoint = idle_endpoint
    client = client_for(endpoint)
    for _ in range(2):
        client.submit({"image": "https://example.invalid/x.png", **CHEAP})
    client.management.set_workers(min_workers=0, max_workers=0)
    assert endpoint.stats().max_workers == 0
    endpoint.set_workers({"min": 1, "max": 1})  # as if someone had scaled it up (no worker starts here)
    scaled, health = client.management.scale_down_if_idle()
    assert not scaled and health.jobs["inQueue"] == 2 and endpoint.stats().min_workers == 1

    assert client.purge_queue() == {"removed": 2, "status": "completed"}
    assert client.management.scale_down_if_idle()[0] and endpoint.stats().min_workers == 0


def test_waiting_for_a_worker_gives_up_after_its_timeout(idle_endpoint):
    polls = []
    management = client_for(idle_endpoint).management
    with pytest.raises(TimeoutError, match=r"no worker was ready after \d s \(workers: 0 idle"):
        management.wait_ready(timeout_s=0.5, poll_s=0.2, on_poll=lambda health, waited: polls.append(waited))
    assert len(polls) >= 2 and polls == sorted(polls)
