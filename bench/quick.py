"""`bench/run.py --quick`: every benchmark figure in one call of a few minutes, on a few blocks per expert.

GPU time comes in windows of 15 minutes, machine start included, so this mode measures what the slow rows
measure in one process, within `--budget-s` seconds of the process start (default 270) on one H100 or H200:

- The real-size pipeline with random weights, built on the GPU as `run.build_real_size_pipeline` builds it
  (UMT5-XXL with its 24 layers, the Wan VAE, every expert width real), but with N blocks per expert
  (`--blocks`, default 4 of 40). A figure that grows with depth is measured at N blocks and extrapolated to
  40: the expert forward is timed with its blocks cut to 0 (the fixed part: embeddings, rope, head) and with
  all N; per_block = (t_N - t0) / N and t_40 = t0 + 40 x per_block. The fit is checked once per call: it
  predicts 2N blocks, and a forward that runs the N blocks twice (the compute of 2N distinct blocks, no
  extra memory) measures them (`depth-fit` -> `check.relative_error`). Weight bytes extrapolate the same way,
  from one block's bytes as the worker holds it (bf16, fp8 or int8).
- Each path of the worker runs through its own `Engine.prepare` + `Engine.generate` at the real 81 frames with
  4 steps (each expert twice). Step times are read inside the engine's loop (its progress callback, the GPU
  synchronised), and the per-forward time is the second step of each expert: the first pays one-time costs
  at a new shape. A whole job is estimated as the job's measured fixed phases (text encode, condition encode,
  VAE decode, MP4 encode, image fetch) + steps x forwards per step x the extrapolated per-forward seconds
  (quality: 40 steps, guidance on both experts = 2 forwards; turbo: 4 steps, 1 forward).
- Every figure says how it was obtained: `{"value", "basis": "measured"}`, `{"value", "basis": "estimated",
  "formula"}` with the numbers in the formula, or `{"value": null, "basis": "not measured", "why"}`.
- Paths run in order: the eager ones first (cheap, and every estimate needs their fits, fixed phases and
  reference frames), then the compiled ones, whose compile time is the unknown. Each starts only when the
  time left covers what it needs, else it is `{"ok": null, "skipped": "time budget"}`; one still running
  GRACE_S past the budget is stopped. A path's failure is its result (`ok: false` and the error); the
  others still run. A line is printed as each path finishes, and the results file is written after each.

`--gpus N` runs only the figures of several GPUs, into `quick_gpusN` (the `quick` object stays as it is):
`depth-fit`, then turbo-fp8 and quality-fp8 (`<path>-gpusN`, eager: compiling both would not fit the quick
run's budget; the rows compile) on one rank, then on N ranks
(run.started_ranks: followers building the same N-block pipeline), each resolution with the layout, each
rank's peak GPU memory and `scaling` (efficiency = t(1) / (N x t(N)) per forward and per whole job, and
the frames' relative L2 against one rank's). The one-rank reference runs in the same call, before the
followers start; with N = 1 the path runs once, through the same code, and is its own reference.

`--smoke` runs the same code on the CPU with the tiny model (fp8 -> int8, compiling off) in seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import os
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import run
import torch

from wan_i2v.schema import Phase
from wan_i2v.worker.attention import check_backend
from wan_i2v.worker.components import cast_as_loaded
from wan_i2v.worker.engine import HIGH_NOISE, LOW_NOISE, TEXT_TOKENS, Engine
from wan_i2v.worker.images import fit_image, load_image
from wan_i2v.worker.lora import fuse, parse_lora, read_safetensors
from wan_i2v.worker.memory import GIB, Parking, module_bytes, quantised_bytes
from wan_i2v.worker.netguard import UrlPolicy
from wan_i2v.worker.quantize import quantize_expert
from wan_i2v.worker.settings import EngineOptions
from wan_i2v.worker.weights import pair_files

FULL_BLOCKS = run.real_expert_config()["num_layers"]  # 40 per expert
TURBO_STEPS = 4
GRACE_S = 10.0  # a path still running this long past the budget is stopped
ATTENTION_BACKENDS = ("_native_cudnn", "_native_flash", "native", "_native_math")  # levers.py's ladder, in order
DISK_TEST_BYTES = 4 * GIB  # the disk read test's file on a GPU machine (the smoke run writes 16 MiB)
CHUNK = 64 * 2**20
DEPTH_NOTE = "the compile check's and warm-up's few forwards counted at N blocks: a little low"
PACKAGES = ("torch", "triton", "diffusers", "transformers", "torchao", "accelerate", "safetensors", "imageio-ffmpeg")
PLAN_COPIES = {"resident": 2, "swap": 1, "offload": 0}  # experts on the GPU at once under each memory plan


# ---- figures: every number says how it was obtained ----------------------------------------------------
def _rounded(number: float | None, digits: int) -> float | None:
    return None if number is None else round(float(number), digits)


def measured(number: float, digits: int = 3, **facts) -> dict:
    return {"value": _rounded(number, digits), "basis": "measured", **facts}


def estimated(number: float, formula: str, digits: int = 3) -> dict:
    return {"value": _rounded(number, digits), "basis": "estimated", "formula": formula}


def missing(why: str) -> dict:
    return {"value": None, "basis": "not measured", "why": why}


def value(figure) -> float | None:
    return figure.get("value") if isinstance(figure, dict) else None


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]


# ---- the time budget -----------------------------------------------------------------------------------
def process_age_s() -> float:
    """Seconds since this process started (Linux /proc), so that the budget counts interpreter start and imports."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


class BudgetExceeded(KeyboardInterrupt):
    """Raised in a path still running GRACE_S past the budget. An interrupt like Ctrl-C, so that code catching
    Exception (the engine's fallback ladders take any failure as a step down) lets it through."""


class Budget:
    def __init__(self, seconds: float, already_s: float = 0.0, grace_s: float = GRACE_S):
        self.seconds, self.grace_s = seconds, grace_s
        self.deadline = time.monotonic() - already_s + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def used(self) -> float:
        return self.seconds - self.left()

    @contextlib.contextmanager
    def enforced(self) -> Iterator[None]:
        """Stop the code inside `grace_s` past the deadline: SIGALRM raises BudgetExceeded there, and again every
        2 s until the code lets it out (one swallowed on the way does not keep the path running)."""
        if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
            yield
            return

        def stop(signum, frame):
            raise BudgetExceeded(f"stopped {self.grace_s:g} s past the time budget ({self.seconds:g} s)")

        previous = signal.signal(signal.SIGALRM, stop)
        timer = signal.setitimer(signal.ITIMER_REAL, max(self.left() + self.grace_s, 0.01), 2.0)
        began = time.monotonic()
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            if timer[0]:  # someone else's alarm (pytest-timeout's, say) was set: it goes on where it was
                signal.setitimer(signal.ITIMER_REAL, max(timer[0] - (time.monotonic() - began), 0.01), timer[1])


class Skipped(Exception):
    """A path that cannot give its figures in this call (what it needs did not run): reported, not a failure."""


@dataclass(frozen=True)
class BenchPath:
    name: str
    needs_s: float  # GPU seconds it needs to be worth starting
    measure: Callable[[dict], None]  # fills the path's entry as it goes (a failure keeps what it measured)


