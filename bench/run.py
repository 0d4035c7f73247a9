"""Benchmark: the plain diffusers call against our engine in each mode, quantisation and memory plan.

    python bench/run.py --quick                          # GPU: every figure in one call of under 5 minutes, on
                                                         # a few blocks per expert, extrapolated to 40 (bench/quick.py)
    python bench/run.py --quick --smoke                  # the same code on the CPU, tiny model, seconds
    python bench/run.py --rows baseline,turbo-fp8        # GPU, real-size random weights, rows merged into
                                                         # bench/results/<gpu>.json; each call under 10 minutes
    python bench/run.py --smoke                          # the rows' code on the CPU, tiny model
    python bench/run.py --rows interpolation             # GPU: frame interpolation (bench/interpolation.py)
    python bench/run.py --gpus 8                         # 8 GPUs: turbo-fp8 and quality-fp8 on 8 ranks and on 1
    python bench/run.py --quick --gpus 8                 # the same figures on a few blocks per expert (minutes)
    python bench/run.py --smoke --gpus 2                 # the CPU: two gloo ranks, the tiny model, seconds

On a GPU it builds the real-size Wan2.2 I2V-A14B pipeline (two 14B experts with the real configs,
UMT5-XXL, the Wan VAE) with random weights directly on the GPU: no download, and a forward costs the
same whatever the weights are. Every row runs the same image, prompt and seed. Quality rows run
`--quality-steps` steps (default 4) and extrapolate to 40 (every step costs the same; the note says
so); turbo rows run their real 4 steps. Whole jobs go through the worker (`Worker.handle`: fetch,
encode, denoise, decode, MP4, store) with the MP4 written to local disk: there is no bucket on the
GPU machine, and the upload is measured by the storage tests instead.

Each row reports per-forward seconds, warm job seconds by phase, the first job's seconds, the
cold start (prepare: fusion, quantise, compile, warm-up), peak GPU memory, and the relative L2 of its
decoded frames against the baseline's (the same steps, guidance and seed through diffusers' own
`WanImageToVideoPipeline.__call__`). `targets` and `baseline` are filled from the rows present, and from
the `quick` object where no row measured a target (`targets_basis` says which: measured or estimated).

`--gpus N` runs each row's engine on N ranks (worker/ranks.py): this process is rank 0 and starts N - 1
followers (this file with `--rank-follower`), which build the identical pipeline (same seeds, same layers)
and serve each job rank 0's engine hands them. With N > 1 a row runs first on one rank (the reference), then
on N, each as the worker runs it (compiled on a GPU; on several ranks every block but the first). Stored as
`<row>-gpusN`: per resolution the layout, each rank's peak GPU memory and `scaling` (per-forward and
whole-job seconds on 1 rank and on N, efficiency = t(1) / (N x t(N))). A failure during a job on several
ranks ends this process as it ends a worker (after the rows measured so far are written).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gc
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "builder"))

from tiny_model import build_tokenizer, user_lora_state, write_lora_pair, write_tiny_model

from wan_i2v.worker.engine import HIGH_NOISE, LOW_NOISE, Engine, GenerationParams, JobLora
from wan_i2v.worker.images import fit_image, load_image
from wan_i2v.worker.netguard import UrlPolicy
from wan_i2v.worker.ranks import Ranks, serve_as_follower
from wan_i2v.worker.settings import EngineOptions, ParallelOptions, Settings

# bench/quick.py imports this module as `run`: the same module object when this file is the script.
sys.modules.setdefault("run", sys.modules[__name__])

QUALITY_STEPS_FULL = 40
SIZES = {"480p": (832, 480), "720p": (1280, 720)}
SMOKE_SIZES = {"480p": (64, 48), "720p": (96, 64)}

# Rows: name -> (mode, engine options, resolutions). "baseline" is the plain diffusers call.
ROWS = {
    "baseline": ("baseline", {}, ("480p",)),
    "quality-bf16": ("quality", {"quant": "none", "compile": "off"}, ("480p",)),
    "quality-bf16-compiled": ("quality", {"quant": "none", "compile": "dynamic"}, ("480p",)),
    # static shapes, for the dynamic-vs-static question: same row, specialised on the warm-up's shape
    "quality-bf16-compiled-static": ("quality", {"quant": "none", "compile": "static"}, ("480p",)),
    "quality-fp8": ("quality", {"quant": "fp8", "compile": "dynamic"}, ("480p", "720p")),
    # the step cache's per-step decision breaks compiled graphs: this row runs the fp8 experts eager
    "quality-fp8-fbc": ("quality", {"quant": "fp8", "compile": "off", "step_cache": "fbc:0.05"}, ("480p",)),
    "quality-int8": ("quality", {"quant": "int8", "compile": "dynamic"}, ("480p",)),
    "turbo-fp8": ("turbo", {"quant": "fp8", "compile": "dynamic", "default_mode": "turbo"}, ("480p", "720p")),
    # a job's own LoRAs on top: three rank-32 pairs (kohya layout) read, stacked and run in the hooks
    "turbo-fp8-loras": (
        "turbo",
        {"quant": "fp8", "compile": "dynamic", "default_mode": "turbo", "user_loras": 3},
        ("480p",),
    ),
    "turbo-bf16-swap": (
        "turbo",
        {"quant": "none", "compile": "off", "memory_plan": "swap", "default_mode": "turbo"},
        ("480p", "720p"),
    ),
    "quality-bf16-swap-720p": ("quality", {"quant": "none", "compile": "off", "memory_plan": "swap"}, ("720p",)),
}
SMOKE_ROWS = [
    "baseline", "quality-bf16", "quality-fp8-fbc", "quality-int8", "turbo-fp8", "turbo-fp8-loras", "turbo-bf16-swap",
    "interpolation",
]  # fmt: skip
OTHER_ROWS = ("cold-start", "interpolation")  # rows of their own code, outside ROWS
USER_LORA_RANK = 32
GPUS_ROWS = ("turbo-fp8", "quality-fp8")  # --gpus N: issue 25's targets (8 x H100, 720p) are on these
PATH_OPTIONS = ("turbo_lora", "compile_cache", "prepared_cache")  # EngineOptions' folders (a follower's spec)
RANK_TIMEOUT_S = 600.0  # a follower builds the real-size pipeline before rank 0's first collective waits on it


# ---- the real-size pipeline with random weights ------------------------------------------------------
def real_expert_config() -> dict:
    """Wan2.2 I2V-A14B's transformer/config.json (and transformer_2's, identical)."""
    return {
        "patch_size": (1, 2, 2),
        "num_attention_heads": 40,
        "attention_head_dim": 128,
        "in_channels": 36,
        "out_channels": 16,
        "text_dim": 4096,
        "freq_dim": 256,
        "ffn_dim": 13824,
        "num_layers": 40,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-6,
        "rope_max_seq_len": 1024,
    }


@torch.no_grad()
def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Weights that keep activations in range: 1/sqrt(fan_in) for matrices, ones for norms, zeros for biases."""
    generator = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
    for name, param in module.named_parameters():
        if param.dim() == 1 and "norm" in name:
            param.fill_(1.0)
        elif name.endswith("bias"):
            param.zero_()
        else:
            fan_in = param[0].numel() if param.dim() > 1 else param.numel()
            param.normal_(0.0, fan_in**-0.5, generator=generator)


