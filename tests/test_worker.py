"""The worker in-process on the tiny model: contract fields, progress, errors, determinism."""

import base64
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
import torch
from helpers import b64, data_uri, encode, picture

from wan_i2v.worker.settings import Settings
from wan_i2v.worker.video import probe_mp4, read_frames
from wan_i2v.worker.job import Worker

IMAGE = data_uri(encode(picture(), "PNG"))
SMALL = {"image": IMAGE, "prompt": "a sunset over a field", "sample_steps": 15, "frame_num": 17}


@pytest.fixture(scope="module")
def work_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("worker")
    (root / "tmp").mkdir()
    return root


@pytest.fixture
def worker(engine, work_dirs, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(work_dirs / "tmp"))
    events = []
    w = Worker(engine, Settings(model="tiny", output_dir=work_dirs / "out"), progress=lambda job, e: events.append(e))
    w.events = events
    yield w
    assert list((work_dirs / "tmp").iterdir()) == [], "temporary files were left behind"


def local_path(url):
    assert url.startswith("file://")
    return Path(unquote(urlparse(url).path))


@pytest.fixture(scope="module")
def first_job(engine, work_dirs):
    events = []
    w = Worker(engine, Settings(model="tiny", output_dir=work_dirs / "out"), progress=lambda job, e: events.append(e))
    output = w.handle({"id": "job-1", "input": {**SMALL, "seed": 7, "fps": 12}})
    return output, events


def test_job_returns_the_contracted_fields_and_a_valid_mp4(first_job):
    output, _ = first_job
    assert "error" not in output, output
    for name in ("video_url", "generation_time", "video_size_mb", "resolution", "sample_steps", "frame_num"):
        assert name in output
    assert (output["resolution"], output["sample_steps"], output["frame_num"]) == ("480p", 15, 17)
    assert (output["width"], output["height"], output["fps"], output["seed"]) == (832, 480, 12, 7)
    assert output["model"] == "tiny" and output["storage"] == "local"
    path = local_path(output["video_url"])
    info = probe_mp4(path)
    assert (info["frames"], info["width"], info["height"], info["fps"]) == (17, 832, 480, 12)
    assert info["codec"].startswith("h264")
    assert output["video_size_mb"] == round(path.stat().st_size / 1024 / 1024, 2)
    phases = {
        "fetch_image",
        "text_encode",
        "condition_encode",
        "denoise",
        "vae_decode",
        "encode_mp4",
        "upload",
        "total",
    }
    assert set(output["timings"]) == phases
    assert output["timings"]["total"] == output["generation_time"] >= output["timings"]["denoise"] > 0


def test_progress_reports_each_step_with_its_expert(first_job):
    _, events = first_job
    steps = [e for e in events if e["phase"] == "denoise"]
    assert [e["step"] for e in steps] == list(range(1, 16))
    experts = [e["expert"] for e in steps]
    switch = experts.index("low_noise")
    assert 0 < switch < 15 and set(experts[:switch]) == {"high_noise"} and set(experts[switch:]) == {"low_noise"}
    phases = [e["phase"] for e in events if e["phase"] != "denoise"]
    assert phases == ["fetch_image", "text_encode", "condition_encode", "vae_decode", "encode_mp4", "upload"]
    percents = [e["percent"] for e in events]
    assert percents == sorted(percents) and percents[0] == 0 and percents[-1] == 98  # upload starts at 98


def test_same_seed_gives_the_same_frames_and_another_seed_differs(worker, first_job):
    again = worker.handle({"id": "job-2", "input": {**SMALL, "seed": 7, "fps": 12}})
    other = worker.handle({"id": "job-3", "input": {**SMALL, "seed": 8, "fps": 12}})
    first = read_frames(local_path(first_job[0]["video_url"]))
    assert np.array_equal(first, read_frames(local_path(again["video_url"])))
    assert np.abs(first.astype(int) - read_frames(local_path(other["video_url"]))).mean() > 1.0


