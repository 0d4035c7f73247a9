"""MP4 files: encode frames to H.264 and read back what a file holds. Uses the ffmpeg of imageio-ffmpeg."""

from __future__ import annotations

from pathlib import Path

import imageio_ffmpeg
import numpy as np


def encode_mp4(frames: np.ndarray, path: Path, fps: int, crf: int = 18, preset: str = "medium") -> None:
    """Write (frames, height, width, 3) uint8 RGB as H.264 yuv420p, moov atom first (faststart)."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (F, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    count, height, width, _ = frames.shape
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (width, height),
        fps=fps,
        codec="libx264",
        pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p",
        quality=None,
        macro_block_size=1,
        ffmpeg_log_level="error",
        output_params=["-crf", str(crf), "-preset", preset, "-movflags", "+faststart"],
    )
    writer.send(None)  # start ffmpeg
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()


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