def _on_device(factory, device: torch.device, seed: int, dtype: torch.dtype) -> torch.nn.Module:
    """`factory()` built where it runs and in the dtype it runs in (a 14B expert in fp32 would not fit next to
    the other), with random weights from `seed`."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            module = factory()
    finally:
        torch.set_default_dtype(previous)
    _randomise(module, seed)
    return module.eval()


def build_text_encoder(device: torch.device, layers: int | None = None):
    """UMT5-XXL as Wan2.2 ships it (24 layers; `layers` cuts it), bf16, random weights."""
    from transformers import UMT5Config, UMT5EncoderModel

    text_config = UMT5Config(
        vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=layers or 24, num_heads=64,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )  # fmt: skip
    return _on_device(lambda: UMT5EncoderModel(text_config), device, 1, torch.bfloat16)


def build_vae(device: torch.device):
    """The Wan VAE, bf16 as the worker runs it (the baseline casts it to fp32)."""
    from diffusers import AutoencoderKLWan

    return _on_device(lambda: AutoencoderKLWan(), device, 2, torch.bfloat16)


def build_expert(device: torch.device, seed: int, layers: int | None = None):
    """One WanTransformer3DModel of the real config, bf16; `layers` cuts its blocks (every width stays real)."""
    from diffusers import WanTransformer3DModel

    config = {**real_expert_config(), **({"num_layers": layers} if layers else {})}
    return _on_device(lambda: WanTransformer3DModel(**config), device, seed, torch.bfloat16)


def real_scheduler():
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=5.0
    )


def build_real_size_pipeline(device: torch.device, layers: int | None = None, experts_layers: int | None = None):
    """Wan2.2 I2V-A14B at its real size, random weights, built on `device` (no download, about 60 s).

    `layers` cuts the experts and the text encoder to that many layers (every width stays real): a check
    of this code on a machine without a GPU, not a benchmark. `experts_layers` cuts only the experts' blocks.
    """
    from diffusers import WanImageToVideoPipeline

    tokenizer = build_tokenizer()  # text content does not change the cost: ids only need to be in the vocabulary
    text_encoder = build_text_encoder(device, layers)
    vae = build_vae(device)
    experts = [build_expert(device, seed, layers or experts_layers) for seed in (3, 4)]
    return WanImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=real_scheduler(),
        transformer=experts[0], transformer_2=experts[1], boundary_ratio=0.9,
    )  # fmt: skip


def meta_expert_config():
    """The real expert's config, from an expert without storage (what the turbo pair's shapes follow)."""
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        return WanTransformer3DModel(**real_expert_config()).config


def rows_pipeline(smoke: bool, tiny: Path | None):
    """The rows' pipeline: the tiny model from its folder (smoke), or the real-size one on the GPU."""
    if smoke:
        from diffusers import WanImageToVideoPipeline

        return WanImageToVideoPipeline.from_pretrained(tiny, dtype=torch.float32)
    return build_real_size_pipeline(torch.device("cuda"))


