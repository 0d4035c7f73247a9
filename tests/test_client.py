"""The Python client against the local RunPod-compatible endpoint: submit, status, wait, cancel, retry,
purge, run_batch, local images, typed outputs, and RunPod's own SDK against the same endpoint.

Tests that need no job to run use an endpoint that never starts a worker; the others run real
workers (`python handler.py` on the tiny model) with the cheapest job shape."""

import json
import tempfile
from pathlib import Path

import pytest
from helpers import CHEAP, IMAGE, KEY, OUTPUT, QUICKEST, ROOT, UNGUIDED, bucket_keys, client_for, encode, picture

from wan_i2v.ops.api import ApiError, ApiSession
from wan_i2v.ops.client import Client, JobFailed, OutputError

SDK_INPUT = json.loads((ROOT / "test_input.json").read_text())["input"]


def answer_with(client: Client, answer: dict) -> None:
    """Make every /status of this client answer `answer` (with the asked job's id)."""
    client.status = lambda job_id: {**answer, "id": job_id}


GOOD_OUTPUT = {**OUTPUT, "seed": 5, "timings": {**OUTPUT["timings"], "total": 8}, "from_a_newer_worker": True}


def test_submit_status_cancel_and_purge(idle_endpoint):
    client = client_for(idle_endpoint)
    ids = [client.submit({"image": "https://example.invalid/x.png", **CHEAP}) for _ in range(3)]
    assert client.status(ids[0])["status"] == "IN_QUEUE"
    assert client.cancel(ids[0]) == {"id": ids[0], "status": "CANCELLED"}
    assert client.status(ids[0])["status"] == "CANCELLED"
    with pytest.raises(JobFailed) as caught:
        client.wait(ids[0], timeout_s=5)
    assert caught.value.status == "CANCELLED"
    with pytest.raises(TimeoutError, match=f"job {ids[1]} still IN_QUEUE after 1 s"):
        client.wait(ids[1], timeout_s=1)

    assert client.purge_queue() == {"removed": 2, "status": "completed"}
    assert client.health().jobs["inQueue"] == 0
    assert [s["id"] for s in idle_endpoint.stats().submissions] == ids


def test_wait_reads_a_finished_jobs_output_through_the_schema():
    client = Client(endpoint_id="dev", api=ApiSession("k"), poll_s=0.01)
    answer_with(client, {"status": "COMPLETED", "output": GOOD_OUTPUT})
    output = client.wait("job-1")
    assert output["seed"] == 5 and output["timings"]["total"] == 8 and output["from_a_newer_worker"] is True

    answer_with(client, {"status": "COMPLETED", "output": {**GOOD_OUTPUT, "seed": "five", "video_url": None}})
    with pytest.raises(OutputError) as unreadable:
        client.wait("job-2")
    assert isinstance(unreadable.value, JobFailed) and unreadable.value.job_id == "job-2"
    message = str(unreadable.value)
    assert message.startswith("job job-2 COMPLETED: its output is not a wan-i2v output")
    assert "video_url:" in message and "seed:" in message
    answer_with(client, {"status": "COMPLETED"})
    with pytest.raises(OutputError, match="job job-3 COMPLETED: .*output: "):
        client.wait("job-3")

    answer_with(client, {"status": "FAILED", "error": "image: too large"})
    with pytest.raises(JobFailed, match="job job-4 FAILED: image: too large"):
        client.wait("job-4")


