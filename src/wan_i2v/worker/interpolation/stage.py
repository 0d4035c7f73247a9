"""The interpolation stage: the decoded frames in, k times as many frames out, on the frames' own device.

Factor k puts k - 1 new frames between each pair of generated frames: F frames become (F - 1) * k + 1,
played at k times the rate, and the generated frames stay, byte for byte, at every k-th position. Each pair
is sorted first (pairs.py: identical, a scene cut, or motion); only motion pairs reach a model.

- `rife`: RIFE v4.26 (rife.py) on the GPU, the frames never leaving it between the VAE decode and here. Each
  frame's features are computed once; a batch holds consecutive pairs and all k - 1 time steps of each, as
  many as the memory budget allows (an estimate per pixel, halved on an out-of-memory until one pair fits).
  Half precision where its self-check at cold start stays within HALF_PSNR_DB of fp32, else fp32.
- `ffmpeg`: ffmpeg's motion-compensated `minterpolate` (ffmpeg.py) on the CPU, for workers with no RIFE
  weights.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ...errors import InputError, InterpolationError, SettingsError
from ..coldstart import ColdStart
from ..levers import InjectedFault, Ladder, SelfCheckFailed
from ..settings import InterpolationOptions
from .ffmpeg import minterpolate
from .pairs import Pair, sort_pairs
from .rife import VERSION, IFNet, RifeWeightsError, load_rife, padded_size

log = logging.getLogger(__name__)

GIB = 1024**3
MODELS = ("rife", "ffmpeg")
FOLDER_IN_MODEL = "interpolation"  # MODEL/interpolation/: where builder/ bakes the weights
# Peak bytes one interpolated frame costs per (padded) pixel in the RIFE forward, fp16: its inputs, the five
# blocks' activations at full size (warped frames and features, flow, mask, 13-channel outputs) and the warp
# grids. An estimate for sizing batches; bench/ measures the real peak, and an out-of-memory halves the batch.
BYTES_PER_PIXEL = {torch.float16: 320, torch.bfloat16: 320, torch.float32: 640}
HALF_PSNR_DB = 40.0  # the half-precision output against fp32 on the self-check pair, at least
PROBE_SIZE = (256, 448)  # height, width of the self-check pair
RESERVE = GIB  # left free on the GPU beside the budget

Progress = Callable[..., None]


def find_weights(options: InterpolationOptions, model_path: Path | None) -> tuple[Path | None, str]:
    """The RIFE weights file, or None and where it was looked for."""
    places = [options.weights] if options.weights is not None else []
    if model_path is not None:
        places.append(model_path / FOLDER_IN_MODEL)
    looked = " or ".join(str(p) for p in places) or "nowhere (no model folder)"
    for place in places:
        if place.is_file():
            return place, looked
        if place.is_dir():
            files = sorted(place.glob("*.safetensors")) or sorted(place.glob("flownet.pkl"))
            if len(files) > 1:
                names = ", ".join(f.name for f in files)
                raise SettingsError(f"{place}: several RIFE weight files ({names}); keep one or name it")
            if files:
                return files[0], looked
        if place == options.weights:
            raise SettingsError(f"WAN_INTERPOLATION_MODEL={place}: no such file or folder with RIFE weights")
    return None, looked


class Interpolator:
    def __init__(
        self,
        net: IFNet | None,
        dtype: torch.dtype,
        device: torch.device,
        options: InterpolationOptions,
        looked: str,
    ):
        self.net, self.dtype, self.device, self.options, self.looked = net, dtype, device, options, looked

    @property
    def default_model(self) -> str:
        return "rife" if self.net is not None else "ffmpeg"

    @classmethod
    def load(
        cls,
        options: InterpolationOptions,
        device: torch.device,
        model_path: Path | None,
        ladder: Ladder,
        cold_start: ColdStart,
    ) -> Interpolator:
        """RIFE on `device` when its weights are found (precision self-checked), else ffmpeg only."""
        with cold_start.step("interpolation"):
            path, looked = find_weights(options, model_path)
            if path is None:
                cold_start.facts["interpolation"] = f"ffmpeg only (no RIFE weights in {looked})"
                log.info("interpolation: %s", cold_start.facts["interpolation"])
                return cls(None, torch.float32, device, options, looked)
            try:
                net = load_rife(path, device)
            except (RifeWeightsError, OSError, RuntimeError) as exc:
                raise SettingsError(f"RIFE weights {path}: {exc}") from None
            dtype, error = choose_precision(net, device, options.precision, ladder)
            net = net.to(dtype)
        cold_start.facts["interpolation"] = (
            f"RIFE {VERSION} from {path} in {str(dtype).removeprefix('torch.')}"
            + (f" (PSNR {error:.1f} dB against fp32)" if error is not None else "")
            + "; ffmpeg minterpolate"
        )
        log.info("interpolation: %s", cold_start.facts["interpolation"])
        return cls(net, dtype, device, options, looked)

    # ---- per job --------------------------------------------------------------------------------------
    def check(self, model: str | None) -> str:
        """The model a job gets (its own, or the worker's default); InputError when it cannot run here."""
        model = model or self.default_model
        if model == "rife" and self.net is None:
            raise InputError(
                "interpolate_model: 'rife' needs RIFE weights, and this worker has none (looked in "
                f"{self.looked}; set WAN_INTERPOLATION_MODEL or bake them into MODEL/{FOLDER_IN_MODEL}/, "
                "README \"Smooth video\"); allowed here: 'ffmpeg'"
            )
        return model

    def run(
        self, frames: torch.Tensor, factor: int, model: str, report: Progress = lambda *a, **k: None
    ) -> torch.Tensor:
        """(F, H, W, 3) uint8 -> ((F - 1) * factor + 1, H, W, 3) uint8, on the frames' device."""
        if factor == 1:
            return frames
        count = frames.shape[0]
        kinds = sort_pairs(frames, self.options.cut_ssim)
        out = frames.new_empty(((count - 1) * factor + 1, *frames.shape[1:]))
        out[::factor] = frames
        for index, kind in enumerate(kinds):
            if kind is not Pair.MOTION:  # a copy, or the nearer original across a cut
                for step in range(1, factor):
                    near = index + 1 if kind is Pair.CUT and step / factor >= 0.5 else index
                    out[index * factor + step] = frames[near]
        moving = [i for i, kind in enumerate(kinds) if kind is Pair.MOTION]
        report(pairs=len(kinds), moving=len(moving), cuts=sum(k is Pair.CUT for k in kinds))
        if moving:
            if model == "rife":
                self._rife(frames, factor, moving, out, report)
            else:
                made = torch.from_numpy(minterpolate(frames.cpu().numpy(), factor)).to(out.device)
                for index in moving:
                    out[index * factor + 1 : (index + 1) * factor] = made[index * factor + 1 : (index + 1) * factor]
                report(done=len(moving), total=len(moving))
        return out

    def _rife(self, frames, factor: int, moving: list[int], out: torch.Tensor, report: Progress) -> None:
        height, width = frames.shape[1:3]
        pairs_per_batch = self.pairs_per_batch(height, width, factor)
        start, done = 0, 0
        while start < len(moving):
            batch = moving[start : start + pairs_per_batch]
            try:
                self._rife_batch(frames, factor, batch, out)
            except torch.OutOfMemoryError:
                if pairs_per_batch == 1:
                    raise InterpolationError(
                        f"frame interpolation ran out of GPU memory at {width}x{height} with one pair per batch"
                    ) from None
                pairs_per_batch = max(1, pairs_per_batch // 2)
                log.warning("interpolation: out of memory; %d pairs per batch from here", pairs_per_batch)
                torch.cuda.empty_cache()
                continue
            start += len(batch)
            done += len(batch)
            report(done=done, total=len(moving))

    @torch.inference_mode()
    def _rife_batch(self, frames, factor: int, batch: list[int], out: torch.Tensor):
        """New frames for the pairs `batch` (indices of their first frames): one forward for all of them."""
        used = sorted({i for index in batch for i in (index, index + 1)})
        where = {frame: row for row, frame in enumerate(used)}
        times = [(where[i], step / factor) for i in batch for step in range(1, factor)]
        made = between(self.net, frames[used], self.dtype, times)
        made = made.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1)
        slots = torch.tensor([i * factor + s for i in batch for s in range(1, factor)], device=out.device)
        out[slots] = made.to(out.device)

    def pairs_per_batch(self, height: int, width: int, factor: int) -> int:
        """How many pairs (each with its k - 1 new frames) one forward takes: the budget over the estimated
        bytes of a new frame at the padded size; at least one."""
        padded = padded_size(height, width)
        per_frame = BYTES_PER_PIXEL[self.dtype] * padded[0] * padded[1]
        return max(1, self._budget() // (per_frame * (factor - 1)))

    def _budget(self) -> int:
        cap = int(self.options.budget_gb * GIB)
        if self.device.type != "cuda":
            return cap
        free, _ = torch.cuda.mem_get_info(self.device)
        return max(0, min(cap, free - RESERVE))


def between(net: IFNet, frames: torch.Tensor, dtype: torch.dtype, times: list[tuple[int, float]]) -> torch.Tensor:
    """RIFE's frames (N, 3, H, W), float in [0, 1] (before rounding), for `times`: (i, t) asks for the frame at
    t between frames[i] and frames[i + 1] of (F, H, W, 3) uint8 `frames`. Each frame's features once."""
    height, width = frames.shape[1:3]
    padded = padded_size(height, width)
    images = F.pad(frames.permute(0, 3, 1, 2).to(dtype).div(255), (0, padded[1] - width, 0, padded[0] - height))
    features = net.encode(images)
    first = torch.tensor([i for i, _ in times], device=images.device)
    second = first + 1
    t = torch.tensor([t for _, t in times], device=images.device).view(-1, 1, 1, 1)
    return net(images[first], images[second], features[first], features[second], t)[:, :, :height, :width]


def probe_pair(device: torch.device, size: tuple[int, int] = PROBE_SIZE) -> torch.Tensor:
    """Two frames of a smooth pattern, the second moved by a few pixels: (2, H, W, 3) uint8."""
    height, width = size
    ys = torch.arange(height, dtype=torch.float32).view(-1, 1)
    xs = torch.arange(width, dtype=torch.float32).view(1, -1)
    frames = []
    for shift in (0.0, 6.0):
        x = xs - shift
        channels = [
            torch.sin(x / 9 + ys / 13) * torch.cos(ys / 7 - x / 17),
            torch.sin((x + ys) / 11),
            torch.cos(x / 5) * torch.sin(ys / 19),
        ]
        frames.append(torch.stack(channels, dim=-1).mul(127.5).add(127.5).round().to(torch.uint8))
    return torch.stack(frames).to(device)


def choose_precision(
    net: IFNet, device: torch.device, precision: str, ladder: Ladder, size: tuple[int, int] = PROBE_SIZE
) -> tuple[torch.dtype, float | None]:
    """fp16 (on a GPU, or when asked for) if its output on the probe pair stays within HALF_PSNR_DB of fp32;
    fp32 otherwise. The CPU's fp16 convolutions are slow, so `auto` means fp32 there."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return torch.float32, None
    frames = probe_pair(device, size)

    def middle(model: IFNet, dtype: torch.dtype) -> torch.Tensor:
        with torch.inference_mode():
            return between(model, frames, dtype, [(0, 0.5)]).float()

    reference = middle(net, torch.float32)
    try:
        ladder.fault("interpolation")
        started = time.perf_counter()
        made = middle(copy.deepcopy(net).to(torch.float16), torch.float16)  # the fp32 weights stay as they are
        mse = float((made - reference).pow(2).mean())
        psnr = 10 * math.log10(1 / max(mse, 1e-12))
        if not math.isfinite(float(made.sum())) or psnr < HALF_PSNR_DB:
            raise SelfCheckFailed(f"fp16 output {psnr:.1f} dB from fp32, bound {HALF_PSNR_DB} dB")
        log.info("interpolation: fp16 self-check %.1f dB in %.2f s", psnr, time.perf_counter() - started)
        return torch.float16, psnr
    except (InjectedFault, SelfCheckFailed, RuntimeError) as exc:
        ladder.step_down("interpolation", "fp16", exc)
        return torch.float32, None
