"""End to end through RunPod's own SDK: `python handler.py` and its local API server, with a real
S3-compatible server on loopback. Nothing leaves the machine. (RunPod's worker mode, with a job's
`s3Config`, is exercised through the dev endpoint in test_secrets.py.)"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import requests
from helpers import ROOT, data_uri, encode, free_port, picture, wait_for_port

from wan_i2v.worker.video import probe_mp4


def worker_env(tiny_model, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUCKET_", "RUNPOD_", "WAN_"))}
    env.update(WAN_MODEL=str(tiny_model), PYTHONUNBUFFERED="1", **extra)
    return env


@pytest.fixture
def api_server(tiny_model, bucket_env, tmp_path):
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "handler.py", "--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)],
        cwd=ROOT,
        env=worker_env(tiny_model, **bucket_env),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, 120, process)
        yield f"http://127.0.0.1:{port}", bucket_env, tmp_path / "server.log"
    finally:
        process.terminate()
        process.wait(20)
        log.close()


def test_runsync_uploads_a_playable_mp4_to_the_bucket(api_server, tmp_path):
    url, bucket_env, server_log = api_server
    bad = requests.post(f"{url}/runsync", json={"input": {"image": "x", "frame_num": 80}}, timeout=120).json()
    assert bad["status"] == "FAILED" and "frame_num: 80 is not allowed" in bad["error"], bad

    job = {
        "input": {
            "image": data_uri(encode(picture(160, 160), "JPEG"), "image/jpeg"),
            "prompt": "waves",
            "mode": "turbo",  # guided quality jobs run in the Quick start test
            "sample_steps": 2,
            "frame_num": 21,
            "fps": 10,
            "seed": 3,
        }
    }
    answer = requests.post(f"{url}/runsync", json=job, timeout=600).json()
    assert answer["status"] == "COMPLETED", answer
    output = answer["output"]
    assert output["storage"] == "s3" and output["video_url_expires_at"]
    assert output["video_url"].startswith(
        bucket_env["BUCKET_ENDPOINT_URL"] + "/" + bucket_env["BUCKET_NAME"] + "/wan-i2v/"
    )

    download = requests.get(output["video_url"], timeout=30)
    assert download.status_code == 200 and download.headers["Content-Type"] == "video/mp4"
    video = tmp_path / "downloaded.mp4"
    video.write_bytes(download.content)
    info = probe_mp4(video)
    assert (info["frames"], info["width"], info["height"]) == (21, output["width"], output["height"]) == (21, 624, 624)
    assert info["fps"] == output["fps"] == 10 and info["codec"].startswith("h264")
    assert output["video_size_mb"] == round(len(download.content) / 1024 / 1024, 2)
    assert bucket_env["BUCKET_SECRET_ACCESS_KEY"] not in server_log.read_text()


def test_quick_start_run_writes_an_mp4_locally(tiny_model, tmp_path):
    """`python handler.py` runs test_input.json through the SDK's local test mode."""
    out = tmp_path / "outputs"
    done = subprocess.run(
        [sys.executable, "handler.py"],
        cwd=ROOT,
        env=worker_env(tiny_model, WAN_OUTPUT_DIR=str(out)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    videos = list(out.glob("*.mp4"))
    assert len(videos) == 1 and not list(out.glob("*.partial"))
    expected = json.loads((ROOT / "test_input.json").read_text())["input"]
    info = probe_mp4(videos[0])
    assert (info["frames"], info["width"], info["height"], info["fps"]) == (expected["frame_num"], 832, 480, 16)


def test_missing_weights_stop_the_worker_with_a_clear_message(tiny_model, tmp_path):
    """The worker's own start-up: exit 1, the message, no traceback. (Each kind of missing weights gets
    its message in test_weights.py.)"""
    model = tmp_path / "partial"
    shutil.copytree(tiny_model, model)
    shutil.rmtree(model / "transformer_2")
    env = worker_env(tiny_model, HF_HOME=str(tmp_path / "hf"))
    env["WAN_MODEL"] = str(model)
    done = subprocess.run(
        [sys.executable, "handler.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1
    assert "wan-i2v cannot start: WAN_MODEL=" in done.stderr, done.stderr[-2000:]
    assert "missing: transformer_2/config.json, transformer_2/*.safetensors" in done.stderr
    assert "builder/fetch_weights.py" in done.stderr and "Traceback" not in done.stderr
