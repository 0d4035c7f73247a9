"""RIFE v4.26's IFNet, written here from the published architecture, and its strict loader.

The layout is that of Practical-RIFE's `train_log/IFNet_HDv3.py` in hzwer/RIFE's `RIFEv4.26_0921.zip`
(README, "Smooth video"): a feature head (`encode`) and five flow blocks (`block0`..`block4`, 192, 128,
96, 64 and 32 channels) that refine a bidirectional flow, a blend mask and 8 feature channels from 1/16
of the frame size to full size. The time step is an input channel, so one model makes the frame at any
t in (0, 1): factors 2, 3 and 4 are the same weights. Module names and shapes match the published
`flownet.pkl` key for key (its keys carry DataParallel's `module.` prefix), so `load_rife` loads it with
strict matching; a missing or misshapen key fails with its name.

The model is small (5.66 M parameters, 22.7 MB of fp32 tensors; the published flownet.pkl is 24.6 MB, the rest
being pickle framing and, we expect, a training-only teacher block, dropped by name below) and stays on the
worker's device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

VERSION = "4.26"
BLOCK_WIDTHS = (192, 128, 96, 64, 32)  # channels of block0..block4
SCALES = (16, 8, 4, 2, 1)  # each block works at 1/scale of the frame
PAD = 64  # frames are padded to a multiple of this: 1/16 in the first block, then two stride-2 convolutions
FEATURES = 4  # channels of `encode`'s features per frame
# Keys some published checkpoints carry for training-only modules (a distillation teacher, a time
# predictor); inference never builds them, so they are dropped, by name, before the strict load.
TRAINING_ONLY = ("teacher.", "caltime.")


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.LeakyReLU(0.2, True))


class Head(nn.Module):
    """Per-frame features, once per frame: 3 -> 16 channels at half size, back to full size with 4."""

    def __init__(self):
        super().__init__()
        self.cnn0 = nn.Conv2d(3, 16, 3, 2, 1)
        self.cnn1 = nn.Conv2d(16, 16, 3, 1, 1)
        self.cnn2 = nn.Conv2d(16, 16, 3, 1, 1)
        self.cnn3 = nn.ConvTranspose2d(16, FEATURES, 4, 2, 1)
        self.relu = nn.LeakyReLU(0.2, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.cnn0(x))
        x = self.relu(self.cnn1(x))
        x = self.relu(self.cnn2(x))
        return self.cnn3(x)


class ResConv(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)
        self.beta = nn.Parameter(torch.ones((1, c, 1, 1)))
        self.relu = nn.LeakyReLU(0.2, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x) * self.beta + x)


class IFBlock(nn.Module):
    """At 1/scale: the inputs (and the flow so far) -> a flow update (4), the mask (1) and features (8)."""

    def __init__(self, in_planes: int, c: int):
        super().__init__()
        self.conv0 = nn.Sequential(_conv(in_planes, c // 2, 2), _conv(c // 2, c, 2))
        self.convblock = nn.Sequential(*(ResConv(c) for _ in range(8)))
        self.lastconv = nn.Sequential(nn.ConvTranspose2d(c, 4 * 13, 4, 2, 1), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor, flow: torch.Tensor | None, scale: int):
        if scale != 1:
            x = F.interpolate(x, scale_factor=1.0 / scale, mode="bilinear", align_corners=False)
        if flow is not None:
            if scale != 1:
                flow = F.interpolate(flow, scale_factor=1.0 / scale, mode="bilinear", align_corners=False) / scale
            x = torch.cat((x, flow), 1)
        out = self.lastconv(self.convblock(self.conv0(x)))
        if scale != 1:
            out = F.interpolate(out, scale_factor=scale, mode="bilinear", align_corners=False)
        return out[:, :4] * scale, out[:, 4:5], out[:, 5:]


def padded_size(height: int, width: int) -> tuple[int, int]:
    """The frame size the network runs at: each side rounded up to a multiple of PAD."""
    return math.ceil(height / PAD) * PAD, math.ceil(width / PAD) * PAD


def identity_grid(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """grid_sample's coordinates of each pixel of `like` (B, C, H, W), in [-1, 1]: (H, W) for x and for y."""
    _, _, height, width = like.shape
    ys = torch.linspace(-1.0, 1.0, height, device=like.device, dtype=like.dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=like.device, dtype=like.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return grid_x, grid_y


def warp(image: torch.Tensor, flow: torch.Tensor, grid: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Backward warp: each output pixel reads `image` at its own position (`grid`) plus `flow` (in pixels)."""
    _, _, height, width = flow.shape
    gx = grid[0] + flow[:, 0] * (2.0 / (width - 1))
    gy = grid[1] + flow[:, 1] * (2.0 / (height - 1))
    return F.grid_sample(
        image, torch.stack((gx, gy), dim=-1), mode="bilinear", padding_mode="border", align_corners=True
    )


class IFNet(nn.Module):
    def __init__(self):
        super().__init__()
        first = 3 + 3 + FEATURES + FEATURES + 1  # both frames, their features, the time step
        later = 3 + 3 + FEATURES + FEATURES + 1 + 1 + 8 + 4  # warped frames and features, t, mask, feat, flow
        for index, width in enumerate(BLOCK_WIDTHS):
            self.add_module(f"block{index}", IFBlock(first if index == 0 else later, c=width))
        self.encode = Head()

    def forward(
        self, img0: torch.Tensor, img1: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """The frame at time t between img0 and img1 ((B, 3, H, W) in [0, 1], H and W multiples of PAD).

        f0, f1: `encode` of each frame (computed once per frame, shared by every t); t: (B, 1, 1, 1).
        """
        t = t.expand(-1, 1, img0.shape[2], img0.shape[3]).to(img0.dtype)
        grid = identity_grid(img0)  # the same for all ten warps
        flow = mask = feat = None
        warped0, warped1 = img0, img1
        for index, scale in enumerate(SCALES):
            block = getattr(self, f"block{index}")
            if flow is None:
                flow, mask, feat = block(torch.cat((img0, img1, f0, f1, t), 1), None, scale)
            else:
                wf0, wf1 = warp(f0, flow[:, :2], grid), warp(f1, flow[:, 2:4], grid)
                update, mask, feat = block(torch.cat((warped0, warped1, wf0, wf1, t, mask, feat), 1), flow, scale)
                flow = flow + update
            warped0, warped1 = warp(img0, flow[:, :2], grid), warp(img1, flow[:, 2:4], grid)
        weight = torch.sigmoid(mask)
        return warped0 * weight + warped1 * (1 - weight)


class RifeWeightsError(ValueError):
    """A RIFE state dict that is not v4.26's layout: names the keys that are missing, extra or misshapen."""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A `.safetensors` file, or a published `flownet.pkl` read with torch's weights-only unpickler."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(loaded, Mapping):
        raise RifeWeightsError(f"{path}: holds a {type(loaded).__name__}, not a state dict")
    return dict(loaded)


def published_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keys as IFNet names them: DataParallel's `module.` prefix removed, training-only modules dropped."""
    out = {}
    for key, value in state.items():
        name = key.removeprefix("module.")
        if not name.startswith(TRAINING_ONLY):
            out[name] = value
    return out


def check_layout(state: Mapping[str, torch.Tensor], model: IFNet | None = None) -> None:
    """RifeWeightsError naming every missing, unexpected or misshapen key against IFNet's own."""
    expected = {key: tuple(value.shape) for key, value in (model or IFNet()).state_dict().items()}
    problems = []
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing:
        problems.append(f"missing {_names(missing)}")
    if extra:
        problems.append(f"unexpected {_names(extra)}")
    for key in sorted(set(expected) & set(state)):
        shape = tuple(state[key].shape)
        if shape != expected[key]:
            problems.append(f"{key} has shape {list(shape)}, RIFE {VERSION} has {list(expected[key])}")
    if problems:
        raise RifeWeightsError(f"not RIFE {VERSION}'s IFNet: " + "; ".join(problems))


def load_rife(path: Path, device: torch.device, dtype: torch.dtype = torch.float32) -> IFNet:
    """IFNet with the weights of `path` (strict: every key, every shape), on `device`, in eval mode."""
    state = published_keys(read_state_dict(path))
    model = IFNet()
    check_layout(state, model)
    model.load_state_dict(state, strict=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _names(keys: list[str], shown: int = 6) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more
