"""Min/max workers and health (`Management`): /health read defensively, worker counts checked before
they are sent, and min workers set to 0 only while the endpoint is idle."""

import pytest
from helpers import CHEAP, client_for

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


def test_worker_counts_are_checked_before_anything_is_sent():
    api = Recorder({"workers": {"min": 1}})
    management = Management("abc", api, "https://q.invalid/v2", "https://m.invalid/v2")
    for bad, message in (
        ({"min_workers": -1}, "min workers must be a whole number >= 0, got -1"),
        ({"max_workers": True}, "max workers must be a whole number >= 0, got True"),
        ({"min_workers": 1.5}, "got 1.5"),
        ({"min_workers": 3, "max_workers": 2}, r"min workers \(3\) cannot exceed max workers \(2\)"),
        ({}, "give min_workers, max_workers or both"),
    ):
        with pytest.raises(ValueError, match=message):
            management.set_workers(**bad)
    assert api.requests == []
    assert management.enable(1) == {"workers": {"min": 1}}
    management.set_workers(max_workers=3)
    management.disable()
    assert api.requests == [  # partial updates: only the counts given
        ("PATCH", "https://m.invalid/v2/serverless/abc", {"workers": {"min": 1}}),
        ("PATCH", "https://m.invalid/v2/serverless/abc", {"workers": {"max": 3}}),
        ("PATCH", "https://m.invalid/v2/serverless/abc", {"workers": {"min": 0}}),
    ]


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