# ---- several ranks -----------------------------------------------------------------------------------
@contextlib.contextmanager
def started_ranks(gpus: int, spec: dict) -> Iterator[Ranks]:
    """`gpus` ranks: this process and gpus - 1 followers building the pipeline `spec` names (`follow`), each
    serving the jobs of an engine of `spec["options"]`; stopped on the way out. One rank starts nothing."""
    command = [sys.executable, __file__, "--rank-follower", json.dumps(spec, default=str)]
    ranks = Ranks.start(ParallelOptions(gpus=gpus, timeout_s=RANK_TIMEOUT_S), command=command)
    try:
        yield ranks
    finally:
        if ranks.world > 1:
            ranks.shutdown()
            torch.distributed.destroy_process_group()


def follow(spec: dict) -> None:
    """A follower rank's whole life (`--rank-follower SPEC`): the same pipeline and engine as rank 0's."""

    def load(ranks: Ranks) -> Engine:
        if spec["bench"] == "quick":
            import quick

            pipe = quick.follower_pipeline(spec, Path(spec["work"]) / f"rank-{ranks.rank}")
        else:
            pipe = rows_pipeline(spec["smoke"], spec["model_path"] and Path(spec["model_path"]))
        options = {k: Path(v) if k in PATH_OPTIONS and v is not None else v for k, v in spec["options"].items()}
        return Engine.prepare(
            pipe, ranks.engine_options(EngineOptions(**options)), model="random-real-size",
            model_path=spec["model_path"] and Path(spec["model_path"]), ranks=ranks,
        )  # fmt: skip

    serve_as_follower(load)


def parallel_facts(report: dict) -> dict:
    """A job's layout and each rank's peak GPU memory (None off a GPU), from the engine's report."""
    facts = dict(report.get("parallel", {}))
    return {"peak_gib_per_rank": facts.pop("peak_memory_gb", None), "layout": facts}


def efficiency(one: float | None, many: float | None, gpus: int) -> float | None:
    """t(1) / (N x t(N)): 1.0 when N ranks are N times as fast as one."""
    return round(one / (gpus * many), 3) if one and many else None


def job_seconds(entry: dict) -> float | None:
    return entry.get("job_s", entry.get("job_s_at_40_steps"))


def gpus_summary(name: str, row: dict) -> str:
    """A line per resolution of a row on several ranks: seconds on N and on 1, efficiency, peaks, layout."""
    lines = []
    for resolution, entry in row.items():
        if not isinstance(entry, dict) or "scaling" not in entry:
            continue
        scaling = entry["scaling"]
        lines.append(
            f"  {name} {resolution}: per forward {entry['per_forward_s']} s (1 GPU {scaling['per_forward_s_1_gpu']} s), "
            f"job {job_seconds(entry)} s (1 GPU {scaling['job_s_1_gpu']} s), scaling efficiency "
            f"{scaling['efficiency_per_forward']} per forward / {scaling['efficiency_job']} job, peak GiB per rank "
            f"{entry['peak_gib_per_rank']}, layout {entry['layout']}"
        )
    return "\n".join(lines) or f"  {name}: no job ran on {row.get('gpus')} ranks ({row.get('error', '')[:300]})"


def gpus_row(bench: Bench, name: str, gpus: int) -> dict:
    """Row `name` on one rank, then on `gpus`: the N-rank row with its scaling."""
    mode, options, resolutions = ROWS[name]
    reference, frames = {}, {}
    if gpus > 1:
        reference = bench.engine_row(mode, options, resolutions)
        frames = dict(bench.last_frames)
    row = bench.engine_row(mode, options, resolutions, gpus=gpus)
    row["gpus"] = gpus
    for resolution in resolutions:
        entry, one = row.get(resolution, {}), reference.get(resolution, row.get(resolution, {}))
        if "error" in entry or "error" in one:
            continue
        entry.update(parallel_facts(entry["engine"]))
        entry["scaling"] = {
            "gpus": gpus,
            "per_forward_s_1_gpu": one["per_forward_s"],
            "job_s_1_gpu": job_seconds(one),
            "efficiency_per_forward": efficiency(one["per_forward_s"], entry["per_forward_s"], gpus),
            "efficiency_job": efficiency(job_seconds(one), job_seconds(entry), gpus),
            "rel_l2_vs_1_gpu": _relative_l2(bench.last_frames[resolution], frames[resolution]) if frames else 0.0,
        }
    if gpus > 1:
        row["reference_1_gpu_cold_start_s"] = reference["cold_start_s"]
    return row


