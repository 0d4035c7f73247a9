"""Faults injected into real jobs on the tiny model: the job ends with a clear error, nothing is left
half-written, no URL points at an object that is not there, and the worker serves the next job.

Each fault is tested where it happens (the upload, the encoder) in test_storage.py and test_video.py;
here a whole job meets it once, for what only the job boundary can show. Two more whole-job variants
(a bucket that recovers, a full disk while encoding) run in the load tier."""

import gc
import tempfile
import time
import weakref
from pathlib import Path

import pytest
import requests
import torch
from helpers import QUICKEST, bucket_keys, encode, picture

from wan_i2v.bucket import BucketSettings
from wan_i2v.worker import job as job_module
from wan_i2v.worker.job import Worker
from wan_i2v.worker.netguard import UrlPolicy
from wan_i2v.worker.settings import Settings
from wan_i2v.worker.video import encode_mp4, probe_mp4


@pytest.fixture
def temp_root(tmp_path, monkeypatch):
    """Every temporary file of the job goes here; the test checks it is empty afterwards."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    yield root
    assert list(root.iterdir()) == [], "temporary files were left behind"


def make_worker(engine, tmp_path, **settings) -> Worker:
    return Worker(engine, Settings(model="tiny", output_dir=tmp_path / "out", **settings))


def bucket(env: dict, endpoint: str, **extra) -> BucketSettings:
    return BucketSettings.from_env({**env, "BUCKET_ENDPOINT_URL": endpoint, **extra})


def test_a_bucket_that_keeps_failing_fails_the_job_cleanly_and_the_worker_goes_on(
    engine, tmp_path, temp_root, bucket_env, faulty_s3
):
    faulty_s3.fail_next = 10**6
    failing = bucket(bucket_env, faulty_s3.url, BUCKET_MAX_ATTEMPTS="3")
    result = make_worker(engine, tmp_path, bucket=failing).handle({"id": "down", "input": QUICKEST})
    assert result == {
        "error": f"upload to bucket '{bucket_env['BUCKET_NAME']}' at {faulty_s3.url} failed after 3 attempts: "
        "InternalError"
    }
    assert len([r for r in faulty_s3.requests if r[0] == "PUT"]) == 3
    assert bucket_keys(bucket_env) == [], "an object was left in the bucket"
    assert not (tmp_path / "out").exists()

    up = make_worker(engine, tmp_path, bucket=bucket(bucket_env, bucket_env["BUCKET_ENDPOINT_URL"]))
    result = up.handle({"id": "next", "input": QUICKEST})
    video = tmp_path / "got.mp4"
    video.write_bytes(requests.get(result["video_url"], timeout=30).content)
    assert probe_mp4(video)["frames"] == 17 and len(bucket_keys(bucket_env)) == 1


def test_encoder_failure_is_a_clear_error_and_the_next_job_works(engine, tmp_path, temp_root, monkeypatch):
    broken = tmp_path / "ffmpeg"
    broken.write_text("#!/bin/sh\necho 'Segmentation fault (core dumped)' >&2\nexit 139\n")
    broken.chmod(0o755)
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(broken))
    worker = make_worker(engine, tmp_path)
    result = worker.handle({"id": "enc", "input": QUICKEST})
    assert result == {"error": "encoding the MP4 failed: Segmentation fault (core dumped)", "refresh_worker": True}
    assert not (tmp_path / "out").exists()
    monkeypatch.delenv("IMAGEIO_FFMPEG_EXE")
    assert "video_url" in worker.handle({"id": "after", "input": QUICKEST})


def test_out_of_memory_while_denoising_releases_the_jobs_tensors(engine, tmp_path, temp_root, monkeypatch):
    held = []

    def out_of_memory(hidden_states, *args, **kwargs):
        held.append(weakref.ref(hidden_states))
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 30.00 GiB")

    monkeypatch.setattr(engine.pipe.transformer_2, "forward", out_of_memory)  # the low-noise expert, mid-job
    released = []
    monkeypatch.setattr(engine, "release_memory", lambda: released.append(True))
    result = make_worker(engine, tmp_path).handle({"id": "oom", "input": QUICKEST})
    assert result["refresh_worker"] is True
    assert result["error"].startswith("the GPU ran out of memory at 832x480, 17 frames")
    gc.collect()
    assert held and held[0]() is None, "the failed job's latents are still referenced"
    assert released == [True]


def test_an_image_url_that_hangs_fails_the_job_in_time(engine, tmp_path, temp_root, http_server):
    http_server.routes["/hang.png"] = http_server.Route(body=encode(picture(), "PNG"), stall=30)
    policy = UrlPolicy.from_allow_list("127.0.0.1", read_timeout_s=0.5)
    started = time.monotonic()
    result = make_worker(engine, tmp_path, url_policy=policy).handle(
        {"id": "hang", "input": {**QUICKEST, "image": http_server.url + "/hang.png?X-Amz-Signature=s3cr3t"}}
    )
    assert time.monotonic() - started < 5
    assert result == {"error": f"image: {http_server.url}/hang.png did not answer in time (connect 5 s, read 0.5 s)"}


def test_progress_that_cannot_be_sent_never_fails_the_job(engine, tmp_path, temp_root):
    def unreachable(job, event):
        raise ConnectionError("progress endpoint down")

    worker = Worker(engine, Settings(model="tiny", output_dir=tmp_path / "out"), progress=unreachable)
    assert "video_url" in worker.handle({"id": "p", "input": QUICKEST})


@pytest.mark.load
def test_bucket_answering_500_is_retried_with_backoff_then_succeeds(engine, tmp_path, temp_root, bucket_env, faulty_s3):
    faulty_s3.fail_next = 2
    target = bucket(bucket_env, faulty_s3.url, BUCKET_MAX_ATTEMPTS="3")
    result = make_worker(engine, tmp_path, bucket=target).handle({"id": "flaky", "input": QUICKEST})
    assert "error" not in result, result
    puts = [r for r in faulty_s3.requests if r[0] == "PUT"]
    assert len(puts) == 3, "the upload was not retried twice"
    assert puts[2][2] - puts[0][2] > 0.01, "no backoff between attempts"
    video = tmp_path / "got.mp4"
    video.write_bytes(requests.get(result["video_url"], timeout=30).content)
    assert probe_mp4(video)["frames"] == 17


@pytest.mark.load
def test_disk_full_while_encoding(engine, tmp_path, temp_root, monkeypatch):
    def encode_onto_a_full_disk(frames, path, *args, **kwargs):
        Path(path).symlink_to("/dev/full")  # every write to the output fails with ENOSPC
        return encode_mp4(frames, path, *args, **kwargs)

    monkeypatch.setattr(job_module, "encode_mp4", encode_onto_a_full_disk)
    result = make_worker(engine, tmp_path).handle({"id": "full", "input": QUICKEST})
    assert result == {
        "error": "encoding the MP4 failed: no space left on the worker's disk",
        "refresh_worker": True,
    }
    assert not (tmp_path / "out").exists()
