"""What each pair of neighbouring frames needs: a copy, a repeat across a scene cut, or new frames by motion.

Morphing across a hard cut blends two unrelated pictures into ghost frames, and morphing between two
identical frames only costs time. So before any model runs, each pair is sorted:

- `same`:  the two frames are identical (every byte); the new frames are copies.
- `cut`:   the frames are not one shot: the structural similarity (SSIM) of their 32x32 grey thumbnails is
           below CUT_SSIM, the threshold Practical-RIFE's own video script uses (0.2). The new frames repeat
           the nearer original (t < 0.5: the first, else the second), so no blended frame crosses the cut.
- `motion`: everything else; the interpolator makes the new frames.

Neighbouring frames of one shot score far above the threshold (0.6 and more for fast motion at 16 fps);
unrelated pictures score near 0.
"""

from __future__ import annotations

from enum import Enum

import torch
import torch.nn.functional as F

CUT_SSIM = 0.2
THUMB = 32  # thumbnail side
WINDOW = 7  # SSIM window (uniform), on the thumbnail
C1, C2 = 0.01**2, 0.03**2  # SSIM's stabilising constants for values in [0, 1]


class Pair(str, Enum):
    SAME = "same"
    CUT = "cut"
    MOTION = "motion"


def thumbnails(frames: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (F, 1, 32, 32) float grey in [0, 1], area-averaged (a few frames at a time)."""
    weights = torch.tensor([0.299 / 255, 0.587 / 255, 0.114 / 255], device=frames.device).view(1, 3, 1, 1)
    out = []
    for start in range(0, frames.shape[0], chunk):
        part = frames[start : start + chunk].permute(0, 3, 1, 2).float()
        grey = (part * weights).sum(1, keepdim=True)
        out.append(F.interpolate(grey, size=(THUMB, THUMB), mode="area"))
    return torch.cat(out)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of each pair of (N, 1, h, w) images in [0, 1], a uniform window: (N,)."""

    def pool(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, WINDOW, stride=1)

    mu_a, mu_b = pool(a), pool(b)
    var_a = pool(a * a) - mu_a**2
    var_b = pool(b * b) - mu_b**2
    cov = pool(a * b) - mu_a * mu_b
    index = ((2 * mu_a * mu_b + C1) * (2 * cov + C2)) / ((mu_a**2 + mu_b**2 + C1) * (var_a + var_b + C2))
    return index.mean(dim=(1, 2, 3))


def sort_pairs(frames: torch.Tensor, cut_ssim: float = CUT_SSIM) -> list[Pair]:
    """One Pair for each (frames[i], frames[i + 1]) of (F, H, W, 3) uint8 frames, on their own device."""
    if frames.shape[0] < 2:
        return []
    same = [torch.equal(frames[i], frames[i + 1]) for i in range(frames.shape[0] - 1)]
    thumbs = thumbnails(frames)
    score = ssim(thumbs[:-1], thumbs[1:])
    kinds = []
    for is_same, value in zip(same, score.tolist(), strict=True):
        kinds.append(Pair.SAME if is_same else Pair.CUT if value < cut_ssim else Pair.MOTION)
    return kinds