# ---- measuring ---------------------------------------------------------------------------------------
def _image(width: int, height: int) -> str:
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], -1)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _decoded(uri: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")


def _peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _relative_l2(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return round(float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)), 4)


def _free(device: torch.device) -> None:
    """Drop what the last row compiled and built: compiled blocks hold their modules in reference cycles."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def write_user_loras(work: Path, config, count: int, rank: int) -> list[JobLora]:
    """`count` random pairs of the experts' size, written once as .safetensors files as a job would bring them."""
    from safetensors.torch import save_file

    loras = []
    for index in range(count):
        for offset, (side, expert) in enumerate((("high", HIGH_NOISE), ("low", LOW_NOISE))):
            path = work / f"user-lora-{index}-{side}.safetensors"
            if not path.is_file():
                save_file(user_lora_state(config, "kohya", rank, seed=20 + 2 * index + offset, std=0.01), str(path))
            loras.append(JobLora(expert, path, 0.8, f"loras[{index}].{side}"))
    return loras


def job_params(mode: str, size: tuple[int, int], frames: int, steps: int) -> GenerationParams:
    """The job every row and path runs: the same prompt and seed; guidance 3.5 on both experts, 1 for turbo."""
    width, height = size
    guidance = 3.5 if mode != "turbo" else 1.0
    return GenerationParams(
        prompt="a red fox runs through fresh snow", negative_prompt="blurry, static", width=width, height=height,
        num_frames=frames, steps=steps, guidance_scale=guidance, guidance_scale_2=guidance, shift=5.0,
        seed=42, mode="turbo" if mode == "turbo" else "quality",
    )  # fmt: skip


