"""MP4 files: encode frames to H.264 and read back what a file holds. Uses the ffmpeg of imageio-ffmpeg."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from ..errors import EncodeError


def encode_mp4(frames: np.ndarray, path: Path, fps: int, crf: int = 18, preset: str = "medium") -> None:
    """Write (frames, height, width, 3) uint8 RGB as H.264 yuv420p, moov atom first (faststart).

    ffmpeg runs as a plain subprocess reading raw frames on stdin, so that its own error (a full
    disk, a crash) reaches the job's error instead of a bare "broken pipe".
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (F, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    count, height, width, _ = frames.shape
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-y",
        "-hide_banner",
        "-loglevel",
        "error",
        *raw_frames_input(width, height, fps),
        "-an",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-crf",
        str(crf),
        "-preset",
        preset,
        "-movflags",
        "+faststart",
        str(path),
    ]
    try:
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except OSError as exc:
        raise EncodeError(f"encoding the MP4 failed: could not start ffmpeg ({exc.strerror or exc})") from None
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(process.stderr.read()), daemon=True)
    reader.start()
    try:
        for frame in frames:
            process.stdin.write(np.ascontiguousarray(frame).data)
        process.stdin.close()
    except (BrokenPipeError, ConnectionResetError, ValueError):
        pass  # ffmpeg stopped early; its exit code and message tell why
    finally:
        returncode = process.wait()
        reader.join()
    if returncode != 0:
        message = stderr_lines(errors)
        if any("No space left on device" in line for line in message):
            raise EncodeError("encoding the MP4 failed: no space left on the worker's disk")
        detail = message[-1] if message else f"ffmpeg exited with code {returncode}"
        raise EncodeError(f"encoding the MP4 failed: {detail[:300]}")


def raw_frames_input(width: int, height: int, fps: int) -> list[str]:
    """ffmpeg's input arguments for raw RGB frames (F, H, W, 3) uint8 written to its stdin."""
    return ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "pipe:0"]


def stderr_lines(chunks: list[bytes]) -> list[str]:
    """What ffmpeg wrote to stderr, as lines (its own error is the last)."""
    return b"".join(chunks).decode("utf-8", "replace").strip().splitlines()


def probe_mp4(path: Path) -> dict:
    """Decode the whole file: exact frame count, size, fps, codec and pixel format."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    count = sum(1 for _ in reader)
    return {
        "frames": count,
        "width": meta["size"][0],
        "height": meta["size"][1],
        "fps": meta["fps"],
        "codec": meta["codec"],
        "pix_fmt": meta["pix_fmt"],
    }


def read_frames(path: Path) -> np.ndarray:
    """All frames of a video as (F, H, W, 3) uint8 RGB."""
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = reader.__next__()
    width, height = meta["size"]
    return np.stack([np.frombuffer(buf, np.uint8).reshape(height, width, 3) for buf in reader])
