"""The dev endpoint: its pure queue (no threads, a clock passed in), its routes (no worker process), its
pool's process handling (a stand-in process), and the command's shutdown with real handler.py workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import requests
from helpers import KEY, QUICKEST, ROOT, free_port, wait_for_port, wait_until, wan_i2v

from wan_i2v.ops.devserver import DevEndpoint, EndpointStats
from wan_i2v.ops.devserver.pool import WorkerPool, scale, stop
from wan_i2v.ops.devserver.queue import JobQueue

AUTH = {"Authorization": f"Bearer {KEY}"}


# ---- the queue, step by step ----------------------------------------------------------------------
@pytest.fixture
def q():
    finished = []
    queue = JobQueue(retention_s=100, on_finish=finished.append)
    queue.finished = finished  # what on_finish saw, in order
    return queue


def test_a_job_goes_from_queued_to_running_to_completed(q):
    job = q.submit({"input": {"n": 1}, "s3Config": {"bucket": "b"}}, now=10.0)
    assert job.status == "IN_QUEUE" and q.submissions == [{"id": job.id, "input": {"n": 1}}]
    q.add_worker("w1")
    assert q.health()["workers"]["initializing"] == 1
    assert q.take("w1", now=12.0) == {"id": job.id, "input": {"n": 1}, "s3Config": {"bucket": "b"}}
    assert job.status == "IN_PROGRESS" and job.worker_id == "w1" and q.health()["workers"]["running"] == 1

    assert not q.done("w1", job.id, {"status": "IN_PROGRESS", "output": {"step": 3}}, now=13.0)
    assert job.status == "IN_PROGRESS" and job.output == {"step": 3} and not q.finished
    assert not q.done("w1", job.id, {"output": {"video": "v.mp4"}}, now=15.5)
    assert job.view(now=20.0) == {
        "id": job.id,
        "status": "COMPLETED",
        "delayTime": 2000,
        "executionTime": 3500,
        "output": {"video": "v.mp4"},
        "workerId": "w1",
    }
    assert q.finished == [job] and q.finished_by_worker == {job.id: 1}
    assert q.health()["workers"]["idle"] == 1


def test_an_error_result_fails_the_job_and_stop_pod_is_reported(q):
    job = q.submit({"input": {}}, now=0)
    q.add_worker("w1")
    q.take("w1", now=1)
    assert q.done("w1", job.id, {"error": "bad input", "stopPod": True}, now=2)
    assert (job.status, job.error) == ("FAILED", "bad input")


def test_take_hands_each_job_out_once_one_at_a_time(q):
    first, second = q.submit({"input": 1}, now=0), q.submit({"input": 2}, now=0)
    for worker in ("w1", "w2", "w3"):
        q.add_worker(worker)
    assert q.take("w1", now=1)["id"] == first.id
    assert q.take("w1", now=1) is None, "a worker holding a job got a second"
    assert q.take("w2", now=1)["id"] == second.id
    assert q.take("w3", now=1) is None and q.take("nobody", now=1) is None
    assert q.handed_out == {first.id: 1, second.id: 1}
    assert q.health()["workers"] == {**q.health()["workers"], "idle": 1, "running": 2}


def test_cancel_a_queued_job_and_a_running_one_whose_late_result_is_dropped(q):
    queued, running = q.submit({"input": 1}, now=0), q.submit({"input": 2}, now=0)
    q.add_worker("w1")
    q.take("w1", now=1)  # takes `queued`, the first
    queued, running = running, queued
    assert q.cancel(queued.id, now=2).status == "CANCELLED" and not q.waiting
    assert q.cancel(running.id, now=3).status == "CANCELLED"
    assert q.has_stop_requests("w1") and q.health()["workers"]["idle"] == 1
    assert not q.done("w1", running.id, {"output": "late"}, now=9)
    assert running.status == "CANCELLED" and running.output is None and not q.finished_by_worker
    assert q.cancel("no-such-job", now=4) is None
    assert q.cancel(running.id, now=5).status == "CANCELLED" and len(q.finished) == 2


def test_stop_requests_are_given_once_per_worker(q):
    jobs = [q.submit({"input": i}, now=0) for i in range(2)]
    q.add_worker("w1")
    q.add_worker("w2")
    q.take("w1", now=1)
    q.take("w2", now=1)
    q.cancel(jobs[0].id, now=2)
    assert q.pop_stop_requests("w2") == [] and q.pop_stop_requests("w1") == [jobs[0].id]
    assert q.pop_stop_requests("w1") == [] and not q.has_stop_requests("w1")


def test_retry_requeues_only_failed_or_timed_out_jobs(q):
    job = q.submit({"input": {}}, now=0)
    assert not q.retry(job.id, now=1), "a queued job was retried"
    q.add_worker("w1")
    q.take("w1", now=1)
    assert not q.retry(job.id, now=2), "a running job was retried"
    q.done("w1", job.id, {"error": "boom"}, now=3)
    assert q.retry(job.id, now=4)
    assert (job.status, job.error, job.worker_id, job.retries, q.retried) == ("IN_QUEUE", None, None, 1, 1)
    assert q.take("w1", now=5)["id"] == job.id and q.handed_out[job.id] == 2
    q.done("w1", job.id, {"output": "ok"}, now=6)
    assert not q.retry(job.id, now=7) and not q.retry("no-such-job", now=7)
    assert q.health()["jobs"]["retried"] == 1


def test_purge_cancels_the_queued_jobs_and_leaves_running_ones(q):
    jobs = [q.submit({"input": i}, now=0) for i in range(3)]
    q.add_worker("w1")
    q.take("w1", now=1)
    assert q.purge(now=2) == 2 and q.purge(now=3) == 0
    assert [j.status for j in jobs] == ["IN_PROGRESS", "CANCELLED", "CANCELLED"]


@pytest.mark.parametrize("policy", [[1], {"ttl": "1000"}, {"executionTimeout": -5}, {"ttl": True}])
def test_a_malformed_policy_is_refused_and_nothing_is_queued(q, policy):
    with pytest.raises(ValueError, match="policy must be"):
        q.submit({"input": 1, "policy": policy}, now=0)
    assert not q.waiting and not q.jobs and not q.submissions
    q.expire(now=10**6)  # what a malformed policy used to crash


def test_execution_timeout_and_ttl_expire_with_the_clock(q):
    slow = q.submit({"input": 1, "policy": {"executionTimeout": 5000}}, now=0)
    stale = q.submit({"input": 2, "policy": {"ttl": 3000}}, now=0)
    q.add_worker("w1")
    q.take("w1", now=1)
    q.expire(now=3.0)
    assert (slow.status, stale.status) == ("IN_PROGRESS", "IN_QUEUE")
    q.expire(now=3.5)
    assert stale.status == "TIMED_OUT" and "queue longer than 3000 ms" in stale.error and not q.waiting
    q.expire(now=6.0)
    assert slow.status == "IN_PROGRESS", "timed out at exactly executionTimeout"
    q.expire(now=6.5)
    assert slow.status == "TIMED_OUT" and "longer than 5000 ms" in slow.error
    assert q.pop_stop_requests("w1") == [slow.id] and q.health()["jobs"]["failed"] == 2
    assert not q.done("w1", slow.id, {"output": "late"}, now=7)


def test_finished_jobs_are_forgotten_after_the_retention(q):
    done = q.submit({"input": 1}, now=0)
    waiting = q.submit({"input": 2}, now=0)
    q.cancel(done.id, now=10)
    q.expire(now=110)
    assert q.get(done.id) is done
    q.expire(now=110.5)
    assert q.get(done.id) is None and q.get(waiting.id) is waiting


def test_health_counts_jobs_and_workers(q):
    jobs = [q.submit({"input": i}, now=0) for i in range(5)]
    for worker in ("w1", "w2", "w3"):
        q.add_worker(worker)
    q.take("w1", now=1)
    q.done("w1", jobs[0].id, {"output": 1}, now=2)
    q.take("w1", now=2)
    q.done("w1", jobs[1].id, {"error": "x"}, now=3)
    q.take("w2", now=3)
    assert q.health() == {
        "jobs": {"completed": 1, "failed": 1, "inProgress": 1, "inQueue": 2, "retried": 0},
        "workers": {"idle": 1, "initializing": 1, "ready": 1, "running": 1, "throttled": 0, "unhealthy": 0},
    }


def test_a_worker_that_exits_fails_its_job_and_idle_workers_are_listed_for_scale_down(q):
    jobs = [q.submit({"input": i}, now=0) for i in range(3)]
    for worker in ("w1", "w2", "w3"):
        q.add_worker(worker)
    q.take("w1", now=1)
    q.take("w2", now=1)
    assert q.demand() == 3  # two running, one queued
    q.remove_worker("w1", now=2)
    assert jobs[0].status == "FAILED" and "worker w1 exited" in jobs[0].error and "w1" not in q.workers
    q.done("w2", jobs[1].id, {"output": 1}, now=4)
    q.take("w3", now=5)
    q.done("w3", jobs[2].id, {"output": 1}, now=6)
    assert q.idle_for(3.0, now=7.5) == ["w2"] and q.idle_for(1.0, now=7.5) == ["w2", "w3"]


@pytest.mark.parametrize(
    "live, demand, lo, hi, expected",
    [(0, 0, 0, 1, (0, 0)), (0, 3, 0, 2, (2, 0)), (2, 0, 0, 2, (0, 2)), (1, 0, 1, 2, (0, 0)), (0, 0, 2, 2, (2, 0))]
    + [(0, 5, 1, 0, (0, 0)), (3, 1, 0, 2, (0, 2))],
)
def test_scale_starts_for_demand_within_min_and_max(live, demand, lo, hi, expected):
    assert scale(live, demand, lo, hi) == expected


# ---- the routes, with no worker process -----------------------------------------------------------
@pytest.fixture(scope="module")
def ep():
    with DevEndpoint(api_key=KEY, spawn_workers=False, idle_timeout_s=0.1) as endpoint:
        yield endpoint


def call(ep, method, path, body=None, headers=AUTH, **kwargs):
    return requests.request(method, ep.url + path, json=body, headers=headers, timeout=10, **kwargs)


def test_every_route_but_the_workers_needs_the_api_key(ep):
    for method, path in [("GET", "/v2/dev/health"), ("POST", "/v2/dev/run"), ("GET", "/nope"), ("GET", "/dev/jobs")]:
        for headers in ({}, {"Authorization": "Bearer wrong-key-123"}):
            answer = call(ep, method, path, {"input": {}}, headers=headers)
            assert answer.status_code == 401 and "wrong-key-123" not in answer.text, (method, path)
    assert call(ep, "GET", "/dev/job-take/w1?token=wrong", headers={}).status_code == 403
    assert call(ep, "GET", "/dev/job-take/w1", headers=AUTH).status_code == 403, "the API key opened a worker route"


def test_unknown_routes_endpoints_and_jobs_are_404_a_wrong_method_405(ep):
    assert call(ep, "GET", "/v2/dev/nope").status_code == 404
    assert call(ep, "GET", "/v2/other/health").json() == {"error": "endpoint other not found"}
    assert call(ep, "GET", "/v2/dev/status/no-such-job").status_code == 404
    assert call(ep, "POST", "/v2/dev/cancel/no-such-job").status_code == 404
    wrong = call(ep, "GET", "/v2/dev/run")
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "POST"
    assert call(ep, "GET", "/v2/dev/cancel/x").status_code == 405
    assert call(ep, "POST", f"/dev/job-take/w1?token={ep.token}").status_code == 405


def test_bodies_over_the_limit_are_413_and_bad_bodies_400(ep):
    over = b'{"input": "' + b"x" * 10_000_000 + b'"}'
    answer = requests.post(ep.url + "/v2/dev/run", data=over, headers=AUTH, timeout=30)
    assert answer.status_code == 413 and "the limit is 10000000" in answer.json()["error"]
    assert call(ep, "GET", "/v2/dev/health").status_code == 200
    bad_json = requests.post(ep.url + "/v2/dev/run", data=b"{nope", headers=AUTH, timeout=10)
    assert bad_json.status_code == 400 and "not valid JSON" in bad_json.text
    assert call(ep, "POST", "/v2/dev/run", {"prompt": "no input"}).status_code == 400
    for policy in ([1], {"ttl": "1000"}, {"executionTimeout": -5}, {"ttl": True}):
        refused = call(ep, "POST", "/v2/dev/run", {"input": {}, "policy": policy})
        assert refused.status_code == 400 and "policy must be" in refused.json()["error"], policy
    assert call(ep, "GET", "/v2/dev/health").status_code == 200  # and the endpoint goes on


def test_run_status_cancel_and_retry_over_http(ep):
    job_id = call(ep, "POST", "/v2/dev/run", {"input": {"prompt": "a"}}).json()["id"]
    for method in ("GET", "POST"):
        view = call(ep, method, f"/v2/dev/status/{job_id}").json()
        assert view["status"] == "IN_QUEUE" and view["delayTime"] >= 0
    assert {"id": job_id, "input": {"prompt": "a"}} in ep.stats().submissions
    assert call(ep, "GET", "/dev/jobs").json()["submissions"] == ep.stats().submissions
    assert call(ep, "POST", f"/v2/dev/cancel/{job_id}").json() == {"id": job_id, "status": "CANCELLED"}
    refused = call(ep, "POST", f"/v2/dev/retry/{job_id}")
    assert refused.status_code == 400 and "only FAILED or TIMED_OUT" in refused.text


def test_runsync_answers_after_its_wait_with_the_job_still_queued(ep):
    started = time.monotonic()
    view = call(ep, "POST", "/v2/dev/runsync?wait=1000", {"input": {}}).json()
    assert view["status"] == "IN_QUEUE" and 0.9 < time.monotonic() - started < 5


def test_health_shape_and_purge(ep):
    call(ep, "POST", "/v2/dev/run", {"input": {}})
    health = call(ep, "GET", "/v2/dev/health").json()
    assert set(health) == {"jobs", "workers", "coldStart"} and health["jobs"]["inQueue"] >= 1
    assert health["coldStart"] == {}  # no worker started (spawn_workers=False): no report yet
    assert set(health["workers"]) == {"idle", "initializing", "ready", "running", "throttled", "unhealthy"}
    removed = call(ep, "POST", "/v2/dev/purge-queue").json()
    assert removed["removed"] >= 1 and removed["status"] == "completed"
    assert call(ep, "GET", "/v2/dev/health").json()["jobs"]["inQueue"] == 0


def test_management_get_and_patch_answer_as_runpod_and_spawn_workers_false_starts_none(ep):
    path = "/v2/serverless/dev"
    assert call(ep, "GET", path).json() == {
        "id": "dev",
        "name": "dev",
        "type": "QUEUE",
        "workers": {"min": 0, "max": 1, "idleTimeout": 0.1},  # as the fixture started it
    }
    for method in ("GET", "PATCH"):
        missing = call(ep, method, "/v2/serverless/other", {"workers": {"min": 0}})
        assert missing.status_code == 404 and missing.headers["Content-Type"] == "application/problem+json"
        assert missing.json() == {"title": "Not Found", "status": 404, "detail": "endpoint other not found"}
    answer = call(ep, "PATCH", path, {"workers": {"min": 1, "max": 2, "idleTimeout": 7}})
    assert answer.json() == call(ep, "GET", path).json()  # a PATCH answers the updated endpoint
    assert answer.json()["workers"] == {"min": 1, "max": 2, "idleTimeout": 7}
    time.sleep(0.6)  # two turns of the scale loop
    stats = ep.stats()
    assert (stats.min_workers, stats.max_workers, stats.workers_started, stats.worker_pids) == (1, 2, 0, {})
    call(ep, "PATCH", path, {"workers": {"min": 0, "max": 1, "idleTimeout": 0.1}})


def test_a_patch_replaces_the_whole_workers_object_and_a_bad_value_is_a_422_naming_it(ep):
    """RunPod's spec does not say whether `workers` is merged; the dev endpoint replaces it, so a client
    that sends only `min` resets max and idleTimeout to RunPod's defaults (3 and 10) for all to see."""
    path = "/v2/serverless/dev"
    call(ep, "PATCH", path, {"workers": {"min": 0, "max": 2, "idleTimeout": 7}})
    assert call(ep, "PATCH", path, {"workers": {"min": 1}}).json()["workers"] == {"min": 1, "max": 3, "idleTimeout": 10}
    assert call(ep, "PATCH", path, {}).json()["workers"] == {"min": 1, "max": 3, "idleTimeout": 10}  # no workers: kept
    for body, error in (
        ({"workers": {"min": -1}}, "$.workers.min: must be a whole number >= 0, got -1"),
        ({"workers": {"min": 0, "max": True}}, "$.workers.max: must be a whole number >= 0, got true"),
        ({"workers": {"min": 2, "max": 1}}, "$.workers.min: 2 exceeds $.workers.max: 1"),
        (
            {"workers": {"min": 0, "idleTimeout": 0}},
            "$.workers.idleTimeout: must be seconds above 0, at most 3600, got 0",
        ),
        ({"workers": {"mni": 1}}, "$.workers: additional properties 'mni' not allowed"),
        ({"workers": [1]}, "$.workers: must be an object, got [1]"),
        ({"x": 1}, "$: additional properties 'x' not allowed (the dev endpoint has only workers)"),
    ):
        refused = call(ep, "PATCH", path, body)
        assert refused.status_code == 422 and refused.headers["Content-Type"] == "application/problem+json", body
        assert refused.json() == {
            "title": "Unprocessable Entity",
            "status": 422,
            "detail": "Request validation failed.",
            "errors": [error],
        }
    not_an_object = requests.patch(ep.url + path, data=b"[1]", headers=AUTH, timeout=10)
    assert not_an_object.status_code == 400 and not_an_object.json()["title"] == "Bad Request"
    assert call(ep, "PATCH", path, headers={}).json()["status"] == 401
    assert call(ep, "GET", path).json()["workers"] == {"min": 1, "max": 3, "idleTimeout": 10}, "a refusal changed it"
    call(ep, "PATCH", path, {"workers": {"min": 0, "max": 1, "idleTimeout": 0.1}})