class Bench:
    def __init__(self, smoke: bool, quality_steps: int, frames: int, work: Path):
        self.smoke, self.quality_steps, self.frames, self.work = smoke, quality_steps, frames, work
        self.device = torch.device("cpu" if smoke else "cuda")
        self.sizes = SMOKE_SIZES if smoke else SIZES
        self.tiny = write_tiny_model(work / "tiny") if smoke else None
        self.turbo_dir = None if smoke else work / "turbo-lora"
        self.reference: dict[tuple, np.ndarray] = {}
        self.last_frames: dict[str, np.ndarray] = {}  # resolution -> the last engine row's frames

    def pipeline(self):
        return rows_pipeline(self.smoke, self.tiny)

    def engine_options(self, options: dict) -> dict:
        """A row's engine options (the smoke run: fp8 -> int8, nothing compiled), its turbo pair written."""
        options = {"device": str(self.device), "turbo_lora": self.turbo_dir, "warmup": "auto", **options}
        if self.smoke:
            options.pop("turbo_lora")
            options.update(compile="off", warmup="off")
            if options.get("quant") == "fp8":
                options["quant"] = "int8"  # no fp8 on the CPU: the smoke run takes the int8 path instead
        elif not self.turbo_dir.is_dir():
            write_lora_pair(self.turbo_dir, meta_expert_config(), rank=64, seed=10, std=0.002)
        return options

    def user_loras(self, config, count: int) -> list[JobLora]:
        return write_user_loras(self.work, config, count, 4 if self.smoke else USER_LORA_RANK)

    def params(self, mode: str, resolution: str, steps: int) -> GenerationParams:
        return job_params(mode, self.sizes[resolution], self.frames, steps)

    def baseline(self, resolutions) -> dict:
        """The plain diffusers call, everything resident (what a user of diffusers gets), quality and turbo shape."""
        pipe = self.pipeline()
        pipe.set_progress_bar_config(disable=True)
        if self.device.type == "cuda":
            pipe.vae.to(torch.float32)
            pipe.to(self.device)
        result = {}
        for resolution in resolutions:
            for mode, steps in (("quality", self.quality_steps), ("turbo-shape", 4)):
                p = self.params("quality" if mode == "quality" else "turbo", resolution, steps)
                _reset_peak(self.device)
                started = time.perf_counter()
                try:
                    video = pipe(
                        image=_decoded(_image(p.width, p.height)), prompt=p.prompt, negative_prompt=p.negative_prompt,
                        height=p.height, width=p.width, num_frames=p.num_frames, num_inference_steps=p.steps,
                        guidance_scale=p.guidance_scale, guidance_scale_2=p.guidance_scale_2,
                        generator=torch.Generator("cpu").manual_seed(p.seed), output_type="np",
                    ).frames[0]  # fmt: skip
                except torch.OutOfMemoryError:
                    result[f"{mode}_{resolution}"] = {"error": "out of memory"}
                    _free(self.device)
                    continue
                seconds = time.perf_counter() - started
                frames = (np.asarray(video) * 255).round().astype(np.uint8)
                if mode == "quality":
                    self.reference[(resolution, steps)] = frames
                forwards = steps * (2 if p.guidance_scale > 1 else 1)
                result[f"{mode}_{resolution}"] = {
                    "steps": steps, "forwards": forwards, "seconds": round(seconds, 2),
                    "per_forward_s": round(seconds / forwards, 3),  # an upper bound: includes encode and decode
                    "peak_gib": _peak_gib(self.device),
                }  # fmt: skip
        del pipe
        _free(self.device)
        return result

    def engine_row(self, mode: str, options: dict, resolutions, gpus: int = 1) -> dict:
        """The row's engine prepared and its jobs run, on `gpus` ranks (this process and its followers)."""
        options = self.engine_options(options)
        count = options.pop("user_loras", 0)
        spec = {"bench": "rows", "smoke": self.smoke, "model_path": self.tiny, "options": options, "work": self.work}
        with started_ranks(gpus, spec) as ranks:
            return self._engine_row(mode, options, resolutions, count, ranks)

    def _engine_row(self, mode: str, options: dict, resolutions, count: int, ranks) -> dict:
        pipe = self.pipeline()
        loras = self.user_loras(pipe.transformer.config, count)
        _reset_peak(self.device)
        started = time.perf_counter()
        engine = Engine.prepare(
            pipe, ranks.engine_options(EngineOptions(**options)), model="random-real-size", model_path=self.tiny,
            ranks=ranks,
        )  # fmt: skip
        row = {"cold_start_s": round(time.perf_counter() - started, 2), "cold_start": engine.cold_start.as_dict()}
        for resolution in resolutions:
            steps = 4 if mode == "turbo" else self.quality_steps
            p = self.params(mode, resolution, steps)
            uri = _image(p.width, p.height)
            began = time.perf_counter()
            image = fit_image(load_image("image", uri, UrlPolicy()), (p.width, p.height))
            fetch_s = time.perf_counter() - began
            try:
                _reset_peak(self.device)
                began = time.perf_counter()
                engine.generate(p, image, loras=loras)
                first_s = time.perf_counter() - began
                generated = engine.generate(p, image, loras=loras)
            except Exception as exc:  # noqa: BLE001 - out of memory, most likely: the row says so, the next runs
                row[resolution] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                _free(self.device)
                continue
            from wan_i2v.worker.video import encode_mp4

            began = time.perf_counter()
            encode_mp4(generated.frames, self.work / "bench.mp4", 16, crf=18)
            mp4_s = time.perf_counter() - began
            phases = {**generated.timings, "fetch_image": round(fetch_s, 3), "encode_mp4": round(mp4_s, 3)}
            forwards = len(generated.experts) * (2 if p.guidance_scale > 1 else 1)
            parallel = parallel_facts(generated.report)
            entry = {
                "steps_run": steps,
                "per_forward_s": round(generated.timings["denoise"] / forwards, 3),
                "warm_job_phases_s": phases,
                "first_job_s": round(first_s + fetch_s + mp4_s, 2),
                "peak_gib": (parallel["peak_gib_per_rank"] or [None])[0],  # the engine's own (it resets the peak)
                "engine": generated.report,
            }
            self.last_frames[resolution] = generated.frames
            if loras:
                entry["user_loras"] = (
                    f"{len(loras) // 2} pairs, rank {4 if self.smoke else USER_LORA_RANK}, strength 0.8"
                )
            if mode == "quality":
                fixed = sum(v for k, v in phases.items() if k != "denoise")
                entry["job_s_at_40_steps"] = round(fixed + generated.timings["denoise"] / steps * QUALITY_STEPS_FULL, 2)
                entry["note"] = f"ran {steps} steps; job_s_at_40_steps extrapolates the denoise per step to 40"
            else:
                entry["job_s"] = round(sum(phases.values()), 2)
                if not self.smoke and not loras:  # and once through the worker itself, the whole job as users get it
                    from wan_i2v.worker.job import Worker

                    worker = Worker(engine, Settings(model="random-real-size", output_dir=self.work / "videos"))
                    answer = worker.handle(
                        {
                            "id": "bench",
                            "input": {
                                "image": uri,
                                "prompt": p.prompt,
                                "mode": "turbo",
                                "resolution": resolution,
                                "frame_num": p.num_frames,
                                "seed": p.seed,
                            },
                        }
                    )
                    entry["worker_job"] = answer.get("timings") or answer
                    del worker
            reference = self.reference.get((resolution, steps))
            if reference is not None and mode == "quality":
                entry["rel_l2_vs_baseline"] = _relative_l2(generated.frames, reference)
            row[resolution] = entry
        del engine, pipe
        _free(self.device)
        return row


def gpu_name() -> str:
    if not torch.cuda.is_available():
        return "cpu-smoke"
    return torch.cuda.get_device_name(0).lower().replace(" ", "-")


