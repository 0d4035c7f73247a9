"""Frame interpolation with ffmpeg's motion-compensated `minterpolate` filter (the ffmpeg of imageio-ffmpeg).

`minterpolate(frames, k)` puts k-1 new frames between each pair of frames: F frames in, (F-1)*k+1 out, the
input frames unchanged at every k-th position. It exists for operators who have no RIFE weights: the filter
ships inside the ffmpeg binary the worker already has for the MP4, so there is nothing to bake into the image
or download. It is a simpler interpolator than RIFE (block motion, no learned occlusion handling), and
slower: it runs on the CPU, on one core (its CPU time equals its wall time). Measured on the 2-core machine at
832x480 (shared with other work): about 0.1 s per output frame whatever the factor, 0.08 to 0.15 s across runs
(17 -> 33 frames in 2.6 to 5.0 s, 17 -> 65 in 6.4 to 7.6 s, 81 -> 161 in 14.5 s), so an 81-frame job adds about
15 s at k=2 and 30 s at k=4. Its quality on bench/motion.py's moving texture at 832x480 (16 -> 32 fps, seeds 0
and 1): 39.1 and 32.0 dB PSNR on the restored frames, 18.1 and 14.4 dB above repeating frames.

How one call runs: ffmpeg reads raw rgb24 frames on stdin at a nominal 16 fps, converts them to yuv444p
(minterpolate takes only YUV or gray; 4:4:4 has no chroma subsampling, so any width and height work), runs
`minterpolate=fps=16k:mi_mode=mci:mc_mode=aobmc:me_mode=bidir:vsbmc=1:scd=none` and writes raw rgb24 on
stdout. Scene cuts are the caller's (the interpolation stage splits at them for every backend), so the
filter's own detection is off (`scd=none`). What this ffmpeg build (n9.0.2) does, measured:

- Output frame j has timestamp j/(16k), so input frame i (at i/16) is output frame i*k.
- The filter emits the frames up to the second-to-last input's timestamp only: it needs one frame past each
  pair to interpolate it and does not flush at the end, so F >= 3 inputs give (F-2)*k+1 frames, 1 or 2 none.
  The last frame is therefore sent twice, which gives exactly (F-1)*k+1 frames; the last interval's new
  frames come out as good as the others (bench/motion.py, 832x480: 39.0 dB, the others 39.0 to 39.4 dB).
- Its copies of the input frames come back within 2 levels (the rgb -> yuv444p -> rgb round trip), so the
  inputs are written back at every k-th position: they appear bit for bit.
- Frames narrower or lower than 32 pixels are refused by the filter ("Height or width < 32").
"""

from __future__ import annotations

import subprocess
import threading

import imageio_ffmpeg
import numpy as np

from ...errors import InterpolationError
from ..video import raw_frames_input, stderr_lines

RATE = 16  # the nominal input frame rate; only the ratio of the rates matters to the filter
MIN_SIDE = 32  # minterpolate refuses smaller frames


def minterpolate(frames: np.ndarray, factor: int) -> np.ndarray:
    """(F, H, W, 3) uint8 RGB in, ((F-1)*factor+1, H, W, 3) uint8 out, with frames[i] at index i*factor.

    factor 1, or a single frame, returns `frames` itself (nothing to put between). Raises ValueError for a
    malformed array or factor, InterpolationError when ffmpeg fails (with ffmpeg's last line of stderr).
    """
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        got = f"{frames.shape} {frames.dtype}" if isinstance(frames, np.ndarray) else type(frames).__name__
        raise ValueError(f"expected (F, H, W, 3) uint8 frames, got {got}")
    if isinstance(factor, bool) or not isinstance(factor, int | np.integer) or factor < 1:
        raise ValueError(f"expected an integer factor of at least 1, got {factor!r}")
    count, height, width, _ = frames.shape
    if count == 0:
        raise ValueError("expected at least one frame, got 0")
    if factor == 1 or count == 1:
        return frames
    if height < MIN_SIDE or width < MIN_SIDE:
        raise ValueError(
            f"expected frames of at least {MIN_SIDE}x{MIN_SIDE} pixels for minterpolate, got {width}x{height}"
        )
    factor = int(factor)
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostdin",
        *raw_frames_input(width, height, RATE),
        "-vf",
        f"format=yuv444p,minterpolate=fps={RATE * factor}:mi_mode=mci:mc_mode=aobmc:me_mode=bidir:vsbmc=1:scd=none",
        "-an",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "pipe:1",
    ]
    try:
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        raise InterpolationError(
            f"frame interpolation failed: could not start ffmpeg ({exc.strerror or exc})"
        ) from None

    def feed() -> None:
        try:
            for frame in frames:
                process.stdin.write(np.ascontiguousarray(frame).data)
            process.stdin.write(np.ascontiguousarray(frames[-1]).data)  # the last frame twice: see the docstring
            process.stdin.close()
        except (OSError, ValueError):  # a broken pipe, or the pipe closed under us
            pass  # ffmpeg stopped early; its exit code and message tell why

    errors: list[bytes] = []
    writer = threading.Thread(target=feed, daemon=True)
    reader = threading.Thread(target=lambda: errors.append(process.stderr.read()), daemon=True)
    writer.start()
    reader.start()
    out = np.empty(((count - 1) * factor + 1, height, width, 3), np.uint8)
    view = memoryview(out.reshape(-1))
    received = 0
    try:
        while received < len(view):
            got = process.stdout.readinto(view[received:])
            if not got:
                break
            received += got
        extra = len(process.stdout.read()) if received == len(view) else 0  # read to EOF: ffmpeg can finish
    finally:
        process.stdout.close()
        returncode = process.wait()
        writer.join()
        reader.join()
    lines = stderr_lines(errors)
    if returncode != 0:
        detail = lines[-1] if lines else f"ffmpeg exited with code {returncode}"
        raise InterpolationError(f"frame interpolation failed: {detail[:300]}")
    if received != len(view) or extra:
        frame_bytes = height * width * 3
        detail = f"; {lines[-1][:300]}" if lines else ""
        raise InterpolationError(
            f"frame interpolation failed: ffmpeg returned {(received + extra) / frame_bytes:g} frames, "
            f"expected {len(out)}{detail}"
        )
    out[::factor] = frames
    return out