def test_injected_faults_answer_the_next_queue_requests(ep):
    ep.inject_faults([503, 429])
    first, second = call(ep, "GET", "/v2/dev/health"), call(ep, "GET", "/v2/dev/health")
    assert first.status_code == 503 and first.json() == {"error": "injected fault 503"}
    assert second.status_code == 429 and second.headers["Retry-After"] == "0"
    assert call(ep, "POST", "/dev/faults", {"statuses": [502]}).json() == {"queued_faults": 1}
    assert call(ep, "GET", "/dev/jobs").status_code == 200, "a test route used up a fault"
    assert call(ep, "GET", "/v2/dev/health").status_code == 502
    assert call(ep, "GET", "/v2/dev/health").status_code == 200
    assert call(ep, "POST", "/dev/faults", {"statuses": ["x"]}).status_code == 400


def test_the_worker_protocol_over_http_with_a_stand_in_worker(ep):
    """job-take, job-done and job-stop, as the RunPod SDK calls them, for a worker the pool did not start."""
    with ep.cond:
        ep.queue.add_worker("stand-in")
    worker = f"?token={ep.token}"
    done_id = call(ep, "POST", "/v2/dev/run", {"input": {"n": 1}}).json()["id"]
    assert call(ep, "GET", f"/dev/job-take/stand-in{worker}", headers={}).json() == {"id": done_id, "input": {"n": 1}}
    progress = {"status": "IN_PROGRESS", "output": {"step": 1}}
    assert call(ep, "POST", f"/dev/job-done/stand-in/{done_id}{worker}", progress, headers={}).status_code == 200
    assert call(ep, "GET", f"/v2/dev/status/{done_id}").json()["output"] == {"step": 1}
    call(ep, "POST", f"/dev/job-done/stand-in/{done_id}{worker}", {"output": {"ok": True}}, headers={})
    assert call(ep, "GET", f"/v2/dev/status/{done_id}").json()["status"] == "COMPLETED"

    stopped_id = call(ep, "POST", "/v2/dev/run", {"input": {"n": 2}}).json()["id"]
    call(ep, "GET", f"/dev/job-take/stand-in{worker}", headers={})
    call(ep, "POST", f"/v2/dev/cancel/{stopped_id}")
    assert call(ep, "GET", f"/dev/job-stop/stand-in{worker}", headers={}).json() == {"jobsToStop": [stopped_id]}
    stats = ep.stats()
    assert isinstance(stats, EndpointStats)
    assert stats.handed_out[done_id] == 1 and stats.finished_by_worker == {done_id: 1}
    with ep.cond:
        ep.queue.remove_worker("stand-in", now=time.time())