def _fastest(*values):
    measured = [v for v in values if isinstance(v, (int, float))]
    return min(measured) if measured else None


def targets(rows: dict) -> dict:
    def get(row, resolution, key):
        return rows.get(row, {}).get(resolution, {}).get(key)

    cold = rows.get("cold-start", {}).get("runs", {})
    return {
        "quality_480p_s": _fastest(
            get("quality-fp8-fbc", "480p", "job_s_at_40_steps"), get("quality-fp8", "480p", "job_s_at_40_steps")
        ),
        "turbo_480p_s": get("turbo-fp8", "480p", "job_s"),
        "quality_720p_s": get("quality-fp8", "720p", "job_s_at_40_steps"),
        "turbo_720p_s": get("turbo-fp8", "720p", "job_s"),
        "cold_start_prepared_s": cold.get("prepared_cache_compile_warm", {}).get("ready_s"),
        "cold_start_bf16_s": cold.get("bf16_copy_nothing_cached", {}).get("ready_s"),
        "cold_start_peak_host_gib": max(
            (run["peak_host_rss_gib"] for run in cold.values() if "peak_host_rss_gib" in run), default=None
        ),
        "peak_vram_fp8_720p_gib": get("turbo-fp8", "720p", "peak_gib"),
        "err_compile": get("quality-bf16-compiled", "480p", "rel_l2_vs_baseline"),
        "err_fp8": get("quality-fp8", "480p", "rel_l2_vs_baseline"),
        "err_int8": get("quality-int8", "480p", "rel_l2_vs_baseline"),
    }


GIB = 2**30
COLD_START_RUNS = (
    # (label, what is cached when it starts): the first run writes the prepared cache and the compile cache
    ("bf16_copy_nothing_cached", "the bf16 copy only"),
    ("prepared_cache_compile_warm", "the prepared experts (quantised, turbo fused) and the compile cache"),
)


def cold_start_row(work: Path, smoke: bool, layers: int | None) -> dict:
    """`Engine.load` of a turbo fp8 worker in a fresh process, twice: from the worker's bf16 copy with nothing
    cached, then from the prepared cache with the compile cache warm. Each run reports its seconds by step,
    the bytes it read from the model folder and the cache, its peak host memory, and the prepared cache state.

    On a GPU the copy is the real-size pipeline with random weights, written to disk as `fetch_weights.py`
    writes it (bf16, the fp32-kept modules in fp32); `layers` cuts both experts to fewer blocks where the disk
    is short (every width stays real), and the row says so. The page cache is dropped before each run when the
    machine lets us (`page_cache_dropped`); otherwise the reads come from memory, not the disk."""
    model, caches = work / "cold-start-model", work / "cold-start-caches"
    layers = write_cold_start_copy(model, smoke, layers)
    result: dict = {"layers": layers, "model_bytes": _folder_bytes(model), "runs": {}}
    for label, cached in COLD_START_RUNS:
        dropped = False if smoke else _drop_page_cache()  # the smoke run checks the code, not the disk
        out = subprocess.run(
            [sys.executable, __file__, "--cold-start-child", str(model), str(caches), *(["--smoke"] if smoke else [])],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"cold-start child failed ({out.returncode}): {out.stderr[-2000:]}")
        run = json.loads(out.stdout.strip().splitlines()[-1])
        result["runs"][label] = {"cached": cached, "page_cache_dropped": dropped, **run}
    result["cache_bytes"] = _folder_bytes(caches / "prepared")
    return result


def write_cold_start_copy(dest: Path, smoke: bool, layers: int | None) -> int:
    """The worker's bf16 copy on disk; returns the blocks per expert it has."""
    from wan_i2v.worker.components import cast_as_loaded

    if smoke:
        write_tiny_model(dest)
        pipe = None
    else:
        if layers is None:  # as many blocks as the disk holds: the copy, the fp8 cache, 10% to spare
            free = shutil.disk_usage(dest.parent).free * 0.9
            per_layer, fixed = 2.15e9, 12.5e9  # two bf16 blocks + one fp8 block; text encoder, VAE, embeddings
            layers = max(1, min(40, int((free - fixed) / per_layer)))
        pipe = build_real_size_pipeline(torch.device("cuda"), experts_layers=layers)
        write_lora_pair(dest / "turbo-lora", pipe.transformer.config, rank=64, seed=10, std=0.002)
    if pipe is None:
        from diffusers import WanImageToVideoPipeline

        pipe = WanImageToVideoPipeline.from_pretrained(dest, dtype=torch.float32)
        layers = pipe.transformer.config.num_layers
    for expert in (pipe.transformer, pipe.transformer_2):
        cast_as_loaded(expert, torch.bfloat16)
    pipe.save_pretrained(dest, safe_serialization=True, max_shard_size="5GB")
    (dest / "provenance.json").write_text(json.dumps({"repo": "random real-size (bench)", "dtype": "bf16"}))
    del pipe
    _free(torch.device("cuda") if not smoke else torch.device("cpu"))
    return layers


