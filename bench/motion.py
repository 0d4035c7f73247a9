"""The frame-interpolation quality harness: how much better than repeating frames does a method restore motion.

A synthetic 32 fps clip (`synthetic_clip`) of a textured plane that translates and rotates, every frame rendered
exactly from a texture defined in continuous coordinates (no frame is resampled from another). The harness
drops every other frame (the 16 fps clip a generator would have made), asks the method for 2x
(`interpolate(kept, 2)`) and scores the restored frames against the true ones (`restoration_margin`): the
method's mean PSNR, plain repetition's (each missing frame = the kept frame before it) and the margin in dB.
The kept frames must come back unchanged.

    OMP_NUM_THREADS=1 .venv/bin/python bench/motion.py                # ffmpeg minterpolate, 832x480, 33 frames
    OMP_NUM_THREADS=1 .venv/bin/python bench/motion.py --frames 65 --width 1280 --height 720

prints the figures and the method's seconds; tests/test_interpolation_ffmpeg.py uses the same functions at a
small size.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable

import numpy as np

FPS = 32  # the synthetic clip's frame rate
SPEED_PX = 2.5  # translation per 32 fps frame, in pixels (5 px between the kept frames of the 16 fps clip)
SPIN_RAD = 0.004  # rotation per 32 fps frame, about the frame's centre (0.23 degrees)
WAVES = 48  # plane waves summed into the texture


def texture_waves(seed: int) -> tuple[np.ndarray, ...]:
    """The plane waves of `seed`'s texture: each wave's (ku, kv) (radians per pixel), phase, and colour
    (mix, (WAVES, 3)); and the clip's velocity (pixels per 32 fps frame). bench/interpolation.py draws the same.

    A sum of plane waves of random direction, wavelength (4 to 120 px, log-uniform), phase and colour, the
    amplitude growing as the square root of the wavelength (coarse shapes carry fine detail, as in natural
    pictures): gradients everywhere at several scales, and nothing periodic for block matching to alias on.
    """
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0, math.pi, WAVES)
    wavelength = np.exp(rng.uniform(math.log(4), math.log(120), WAVES))
    ku = (2 * math.pi * np.cos(angle) / wavelength).astype(np.float32)
    kv = (2 * math.pi * np.sin(angle) / wavelength).astype(np.float32)
    phase = rng.uniform(0, 2 * math.pi, WAVES).astype(np.float32)
    mix = (rng.normal(0, 1, (WAVES, 3)) * np.sqrt(wavelength)[:, None]).astype(np.float32)
    mix *= 70 / np.sqrt((mix**2).sum(0) / 2)  # each channel's standard deviation about 70 levels
    direction = np.random.default_rng(seed + 1).uniform(0, 2 * math.pi)
    velocity = SPEED_PX * np.array([math.cos(direction), math.sin(direction)], np.float32)
    return ku, kv, phase, mix, velocity


def _texture(seed: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A smooth random colour texture f(u, v) -> (..., 3) float in 0..255, defined for any real u, v (pixels)."""
    ku, kv, phase, mix, _ = texture_waves(seed)

    def sample(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        waves = np.cos(u[..., None] * ku + v[..., None] * kv + phase)
        return np.clip(128 + waves @ mix, 0, 255)

    return sample


def synthetic_clip(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(frames, height, width, 3) uint8 RGB at 32 fps: the texture moving SPEED_PX pixels per frame in a direction
    drawn from the seed while it turns SPIN_RAD per frame about the frame's centre. Frame t samples the texture at
    R(-t*SPIN_RAD) (p - t*velocity) for each pixel centre p (relative to the centre): exact at sub-pixel motion."""
    sample = _texture(seed)
    velocity = texture_waves(seed)[-1]
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    x -= (width - 1) / 2
    y -= (height - 1) / 2
    clip = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        px, py = x - t * velocity[0], y - t * velocity[1]
        cos, sin = math.cos(t * SPIN_RAD), math.sin(t * SPIN_RAD)
        u, v = cos * px + sin * py, -sin * px + cos * py  # rotate back by t * SPIN_RAD
        clip[t] = np.rint(sample(u, v))
    return clip


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 arrays of one shape, in dB (inf when they are equal)."""
    if a.shape != b.shape or a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"expected two uint8 arrays of one shape, got {a.shape} {a.dtype} and {b.shape} {b.dtype}")
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def restoration_margin(interpolate: Callable[[np.ndarray, int], np.ndarray], clip: np.ndarray) -> dict:
    """Drop the odd frames of `clip` (an odd frame count, so the last is kept), restore them with
    `interpolate(kept, 2)`, and score the restored frames against the true ones.

    Returns {"frames", "restored" (how many frames were scored), "method_psnr_db", "repetition_psnr_db",
    "margin_db" (method - repetition), "kept_unchanged" (the kept frames came back bit for bit), "seconds"
    (the interpolate call)}.
    """
    if clip.ndim != 4 or len(clip) < 3 or len(clip) % 2 == 0:
        raise ValueError(f"expected an odd number (at least 3) of (H, W, 3) frames, got {clip.shape}")
    kept = clip[::2]
    start = time.perf_counter()
    restored = interpolate(kept, 2)
    seconds = time.perf_counter() - start
    if restored.shape != clip.shape or restored.dtype != clip.dtype:
        raise ValueError(f"interpolate(kept, 2) returned {restored.shape} {restored.dtype}, expected {clip.shape}")
    odd = range(1, len(clip), 2)
    method = float(np.mean([psnr(restored[j], clip[j]) for j in odd]))
    repetition = float(np.mean([psnr(clip[j - 1], clip[j]) for j in odd]))
    return {
        "frames": len(clip),
        "restored": len(odd),
        "method_psnr_db": round(method, 3),
        "repetition_psnr_db": round(repetition, 3),
        "margin_db": round(method - repetition, 3),
        "kept_unchanged": bool(np.array_equal(restored[::2], kept)),
        "seconds": round(seconds, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=33, help="frames of the 32 fps clip (odd)")
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from wan_i2v.worker.interpolation.ffmpeg import minterpolate

    clip = synthetic_clip(args.frames, args.height, args.width, args.seed)
    result = restoration_margin(minterpolate, clip)
    per_frame = result["seconds"] / result["frames"]
    print(
        f"ffmpeg minterpolate at {args.width}x{args.height}, {result['frames'] // 2 + 1} -> {result['frames']} "
        f"frames: {result['method_psnr_db']:.2f} dB vs repetition {result['repetition_psnr_db']:.2f} dB, "
        f"margin {result['margin_db']:+.2f} dB, kept frames unchanged: {result['kept_unchanged']}, "
        f"{result['seconds']:.2f} s ({per_frame:.3f} s per output frame)"
    )
    print(json.dumps({"backend": "ffmpeg", "width": args.width, "height": args.height, **result}))


if __name__ == "__main__":
    main()