def test_run_batch_reports_an_unreadable_output_as_that_jobs_error(idle_endpoint, tmp_path, monkeypatch):
    """The batch engine reads outputs as `wait` does. Jobs are really sent (and stay queued); /status is canned."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    picture_file = tmp_path / "shot.png"
    picture_file.write_bytes(encode(picture(), "PNG"))
    client = client_for(idle_endpoint)
    answer_with(client, {"status": "COMPLETED", "output": {"video_url": "file:///v.mp4"}})
    jobs = [{"image": picture_file, "prompt": "x", **QUICKEST}, {"image": IMAGE}, {"image": IMAGE}]
    results = client.run_batch(jobs, auto_manage_workers=False)
    sent = idle_endpoint.stats().submissions
    assert [r["id"] for r in results] == [s["id"] for s in sent] and len({r["id"] for r in results}) == 3
    assert sent[0]["input"]["image"].startswith("data:image/png;base64,")  # the local file, sent inline
    assert sent[1]["input"] == sent[2]["input"] == {"image": IMAGE, "prompt": ""}  # a repeated job runs twice
    for result in results:
        assert result["status"] == "COMPLETED" and "its output is not a wan-i2v output" in result["error"]
        assert "generation_time: Field required" in result["error"]
    assert list(tmp_path.iterdir()) == [picture_file], "the throwaway ledger was left behind"
    assert client.run_batch([]) == [] and len(idle_endpoint.stats().submissions) == 3


def test_failed_job_retry_and_runpods_own_sdk(endpoint_factory, monkeypatch):
    monkeypatch.setenv("WAN_FAULTS", "attention")  # a lever that fails at cold start: the worker serves all the same
    endpoint = endpoint_factory(idle_timeout_s=60)  # one worker for the whole test: one cold start
    client = client_for(endpoint)
    bad = client.submit({"image": SDK_INPUT["image"], "frame_num": 80})
    with pytest.raises(JobFailed) as caught:
        client.wait(bad, timeout_s=300)
    assert caught.value.status == "FAILED" and "frame_num: 80 is not allowed" in str(caught.value.error)
    assert client.retry(bad) == {"id": bad, "status": "IN_QUEUE"}
    with pytest.raises(JobFailed):
        client.wait(bad, timeout_s=300)
    assert client.health().jobs["retried"] == 1

    import runpod

    monkeypatch.setattr(runpod, "api_key", KEY)
    monkeypatch.setattr(runpod, "endpoint_url_base", endpoint.url + "/v2")
    job = runpod.Endpoint("dev").run({**SDK_INPUT, **UNGUIDED})
    output = job.output(timeout=300)
    assert job.status() == "COMPLETED" and output["frame_num"] == 17 and output["seed"] == SDK_INPUT["seed"]
    assert client.wait(job.job_id, timeout_s=10) == output  # a real worker's output reads as a JobOutput
    # The dev endpoint's /health shows each live worker's cold-start report.
    reports = endpoint.health()["coldStart"]
    assert len(reports) == 1 and set(reports) <= set(endpoint.stats().worker_pids)
    (report,) = reports.values()
    assert report["memory_plan"].startswith("resident") and report["quantization"] == "none"
    assert {"load", "place", "attention_check", "total"} <= set(report["seconds"])
    assert report["fallbacks"] == [
        {"what": "attention", "from": "native", "to": "_native_math", "why": "injected by WAN_FAULTS=attention"}
    ]
    with pytest.raises(ApiError) as not_retryable:
        client.retry(job.job_id)
    assert not_retryable.value.status == 400 and "only FAILED or TIMED_OUT" in str(not_retryable.value)


def test_client_run_batch_keeps_input_order_and_scales_back_down(endpoint_factory):
    endpoint = endpoint_factory()
    client = client_for(endpoint)
    jobs = [{"image": SDK_INPUT["image"], "fps": 99}, {**QUICKEST, "image": SDK_INPUT["image"], "seed": 3}]
    results = client.run_batch(jobs, auto_manage_workers=True, retries=1, ready_timeout_s=120)
    stats = endpoint.stats()
    assert [r["id"] for r in results] == [s["id"] for s in stats.submissions]
    assert results[0]["status"] == "FAILED" and "fps: 99 is not allowed" in results[0]["error"]
    assert results[1]["output"]["seed"] == 3 and results[1]["output"]["frame_num"] == 17
    health = client.health()
    assert health.jobs["retried"] == 1 and health.jobs["completed"] == 1 and stats.min_workers == 0


def test_local_images_go_inline_or_are_uploaded_once(bucket_env, tmp_path, monkeypatch):
    from wan_i2v.bucket import BucketSettings
    from wan_i2v.ops import client as client_module

    image = tmp_path / "shot.png"
    image.write_bytes(encode(picture(), "PNG"))
    client = Client(endpoint_id="dev", api=ApiSession("k"), bucket=BucketSettings.from_env(bucket_env))
    inline = client.prepare_input({"image": str(image), "prompt": "x"})
    assert inline["image"].startswith("data:image/png;base64,") and inline["prompt"] == "x"
    assert client.prepare_input({"image": Path(image)})["image"] == inline["image"]

    monkeypatch.setattr(client_module, "RUN_LIMIT_BYTES", 1000)  # as if the image were 10 MB
    first = client.prepare_input({"image": str(image), "last_image": str(image)})
    again = Client(endpoint_id="dev", api=ApiSession("k"), bucket=client.bucket).prepare_input({"image": str(image)})
    assert first["image"].startswith(bucket_env["BUCKET_ENDPOINT_URL"]) and first["image"] == first["last_image"]
    keys = bucket_keys(bucket_env)
    assert len(keys) == 1 and "/inputs/" in keys[0] and again["image"].split("?")[0] == first["image"].split("?")[0]
    no_bucket = Client(endpoint_id="dev", api=ApiSession("k"))
    with pytest.raises(ApiError, match="too large to send inline; set the BUCKET_"):
        no_bucket.prepare_input({"image": str(image)})