def cold_start_child(model: Path, caches: Path, smoke: bool) -> None:
    from wan_i2v.worker.hostmem import resident_bytes

    before = _io_read_bytes()
    options = EngineOptions(
        default_mode="turbo",
        quant="int8" if smoke else "fp8",
        compile="off" if smoke else "dynamic",
        compile_cache=caches / "torch-compile",
        prepared_cache=caches / "prepared",
    )
    started = time.perf_counter()
    engine = Engine.load(str(model), options)
    seconds = time.perf_counter() - started
    report = engine.cold_start.as_dict()
    state = report["prepared_cache"]
    read = [model / "text_encoder", model / "vae"]
    read += [caches / "prepared"] if state == "hit" else [model / "transformer", model / "transformer_2"]
    print(json.dumps({
        "ready_s": round(seconds, 2),
        "seconds": report["seconds"],
        "prepared_cache": state,
        "files_read_bytes": sum(_folder_bytes(p) for p in read),
        "storage_read_bytes": _io_read_bytes() - before,  # from the disk, past the page cache
        "peak_host_rss_gib": round(report["peak_host_rss_bytes"] / GIB, 2),
        "host_rss_before_gib": round(report["host_rss_before_bytes"] / GIB, 2),
        "host_rss_ready_gib": round((resident_bytes() or 0) / GIB, 2),
        "memory_plan": report["memory_plan"].split(" ")[0],
    }))  # fmt: skip


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0


def _io_read_bytes() -> int:
    with open("/proc/self/io") as io_stats:
        return next(int(line.split()[1]) for line in io_stats if line.startswith("read_bytes:"))


def _drop_page_cache() -> bool:
    """Make the next run read from the disk (root only; a container may refuse)."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def combined_targets(results: dict) -> tuple[dict, dict]:
    """The targets and how each was obtained: a row's figure (40 blocks, measured) where a row has one, else the
    quick run's (`quick.targets`: measured on a few blocks, or estimated with its formula)."""
    from_rows = targets(results.get("rows", {}))
    from_quick: tuple[dict, dict] = ({}, {})
    if "quick" in results:
        import quick

        from_quick = quick.targets(results["quick"])
    values, basis = {}, {}
    for key, value in from_rows.items():
        if value is not None:
            values[key], basis[key] = value, "measured"
        else:
            values[key] = from_quick[0].get(key)
            basis[key] = from_quick[1].get(key, "not measured")
    return values, basis