BAD_JOBS = [
    ({"image": IMAGE, "frame_num": 80}, "frame_num: 80 is not allowed (must be 4n+1; nearest valid: 77 or 81)"),
    ({"image": IMAGE, "sample_steps": 99}, "sample_steps: 99 is not allowed"),
    ({"image": IMAGE, "resolution": "4k"}, "resolution: '4k' is not allowed"),
    ({"image": IMAGE, "seed": -3}, "seed: -3 is not allowed"),
    ({"image": IMAGE, "bogus": 1}, "bogus: unknown field"),
    ({"prompt": "no image"}, "image: required"),
    ({"image": b64(b"garbage bytes")}, "image: not a readable image"),
    ({"image": IMAGE, "last_image": "ftp://x/y.png"}, "last_image: URL scheme 'ftp' is not allowed"),
    ({"image": data_uri(encode(picture(400, 40), "PNG"))}, "image: aspect ratio 400x40"),
]


def test_bad_inputs_fail_clearly_and_the_next_job_succeeds(worker, work_dirs):
    before = set((work_dirs / "out").glob("*")) if (work_dirs / "out").exists() else set()
    for raw, expected in BAD_JOBS:
        result = worker.handle({"id": "bad", "input": raw})
        assert set(result) == {"error"} and result["error"].startswith(expected), result
    assert worker.handle({"id": "bad", "input": None})["error"].startswith("input: must be a JSON object")
    assert worker.handle({"id": "bad", "input": SMALL, "s3Config": "x"})["error"].startswith("s3Config:")
    after = set((work_dirs / "out").glob("*")) if (work_dirs / "out").exists() else set()
    assert after == before, "a failed job left a file behind"

    good = worker.handle({"id": "good", "input": {**SMALL, "return_base64": True, "frame_num": 21}})
    assert "error" not in good, good
    assert good["storage"] == "inline" and good["video_url"].startswith("data:video/mp4;base64,")
    video = work_dirs / "inline.mp4"
    video.write_bytes(base64.b64decode(good["video_url"].split(",", 1)[1]))
    assert probe_mp4(video)["frames"] == 21
    assert 0 <= good["seed"] < 2**32


def test_inline_cap_refuses_and_leaves_nothing(engine, work_dirs, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(work_dirs / "tmp"))
    worker = Worker(engine, Settings(output_dir=work_dirs / "capped", base64_max_mb=0.01))
    result = worker.handle({"id": "big", "input": {**SMALL, "return_base64": True}})
    assert set(result) == {"error"} and result["error"].startswith("return_base64: the video is")
    assert "inline cap" in result["error"]
    assert not (work_dirs / "capped").exists() and list((work_dirs / "tmp").iterdir()) == []


def count_forwards(module, counts, name):
    return module.register_forward_hook(lambda *_: counts.__setitem__(name, counts[name] + 1))


def test_each_expert_uses_its_own_guidance(worker, engine):
    counts = {"high_noise": 0, "low_noise": 0}
    hooks = [
        count_forwards(engine.pipe.transformer, counts, "high_noise"),
        count_forwards(engine.pipe.transformer_2, counts, "low_noise"),
    ]
    try:
        result = worker.handle(
            {"id": "g", "input": {**SMALL, "guidance_scale": 1.0, "guidance_scale_2": 4.0, "last_image": IMAGE}}
        )
    finally:
        for hook in hooks:
            hook.remove()
    assert "error" not in result, result
    plan = engine.expert_plan(15, 5.0)
    assert counts == {"high_noise": plan.count("high_noise"), "low_noise": 2 * plan.count("low_noise")}


@pytest.mark.parametrize(
    "exception, message",
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), "the GPU ran out of memory"),
        (RuntimeError("something broke inside"), "internal error: RuntimeError: something broke inside"),
    ],
)
def test_model_failures_ask_for_a_fresh_worker(worker, engine, monkeypatch, exception, message):
    def fail(*args, **kwargs):
        raise exception

    monkeypatch.setattr(engine.pipe.transformer, "forward", fail)
    result = worker.handle({"id": "f", "input": SMALL})
    assert result["refresh_worker"] is True and result["error"].startswith(message)