# ---- the pool's process handling, with a stand-in process -------------------------------------------
@pytest.fixture
def stand_in(tmp_path):
    """A 'handler.py' that ignores SIGTERM, says so in a file beside it, and sleeps: stands in for a worker
    without its cold start."""
    script = tmp_path / "handler.py"
    ready = tmp_path / "ready"
    script.write_text(
        "import pathlib, signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"pathlib.Path({str(ready)!r}).write_text('ready')\n"
        "time.sleep(120)\n"
    )
    return script


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_worker_dies_with_the_thread_that_started_it(stand_in):
    pool = WorkerPool(stand_in, "http://127.0.0.1:9/take", "http://127.0.0.1:9/done")
    end = threading.Event()
    thread = threading.Thread(target=lambda: (pool.start(), end.wait(30)))
    thread.start()
    # The stand-in writes its file only once the launcher has set the parent-death signal and exec'd it.
    wait_until((stand_in.parent / "ready").exists, 30, "the stand-in worker to start")
    (process,) = pool.processes.values()
    assert process.poll() is None
    end.set()
    thread.join()
    assert process.wait(10) == -signal.SIGKILL
    with pytest.raises(RuntimeError, match="one thread"):
        pool.start()  # another thread: its workers would die with this one


def test_stop_sends_sigkill_after_the_grace(stand_in):
    pool = WorkerPool(stand_in, "http://127.0.0.1:9/take", "http://127.0.0.1:9/done")
    pool.start()
    worker_id = next(iter(pool.processes))
    assert pool.pids()[worker_id] > 0 and len(pool) == 1
    wait_until((stand_in.parent / "ready").exists, 30, "the stand-in to ignore SIGTERM")
    (process,) = pool.processes.values()
    started = time.monotonic()
    stop(pool.detach([worker_id]), grace_s=0.5)
    assert 0.5 <= time.monotonic() - started < 5 and len(pool) == 0
    assert process.returncode == -signal.SIGKILL


