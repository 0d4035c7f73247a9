"""The job boundary (`Worker.handle`) in-process on the tiny model: the contract's fields, a valid MP4,
progress as /status shows it, clear errors for bad input, and a fresh worker asked for after model
failures. Each whole job here costs about 8 s (832x480 is the schema's smallest size), so the engine's
own properties (seeds, guidance, experts) are tested in test_engine.py at a small size instead."""

import base64
import tempfile

import pytest
import torch
from helpers import CHEAP, IMAGE, JOB, b64, data_uri, encode, local_file, picture

from wan_i2v.schema import JobOutput, Phase
from wan_i2v.worker.job import Worker
from wan_i2v.worker.settings import Settings
from wan_i2v.worker.video import probe_mp4


@pytest.fixture(scope="module")
def work_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("worker")
    (root / "tmp").mkdir()
    return root


@pytest.fixture
def worker(engine, work_dirs, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(work_dirs / "tmp"))
    yield Worker(engine, Settings(model="tiny", output_dir=work_dirs / "out"))
    assert list((work_dirs / "tmp").iterdir()) == [], "temporary files were left behind"


@pytest.fixture(scope="module")
def first_job(engine, work_dirs):
    """One whole job with progress captured, and the forwards each expert ran: the high-noise expert's
    guidance off (one forward a step), the low-noise expert's on (two)."""
    events, forwards = [], {"high_noise": 0, "low_noise": 0}
    experts = {"high_noise": engine.pipe.transformer, "low_noise": engine.pipe.transformer_2}
    hooks = [
        model.register_forward_hook(lambda *_, name=name: forwards.__setitem__(name, forwards[name] + 1))
        for name, model in experts.items()
    ]
    w = Worker(engine, Settings(model="tiny", output_dir=work_dirs / "out"), progress=lambda job, e: events.append(e))
    try:
        guidance = {"guidance_scale": 1.0, "guidance_scale_2": 4.0}
        output = w.handle({"id": "job-1", "input": {**JOB, **guidance, "seed": 7, "fps": 12}})
    finally:
        for hook in hooks:
            hook.remove()
    return output, events, forwards


def test_job_returns_the_contracted_fields_and_a_valid_mp4(first_job):
    output, _, _ = first_job
    assert "error" not in output, output
    for name in ("video_url", "generation_time", "video_size_mb", "resolution", "sample_steps", "frame_num"):
        assert name in output
    assert JobOutput.model_validate(output).to_json() == output  # the documented output model, nothing else
    assert (output["resolution"], output["sample_steps"], output["frame_num"]) == ("480p", 15, 17)
    assert (output["width"], output["height"], output["fps"], output["seed"]) == (832, 480, 12, 7)
    assert output["model"] == "tiny" and output["storage"] == "local" and "video_url_expires_at" not in output
    path = local_file(output["video_url"])
    info = probe_mp4(path)
    assert (info["frames"], info["width"], info["height"], info["fps"]) == (17, 832, 480, 12)
    assert info["codec"].startswith("h264")
    assert output["video_size_mb"] == round(path.stat().st_size / 1024 / 1024, 2)
    assert set(output["timings"]) == {phase.value for phase in Phase} | {
        "total",
        "mode_switch",
        "lora_fetch",
        "lora_load",
    }
    assert output["mode"] == "quality" and output["timings"]["mode_switch"] == 0.0
    assert output["loras"] == [] and output["timings"]["lora_fetch"] == output["timings"]["lora_load"] == 0.0
    assert output["engine"] == {
        "quantization": "none",
        "memory_plan": "resident",
        "attention": "native",
        "compiled": False,
        "step_cache": "none",
        "text_cache_hits": output["engine"]["text_cache_hits"],
        "parallel": {"ranks": 1, "ulysses": 1, "ring": 1, "cfg": 1},  # one GPU (no peak memory on the CPU)
    }
    assert output["timings"]["total"] == output["generation_time"] >= output["timings"]["denoise"] > 0


def test_each_experts_guidance_reaches_that_expert(first_job, engine):
    _, _, forwards = first_job
    plan = engine.expert_plan(15, 5.0)
    assert forwards == {"high_noise": plan.count("high_noise"), "low_noise": 2 * plan.count("low_noise")}


def test_progress_reports_each_step_with_its_expert(first_job):
    _, events, _ = first_job
    steps = [e for e in events if e["phase"] == "denoise"]
    assert [e["step"] for e in steps] == list(range(1, 16))
    experts = [e["expert"] for e in steps]
    switch = experts.index("low_noise")
    assert 0 < switch < 15 and set(experts[:switch]) == {"high_noise"} and set(experts[switch:]) == {"low_noise"}
    phases = [e["phase"] for e in events if e["phase"] != "denoise"]
    assert phases == ["fetch_image", "text_encode", "condition_encode", "vae_decode", "encode_mp4", "upload"]
    percents = [e["percent"] for e in events]
    assert percents == sorted(percents) and percents[0] == 0 and percents[-1] == 99  # upload starts at 99


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
    """Every bad job is refused before any work; then a good job (inline this time) still runs."""
    before = set((work_dirs / "out").glob("*")) if (work_dirs / "out").exists() else set()
    for raw, expected in BAD_JOBS:
        result = worker.handle({"id": "bad", "input": raw})
        assert set(result) == {"error"} and result["error"].startswith(expected), result
    assert worker.handle({"id": "bad", "input": None})["error"].startswith("input: must be a JSON object")
    assert worker.handle({"id": "bad", "input": CHEAP, "s3Config": "x"})["error"].startswith("s3Config:")
    assert worker.handle(["not", "a", "job"])["error"].startswith("job: must be an object")
    after = set((work_dirs / "out").glob("*")) if (work_dirs / "out").exists() else set()
    assert after == before, "a failed job left a file behind"

    good = worker.handle({"id": "good", "input": {**CHEAP, "return_base64": True, "frame_num": 21}})
    assert "error" not in good, good
    assert good["storage"] == "inline" and good["video_url"].startswith("data:video/mp4;base64,")
    video = work_dirs / "inline.mp4"
    video.write_bytes(base64.b64decode(good["video_url"].split(",", 1)[1]))
    assert probe_mp4(video)["frames"] == 21
    assert 0 <= good["seed"] < 2**32


def test_inline_cap_refuses_and_leaves_nothing(engine, work_dirs, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(work_dirs / "tmp"))
    worker = Worker(engine, Settings(output_dir=work_dirs / "capped", base64_max_mb=0.01))
    result = worker.handle({"id": "big", "input": {**CHEAP, "return_base64": True}})
    assert set(result) == {"error"} and result["error"].startswith("return_base64: the video is")
    assert "inline cap" in result["error"]
    assert not (work_dirs / "capped").exists() and list((work_dirs / "tmp").iterdir()) == []


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
    result = worker.handle({"id": "f", "input": CHEAP})
    assert result["refresh_worker"] is True and result["error"].startswith(message)
