"""How an input image becomes the video's frame: output size and centre crop, and the image limits.

Pure arithmetic, shared by the worker (which resizes and crops) and the playground (which previews the
crop before a job is sent), so the two cannot disagree.
"""

from __future__ import annotations

import math

from .errors import InputError
from .schema import RESOLUTION_AREAS

MAX_IMAGE_BYTES = 10 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000
MAX_ASPECT_RATIO = 4.0  # longer side over shorter side
SIDE_MULTIPLE = 16  # VAE stride 8 x transformer patch 2


def output_size(
    width: int, height: int, resolution: str, field: str = "image", tokens_multiple: int = 1
) -> tuple[int, int]:
    """(width, height) of the video: the image's aspect ratio at the resolution's area, sides multiples of 16.

    Same rule as the official Wan2.2 code: each side is sqrt(area * its share of the aspect ratio),
    floored to a multiple of 16. Integer arithmetic keeps 832x480 and 1280x720 exact.

    `tokens_multiple`: a worker that splits each frame's tokens (one per 16x16 patch) over several GPUs
    needs their count to divide by its context-parallel degree; the sides then step down by 16 where
    needed (the fewest pixels lost, then the aspect ratio kept best). 832x480 and 1280x720 divide by 8.
    """
    if width < 1 or height < 1:
        raise InputError(f"{field}: {width}x{height} has no pixels")
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        raise InputError(
            f"{field}: aspect ratio {width}x{height} ({ratio:.1f}:1) is too extreme; "
            f"allowed: between 1:{MAX_ASPECT_RATIO:.0f} and {MAX_ASPECT_RATIO:.0f}:1"
        )
    area_w, area_h = RESOLUTION_AREAS[resolution]
    area, step2 = area_w * area_h, SIDE_MULTIPLE * SIDE_MULTIPLE
    out_w = SIDE_MULTIPLE * math.isqrt(area * width // (step2 * height))
    out_h = SIDE_MULTIPLE * math.isqrt(area * height // (step2 * width))
    if tokens_multiple > 1 and (out_w // SIDE_MULTIPLE) * (out_h // SIDE_MULTIPLE) % tokens_multiple:
        fits = [
            (out_w - SIDE_MULTIPLE * a, out_h - SIDE_MULTIPLE * b)
            for a in range(tokens_multiple)
            for b in range(tokens_multiple)
            if out_w > SIDE_MULTIPLE * a and out_h > SIDE_MULTIPLE * b
        ]
        fits = [(w, h) for w, h in fits if (w // SIDE_MULTIPLE) * (h // SIDE_MULTIPLE) % tokens_multiple == 0]
        out_w, out_h = min(fits, key=lambda s: (-s[0] * s[1], abs(math.log(s[0] * height / (s[1] * width)))))
    return out_w, out_h


def cover(width: int, height: int, size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """The resize that covers `size` ((w, h) of the resized image) and the centre crop's (left, top) in it."""
    out_w, out_h = size
    scale = max(out_w / width, out_h / height)
    resized = (max(out_w, round(width * scale)), max(out_h, round(height * scale)))
    return resized, ((resized[0] - out_w) // 2, (resized[1] - out_h) // 2)


def crop_in_source(width: int, height: int, size: tuple[int, int]) -> dict[str, float]:
    """The part of the source image (in its own pixels) that ends up in the frame, for a preview."""
    (resized_w, resized_h), (left, top) = cover(width, height, size)
    sx, sy = width / resized_w, height / resized_h
    return {"left": left * sx, "top": top * sy, "width": size[0] * sx, "height": size[1] * sy}