# ---- the command, with real handler.py workers --------------------------------------------------------
@pytest.fixture
def dev_endpoint_process(tiny_model, tmp_path):
    """start(workers_min, workers_max) -> (process, url, worker pids): `wan-i2v dev-endpoint` as its own
    process, once its workers are idle. Teardown kills anything the test left."""
    left: list[psutil.Process] = []

    def start(workers_min: int, workers_max: int):
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "BUCKET_"))}
        env.update(WAN_MODEL=str(tiny_model), WAN_OUTPUT_DIR=str(tmp_path / "out"))
        command = wan_i2v("dev-endpoint", "--port", str(port), "--api-key", KEY, "--handler", str(ROOT / "handler.py"))
        command += ["--workers-max", str(workers_max), "--log-dir", str(tmp_path / "logs")]
        with open(tmp_path / "dev-endpoint.log", "ab") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        left.append(psutil.Process(process.pid))
        url = f"http://127.0.0.1:{port}"
        wait_for_port(port, 30, process)
        patch = {"workers": {"min": workers_min, "max": workers_max}}
        requests.patch(f"{url}/v2/serverless/dev", json=patch, headers=AUTH, timeout=10).raise_for_status()

        def idle() -> bool:
            return requests.get(f"{url}/v2/dev/health", headers=AUTH, timeout=10).json()["workers"]["idle"]

        wait_until(lambda: idle() == workers_min, 120, "the workers' cold start")
        workers = [p for p in psutil.Process(process.pid).children() if "handler.py" in " ".join(p.cmdline())]
        assert len(workers) == workers_min, workers
        left.extend(workers)
        return process, url, workers

    yield start
    for process in left:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def gone(processes: list[psutil.Process]) -> bool:
    """None left: exited (a zombie waiting for a parent that does not reap counts as exited)."""
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