def _write(out: Path, results: dict, args, argv) -> None:
    results.update(
        gpu=gpu_name(),
        smoke=args.smoke,
        torch=torch.__version__,
        python=platform.python_version(),
        frames=args.frames or (5 if args.smoke else 81),
        quality_steps_run=args.quality_steps,
        command=" ".join(["python", "bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
    )
    results["targets"], results["targets_basis"] = combined_targets(results)
    results["baseline"] = results["rows"].get("baseline") or results.get("quick", {}).get("paths", {}).get(
        "baseline", {}
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, tiny sizes: checks the benchmark runs")
    parser.add_argument(
        "--quick", action="store_true", help="every figure in one call (bench/quick.py): a few blocks per expert, "
        "extrapolated to 40, within --budget-s"
    )  # fmt: skip
    parser.add_argument(
        "--blocks", type=int, default=None, help="--quick: blocks per expert that run, of 40 (default 4; smoke 2)"
    )
    parser.add_argument(
        "--budget-s", type=float, default=270, help="--quick: seconds from process start; a path that would not "
        "fit is skipped, and one still running 10 s past it is stopped (default 270)"
    )  # fmt: skip
    parser.add_argument(
        "--disk-dir", type=Path, default=None, help="--quick: where the disk read test writes its file "
        "(default: the temporary directory)"
    )  # fmt: skip
    parser.add_argument(
        "--rows", default=None, help=f"comma-separated rows (default: all); of {', '.join([*ROWS, *OTHER_ROWS])}"
    )
    parser.add_argument("--frames", type=int, default=None, help="frames per video (default 81; smoke 5)")
    parser.add_argument(
        "--quality-steps", type=int, default=4, help="steps the quality rows run before extrapolating to 40"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="results file (default bench/results/<gpu>.json, merged)"
    )
    parser.add_argument(
        "--cold-start-layers", type=int, default=None, help="blocks per expert in the cold-start row's copy "
        "(default: 40, or fewer where the disk is short)"
    )  # fmt: skip
    parser.add_argument(
        "--rife-weights", type=Path, default=None, help="interpolation: RIFE's weights (a file, or a folder with "
        "one); without them (nor --model-dir) the row times random weights and gives no RIFE margin"
    )  # fmt: skip
    parser.add_argument(
        "--model-dir", type=Path, default=None, help="interpolation: a model folder; RIFE's weights are looked "
        "for in its interpolation/ as the worker looks"
    )  # fmt: skip
    parser.add_argument(
        "--gpus", type=int, default=None, help="the engine rows (or --quick's figures) on N ranks, and on 1 for the "
        f"scaling efficiency; rows <row>-gpusN (default rows: {', '.join(GPUS_ROWS)}). Default: 1 rank, no such rows"
    )  # fmt: skip
    parser.add_argument("--cold-start-child", type=Path, nargs=2, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rank-follower", default=None, help=argparse.SUPPRESS)  # a follower's spec (JSON)
    args = parser.parse_args(argv)
    if args.cold_start_child is not None:
        cold_start_child(*args.cold_start_child, smoke=args.smoke)
        return 0
    if args.rank_follower is not None:
        follow(json.loads(args.rank_follower))
        return 0
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no GPU here: run with --smoke for the CPU check, or on a GPU machine")
    if args.quick and args.rows:
        parser.error("--quick runs every path itself: leave out --rows")
    if args.blocks is not None and args.blocks < 1:
        parser.error("--blocks: 1 or more")
    if args.gpus is not None:
        most = torch.cuda.device_count() if torch.cuda.is_available() and not args.smoke else None  # gloo: any
        if args.gpus < 1 or (most is not None and args.gpus > most):
            parser.error(f"--gpus {args.gpus}: 1 or more" + (f", at most the {most} GPUs here" if most else ""))
        rows = [n for n in (args.rows or "").split(",") if n]
        single = [n for n in rows if n not in ROWS or ROWS[n][0] == "baseline" or ROWS[n][1].get("step_cache")]
        if single:
            parser.error(f"--gpus: rows {single} run on one GPU only (the baseline, its own code, or a step cache)")
    out = args.out or ROOT / "bench" / "results" / f"{gpu_name()}.json"
    results = json.loads(out.read_text()) if out.is_file() else {"rows": {}}
    results.setdefault("rows", {})
    if args.quick:
        import quick

        print(f"results: {out}", flush=True)  # bench/gpu-check.sh finds the file here, even after a crash
        return quick.main(args, results, lambda: _write(out, results, args, argv))
    return run_rows(args, argv, out, results)


def run_rows(args, argv, out: Path, results: dict) -> int:
    names = args.rows.split(",") if args.rows else (SMOKE_ROWS if args.smoke else [*ROWS, *OTHER_ROWS])
    if args.gpus is not None and not args.rows:
        names = list(GPUS_ROWS)
    unknown = [n for n in names if n not in ROWS and n not in OTHER_ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; known: {', '.join([*ROWS, *OTHER_ROWS])}")
    frames_file = out.with_suffix(".baseline-frames.npz")  # the baseline's frames, for later calls' relative L2
    with tempfile.TemporaryDirectory(prefix="wan-bench-") as tmp:
        bench = Bench(args.smoke, args.quality_steps, args.frames or (5 if args.smoke else 81), Path(tmp))
        if frames_file.is_file() and "baseline" not in names:
            with np.load(frames_file) as saved:
                bench.reference = {(k.split("-")[0], int(k.split("-")[1])): saved[k] for k in saved.files}
        elif "baseline" not in names and any(ROWS[n][0] == "quality" for n in names if n in ROWS):
            print("note: no baseline frames yet (run the baseline row first): no relative L2", file=sys.stderr)
        for name in names:
            started = time.perf_counter()
            _free(bench.device)
            try:
                if name == "cold-start":
                    row = cold_start_row(Path(tmp), args.smoke, args.cold_start_layers)
                elif name == "interpolation":
                    import interpolation

                    row = interpolation.row(bench.sizes, bench.frames, args.smoke, args.rife_weights, args.model_dir)
                elif name == "baseline":
                    row = bench.baseline(("480p",) if args.smoke else ("480p", "720p"))
                    out.parent.mkdir(parents=True, exist_ok=True)
                    np.savez_compressed(frames_file, **{f"{r}-{n}": f for (r, n), f in bench.reference.items()})
                elif args.gpus is not None:
                    row = gpus_row(bench, name, args.gpus)
                else:
                    mode, options, resolutions = ROWS[name]
                    row = bench.engine_row(mode, options, resolutions)
            except Exception as exc:  # one row's failure (out of memory, say) is its result; the others still run
                if args.smoke:
                    raise
                row = {"error": f"{type(exc).__name__}: {str(exc)[:1000]}"}
            row["bench_s"] = round(time.perf_counter() - started, 1)
            name = name if args.gpus is None else f"{name}-gpus{args.gpus}"
            results["rows"][name] = row
            print(f"{name}: {json.dumps(row, default=str)[:400]}", flush=True)
            if args.gpus is not None:
                print(gpus_summary(name, row), flush=True)
            _write(out, results, args, argv)  # after every row: a later crash loses nothing measured
    _write(out, results, args, argv)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
