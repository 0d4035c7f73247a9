"""What the tests share: the repository root, test pictures, the standard jobs, free ports, waiting for
servers, the local endpoint's client and command, and checks of videos and ledgers. One place for each."""

from __future__ import annotations

import base64
import io
import os
import socket
import sqlite3
import sys
import time
from contextlib import closing
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("fetch_image", "text_encode", "condition_encode", "denoise", "vae_decode", "encode_mp4", "upload")


def picture(width: int = 208, height: int = 120, mode: str = "RGB") -> Image.Image:
    """A smooth test picture (gradient), so that decoded frames can be compared."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([40 + 180 * x / width, 60 + 160 * y / height, 200 - 150 * x / width], -1).astype(np.uint8)
    return Image.fromarray(rgb).convert(mode)


# Engine jobs at the smallest size that still runs both experts (the cheap tier's unit of work).
SMALL = {"prompt": "a boat", "negative_prompt": "blurry", "width": 64, "height": 48, "num_frames": 5, "shift": 5.0}


def quality(**changes):
    """GenerationParams of a small quality job (6 steps: both experts, guidance on both)."""
    from wan_i2v.worker.engine import GenerationParams

    values = {"steps": 6, "guidance_scale": 3.5, "guidance_scale_2": 3.5, "seed": 3, "mode": "quality"}
    return GenerationParams(**{**SMALL, **values, **changes})


def turbo(**changes):
    """GenerationParams of a small turbo job (4 steps, no guidance)."""
    from wan_i2v.worker.engine import GenerationParams

    values = {"steps": 4, "guidance_scale": 1.0, "guidance_scale_2": 1.0, "seed": 3, "mode": "turbo"}
    return GenerationParams(**{**SMALL, **values, **changes})


def levels(a: np.ndarray, b: np.ndarray) -> int:
    """The largest difference between two videos, in 8-bit levels."""
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def encode(image: Image.Image, fmt: str = "PNG", **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{b64(data)}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float, process=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited early with code {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout} s")


def s3_client(endpoint_url: str):
    """A boto3 client for the loopback S3 server (it takes any key pair)."""
    import boto3

    return boto3.client(
        "s3", endpoint_url=endpoint_url, aws_access_key_id="x", aws_secret_access_key="x", region_name="us-east-1"
    )


def bucket_keys(bucket_env: dict) -> list[str]:
    listing = s3_client(bucket_env["BUCKET_ENDPOINT_URL"]).list_objects_v2(Bucket=bucket_env["BUCKET_NAME"])
    return [item["Key"] for item in listing.get("Contents", [])]


KEY = "test-api-key-never-printed"


def client_for(endpoint, **api):
    """A Client of the local endpoint with short backoff and polling."""
    from wan_i2v.ops.api import ApiSession
    from wan_i2v.ops.client import Client

    session = ApiSession(api.pop("api_key", KEY), backoff_s=api.pop("backoff_s", 0.05), **api)
    return Client(
        endpoint_id="dev",
        api=session,
        base_url=endpoint.url + "/v2",
        management_base_url=endpoint.url + "/v2",
        poll_s=0.3,
    )


def cli_env(endpoint) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "BUCKET_"))}
    env.update(RUNPOD_API_KEY=KEY, RUNPOD_ENDPOINT_ID="dev", RUNPOD_ENDPOINT_BASE_URL=endpoint.url + "/v2")
    return env


def wan_i2v(*args) -> list[str]:
    return [sys.executable, "-m", "wan_i2v.ops.cli", *args]


def make_inputs(folder: Path, images: int, prompts: list[str]) -> tuple[Path, Path]:
    (folder / "images").mkdir(parents=True)
    shapes = [(208, 120), (120, 208), (160, 160)]
    for index in range(images):
        width, height = shapes[index % 3]
        shape = (width + 16 * (index // 3), height)  # every picture differs
        (folder / "images" / f"shot{index}.png").write_bytes(encode(picture(*shape), "PNG"))
    (folder / "images" / "README.txt").write_text("not an image")
    (folder / "prompts.txt").write_text("\n---\n".join(prompts) + "\n")
    return folder / "images", folder / "prompts.txt"


def batch_args(prompts: Path, images: Path, download: Path, max_in_flight: int) -> list[str]:
    """A batch of QUICKEST jobs."""
    return [
        "batch",
        str(prompts),
        "--images-dir",
        str(images),
        "--download",
        str(download),
        "--poll",
        "0.5",
        "--max-in-flight",
        str(max_in_flight),
        "--mode",
        QUICKEST["mode"],
        "--sample-steps",
        str(QUICKEST["sample_steps"]),
        "--frame-num",
        str(QUICKEST["frame_num"]),
    ]


def wait_until(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def assert_videos(paths, frames=17):
    from wan_i2v.worker.video import probe_mp4

    for path in paths:
        info = probe_mp4(Path(path))
        assert info["frames"] == frames and info["codec"].startswith("h264"), (path, info)


# The standard jobs. A whole job on the tiny model is 832x480 (the schema's smallest area), 17 frames
# and 15 steps (the schema's fewest): about 8 s on 2 CPU cores, most of it the VAE.
IMAGE = data_uri(encode(picture(), "PNG"))
SHAPE = {"sample_steps": 15, "frame_num": 17}  # the cheapest job shape the schema allows
JOB = {"image": IMAGE, "prompt": "a sunset over a field", **SHAPE}
UNGUIDED = {"guidance_scale": 1.0, "guidance_scale_2": 1.0}  # one forward per step instead of two
CHEAP = {**JOB, **UNGUIDED}
# The quickest whole job: turbo's 2 steps of one forward each (the turbo pair attached for the job on a
# quality worker). For tests about queues, batches, load and memory, where the sampler is not the point.
QUICKEST = {**JOB, "mode": "turbo", "sample_steps": 2}


# A finished job's output as a worker with a bucket returns it (the shape JobOutput documents).
OUTPUT = {
    "video_url": "https://bucket.example/v.mp4?X-Amz-Signature=x",
    "video_url_expires_at": "2026-11-24T10:00:00+00:00",
    "generation_time": 12.5,
    "video_size_mb": 1.2,
    "resolution": "480p",
    "mode": "quality",
    "sample_steps": 15,
    "frame_num": 17,
    "interpolate": 1,
    "frames_in_video": 17,
    "width": 832,
    "height": 480,
    "fps": 16,
    "seed": 1,
    "model": "tiny",
    "storage": "s3",
    "timings": {
        **dict.fromkeys(PHASES, 1.0),
        "total": 12.5,
        "mode_switch": 0.0,
        "lora_fetch": 0.0,
        "lora_load": 0.0,
        "interpolate": 0.0,
    },
    "loras": [],
}


def local_file(url: str) -> Path:
    """The path behind a `file://` video_url (a worker with no bucket)."""
    assert url.startswith("file://"), url
    return Path(unquote(urlparse(url).path))


def ledger_states(ledger: Path) -> list[str] | None:
    """The job states in a batch ledger, read-only; None while the batch is still creating the file."""
    try:
        with closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)) as db:
            return [state for (state,) in db.execute("SELECT state FROM jobs ORDER BY position")]
    except sqlite3.OperationalError:  # no file yet, or no table yet
        return None


def memory_bytes(pid: int, field: str) -> int:
    """VmRSS (resident now) or VmHWM (the resident peak so far) of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for pid {pid}")