@pytest.mark.load  # a kill run: two real workers started and stopped mid-job (the load tier's kind)
def test_sigterm_stops_an_idle_worker_and_a_running_one(dev_endpoint_process):
    """A process manager's or a test's SIGTERM used to leave the workers polling a dead endpoint."""
    process, url, workers = dev_endpoint_process(2, 2)
    job_id = requests.post(f"{url}/v2/dev/run", json={"input": QUICKEST}, headers=AUTH, timeout=10).json()["id"]

    def status() -> str:
        return requests.get(f"{url}/v2/dev/status/{job_id}", headers=AUTH, timeout=10).json()["status"]

    wait_until(lambda: status() == "IN_PROGRESS", 30, "the job to start")
    health = requests.get(f"{url}/v2/dev/health", headers=AUTH, timeout=10).json()["workers"]
    assert (health["idle"], health["running"]) == (1, 1)
    process.send_signal(signal.SIGTERM)
    wait_until(lambda: gone(workers), 10, "the workers to exit after SIGTERM")
    assert process.wait(10) == 0


@pytest.mark.load  # a kill run
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_sigkilled_endpoint_still_takes_its_idle_worker_with_it(dev_endpoint_process):
    process, _, workers = dev_endpoint_process(1, 1)
    assert not gone(workers)
    process.kill()
    process.wait(10)
    wait_until(lambda: gone(workers), 10, "the orphaned worker to exit")