def run_paths(
    paths: list[BenchPath], budget: Budget, entries: dict, done: Callable[[str, dict], None], cleanup=lambda: None
) -> None:
    """Each path in order when the time left covers what it needs; `done(name, entry)` after each."""
    for path in paths:
        left = budget.left()
        if left < path.needs_s:
            entries[path.name] = {"ok": None, "skipped": "time budget", "needs_s": path.needs_s, "left_s": round(left)}
            done(path.name, entries[path.name])
            continue
        entry = entries[path.name] = {"ok": None}
        began = time.perf_counter()
        try:
            with budget.enforced():
                path.measure(entry)
        except BudgetExceeded as exc:
            entry.update(ok=False, error=str(exc))
        except Skipped as exc:
            entry.update(ok=None, skipped=str(exc))
        except Exception as exc:  # noqa: BLE001 - one path's failure is its result; the others still run
            entry.update(ok=False, error=_error(exc))
        else:
            entry["ok"] = True
        finally:
            try:
                cleanup()
            except Exception as exc:  # noqa: BLE001 - if the device is gone, the next paths say so themselves
                entry["cleanup_error"] = _error(exc)
        entry["seconds"] = round(time.perf_counter() - began, 1)
        done(path.name, entry)


# ---- timing --------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_forward(expert: torch.nn.Module, inputs: dict, device: torch.device, reps: int) -> float:
    """Median seconds of one expert forward, after one untimed call (the first at a shape pays one-time costs)."""
    expert(**inputs)
    times = []
    for _ in range(reps):
        _sync(device)
        began = time.perf_counter()
        expert(**inputs)
        _sync(device)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


@contextlib.contextmanager
def blocks_as(expert: torch.nn.Module, blocks: list[torch.nn.Module]) -> Iterator[None]:
    """The expert with these blocks for a while: none (its fixed part) or its own twice (2N blocks' compute)."""
    own = expert.blocks
    expert.blocks = torch.nn.ModuleList(blocks)
    try:
        yield
    finally:
        expert.blocks = own


class StepClock:
    """Seconds of each denoising step, read inside the engine's loop through its progress callback, the GPU
    synchronised at each call so that every step's kernels count in its own time."""

    def __init__(self, device: torch.device):
        self.device = device
        self.steps: list[float] = []
        self.experts: list[str] = []
        self._mark = time.perf_counter()

    def start(self) -> None:
        _sync(self.device)
        self._mark = time.perf_counter()

    def __call__(self, phase, **details) -> None:
        _sync(self.device)
        now = time.perf_counter()
        if phase == Phase.DENOISE:
            self.steps.append(now - self._mark)
            self.experts.append(details.get("expert", ""))
        self._mark = now

    def warm_step_s(self) -> tuple[float, list[int]]:
        """The median step of an expert that already ran once in this job, and those steps (1-based); all the
        steps when none is warm."""
        warm = [i for i, expert in enumerate(self.experts) if expert in self.experts[:i]] or range(len(self.steps))
        return statistics.median(self.steps[i] for i in warm), [i + 1 for i in warm]


def decode(vae, latents: torch.Tensor) -> np.ndarray:
    """Latents to uint8 frames as the engine decodes them (Engine._decode)."""
    latents = latents.to(vae.device, dtype=vae.dtype)
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents)
    std = torch.tensor(vae.config.latents_std).view(shape).to(latents)
    with torch.inference_mode():
        video = vae.decode(latents * std + mean, return_dict=False)[0]
    frames = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return frames.permute(1, 2, 3, 0).cpu().numpy()


def _one_block(expert: torch.nn.Module) -> torch.nn.Module:
    """A module holding only the expert's first block under its own name (`blocks.0`), for memory.quantised_bytes."""
    holder = torch.nn.Module()
    holder.blocks = torch.nn.ModuleList([expert.blocks[0]])
    return holder


# ---- the disk ------------------------------------------------------------------------------------------
def write_file(path: Path, size: int) -> float:
    """Seconds to write `size` incompressible bytes and fsync them."""
    chunk = np.random.default_rng(0).integers(0, 256, min(CHUNK, size), dtype=np.uint8)
    began = time.perf_counter()
    with open(path, "wb", buffering=0) as file:
        for offset in range(0, size, len(chunk)):
            chunk[:8] = np.frombuffer(offset.to_bytes(8, "little"), np.uint8)  # no two chunks alike
            file.write(memoryview(chunk)[: min(len(chunk), size - offset)])
        os.fsync(file.fileno())
    return time.perf_counter() - began


def evict(path: Path, drop_all: bool) -> dict:
    """Push the file out of the page cache so that reading it comes from the disk: POSIX_FADV_DONTNEED on the
    file (any user), and /proc/sys/vm/drop_caches when `drop_all` (root; a container may refuse)."""
    advised = False
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        advised = True
    except (OSError, AttributeError):
        pass
    finally:
        os.close(descriptor)
    return {"fadvise_dontneed": advised, "drop_caches": run._drop_page_cache() if drop_all else False}


def read_file(path: Path) -> float:
    buffer = memoryview(bytearray(CHUNK))
    began = time.perf_counter()
    with open(path, "rb", buffering=0) as file:
        while file.readinto(buffer):
            pass
    return time.perf_counter() - began


def filesystem(folder: Path) -> str:
    """The filesystem type of the mount holding `folder` (a tmpfs is memory, not a disk)."""
    best, kind = "", "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            _, point, fs_type, *_ = line.split()
            if str(folder.resolve()).startswith(point) and len(point) > len(best):
                best, kind = point, fs_type
    return kind


