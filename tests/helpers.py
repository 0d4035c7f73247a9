"""Small helpers shared by the tests: images as bytes, free ports, waiting for servers."""

from __future__ import annotations

import base64
import io
import socket
import time

import numpy as np
from PIL import Image


def picture(width: int = 208, height: int = 120, mode: str = "RGB") -> Image.Image:
    """A smooth test picture (gradient), so that decoded frames can be compared."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([40 + 180 * x / width, 60 + 160 * y / height, 200 - 150 * x / width], -1).astype(np.uint8)
    return Image.fromarray(rgb).convert(mode)


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