SERVE = """
import signal, sys
from wan_i2v.ops.devserver import DevEndpoint, serve_until_signalled
if sys.argv[1] == "ignore-hup":
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as `nohup` starts a program
endpoint = DevEndpoint(api_key="k", spawn_workers=False).start()
print(endpoint.url, flush=True)
print("stopped on", serve_until_signalled(endpoint), flush=True)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_each_stop_signal_closes_the_endpoint(signum):
    # Started as from a terminal: every stop signal at its default (a runner started in the background by a
    # shell without job control has SIGINT ignored, and the endpoint rightly leaves an ignored signal alone).
    serving = subprocess.Popen(
        [sys.executable, "-c", SERVE, "-"],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL) for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)],
    )
    url = serving.stdout.readline().strip()
    assert requests.get(f"{url}/v2/dev/health", headers={"Authorization": "Bearer k"}, timeout=10).ok
    serving.send_signal(signum)
    assert serving.wait(10) == 0 and serving.stdout.read().strip() == f"stopped on {int(signum)}"


def test_a_signal_the_process_was_told_to_ignore_stays_ignored():
    """`nohup wan-i2v dev-endpoint &` outlives its terminal: SIGHUP stays ignored, SIGTERM still stops it."""
    serving = subprocess.Popen([sys.executable, "-c", SERVE, "ignore-hup"], stdout=subprocess.PIPE, text=True)
    url = serving.stdout.readline().strip()
    serving.send_signal(signal.SIGHUP)
    time.sleep(1.5)  # the serving loop wakes every second
    assert serving.poll() is None
    assert requests.get(f"{url}/v2/dev/health", headers={"Authorization": "Bearer k"}, timeout=10).ok
    serving.send_signal(signal.SIGTERM)
    assert serving.wait(10) == 0


@pytest.mark.load  # a whole dev endpoint with a worker of two ranks (cold start of both, then a job)
def test_a_two_rank_worker_serves_through_the_dev_endpoint_and_leaves_with_it(dev_endpoint_process, monkeypatch):
    """WAN_GPUS=2 on a CPU: the dev endpoint's worker is rank 0 of two gloo ranks (worker/ranks.py)."""
    monkeypatch.setenv("WAN_GPUS", "2")
    process, url, workers = dev_endpoint_process(1, 1)
    ranks = [workers[0], *workers[0].children(recursive=True)]
    assert ["wan_i2v.worker.follower" in " ".join(p.cmdline()) for p in ranks] == [False, True]
    answer = requests.post(f"{url}/v2/dev/runsync", json={"input": QUICKEST}, headers=AUTH, timeout=120).json()
    assert answer["status"] == "COMPLETED", answer
    assert answer["output"]["engine"]["parallel"] == {"ranks": 2, "ulysses": 1, "ring": 1, "cfg": 2}
    process.send_signal(signal.SIGTERM)
    wait_until(lambda: gone(ranks), 15, "both ranks to exit with the endpoint")
    assert process.wait(10) == 0
