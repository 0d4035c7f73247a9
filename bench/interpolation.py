"""The interpolation row: the worker's interpolation stage at 480p and 720p, k = 2 and 4, and its quality.

    python bench/run.py --rows interpolation              # GPU: into bench/results/<gpu>.json, rows.interpolation
    python bench/run.py --rows interpolation --rife-weights flownet.pkl   # with RIFE's real weights: + its margin
    python bench/run.py --quick                           # the same, as the quick run's last path
    python bench/run.py --smoke --rows interpolation      # the same code on the CPU at tiny sizes, seconds

Speed. For each resolution and factor, 81 frames of real motion are made on the device (`moving_clip`: the
moving texture of bench/motion.py, rendered in torch; every pair of neighbours is motion, as the stage's
`sort_pairs` checks, so none is skipped as a cut or a copy) and `Interpolator.run(frames, k, "rife")` runs
twice: once untimed (the first call at a shape pays one-time costs), then timed, the device synchronised
on both sides. Peak memory is what the call adds over what was resident before it (the model, the input
frames): `max_memory_allocated` after `reset_peak_memory_stats`, less `memory_allocated` before; the output
frames count in it. The batch size is read from the stage's progress reports (`done` after each batch), and
the one the stage plans from its budget is computed beside it the way the stage computes it.

RIFE's weights: `--rife-weights` (a file, or a folder with one), else `--model-dir`'s `interpolation/`
(the stage's `find_weights`), else IFNet with random weights (`weights: "random"`): a forward costs the same
whatever the weights, and on a GPU it runs in fp16 as real weights do after their self-check.

Quality (bench/motion.py's `restoration_margin` on its `synthetic_clip`, 832x480, 33 frames): how many dB
the restored frames beat plain frame repetition, for ffmpeg's minterpolate (always, on the CPU) and for RIFE
(only with real weights: random weights restore nothing).

Every figure says how it was obtained (`measured`, or `not measured` and why), as in the quick run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from motion import SPIN_RAD, restoration_margin, synthetic_clip, texture_waves
from quick import estimated, measured, missing

from wan_i2v.errors import InterpolationError
from wan_i2v.worker.coldstart import ColdStart
from wan_i2v.worker.interpolation.ffmpeg import minterpolate
from wan_i2v.worker.interpolation.pairs import Pair, sort_pairs
from wan_i2v.worker.interpolation.rife import IFNet, padded_size
from wan_i2v.worker.interpolation.stage import BYTES_PER_PIXEL, Interpolator, find_weights
from wan_i2v.worker.levers import Ladder
from wan_i2v.worker.settings import InterpolationOptions

GIB = 2**30
FACTORS = (2, 4)
QUALITY_SIZE = (832, 480)  # width, height of the quality clip
QUALITY_FRAMES = 33
SMOKE_QUALITY_SIZE = (96, 64)
SMOKE_QUALITY_FRAMES = 9
SEED = 0
# The targets on one H100, warm worker: (case, figure) -> bound
TARGETS = {
    ("480p_k2", "seconds"): 1.5,
    ("720p_k4", "seconds"): 6.0,
    ("720p_k4", "peak_extra_gib"): 6.0,
}


# ---- frames of real motion, made on the device ------------------------------------------------------------
def moving_clip(
    frames: int, height: int, width: int, seed: int = SEED, device: torch.device | str = "cpu", stride: int = 2
) -> torch.Tensor:
    """(frames, height, width, 3) uint8 on `device`: frames 0, stride, 2 x stride, ... of bench/motion.py's
    `synthetic_clip` (stride 2: the 16 fps clip a generator makes), computed in torch (float64).

    Each wave's phase at frame t is linear in the rotated, shifted pixel position, so it splits into a part
    of x and a part of y: cos(X + Y) = cos X cos Y - sin X sin Y, and a channel of a frame is one matrix
    product (H, 2 x WAVES) @ (2 x WAVES, W): 81 frames at 1280x720 take about 5 s on one CPU core, a small
    fraction of a second on a GPU. It equals `synthetic_clip(2 x frames - 1, ...)[::2]` within one level."""
    ku, kv, phase, mix, velocity = (torch.from_numpy(a).to(device, torch.float64) for a in texture_waves(seed))
    ys = torch.arange(height, device=device, dtype=torch.float64) - (height - 1) / 2
    xs = torch.arange(width, device=device, dtype=torch.float64) - (width - 1) / 2
    out = torch.empty((frames, height, width, 3), dtype=torch.uint8, device=device)
    for index in range(frames):
        t = index * stride
        cos, sin = math.cos(t * SPIN_RAD), math.sin(t * SPIN_RAD)
        # u = cos px + sin py, v = -sin px + cos py; the phase u ku + v kv = px a + py b
        a, b = cos * ku - sin * kv, sin * ku + cos * kv
        along_x = (xs - t * velocity[0])[:, None] * a  # (W, WAVES)
        along_y = (ys - t * velocity[1])[:, None] * b + phase  # (H, WAVES)
        left = torch.cat((torch.cos(along_y), -torch.sin(along_y)), 1)  # (H, 2 WAVES)
        right = torch.cat((torch.cos(along_x), torch.sin(along_x)), 1).T  # (2 WAVES, W)
        weighted = left.T[None] * torch.cat((mix, mix), 0).T[:, :, None]  # (3, 2 WAVES, H)
        frame = weighted.transpose(1, 2) @ right  # (3, H, W)
        out[index] = frame.add(128).clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0)
    return out


# ---- the benchmark ----------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_stage(device: torch.device, rife_weights: Path | None, model_dir: Path | None) -> tuple[Interpolator, str]:
    """The stage with RIFE's real weights where found (`Interpolator.load`, its precision self-check included),
    else with a random IFNet; and what the weights are. The stage's other options come from the environment
    as the worker reads them (WAN_INTERPOLATE_BUDGET_GB, WAN_INTERPOLATE_PRECISION, ...)."""
    options = InterpolationOptions.from_env(os.environ)
    if rife_weights is not None:
        options = dataclasses.replace(options, weights=rife_weights)
    path, looked = find_weights(options, model_dir)
    if path is not None:
        stage = Interpolator.load(options, device, model_dir, Ladder(), ColdStart())
        return stage, str(path)
    dtype = torch.float16 if device.type == "cuda" else torch.float32  # what `auto` gives real weights
    with torch.random.fork_rng(devices=[]):  # the same random weights each run; the caller's generator untouched
        torch.manual_seed(SEED)
        net = IFNet()
    net = net.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return Interpolator(net, dtype, device, options, looked), "random"


def planned_batch(stage: Interpolator, size: tuple[int, int], factor: int) -> dict:
    """The pairs per batch the stage plans for this size (`Interpolator.pairs_per_batch`), with its formula."""
    width, height = size
    padded = padded_size(height, width)
    budget = stage._budget()
    pairs = stage.pairs_per_batch(height, width, factor)
    formula = (
        f"budget {budget / GIB:.2f} GiB // ({BYTES_PER_PIXEL[stage.dtype]} B x {padded[1]}x{padded[0]} padded "
        f"x {factor - 1} new frames) (the stage's pairs_per_batch, before the timed run)"
    )
    return estimated(pairs, formula, 0)


def run_case(stage: Interpolator, frames: torch.Tensor, factor: int) -> dict:
    """One warm, timed `Interpolator.run` (one untimed call first), its batches and its extra peak memory."""
    device = frames.device
    began = time.perf_counter()
    stage.run(frames, factor, "rife")
    _sync(device)
    first_s = time.perf_counter() - began
    reports: list[dict] = []
    if device.type == "cuda":
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    began = time.perf_counter()
    out = stage.run(frames, factor, "rife", lambda **facts: reports.append(facts))
    _sync(device)
    seconds = time.perf_counter() - began
    peak = (torch.cuda.max_memory_allocated(device) - before) / GIB if device.type == "cuda" else None
    done = [r["done"] for r in reports if "done" in r]
    batches = [b - a for a, b in zip([0, *done], done, strict=False)]
    kinds = next((r for r in reports if "pairs" in r), {})
    count = frames.shape[0]
    new = (count - 1) * (factor - 1)
    expected = ((count - 1) * factor + 1, *frames.shape[1:])
    kept = bool(torch.equal(out[::factor], frames))
    ok = tuple(out.shape) == expected and kept and kinds.get("moving") == count - 1
    return {
        "frames_in": count,
        "frames_out": int(out.shape[0]),
        "new_frames": new,
        "moving_pairs": kinds.get("moving"),
        "seconds": measured(seconds, 3, what="Interpolator.run, warm (the second call at this shape)"),
        "per_new_frame_s": measured(seconds / new, 5),
        "first_call_s": measured(first_s, 3),
        "peak_extra_gib": (
            measured(peak, 3, what="max_memory_allocated during the call - memory_allocated before it")
            if peak is not None
            else missing("no GPU: the CPU run has no device memory to measure")
        ),
        "pairs_per_batch": measured(max(batches), 0, batches=len(batches), how="the stage's progress reports")
        if batches
        else missing("no batch ran"),
        "dtype": str(stage.dtype).removeprefix("torch."),
        "kept_unchanged": kept,
        "ok": ok,
    }


def margins(stage: Interpolator, real_weights: bool, smoke: bool) -> dict:
    """restoration_margin on synthetic_clip for ffmpeg (always) and RIFE (real weights only)."""
    width, height = SMOKE_QUALITY_SIZE if smoke else QUALITY_SIZE
    count = SMOKE_QUALITY_FRAMES if smoke else QUALITY_FRAMES
    clip = synthetic_clip(count, height, width, SEED)
    result: dict = {"size": f"{width}x{height}", "frames": count, "seed": SEED}

    def figure(found: dict, where: str) -> dict:
        return measured(found.pop("margin_db"), 3, unit="dB over frame repetition", where=where, **found)

    try:
        result["ffmpeg"] = figure(restoration_margin(minterpolate, clip), "CPU, one core (ffmpeg's filter)")
    except InterpolationError as exc:  # a GPU machine without an ffmpeg binary (bench/fetch-wheels.sh)
        result["ffmpeg"] = missing(f"ffmpeg did not run: {exc}")
    if not real_weights:
        result["rife"] = missing("no real RIFE weights")
        return result

    def rife(kept: np.ndarray, factor: int) -> np.ndarray:
        frames = torch.from_numpy(kept).to(stage.device)
        out = stage.run(frames, factor, "rife")
        _sync(stage.device)
        return out.cpu().numpy()

    rife(clip[:3:2], 2)  # one-time costs at this shape out of the figure's seconds (an approximation: 2 frames)
    where = f"{stage.device.type}, {str(stage.dtype).removeprefix('torch.')}"
    result["rife"] = figure(restoration_margin(rife, clip), where)
    return result


def target_checks(cases: dict, device: torch.device, gpu: str) -> dict:
    checks = {}
    for (case, key), bound in TARGETS.items():
        found = cases.get(case, {}).get(key, {}).get("value")
        if device.type != "cuda":
            met, why = None, "no GPU: the target is for one H100"
        else:
            met, why = (None, "not measured") if found is None else (found <= bound, None)
        checks[f"{case}_{key}"] = {
            "value": found,
            "target": bound,
            "met": met,
            **({"why": why} if why else {"on": gpu}),
        }
    return checks


def row(
    sizes: dict[str, tuple[int, int]],
    frames: int,
    smoke: bool,
    rife_weights: Path | None = None,
    model_dir: Path | None = None,
    entry: dict | None = None,
) -> dict:
    """The interpolation row: `cases` (resolution x factor), `quality` (the margins), `targets`. Fills `entry`
    (the quick run's path entry) as it goes, so a failure keeps what was measured."""
    entry = {} if entry is None else entry
    device = torch.device("cpu" if smoke else "cuda")
    began = time.perf_counter()
    stage, weights = load_stage(device, rife_weights, model_dir)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    entry.update(
        device=gpu,
        weights=weights,
        dtype=str(stage.dtype).removeprefix("torch."),
        load_s=measured(time.perf_counter() - began, 2),
        budget_gib=stage.options.budget_gb,
        clip=f"bench/interpolation.py moving_clip: bench/motion.py's texture at 16 fps (seed {SEED})",
    )
    cases = entry["cases"] = {}
    for resolution, size in sizes.items():
        width, height = size
        _sync(device)
        began = time.perf_counter()
        clip = moving_clip(frames, height, width, SEED, device)
        _sync(device)
        built_s = time.perf_counter() - began
        kinds = sort_pairs(clip, stage.options.cut_ssim)
        if any(kind is not Pair.MOTION for kind in kinds):
            raise RuntimeError(f"{resolution}: the clip's pairs are not all motion: {[k.value for k in kinds]}")
        for factor in FACTORS:
            planned = planned_batch(stage, size, factor)
            case = run_case(stage, clip, factor)
            ok = case.pop("ok")
            cases[f"{resolution}_k{factor}"] = {
                "size": f"{width}x{height}",
                "factor": factor,
                **case,
                "planned_pairs_per_batch": planned,
                "clip_build_s": measured(built_s, 3),
                "ok": ok,
            }
        del clip
        if device.type == "cuda":
            torch.cuda.empty_cache()
    entry["quality"] = margins(stage, weights != "random", smoke)
    entry["targets"] = target_checks(cases, device, gpu)
    entry["ok"] = all(case["ok"] for case in cases.values())
    return entry