# ---- the quick run -------------------------------------------------------------------------------------
class Quick:
    """The shared parts (tokenizer, text encoder, VAE) built once; fresh N-block experts for each path; what
    earlier paths measured (fits, reference frames, fixed phases, disk and copy rates) for later estimates."""

    def __init__(self, args, work: Path, budget: Budget):
        self.smoke = args.smoke
        self.device = torch.device("cpu" if args.smoke else "cuda")
        self.dtype = torch.float32 if args.smoke else torch.bfloat16  # what the experts compute in
        self.blocks = args.blocks or (2 if args.smoke else 4)  # the smoke run: the tiny model's own depth
        self.gpus: int | None = getattr(args, "gpus", None)  # --gpus N: only the paths on several ranks
        self.last_frames: dict[str, np.ndarray] = {}  # resolution -> the last engine job's frames
        self.steps = args.quality_steps
        self.frames = args.frames or (5 if args.smoke else 81)
        self.sizes = run.SMOKE_SIZES if args.smoke else run.SIZES
        self.work, self.budget = work, budget
        self.disk_dir = args.disk_dir or work
        self.rife_weights, self.model_dir = getattr(args, "rife_weights", None), getattr(args, "model_dir", None)
        self.reps = 1 if args.smoke else 2
        self.compile_dir = work / "compile-cache"
        self.fit: dict[str, float] = {}  # resolution -> t0, the expert forward with no block
        self.reference: dict[tuple[str, int], np.ndarray] = {}  # (resolution, steps) -> the baseline's frames
        self.images: dict[str, tuple] = {}  # resolution -> (image, seconds to fetch it)
        self.mp4: dict[str, dict] = {}  # resolution -> encode_mp4 figure
        self.rates: dict[str, float] = {}  # disk read and write, host-to-GPU copy (GB/s); the copy's seconds
        self.empty_cache_start: dict | None = None  # turbo-fp8's cold start, with an empty compile cache
        self.text_encode_s: float | None = None  # the last prompt-cache miss (a second job of a path hits)
        self.report: dict = {
            "blocks": self.blocks,
            "blocks_full": FULL_BLOCKS,
            "frames": self.frames,
            "steps_run": {"quality": self.steps, "turbo": TURBO_STEPS},
            "budget_s": budget.seconds,
            "method": (
                f"{self.blocks} of {FULL_BLOCKS} blocks per expert, every width real. Per-forward seconds: "
                "measured at N blocks (the second step of each expert in the engine's loop), extrapolated as "
                "t0 + 40 x (t_N - t0) / N with t0 the forward without blocks (depth-fit; its 2N check). Whole "
                "jobs: the job's measured fixed phases + steps x forwards x the extrapolated per-forward seconds."
            ),
            "paths": {},
        }

    # ---- building --------------------------------------------------------------------------------------
    def setup(self) -> dict:
        """The text encoder, VAE and tokenizer every path shares, the turbo pair's files, and the model's sizes."""
        from diffusers import WanTransformer3DModel

        began = time.perf_counter()
        if self.smoke:
            from tiny_model import build_pipeline

            tiny = build_pipeline(0)
            self.tokenizer, self.text_encoder, self.vae = tiny.tokenizer, tiny.text_encoder.eval(), tiny.vae.eval()
            self.scheduler_config = tiny.scheduler.config
            self.expert_config = {k: v for k, v in tiny.transformer.config.items() if not k.startswith("_")}
        else:
            self.tokenizer = run.build_tokenizer()
            self.text_encoder = run.build_text_encoder(self.device)
            self.vae = run.build_vae(self.device)
            self.scheduler_config = run.real_scheduler().config
            self.expert_config = run.real_expert_config()
        with torch.device("meta"):
            config = WanTransformer3DModel.from_config({**self.expert_config, "num_layers": self.blocks}).config
        self.turbo_dir = self.work / "turbo-lora"
        rank, std = (4, 0.1) if self.smoke else (64, 0.002)  # tiny_model's pair, or one of the published rank
        run.write_lora_pair(self.turbo_dir, config, rank=rank, seed=10, std=std)
        self.model_sizes = self._model_sizes()
        _sync(self.device)
        device = {"device": str(self.device)}
        if self.device.type == "cuda":
            properties = torch.cuda.get_device_properties(self.device)
            device.update(
                gpu=properties.name,
                gpu_memory_gib=round(properties.total_memory / GIB, 1),
                capability=".".join(map(str, torch.cuda.get_device_capability(self.device))),
                cuda=torch.version.cuda,
            )
        return {"seconds": round(time.perf_counter() - began, 1), **device, "sizes": self.model_sizes}

    def meta_expert(self, blocks: int) -> torch.nn.Module:
        """An expert without storage, its parameters in the dtypes loading the worker's bf16 copy gives them."""
        from diffusers import WanTransformer3DModel

        with torch.device("meta"):
            expert = WanTransformer3DModel.from_config({**self.expert_config, "num_layers": blocks})
        cast_as_loaded(expert, self.dtype)
        return expert

    def _model_sizes(self) -> dict:
        """Bytes of the 40-block model as the worker keeps it: an expert and one block in bf16, fp8 and int8
        (memory.quantised_bytes), the text encoder and VAE, the bf16 copy and the prepared fp8 entry on disk."""
        full = self.meta_expert(FULL_BLOCKS)
        expert = {quant: quantised_bytes(full, quant) for quant in ("none", "fp8", "int8")}
        text_encoder, vae = module_bytes(self.text_encoder), module_bytes(self.vae)
        return {
            "expert_bytes": expert,
            "block_bytes": {quant: quantised_bytes(_one_block(full), quant) for quant in expert},
            "text_encoder_bytes": text_encoder,
            "vae_bytes": vae,
            "bf16_copy_bytes": 2 * expert["none"] + text_encoder + vae,
            "prepared_entry_bytes": 2 * expert["fp8"],
        }

    def expert(self, seed: int) -> torch.nn.Module:
        """A fresh N-block expert; the same seed gives the same weights in every path (the baseline's too)."""
        if self.smoke:
            from tiny_model import build_expert

            return build_expert(seed, num_layers=self.blocks).eval()
        return run.build_expert(self.device, seed, self.blocks)

    def pipeline(self, vae=None):
        """The shared parts with a fresh pair of experts (Engine.prepare changes the experts it is given)."""
        from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline

        return WanImageToVideoPipeline(
            tokenizer=self.tokenizer, text_encoder=self.text_encoder, vae=vae or self.vae,
            scheduler=UniPCMultistepScheduler.from_config(self.scheduler_config),
            transformer=self.expert(3), transformer_2=self.expert(4), boundary_ratio=0.9,
        )  # fmt: skip

    def engine_options(self, options: dict, **changes) -> dict:
        """A row's engine options for this run: on the CPU fp8 becomes int8 and nothing compiles (as the rows'
        smoke run); no warm-up unless asked (the measured job runs at a new shape anyway)."""
        options = {"device": str(self.device), "turbo_lora": self.turbo_dir, "warmup": "off", **options, **changes}
        options.pop("user_loras", None)
        if self.smoke:
            options["compile"] = "off"
            options["quant"] = "int8" if options.get("quant") == "fp8" else options.get("quant", "auto")
        return options

    def release(self, engine: Engine) -> None:
        """Give the shared parts back as the next path expects them: a text encoder the engine parked comes back
        to the device, the VAE untiled, offload hooks removed."""
        for name, parking in engine.parked.items():
            if name not in (HIGH_NOISE, LOW_NOISE) and not parking.on_device:
                parking.fetch()
                parking.ready()
        if engine.plan.name == "offload":
            engine.pipe.remove_all_hooks()
            self.text_encoder.to(self.device)
            self.vae.to(self.device)
        if getattr(self.vae, "use_tiling", False):
            self.vae.disable_tiling()

    # ---- inputs ----------------------------------------------------------------------------------------
    def forward_inputs(self, resolution: str, config) -> dict:
        """One expert forward's inputs at `resolution` and this run's frames: random latents and text."""
        width, height = self.sizes[resolution]
        generator = torch.Generator("cpu").manual_seed(0)
        latent = (1, config.in_channels, (self.frames - 1) // 4 + 1, height // 8, width // 8)
        return {
            "hidden_states": torch.randn(latent, generator=generator).to(self.device, self.dtype),
            "encoder_hidden_states": torch.randn(1, TEXT_TOKENS, config.text_dim, generator=generator).to(
                self.device, self.dtype
            ),
            "timestep": torch.tensor([900.0], device=self.device),
            "return_dict": False,
        }

    def latents(self, resolution: str) -> torch.Tensor:
        width, height = self.sizes[resolution]
        shape = (1, self.vae.config.z_dim, (self.frames - 1) // 4 + 1, height // 8, width // 8)
        return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(1)).to(self.device)

    def tokens(self, resolution: str) -> int:
        width, height = self.sizes[resolution]
        return ((self.frames - 1) // 4 + 1) * (height // 16) * (width // 16)

    def image(self, resolution: str):
        """The job's image at `resolution` and the seconds the worker takes to read and fit it (once)."""
        if resolution not in self.images:
            width, height = self.sizes[resolution]
            uri = run._image(width, height)
            began = time.perf_counter()
            image = fit_image(load_image("image", uri, UrlPolicy()), (width, height))
            self.images[resolution] = (image, time.perf_counter() - began)
        return self.images[resolution]

    def encode_mp4_once(self, resolution: str, frames: np.ndarray) -> None:
        if resolution in self.mp4:
            return
        try:
            from wan_i2v.worker.video import encode_mp4

            began = time.perf_counter()
            encode_mp4(frames, self.work / f"quick-{resolution}.mp4", 16, crf=18)
            self.mp4[resolution] = measured(time.perf_counter() - began, frames=len(frames))
        except Exception as exc:  # noqa: BLE001 - no ffmpeg on this machine: the job estimates say so
            self.mp4[resolution] = missing(_error(exc)[:300])

    # ---- estimates -------------------------------------------------------------------------------------
    def at_full_depth(self, per_forward: float, resolution: str) -> dict:
        t0, n = self.fit.get(resolution), self.blocks
        if t0 is None:
            return estimated(
                per_forward * FULL_BLOCKS / n,
                f"t_N x 40 / N = {per_forward:.4f} x 40 / {n} (no forward without blocks at {resolution}: the fixed "
                "part counted as blocks, an overestimate)",
            )
        return estimated(
            t0 + FULL_BLOCKS * (per_forward - t0) / n,
            f"t0 + 40 x (t_N - t0) / N = {t0:.4f} + 40 x ({per_forward:.4f} - {t0:.4f}) / {n}",
        )

    def job_estimate(self, resolution: str, mode: str, forwards: int, per_forward_40: dict, parts: list) -> dict:
        """Fixed phases (`parts`: (name, seconds)) + the image fetch and MP4 encode + steps x forwards x per forward."""
        if value(per_forward_40) is None:
            return missing("no per-forward figure")
        steps = run.QUALITY_STEPS_FULL if mode == "quality" else TURBO_STEPS
        parts = [*parts, ("fetch_image", self.image(resolution)[1])]
        mp4 = self.mp4.get(resolution, missing("not run"))
        notes = [] if value(mp4) is not None else [f"without encode_mp4 ({mp4['why']})"]
        if value(mp4) is not None:
            parts.append(("encode_mp4", mp4["value"]))
        total = sum(seconds for _, seconds in parts) + steps * forwards * per_forward_40["value"]
        formula = " + ".join(f"{name} {seconds:.3f}" for name, seconds in parts)
        formula += f" + {steps} steps x {forwards} forwards x {per_forward_40['value']:.4f}"
        return estimated(total, "; ".join([formula, *notes]), digits=2)

    def peaks(self, copies: int, quant: str, peak: float | None) -> tuple[dict, dict]:
        """Peak GPU memory at N blocks (`peak`), and at 40: `copies` experts' worth of the missing blocks added."""
        if peak is None:
            why = "no GPU: the CPU run has no device memory to measure"
            return missing(why), missing(why)
        block = self.model_sizes["block_bytes"][quant]
        added = copies * (FULL_BLOCKS - self.blocks) * block / GIB
        total_gib = torch.cuda.get_device_properties(self.device).total_memory / GIB
        at_40 = estimated(
            peak + added,
            f"peak at N blocks + {copies} experts x (40 - N) blocks x {block / 1e6:.0f} MB = {peak:.2f} + {added:.2f} GiB",
            digits=2,
        )
        at_40["fits"] = peak + added <= total_gib
        return measured(peak, 2, blocks=self.blocks), at_40

    def versus_baseline(self, mode: str, resolution: str, steps: int, frames: np.ndarray) -> dict:
        reference = self.reference.get((resolution, steps))
        if mode != "quality":
            return missing("turbo runs another schedule than the baseline: no reference frames")
        if reference is None:
            return missing(f"no baseline frames at {resolution} ({steps} steps)")
        return measured(run._relative_l2(frames, reference), 4, blocks=self.blocks, against="baseline")

    # ---- the paths -------------------------------------------------------------------------------------
    def paths(self) -> list[BenchPath]:
        """In order: eager paths (cheap; their fits, fixed phases and frames serve every estimate), then compiled."""
        order = [
            ("depth-fit", 15, self.path_depth_fit),
            ("baseline", 15, self.path_baseline),
            ("quality-bf16", 12, self.engine_path("quality-bf16")),
            ("quality-fp8-fbc", 12, self.engine_path("quality-fp8-fbc")),
            ("disk", 15, self.path_disk),
            ("swap-copy", 25, self.path_swap_copy),
            ("turbo-bf16-swap", 25, self.engine_path("turbo-bf16-swap")),
            ("vae-decode", 12, self.path_vae_decode),
            ("attention", 12, self.path_attention),
            ("interpolation", 30, self.path_interpolation),  # before the compiled paths: its targets are the issue's
            ("turbo-fp8", 60, self.engine_path("turbo-fp8", cold=True)),
            ("quality-fp8", 40, self.engine_path("quality-fp8")),
            ("cold-start", 30, self.path_cold_start),
            ("quality-bf16-compiled", 35, self.engine_path("quality-bf16-compiled")),
            ("quality-int8", 45, self.engine_path("quality-int8")),
            ("turbo-fp8-loras", 40, self.engine_path("turbo-fp8-loras")),
            ("quality-bf16-compiled-static", 40, self.engine_path("quality-bf16-compiled-static")),
        ]
        if self.gpus is not None:  # one eager engine path; on several: the reference, the followers' start, N ranks
            needs = 35 if self.gpus == 1 else 80
            order = [order[0]] + [(f"{n}-gpus{self.gpus}", needs, self.gpus_path(n, self.gpus)) for n in run.GPUS_ROWS]
        return [BenchPath(name, 0 if self.smoke else needs, measure) for name, needs, measure in order]

    def path_interpolation(self, entry: dict) -> None:
        """bench/interpolation.py's row: RIFE through the worker's stage at each resolution, k = 2 and 4, the
        margins over frame repetition, the targets."""
        import interpolation

        interpolation.row(self.sizes, self.frames, self.smoke, self.rife_weights, self.model_dir, entry)
        failed = [name for name, case in entry["cases"].items() if not case["ok"]]
        if failed:
            raise RuntimeError(f"interpolation cases failed (frame count, kept frames or pairs): {failed}")

    def path_depth_fit(self, entry: dict) -> None:
        """The expert forward with 0 and N blocks at each resolution (bf16, eager), and the 2N check at 480p."""
        expert = self.expert(7)
        blocks = list(expert.blocks)
        n = len(blocks)
        for resolution in self.sizes:
            inputs = self.forward_inputs(resolution, expert.config)
            with blocks_as(expert, []):
                t0 = time_forward(expert, inputs, self.device, self.reps)
            t_n = time_forward(expert, inputs, self.device, self.reps)
            self.fit[resolution] = t0
            fit = {
                "tokens": self.tokens(resolution),
                "t0_s": measured(t0, 4, blocks=0),
                "tN_s": measured(t_n, 4, blocks=n),
                "per_block_s": estimated((t_n - t0) / n, f"(t_N - t0) / N = ({t_n:.4f} - {t0:.4f}) / {n}", 4),
                "t40_s": self.at_full_depth(t_n, resolution),
            }
            if resolution == "480p":
                with blocks_as(expert, blocks * 2):
                    t_2n = time_forward(expert, inputs, self.device, self.reps)
                predicted = t0 + 2 * (t_n - t0)
                fit["check"] = {
                    "blocks": 2 * n,
                    "predicted_s": estimated(predicted, f"t0 + 2N x per_block = {t0:.4f} + 2 x ({t_n:.4f} - {t0:.4f})"),
                    "measured_s": measured(
                        t_2n, 4, how="the N blocks run twice: the compute of 2N distinct blocks, no extra memory"
                    ),
                    "relative_error": round((t_2n - predicted) / t_2n, 4),
                }
                self.report["extrapolation_check"] = fit["check"]
            entry[resolution] = fit

    def path_baseline(self, entry: dict) -> None:
        """Diffusers' own WanImageToVideoPipeline.__call__ at 480p with the VAE in fp32 (as its examples run it):
        the reference frames of the quality paths, and the plain path's figures."""
        pipe = self.pipeline(vae=copy.deepcopy(self.vae).to(torch.float32))
        pipe.set_progress_bar_config(disable=True)
        resolution = "480p"
        p = run.job_params("quality", self.sizes[resolution], self.frames, self.steps)
        boundary = pipe.config.boundary_ratio * pipe.scheduler.config.num_train_timesteps
        clock = StepClock(self.device)

        def on_step(_pipe, _index, timestep, _tensors) -> dict:
            clock(Phase.DENOISE, expert=HIGH_NOISE if float(timestep) >= boundary else LOW_NOISE)
            return {}

        run._reset_peak(self.device)
        clock.start()
        began = time.perf_counter()
        video = pipe(
            image=run._decoded(run._image(p.width, p.height)), prompt=p.prompt, negative_prompt=p.negative_prompt,
            height=p.height, width=p.width, num_frames=p.num_frames, num_inference_steps=p.steps,
            guidance_scale=p.guidance_scale, guidance_scale_2=p.guidance_scale_2,
            generator=torch.Generator("cpu").manual_seed(p.seed), output_type="np", callback_on_step_end=on_step,
        ).frames[0]  # fmt: skip
        seconds = time.perf_counter() - began
        frames = (np.asarray(video) * 255).round().astype(np.uint8)
        self.reference[(resolution, p.steps)] = frames
        step_s, warm = clock.warm_step_s()
        per_forward_40 = self.at_full_depth(step_s / 2, resolution)
        fixed = seconds - p.steps * step_s  # encode, decode, the first steps' one-time costs
        peak, peak_40 = self.peaks(PLAN_COPIES["resident"], "none", run._peak_gib(self.device))
        entry["resolutions"] = {
            resolution: {
                "steps_run": p.steps,
                "seconds": measured(seconds, 2, what="the whole call"),
                "step_s": [round(s, 4) for s in clock.steps],  # the first includes the text and condition encode
                "per_forward_s": measured(step_s / 2, blocks=self.blocks, steps=warm),
                "per_forward_s_at_40": per_forward_40,
                "job_s": estimated(
                    fixed + run.QUALITY_STEPS_FULL * 2 * per_forward_40["value"],
                    f"the call outside its steps (encode, fp32 decode; no MP4) {fixed:.3f} + 40 steps x 2 forwards x "
                    f"{per_forward_40['value']:.4f}",
                    digits=2,
                ),
                "rel_l2_vs_baseline": measured(0.0, 4, note="the reference itself"),
                "peak_gib": peak,
                "peak_gib_at_40": peak_40,
            }
        }

    def engine_path(self, name: str, cold: bool = False, gpus: int = 1, **changes) -> Callable[[dict], None]:
        """A row of run.ROWS through Engine.prepare and one Engine.generate per resolution, on `gpus` ranks.
        `cold`: prepared with an empty compile cache and the worker's warm-up, as a first cold start
        (cold-start's first half). `changes`: engine options over the row's."""
        mode, row_options, resolutions = run.ROWS[name]
        if cold:
            changes = {**changes, "compile_cache": self.compile_dir, "warmup": "auto"}

        def measure(entry: dict) -> None:
            options = self.engine_options(row_options, **changes)
            spec = {"bench": "quick", "smoke": self.smoke, "blocks": self.blocks, "model_path": None, "work": self.work}
            with run.started_ranks(gpus, {**spec, "options": options}) as ranks:
                self._engine_path(entry, mode, row_options, resolutions, options, cold, ranks)

        return measure

    def _engine_path(self, entry: dict, mode, row_options, resolutions, options, cold: bool, ranks) -> None:
        pipe = self.pipeline()
        count = row_options.get("user_loras", 0)
        rank = 4 if self.smoke else run.USER_LORA_RANK
        loras = run.write_user_loras(self.work, pipe.transformer.config, count, rank)
        entry["options"] = {key: str(v) for key, v in options.items() if key != "device"}
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        began = time.perf_counter()
        engine = Engine.prepare(
            pipe, ranks.engine_options(EngineOptions(**options)), model="random-real-size", ranks=ranks
        )
        entry["prepare_s"] = measured(time.perf_counter() - began, 2)
        report = engine.cold_start.as_dict()
        entry["cold_start"] = report
        if "fallbacks" in report:
            entry["fallbacks"] = report["fallbacks"]
        if cold:
            self.empty_cache_start = report
        try:
            for resolution in resolutions:
                entry.setdefault("resolutions", {})[resolution] = self.measure_job(engine, mode, resolution, loras)
        finally:
            entry["compiled_graphs"] = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs
            self.release(engine)

    def gpus_path(self, name: str, gpus: int) -> Callable[[dict], None]:
        """Row `name` on one rank (the reference, before the followers start), then on `gpus`, both eager (two
        compiles would not fit the quick run's budget; `--gpus N` rows compile); each resolution gets the layout, each rank's peak and the scaling against one rank."""

        def measure(entry: dict) -> None:
            reference, frames = {}, {}
            if gpus > 1:
                self.engine_path(name, compile="off")(reference)
                frames = dict(self.last_frames)
                entry["reference_1_gpu_prepare_s"] = reference["prepare_s"]
            self.engine_path(name, gpus=gpus, compile="off")(entry)
            for resolution, job in entry["resolutions"].items():
                one = reference.get("resolutions", {}).get(resolution, job)
                facts = run.parallel_facts(job["engine"])
                peaks = facts["peak_gib_per_rank"]
                job["layout"] = facts["layout"]
                job["peak_gib_per_rank"] = (
                    {"value": peaks, "basis": "measured", "blocks": self.blocks} if peaks else missing("no GPU")
                )
                job["scaling"] = self.scaling(one, job, gpus, frames.get(resolution), self.last_frames[resolution])

        return measure

    def scaling(self, one: dict, many: dict, gpus: int, one_frames, many_frames) -> dict:
        """Seconds on one rank and on `gpus`: efficiency = t(1) / (N x t(N)), per forward and per whole job."""
        t1, tn = value(one["per_forward_s"]), value(many["per_forward_s"])
        j1, jn = value(one["job_s"]), value(many["job_s"])
        facts = {
            "gpus": gpus,
            "per_forward_s_1_gpu": one["per_forward_s"],
            "job_s_1_gpu": one["job_s"],
            "efficiency_per_forward": measured(
                run.efficiency(t1, tn, gpus), formula=f"t(1) / (N x t(N)) = {t1} / ({gpus} x {tn}), at N blocks"
            ),
            "efficiency_job": estimated(
                run.efficiency(j1, jn, gpus), f"job(1) / (N x job(N)) = {j1} / ({gpus} x {jn}), both estimated at 40"
            )
            if j1 and jn
            else missing("no whole-job estimate"),
        }
        if one_frames is None:
            facts["rel_l2_vs_1_gpu"] = measured(0.0, 4, note="one rank: the reference itself")
        else:
            facts["rel_l2_vs_1_gpu"] = measured(run._relative_l2(many_frames, one_frames), 4, blocks=self.blocks)
        return facts

    def measure_job(self, engine: Engine, mode: str, resolution: str, loras) -> dict:
        steps = TURBO_STEPS if mode == "turbo" else self.steps
        p = run.job_params(mode, self.sizes[resolution], self.frames, steps)
        clock = StepClock(self.device)
        run._reset_peak(self.device)
        clock.start()
        generated = engine.generate(p, self.image(resolution)[0], on_progress=clock, loras=loras)
        clock.steps[0] -= generated.timings.get("condition_encode", 0.0)  # the interval began before it
        forwards = 2 if p.guidance_scale > 1 else 1
        step_s, warm = clock.warm_step_s()
        per_forward_40 = self.at_full_depth(step_s / forwards, resolution)
        phases = generated.timings
        self.encode_mp4_once(resolution, generated.frames)
        if generated.report.get("text_cache_hits") == 0:  # a job's new prompt: the encoder ran
            self.text_encode_s = phases["text_encode"]
        parts = [("text_encode", self.text_encode_s if self.text_encode_s is not None else phases["text_encode"])]
        parts += [(phase, phases[phase]) for phase in ("condition_encode", "vae_decode")]
        if loras:  # the files hold every block's pairs: reading them grows with depth
            parts.append(("lora_load x 40 / N", phases["lora_load"] * FULL_BLOCKS / self.blocks))
        swap = engine.plan.name == "swap"
        resident = self.job_estimate(resolution, mode, forwards, per_forward_40, parts)  # both experts on the GPU
        swap_costs = self.swap_costs(phases["vae_decode"]) if swap else []
        job = self.job_estimate(resolution, mode, forwards, per_forward_40, parts + swap_costs)
        per_rank = run.parallel_facts(generated.report)["peak_gib_per_rank"]  # the engine resets the peak per job
        peak, peak_40 = self.peaks(PLAN_COPIES.get(engine.plan.name, 2), engine.quant, (per_rank or [None])[0])
        self.last_frames[resolution] = generated.frames
        return {
            "steps_run": steps,
            "step_s": [round(s, 4) for s in clock.steps],
            "per_forward_s": measured(step_s / forwards, blocks=self.blocks, steps=warm),
            "per_forward_s_at_40": per_forward_40,
            "phases_s": phases,
            "job_s": job,
            **({"job_s_resident": resident} if swap else {}),
            "rel_l2_vs_baseline": self.versus_baseline(mode, resolution, steps, generated.frames),
            "peak_gib": peak,
            "peak_gib_at_40": peak_40,
            "engine": generated.report,
        }

    def swap_costs(self, decode_s: float) -> list[tuple[str, float]]:
        """What the swap plan adds to a resident job: the blocking fetch of the low-noise expert at the boundary,
        and the part of the high-noise expert's fetch that the VAE decode does not hide."""
        fetch = self.rates.get("fetch_s")
        if fetch is None:
            return [("swap copy (swap-copy not measured)", 0.0)]
        return [("boundary fetch", fetch), ("max(0, fetch - vae_decode)", max(0.0, fetch - decode_s))]

    def path_disk(self, entry: dict) -> None:
        """This machine's disk: write a file, push it out of the page cache, read it back."""
        size = 16 * 2**20 if self.smoke else DISK_TEST_BYTES
        path = Path(self.disk_dir) / f".wan-bench-disk-{os.getpid()}.bin"
        try:
            write_s = write_file(path, size)
            cache = evict(path, drop_all=not self.smoke)  # the smoke run leaves the machine's page cache alone
            read_s = read_file(path)
        finally:
            path.unlink(missing_ok=True)
        read, write = size / read_s / 1e9, size / write_s / 1e9
        self.rates.update(read_gb_s=read, write_gb_s=write)
        sizes = self.model_sizes
        prepared = sizes["prepared_entry_bytes"] + sizes["text_encoder_bytes"] + sizes["vae_bytes"]
        entry.update(
            dir=str(path.parent),
            filesystem=filesystem(path.parent),
            bytes=size,
            write_gb_s=measured(write, 2, how="written and fsynced"),
            read_gb_s=measured(read, 2, page_cache=cache),
            read_s={
                "bf16_copy": estimated(
                    sizes["bf16_copy_bytes"] / 1e9 / read,
                    f"{sizes['bf16_copy_bytes'] / 1e9:.1f} GB / {read:.2f} GB/s",
                    1,
                ),
                "prepared_entry_text_encoder_vae": estimated(
                    prepared / 1e9 / read, f"{prepared / 1e9:.1f} GB / {read:.2f} GB/s", 1
                ),
            },
        )

    def path_swap_copy(self, entry: dict) -> None:
        """The swap plan's cost at full size: a 40-block expert (uninitialised, made from the meta device) parked
        in pinned host memory by the worker's own Parking; its fetch alone, and overlapped with a 480p VAE decode
        as the worker prefetches the high-noise expert while the decode runs."""
        expert = self.meta_expert(FULL_BLOCKS).to_empty(device=self.device)
        nbytes = module_bytes(expert)
        park_s, parking = self._timed(functools.partial(Parking, expert, self.device, park_now=True))
        pinned = getattr(parking, "_registered", None)  # cudaHostRegister refused (a memlock limit): slow copies
        fetch_s, decode_s, both_s = self._fetch_times(parking)
        del parking, expert  # the pinned host copy and the device copy go before the next path
        hidden = min(1.0, max(0.0, (fetch_s + decode_s - both_s) / fetch_s))
        self.rates.update(fetch_s=fetch_s, copy_gb_s=nbytes / fetch_s / 1e9)
        entry.update(
            bytes=nbytes,
            pinned=pinned,
            pin_s=measured(park_s, 2, what="Parking: a pinned host buffer of the expert's bytes, filled"),
            fetch_s=measured(fetch_s, blocks=FULL_BLOCKS, what="fetch + ready, blocking (the high/low boundary)"),
            copy_gb_s=measured(nbytes / fetch_s / 1e9, 2),
            decode_480p_s=measured(decode_s),
            fetch_during_decode_s=measured(both_s, what="fetch(overlap=True), the decode, ready"),
            hidden_fraction=measured(hidden, 3, formula="(fetch + decode - both) / fetch"),
        )

    def _fetch_times(self, parking: Parking) -> tuple[float, float, float]:
        """Seconds of a blocking fetch, of a 480p decode alone, and of a fetch on the side stream during it."""
        fetch_s, _ = self._timed(lambda: (parking.fetch(), parking.ready()))
        parking.park()
        latents = self.latents("480p")
        decode_s, _ = self._timed(lambda: decode(self.vae, latents))
        both_s, _ = self._timed(lambda: (parking.fetch(overlap=True), decode(self.vae, latents), parking.ready()))
        parking.park()
        return fetch_s, decode_s, both_s

    def _timed(self, work: Callable[[], object]) -> tuple[float, object]:
        """Seconds `work()` takes on the device, and what it returned."""
        _sync(self.device)
        began = time.perf_counter()
        result = work()
        _sync(self.device)
        return time.perf_counter() - began, result

    def path_vae_decode(self, entry: dict) -> None:
        """The VAE decode of 480p latents in bf16 and in fp32 (a copy each): seconds, peak, and how far apart."""
        latents = self.latents("480p")
        frames = {}
        for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            vae = copy.deepcopy(self.vae).to(dtype)
            run._reset_peak(self.device)
            seconds, frames[name] = self._timed(lambda vae=vae: decode(vae, latents))
            peak = run._peak_gib(self.device)
            entry[name] = {"seconds": measured(seconds), "peak_gib": measured(peak, 2) if peak else missing("no GPU")}
            del vae
        entry["rel_l2_bf16_vs_fp32"] = measured(run._relative_l2(frames["bf16"], frames["fp32"]), 4)

    def path_attention(self, entry: dict) -> None:
        """Each attention backend: relative L2 against fp32 math attention on a small input (the worker's own
        check), and the N-block expert forward at 480p with it, extrapolated to 40 blocks."""
        expert = self.expert(6)
        config = expert.config
        inputs = self.forward_inputs("480p", config)
        backends = entry["backends"] = {}
        for backend in ATTENTION_BACKENDS:
            item = backends[backend] = {}
            try:
                error = check_backend(
                    backend, self.device, self.dtype, config.num_attention_heads, config.attention_head_dim
                )
                item["rel_l2_vs_math"] = measured(error, 4, tokens=1024)
            except Exception as exc:  # noqa: BLE001 - not built into this torch, or not on this device
                item["rel_l2_vs_math"] = missing(_error(exc)[:300])
            item["per_forward_s"], item["per_forward_s_at_40"] = self._attention_forward(expert, backend, inputs)
            item["ok"] = value(item["rel_l2_vs_math"]) is not None and value(item["per_forward_s"]) is not None

    def _attention_forward(self, expert: torch.nn.Module, backend: str, inputs: dict) -> tuple[dict, dict]:
        heads, tokens = expert.config.num_attention_heads, self.tokens("480p")
        if backend == "_native_math" and self.device.type == "cuda":
            need = 2 * heads * tokens**2 * self.dtype.itemsize  # the score matrix and its softmax
            free = torch.cuda.mem_get_info(self.device)[0]
            if need > free:
                why = f"does not fit: the score matrix needs {need / GIB:.0f} GiB, {free / GIB:.0f} GiB free"
                return missing(why), missing(why)
        try:
            expert.set_attention_backend(backend)
            seconds = time_forward(expert, inputs, self.device, self.reps)
        except Exception as exc:  # noqa: BLE001 - the backend cannot run here: its entry says why
            return missing(_error(exc)[:300]), missing("the forward did not run")
        return measured(seconds, blocks=self.blocks), self.at_full_depth(seconds, "480p")

    def path_cold_start(self, entry: dict) -> None:
        """A turbo fp8 cold start's parts: compiling with the compile cache turbo-fp8 left (after torch._dynamo.reset(),
        as a later cold start finds it), fusion and quantisation per block, and the disk; the cold starts from the
        bf16 copy (nothing cached) and from the prepared cache (compile cache warm) estimated from them."""
        empty = self.empty_cache_start
        if empty is None:  # preparing again would compile from nothing: the figure below, not the one sought
            raise Skipped("needs turbo-fp8's cold start with an empty compile cache, which did not run")
        torch._dynamo.reset()
        options = self.engine_options(run.ROWS["turbo-fp8"][1], compile_cache=self.compile_dir, warmup="auto")
        pipe = self.pipeline()
        began = time.perf_counter()
        engine = Engine.prepare(pipe, EngineOptions(**options), model="random-real-size")
        prepare_s = time.perf_counter() - began
        warm = engine.cold_start.as_dict()
        self.release(engine)
        del engine, pipe
        entry["compile_and_warmup_s"] = {  # at N blocks: the identical blocks share one compiled graph
            cache: measured(report["seconds"].get("compile", 0.0) + report["seconds"].get("warmup", 0.0), 2)
            for cache, report in (("empty_cache", empty), ("warm_cache", warm))
        }
        entry["warm_compile_cache"] = {"prepare_s": measured(prepare_s, 2), "cold_start": warm}
        entry["empty_compile_cache"] = empty
        per_block = self.per_block_preparation(options["quant"])
        entry["per_block_s"] = {name: measured(seconds, 5, blocks=self.blocks) for name, seconds in per_block.items()}
        entry["both_experts_at_40_s"] = {
            name: estimated(2 * FULL_BLOCKS * seconds, f"2 experts x 40 blocks x {seconds:.5f}", 2)
            for name, seconds in per_block.items()
        }
        entry["estimates"] = {
            "cold_start_bf16_s": self.cold_start_bf16(empty, per_block),
            "cold_start_prepared_s": self.cold_start_prepared(warm, per_block),
        }
        entry["peak_host_gib"] = missing("a cold start from disk in a fresh process: bench/run.py --rows cold-start")

    def per_block_preparation(self, quant: str) -> dict[str, float]:
        """Seconds per block to fuse the turbo pair into an expert and to quantise it, timed on a fresh expert as
        Engine.prepare does them (the few tensors outside the blocks counted in: an upper bound)."""
        expert = self.expert(5)
        files = pair_files(self.turbo_dir)
        pair = parse_lora(read_safetensors(files[HIGH_NOISE]), expert, files[HIGH_NOISE].name)
        fusion_s, _ = self._timed(lambda: fuse(expert, pair, 1.0))
        quantise_s, _ = self._timed(lambda: quantize_expert(expert, quant))
        return {"fusion": fusion_s / self.blocks, "quantise": quantise_s / self.blocks}

    def cold_start_bf16(self, empty: dict, per_block: dict) -> dict:
        if "read_gb_s" not in self.rates:
            return missing("needs disk")
        seconds, sizes, n = empty["seconds"], self.model_sizes, self.blocks
        # the quantise step also runs its self-check: an expert forward before and after (levers.choose_quant)
        self_check = max(0.0, seconds.get("quantise", 0.0) - 2 * n * per_block["quantise"])
        parts = [
            ("read the bf16 copy", sizes["bf16_copy_bytes"] / 1e9 / self.rates["read_gb_s"]),
            ("turbo pair read x 40 / N", seconds.get("lora_load", 0.0) * FULL_BLOCKS / n),
            ("fusion 2 x 40 x per block", 2 * FULL_BLOCKS * per_block["fusion"]),
            ("quantise 2 x 40 x per block", 2 * FULL_BLOCKS * per_block["quantise"]),
            ("its self-check x 40 / N", self_check * FULL_BLOCKS / n),
            ("write the prepared entry", sizes["prepared_entry_bytes"] / 1e9 / self.rates["write_gb_s"]),
            ("attention check", seconds.get("attention_check", 0.0)),
            ("compile + warm-up, empty cache", seconds.get("compile", 0.0) + seconds.get("warmup", 0.0)),
        ]
        return _sum_of(parts, DEPTH_NOTE)

    def cold_start_prepared(self, warm: dict, per_block: dict) -> dict:
        if "read_gb_s" not in self.rates:
            return missing("needs disk")
        seconds, sizes = warm["seconds"], self.model_sizes
        read = sizes["prepared_entry_bytes"] + sizes["text_encoder_bytes"] + sizes["vae_bytes"]
        parts = [
            ("read the prepared entry, text encoder and VAE", read / 1e9 / self.rates["read_gb_s"]),
            ("quantised layout from zeros 2 x 40 x per block", 2 * FULL_BLOCKS * per_block["quantise"]),
            ("attention check", seconds.get("attention_check", 0.0)),
            ("compile + warm-up, warm cache", seconds.get("compile", 0.0) + seconds.get("warmup", 0.0)),
        ]
        return _sum_of(parts, DEPTH_NOTE)

    # ---- the report ------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """What several paths measured, gathered in the report (written after each path)."""
        self.report["fixed_phases"] = {
            resolution: {
                "fetch_image_s": measured(self.images[resolution][1], 4),
                "encode_mp4_s": self.mp4.get(resolution, missing("no engine path ran at this resolution")),
            }
            for resolution in self.images
        }
        self.report["elapsed_s"] = round(self.budget.used(), 1)


def follower_pipeline(spec: dict, work: Path):
    """A follower rank's pipeline (run.follow): built as rank 0's Quick builds it, same seeds and blocks."""
    args = argparse.Namespace(smoke=spec["smoke"], blocks=spec["blocks"], quality_steps=4, frames=None, disk_dir=None)
    work.mkdir(parents=True, exist_ok=True)
    quick = Quick(args, work, Budget(3600.0))
    quick.setup()
    return quick.pipeline()


def _sum_of(parts: list[tuple[str, float]], note: str) -> dict:
    formula = " + ".join(f"{name} {seconds:.1f}" for name, seconds in parts)
    return estimated(sum(seconds for _, seconds in parts), f"{formula} ({note})", digits=1)


def package_versions() -> dict[str, str | None]:
    """The versions of what the figures depend on (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def headline(name: str, entry: dict) -> str:
    """One line for a finished path."""
    if entry.get("ok") is None:
        budget = f": needs {entry['needs_s']} s, {entry['left_s']} s left" if "needs_s" in entry else ""
        return f"{name}: skipped ({entry.get('skipped')}{budget})"
    parts = [f"{name}: {'ok' if entry['ok'] else 'FAILED'} in {entry.get('seconds')} s"]
    for resolution, figures in entry.get("resolutions", {}).items():
        parts.append(
            f"{resolution} per forward {value(figures.get('per_forward_s'))} s at N, "
            f"~{value(figures.get('per_forward_s_at_40'))} s at 40; job ~{value(figures.get('job_s'))} s; "
            f"rel L2 {value(figures.get('rel_l2_vs_baseline'))}"
        )
    for case, figures in entry.get("cases", {}).items():  # the interpolation path
        peak = value(figures.get("peak_extra_gib"))
        parts.append(f"{case} {value(figures.get('seconds'))} s" + (f", peak +{peak} GiB" if peak is not None else ""))
    for resolution, figures in entry.get("resolutions", {}).items():  # a path on several ranks
        if "scaling" in figures:
            scaling = figures["scaling"]
            parts.append(
                f"{resolution} on {scaling['gpus']} GPUs {figures['layout']}: scaling efficiency "
                f"{value(scaling['efficiency_per_forward'])} per forward (1 GPU "
                f"{value(scaling['per_forward_s_1_gpu'])} s), ~{value(scaling['efficiency_job'])} job (1 GPU "
                f"~{value(scaling['job_s_1_gpu'])} s); peak GiB per rank {value(figures['peak_gib_per_rank'])}; "
                f"rel L2 vs 1 GPU {value(scaling['rel_l2_vs_1_gpu'])}"
            )
    if "error" in entry:
        parts.append(entry["error"][:300])
    return "; ".join(parts)


# ---- targets -------------------------------------------------------------------------------------------
# issue 25, on 8 x H100: key -> (path, figure, target, at most (True) or at least); judged only on 8 GPUs
GPUS_TARGETS = {
    "quality_720p_s": ("quality-fp8", "job_s", 90, True),
    "turbo_720p_s": ("turbo-fp8", "job_s", 8, True),
    "efficiency_quality_720p": ("quality-fp8", "efficiency_job", 0.75, False),
    "efficiency_turbo_720p": ("turbo-fp8", "efficiency_job", 0.75, False),
}


def gpus_targets(report: dict) -> dict:
    """The multi-GPU targets from a `--quick --gpus N` report (720p), each with `met` (None unless 8 GPUs)."""
    gpus, checks = report["gpus"], {}
    for key, (path, name, target, at_most) in GPUS_TARGETS.items():
        job = report["paths"].get(f"{path}-gpus{gpus}", {}).get("resolutions", {}).get("720p", {})
        number = value(job.get("scaling", {}).get(name) if name.startswith("efficiency") else job.get(name))
        met = None if number is None or gpus != 8 else (number <= target if at_most else number >= target)
        checks[key] = {"value": number, "target": target, "met": met}
    return checks


def targets(quick: dict) -> tuple[dict, dict]:
    """The `targets` keys (run.targets) from a quick run, and each one's basis: "measured (...)",
    "estimated: <formula>" or "not measured: <why>"."""
    paths = quick.get("paths", {})

    def job(path: str, resolution: str, key: str):
        return paths.get(path, {}).get("resolutions", {}).get(resolution, {}).get(key)

    cold = paths.get("cold-start", {})
    chosen = {
        "quality_480p_s": _fastest(job("quality-fp8-fbc", "480p", "job_s"), job("quality-fp8", "480p", "job_s")),
        "turbo_480p_s": job("turbo-fp8", "480p", "job_s"),
        "quality_720p_s": job("quality-fp8", "720p", "job_s"),
        "turbo_720p_s": job("turbo-fp8", "720p", "job_s"),
        "cold_start_prepared_s": cold.get("estimates", {}).get("cold_start_prepared_s"),
        "cold_start_bf16_s": cold.get("estimates", {}).get("cold_start_bf16_s"),
        "cold_start_peak_host_gib": cold.get("peak_host_gib"),
        "peak_vram_fp8_720p_gib": job("turbo-fp8", "720p", "peak_gib_at_40"),
        "err_compile": job("quality-bf16-compiled", "480p", "rel_l2_vs_baseline"),
        "err_fp8": job("quality-fp8", "480p", "rel_l2_vs_baseline"),
        "err_int8": job("quality-int8", "480p", "rel_l2_vs_baseline"),
    }
    blocks = f"quick, {quick.get('blocks')} of {quick.get('blocks_full')} blocks per expert"
    values, basis = {}, {}
    for key, figure in chosen.items():
        values[key] = value(figure)
        if not isinstance(figure, dict):
            basis[key] = "not measured: its path did not run"
        elif figure.get("basis") == "estimated":
            basis[key] = f"estimated: {figure['formula']}"
        elif figure.get("basis") == "measured":
            basis[key] = f"measured ({blocks})"
        else:
            basis[key] = f"not measured: {figure.get('why')}"
    return values, basis


def _fastest(*figures):
    present = [f for f in figures if value(f) is not None]
    return min(present, key=value) if present else next((f for f in figures if f is not None), None)


# ---- the command ---------------------------------------------------------------------------------------
def main(args, results: dict, write: Callable[[], None]) -> int:
    """Every path within the budget, the results file written after each; 1 when a path failed."""
    budget = Budget(args.budget_s, process_age_s())
    with tempfile.TemporaryDirectory(prefix="wan-quick-") as tmp:
        quick = Quick(args, Path(tmp), budget)
        results["quick" if quick.gpus is None else f"quick_gpus{quick.gpus}"] = quick.report
        if quick.gpus is not None:
            quick.report["gpus"] = quick.gpus
        try:
            quick.report["setup"] = {"ok": True, **quick.setup()}
        except Exception as exc:  # noqa: BLE001 - nothing can run without the shared parts: say why and stop
            quick.report["setup"] = {"ok": False, "error": _error(exc)}
            write()
            print(f"setup failed: {_error(exc)}", flush=True)
            return 2
        print(f"[{budget.used():5.0f} s] setup: {quick.report['setup']['seconds']} s", flush=True)

        def done(name: str, entry: dict) -> None:
            quick.refresh()
            print(f"[{budget.used():5.0f} s] {headline(name, entry)}", flush=True)
            write()

        run_paths(quick.paths(), budget, quick.report["paths"], done, cleanup=lambda: run._free(quick.device))
        quick.refresh()
        quick.report["packages"] = package_versions()
        write()
    import chart

    if quick.gpus is None:
        print(chart.table(results), flush=True)
    else:
        quick.report["targets"] = gpus_targets(quick.report)
        write()
        for key, check in quick.report["targets"].items():
            print(f"{key} on {quick.gpus} GPUs: {check['value']} (target {check['target']}, met {check['met']})")
    return 1 if any(entry.get("ok") is False for entry in quick.report["paths"].values()) else 0
