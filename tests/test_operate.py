"""The client, management and the `wan-i2v` command against the local RunPod-compatible endpoint.

Workers are real: `python handler.py` in RunPod's worker mode on the tiny model."""

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import (
    KEY,
    assert_videos,
    batch_args,
    bucket_keys,
    cli_env,
    client_for,
    encode,
    make_inputs,
    picture,
    wait_until,
    wan_i2v,
)

from wan_i2v.ops.api import ApiError, ApiSession
from wan_i2v.ops.client import Client, JobFailed
from wan_i2v.ops.management import Health

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"sample_steps": 15, "frame_num": 17}


def test_batch_of_six_with_worker_management(endpoint_factory, tmp_path):
    endpoint = endpoint_factory()
    images, prompts = make_inputs(tmp_path, 3, ["the sun sets", "clouds drift\nslowly by"])
    download = tmp_path / "videos"
    done = subprocess.run(
        wan_i2v(*batch_args(prompts, images, download, max_in_flight=2), "--seed", "1"),
        env=cli_env(endpoint),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "6 completed, 0 failed, 0 cancelled" in done.stdout
    rows = list(csv.DictReader(open(download / "index.csv")))
    assert len(rows) == 6 and {r["state"] for r in rows} == {"completed"}
    assert {(Path(r["image"]).name, r["prompt"]) for r in rows} == {
        (f"shot{i}.png", p) for i in range(3) for p in ("the sun sets", "clouds drift slowly by")
    }
    assert_videos(r["video_path"] for r in rows)
    assert sorted(p.name for p in download.glob("*.mp4")) == sorted(Path(r["video_path"]).name for r in rows)

    assert endpoint.min_workers == 0, "workers were not set back to 0"
    health = client_for(endpoint).health()
    assert health.jobs == {"completed": 6, "failed": 0, "inProgress": 0, "inQueue": 0, "retried": 0}
    assert len(endpoint.submissions) == 6
    wait_until(lambda: client_for(endpoint).health().workers["idle"] == 0, 30, "the idle worker to stop")
    assert KEY not in done.stdout + done.stderr
    worker_logs = "".join(p.read_text() for p in (tmp_path / "worker-logs").glob("*.log"))
    assert "Started." in worker_logs and "Network connectivity" not in worker_logs  # stays on loopback


def ledger_states(ledger: Path) -> list[str] | None:
    try:
        with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as db:
            return [state for (state,) in db.execute("SELECT state FROM jobs ORDER BY position")]
    except sqlite3.OperationalError:  # no file yet, or no table yet: the batch is still creating it
        return None


def test_killed_batch_resumes_without_duplicates_or_losses(endpoint_factory, tmp_path):
    endpoint = endpoint_factory()
    images, prompts = make_inputs(tmp_path, 2, ["waves roll in", "birds fly away"])
    download = tmp_path / "videos"
    ledger = download / "wan-i2v-batch.sqlite"
    args = batch_args(prompts, images, download, max_in_flight=1)
    first = subprocess.Popen(
        wan_i2v(*args), env=cli_env(endpoint), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    # Kill while the second job runs: one finished and downloaded, one in flight, two never sent.
    wait_until(
        lambda: (s := ledger_states(ledger)) and s.count("completed") == 1 and "running" in s, 300, "the 2nd job to run"
    )
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert ledger_states(ledger).count("pending") == 2

    resumed = subprocess.run(
        wan_i2v("batch", "--resume", "--ledger", str(ledger), "--poll", "0.5"),
        env=cli_env(endpoint),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert ledger_states(ledger) == ["completed"] * 4
    sent = [(s["input"]["image"], s["input"]["prompt"]) for s in endpoint.submissions]
    assert len(sent) == 4 and len(set(sent)) == 4, "a job was submitted twice"
    rows = list(csv.DictReader(open(download / "index.csv")))
    assert len(rows) == 4
    assert_videos(r["video_path"] for r in rows)
    assert endpoint.min_workers == 0


def test_batch_killed_before_it_learns_a_job_id_does_not_send_that_job_again(endpoint_factory, held_runs, tmp_path):
    """The one moment RunPod's API cannot make safe by itself: the endpoint has queued the job, and the
    batch is killed before /run answers with the id. The whole process group gets SIGKILL (as Ctrl-C
    or a closed terminal would reach it); the helper that sent the job is in a session of its own,
    records the id, and the resumed batch waits for it instead of sending the job again."""
    endpoint = endpoint_factory()
    proxy = held_runs(endpoint)
    images, prompts = make_inputs(tmp_path, 1, ["waves roll in", "birds fly away"])
    download = tmp_path / "videos"
    ledger = download / "wan-i2v-batch.sqlite"
    proxy.hold.set()
    first = subprocess.Popen(
        wan_i2v(*batch_args(prompts, images, download, max_in_flight=1)),
        env=cli_env(proxy),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert proxy.held.wait(300), "the batch never sent its first job"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert len(endpoint.submissions) == 1 and ledger_states(ledger) == ["submitting", "pending"]

    proxy.hold.clear()
    talked = len(proxy.requests)
    resumed = subprocess.Popen(
        wan_i2v("batch", "--resume", "--ledger", str(ledger), "--poll", "0.5"),
        env=cli_env(proxy),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: len(proxy.requests) > talked, 60, "the resumed batch to reach the endpoint")
    time.sleep(2)  # time enough to send the job again, were it not waiting for the helper
    assert len(endpoint.submissions) == 1 and ledger_states(ledger)[0] == "submitting"
    proxy.release.set()
    out, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err[-3000:]
    assert ledger_states(ledger) == ["completed"] * 2
    sent = [(s["input"]["image"], s["input"]["prompt"]) for s in endpoint.submissions]
    assert len(sent) == 2 and len(set(sent)) == 2, "a job was submitted twice"
    assert_videos(r["video_path"] for r in csv.DictReader(open(download / "index.csv")))
    assert KEY not in out + err


def test_cancel_purge_and_defensive_scale_down(endpoint_factory):
    endpoint = endpoint_factory(workers_max=0)  # no worker ever starts: jobs stay queued
    client = client_for(endpoint)
    ids = [client.submit({"image": "https://example.invalid/x.png", **SMALL}) for _ in range(3)]
    assert client.status(ids[0])["status"] == "IN_QUEUE"
    assert client.cancel(ids[0]) == {"id": ids[0], "status": "CANCELLED"}
    assert client.status(ids[0])["status"] == "CANCELLED"
    with pytest.raises(JobFailed) as caught:
        client.wait(ids[0], timeout_s=5)
    assert caught.value.status == "CANCELLED"

    client.management.set_workers(min_workers=0, max_workers=0)
    client.management.api.request("PATCH", client.management.endpoint_url, {"workers": {"min": 0}})
    endpoint.min_workers = 1
    scaled, health = client.management.scale_down_if_idle()
    assert not scaled and health.jobs["inQueue"] == 2 and endpoint.min_workers == 1

    assert client.purge_queue() == {"removed": 2, "status": "completed"}
    assert client.health().jobs["inQueue"] == 0
    assert client.management.scale_down_if_idle()[0] and endpoint.min_workers == 0


def test_failed_job_retry_and_runpods_own_sdk(endpoint_factory, monkeypatch):
    endpoint = endpoint_factory()
    client = client_for(endpoint)
    bad = client.submit(
        {"image": json.loads((ROOT / "test_input.json").read_text())["input"]["image"], "frame_num": 80}
    )
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
    job = runpod.Endpoint("dev").run(json.loads((ROOT / "test_input.json").read_text())["input"])
    output = job.output(timeout=300)
    assert job.status() == "COMPLETED" and output["frame_num"] == 17
    with pytest.raises(ApiError) as not_retryable:
        client.retry(job.job_id)
    assert not_retryable.value.status == 400 and "only FAILED or TIMED_OUT" in str(not_retryable.value)


def test_429_and_5xx_are_retried_with_backoff_4xx_are_not(endpoint_factory):
    endpoint = endpoint_factory(workers_max=0)
    sleeps = []
    client = client_for(endpoint, backoff_s=1.0, retries=5, sleep=sleeps.append)
    endpoint.faults.extend([503, 502, 500, 504])
    assert client.health().jobs["inQueue"] == 0
    assert not endpoint.faults and len(sleeps) == 4
    for attempt, delay in enumerate(sleeps):  # exponential with jitter: base 2**attempt, half to full
        assert 2**attempt / 2 <= delay <= 2**attempt
    sleeps.clear()
    endpoint.faults.extend([429])  # 429 honours Retry-After (the endpoint sends 0)
    client.health()
    assert sleeps == [0.0]

    sleeps.clear()
    endpoint.faults.extend([503, 503, 503])
    impatient = client_for(endpoint, retries=1, sleep=sleeps.append)
    with pytest.raises(ApiError, match=r"failed after 2 tries: injected fault 503") as caught:
        impatient.health()
    assert caught.value.status == 503 and len(sleeps) == 1
    endpoint.faults.clear()

    sleeps.clear()
    with pytest.raises(ApiError) as missing:
        client.status("no-such-job")
    assert missing.value.status == 404 and sleeps == []


def test_a_bad_api_key_is_refused_clearly(endpoint_factory):
    endpoint = endpoint_factory(workers_max=0)
    with pytest.raises(ApiError) as caught:
        client_for(endpoint, api_key="wrong-key-123").health()
    assert caught.value.status == 401 and "wrong-key-123" not in str(caught.value)
    env = {**cli_env(endpoint), "RUNPOD_API_KEY": "wrong-key-123"}
    done = subprocess.run(wan_i2v("health"), env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "HTTP 401" in done.stderr and "wrong-key-123" not in done.stderr
    missing = subprocess.run(wan_i2v("health"), env={**env, "RUNPOD_API_KEY": ""}, capture_output=True, text=True)
    assert missing.returncode == 2 and "no RunPod API key" in missing.stderr


def test_a_batch_job_refused_by_the_api_stops_the_batch_with_the_apis_error(endpoint_factory, tmp_path):
    """The helper that sends each batch job hands RunPod's refusal back: exit 2, the HTTP status, no key."""
    endpoint = endpoint_factory(workers_max=0)
    images, prompts = make_inputs(tmp_path, 1, ["waves roll in"])
    download = tmp_path / "videos"
    env = {**cli_env(endpoint), "RUNPOD_API_KEY": "wrong-key-123"}
    args = [*batch_args(prompts, images, download, max_in_flight=1), "--no-manage-workers"]
    done = subprocess.run(wan_i2v(*args), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "POST v2/dev/run failed: HTTP 401" in done.stderr and "wrong-key-123" not in done.stderr
    assert endpoint.submissions == [] and ledger_states(download / "wan-i2v-batch.sqlite") == ["submitting"]


def test_the_client_side_never_imports_the_model_stack():
    code = (
        "import sys\n"
        "for name in ('torch', 'diffusers', 'transformers', 'PIL', 'boto3', 'runpod'):\n"
        "    sys.modules[name] = None\n"
        "import wan_i2v.cli, wan_i2v.client, wan_i2v.batch, wan_i2v.management, wan_i2v.devserver\n"
        "wan_i2v.cli.build_parser()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_health_is_read_defensively():
    health = Health.parse({"jobs": {"completed": 3, "inQueue": "x", "weird": 5}, "workers": {"idle": True, "ready": 2}})
    assert health.jobs == {"completed": 3, "failed": 0, "inProgress": 0, "inQueue": 0, "retried": 0}
    assert health.workers["idle"] == 0 and health.workers_up == 2
    assert Health.parse(None).workers_up == 0 and Health.parse({"workers": []}).busy is False


def test_local_images_go_inline_or_are_uploaded_once(bucket_env, tmp_path, monkeypatch):
    from wan_i2v.ops import client as client_module
    from wan_i2v.bucket import BucketSettings

    image = tmp_path / "shot.png"
    image.write_bytes(encode(picture(), "PNG"))
    client = Client(endpoint_id="dev", api=ApiSession("k"), bucket=BucketSettings.from_env(bucket_env))
    inline = client.prepare_input({"image": str(image), "prompt": "x"})
    assert inline["image"].startswith("data:image/png;base64,") and inline["prompt"] == "x"

    monkeypatch.setattr(client_module, "RUN_LIMIT_BYTES", 1000)  # as if the image were 10 MB
    first = client.prepare_input({"image": str(image), "last_image": str(image)})
    again = Client(endpoint_id="dev", api=ApiSession("k"), bucket=client.bucket).prepare_input({"image": str(image)})
    assert first["image"].startswith(bucket_env["BUCKET_ENDPOINT_URL"]) and first["image"] == first["last_image"]
    keys = bucket_keys(bucket_env)
    assert len(keys) == 1 and "/inputs/" in keys[0] and again["image"].split("?")[0] == first["image"].split("?")[0]
    no_bucket = Client(endpoint_id="dev", api=ApiSession("k"))
    with pytest.raises(ApiError, match="too large to send inline; set the BUCKET_"):
        no_bucket.prepare_input({"image": str(image)})


def test_dry_run_lists_jobs_and_cost_without_submitting(endpoint_factory, tmp_path):
    endpoint = endpoint_factory(workers_max=0)
    images, prompts = make_inputs(tmp_path, 2, ["a", "b", "c"])
    done = subprocess.run(
        wan_i2v(
            "batch",
            str(prompts),
            "--images-dir",
            str(images),
            "--dry-run",
            "--resolution",
            "720p",
            "--price-per-second",
            "0.001",
        ),
        env=cli_env(endpoint),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 7 and lines[-1].startswith("6 jobs, about ") and "$0.001/GPU-second" in lines[-1]
    assert endpoint.submissions == [] and not (tmp_path / "wan-i2v-batch.sqlite").exists()


def test_client_run_batch_keeps_input_order_and_scales_back_down(endpoint_factory):
    endpoint = endpoint_factory()
    client = client_for(endpoint)
    image = json.loads((ROOT / "test_input.json").read_text())["input"]["image"]
    jobs = [{"image": image, "fps": 99}, {"image": image, "prompt": "a field", "seed": 3, **SMALL}]
    results = client.run_batch(jobs, auto_manage_workers=True, retries=1, ready_timeout_s=120)
    assert [r["id"] for r in results] == [s["id"] for s in endpoint.submissions]
    assert results[0]["status"] == "FAILED" and "fps: 99 is not allowed" in results[0]["error"]
    assert results[1]["output"]["seed"] == 3 and results[1]["output"]["frame_num"] == 17
    health = client.health()
    assert health.jobs["retried"] == 1 and health.jobs["completed"] == 1 and endpoint.min_workers == 0
