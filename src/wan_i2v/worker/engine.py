"""The Wan2.2 I2V-A14B pipeline, prepared once per worker and run per job.

`Engine.load` finds the weights and `Engine.prepare` makes them fast, each step timed in the
cold-start report: the turbo LoRA pair is read and, when turbo is the default mode, fused into the
experts; the experts are quantised (fp8/int8); a memory plan places the models; the attention backend
is checked; the repeated blocks are compiled against a persistent cache and warmed up. Each of these
levers is self-checked and steps down its ladder when it fails (levers.py); the report lists the fallbacks.

`generate` follows the steps of diffusers' WanImageToVideoPipeline.__call__ with changes that matter
to a service: each expert's guidance is honoured on its own (diffusers decides classifier-free
guidance from the high-noise scale alone, so `guidance_scale=1, guidance_scale_2=3.5` would silently
drop guidance, and a scale of 1 would still pay for the unconditional pass); text embeddings come
from a cache; turbo jobs run the distilled Euler schedule; a job of the mode that is not fused runs
with the turbo LoRA attached (added, or taken back out) for that job only, and a job's own LoRAs are
attached for that job only, on top of either mode; and every phase is timed.
The engine knows nothing of buckets, jobs or HTTP.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import InputError, ModelNotFoundError, OutOfMemoryError, SettingsError
from ..files import file_sha256
from ..schema import FRAME_MIN, MODES, RESOLUTION_AREAS, WAN_NEGATIVE_PROMPT, Phase
from .attention import AttentionChoice, apply_attention, pick_attention
from .coldstart import ColdStart
from .compile import CompileCache, pick_compile
from .components import EXPERT_FOLDERS, is_skeleton, load_expert, load_text_encoder, materialise, skeleton_pipeline
from .levers import Ladder, Probe, below, choose_compile, choose_fusion, choose_quant
from .lora import Adapter, ExpertLora, parameter_shapes, parse_lora, read_safetensors
from .memory import MemoryPlan, Parking, Placement, align_storage, choose_plan, module_bytes, quantised_bytes
from .model_config import check_model_configs
from .prepared_cache import FORMAT as CACHE_FORMAT
from .prepared_cache import PreparedCache, package_versions, weights_identity
from .prompt_cache import PromptCache
from .quantize import count_quantisable, pick_quant, quantize_expert
from .ranks import Ranks
from .settings import EngineOptions, parse_step_cache
from .timing import timed
from .turbo import load_pair, turbo_scheduler
from .weights import Revision, find_model, find_pair, missing_message

log = logging.getLogger(__name__)

HIGH_NOISE, LOW_NOISE = "high_noise", "low_noise"
TEXT_TOKENS = 512  # Wan2.2 text_len
TEXT_ENCODER = "text_encoder"

# Receives the phase the engine enters (text encode, condition encode, VAE decode), and for each
# denoising step Phase.DENOISE with step=i, total_steps=n, expert="high_noise" | "low_noise".
ProgressCallback = Callable[..., None]


@dataclass(frozen=True)
class GenerationParams:
    prompt: str
    negative_prompt: str
    width: int
    height: int
    num_frames: int
    steps: int
    guidance_scale: float
    guidance_scale_2: float
    shift: float
    seed: int
    mode: str = "quality"


@dataclass(frozen=True)
class JobLora:
    """One LoRA file of a job, for one expert."""

    expert: str  # HIGH_NOISE or LOW_NOISE
    path: Path
    scale: float
    label: str  # how errors name it: "loras[0].high (style.safetensors)"


@dataclass
class Generated:
    video: torch.Tensor  # (num_frames, height, width, 3) uint8 RGB, on the device that decoded it
    timings: dict[str, float] = field(default_factory=dict)  # seconds per Phase value, and mode_switch
    experts: list[str] = field(default_factory=list)  # the expert that ran each step
    report: dict = field(default_factory=dict)  # how it ran (schema.EngineReport)

    @cached_property
    def frames(self) -> np.ndarray:
        """The frames in host memory, as the MP4 encoder takes them."""
        return self.video.cpu().numpy()


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _free_bytes(device: torch.device) -> int:
    """Free GPU memory plus what this process already holds (a pipeline built on the GPU counts as free)."""
    if device.type != "cuda":
        return 0
    free, _total = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_allocated(device)


def _compute_dtype(device: torch.device) -> torch.dtype:
    """The experts' and text embeddings' dtype: bf16 on a GPU, fp32 on the CPU (tests)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _vae_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        return _compute_dtype(device)
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[requested]


def _predict(model, model_input: torch.Tensor, timestep: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    return model(hidden_states=model_input, timestep=timestep, encoder_hidden_states=text_embeds, return_dict=False)[0]


class Engine:
    """One prepared pipeline. Built once per worker; `generate` leaves it as it found it."""

    def __init__(
        self,
        pipe,
        device: torch.device,
        compute_dtype: torch.dtype,
        model: str,
        options: EngineOptions,
        turbo_files: dict[str, Path] | None,
        turbo: dict[str, ExpertLora],
        adapters: dict[str, Adapter],
        shapes: dict[str, dict[str, tuple[int, ...]]],
        turbo_misses: list[str],
        placement: Placement,
        quant: str,
        attention: AttentionChoice,
        compiled: str,
        fused: dict[str, bool],
        ladder: Ladder,
        cold_start: ColdStart,
        revision: Revision | None = None,
        model_path: Path | None = None,
        ranks: Ranks | None = None,
    ):
        self.pipe, self.device, self.compute_dtype = pipe, device, compute_dtype
        self.model, self.options = model, options
        self.default_mode = options.default_mode
        self.experts = {HIGH_NOISE: pipe.transformer, LOW_NOISE: pipe.transformer_2}
        self.shapes = shapes  # each expert's parameter shapes, for checking a job's LoRAs against parked experts
        self.turbo_files, self.turbo, self.turbo_misses = turbo_files, turbo, turbo_misses
        self.adapters = adapters
        self.placement, self.quant, self.attention, self.compiled = placement, quant, attention, compiled
        self.parked = placement.parked  # what waits in host memory between uses (the same dict, kept up to date)
        self.fused = fused  # per expert: whether the turbo pair is in its weights
        self.ladder = ladder  # the cold start's fallbacks; a step down after it (out of memory) is added here
        self._out_of_memory: tuple[tuple[int, int], int] = ((0, 0), 0)  # (width, height), failures in a row
        self._step_down_due: str | None = None
        self.prompts = PromptCache(options.prompt_cache)
        self.step_cache = parse_step_cache(options.step_cache)
        self.cold_start = cold_start
        self.revision = revision or Revision()  # where the weights came from (each job's `model_revision`)
        self.model_path = model_path  # the weights' folder (None for a pipeline built in memory)
        self.ranks = ranks or Ranks()  # the other GPUs of this worker, if any (ranks.py)

    @property
    def plan(self) -> MemoryPlan:
        return self.placement.plan

    # ---- cold start ---------------------------------------------------------------------------------
    @property
    def tokens_multiple(self) -> int:
        """What each frame's token count must divide by: the ranks that split it (framing.output_size)."""
        return self.ranks.layout.context

    @classmethod
    def load(cls, model: str, options: EngineOptions | None = None, ranks: Ranks | None = None) -> Engine:
        options = options or EngineOptions()
        cold = ColdStart()
        with cold.step("load"):
            found = find_model(model, options.model_places)
            check_model_configs(found.path)  # before any weight is read
            device = pick_device(options.device)
            pipe = skeleton_pipeline(found.path, _compute_dtype(device), _vae_dtype(options.vae_dtype, device))
        log.info("weights: %s (%s): %s", found.path, found.source, found.revision.line())
        cold.facts["weights"] = f"{found.source}: {found.path}"
        cold.facts["model_revision"] = found.revision.as_dict()
        return cls.prepare(
            pipe, options, model=model, model_path=found.path, cold=cold, revision=found.revision, ranks=ranks
        )

    @classmethod
    def prepare(
        cls,
        pipe,
        options: EngineOptions,
        model: str,
        model_path: Path | None = None,
        cold: ColdStart | None = None,
        revision: Revision | None = None,
        ranks: Ranks | None = None,
    ) -> Engine:
        """Make a pipeline ready to serve. Its experts and text encoder may be meta-device stand-ins
        (`components.skeleton_pipeline`, loaded here one at a time from `model_path`) or real modules (bench/
        builds them on the GPU)."""
        cold = cold or ColdStart()
        ranks = ranks or Ranks()
        if pipe.transformer is None or pipe.transformer_2 is None or pipe.config.boundary_ratio is None:
            raise ModelNotFoundError(
                f"WAN_MODEL={model!r} is not a two-expert Wan2.2 I2V pipeline (needs transformer, "
                "transformer_2 and boundary_ratio)"
            )
        if "flow_shift" not in pipe.scheduler.config:
            raise ModelNotFoundError(
                f"WAN_MODEL={model!r}: scheduler {type(pipe.scheduler).__name__} has no flow_shift"
            )
        pipe.set_progress_bar_config(disable=True)
        device = pick_device(options.device)
        quant = pick_quant(options.quant, device)
        how = pick_compile(options.compile, device)
        _refuse_on_ranks(ranks, options)
        if parse_step_cache(options.step_cache) is not None and how != "off":
            # FirstBlockCache decides per step in Python (a graph break), which whole-block compiling refuses.
            if options.compile != "auto":
                raise SettingsError(
                    f"WAN_STEP_CACHE={options.step_cache} cannot run with WAN_COMPILE={options.compile}: the cache's "
                    "per-step decision breaks the compiled graph; set WAN_COMPILE=off (or auto) or WAN_STEP_CACHE=none"
                )
            how = "off"
            log.warning("WAN_STEP_CACHE=%s: compiling turned off (the two do not combine)", options.step_cache)
        experts = {HIGH_NOISE: pipe.transformer, LOW_NOISE: pipe.transformer_2}
        dtype = pipe.transformer.dtype  # what the experts compute in (bf16 on a GPU); read before quantising
        shapes = {side: parameter_shapes(expert) for side, expert in experts.items()}  # before parking

        files, misses = find_pair(options.turbo_lora, model_path, options.model_places)
        if options.default_mode == "turbo" and files is None:
            raise SettingsError(f"WAN_DEFAULT_MODE=turbo: {missing_message(misses)}")
        turbo = None
        if files is not None:
            with cold.step("lora_load"):
                turbo = load_pair(files, experts)
        expert_bytes = quantised_bytes(pipe.transformer, quant)  # on the device, as prepared
        sizes = (expert_bytes, module_bytes(pipe.text_encoder), module_bytes(pipe.vae), pipe.vae.dtype.itemsize)
        free = _free_bytes(device)
        ladder = Ladder(options.faults)
        placement = Placement(
            choose_plan(options.memory_plan, device, free, *sizes),
            device,
            lambda name: choose_plan(name, device, free, *sizes),  # a step down the place ladder
            ladder,
        )
        # The prepared cache serves experts loaded from a folder (not bench/'s, built in memory).
        cache = PreparedCache(None)
        if model_path is not None and options.prepared_cache is not None and all(map(is_skeleton, experts.values())):
            cache = PreparedCache(
                options.prepared_cache,
                _cache_inputs(model_path, revision, options, files, quant, dtype, device),
                keep=options.prepared_cache_keep,
            )
        with cold.step("prepared_cache"):
            hit = cache.lookup(tuple(experts))
            # every rank reads the same entry; rank 0 alone writes it (N copies would fill a volume N times)
            writer = None if hit or not ranks.leader else cache.writer(2 * expert_bytes)
        # One expert at a time: loaded straight to the device (or restored from the prepared cache), the default
        # mode's LoRA fused in there (fast, in fp32), quantised, and under the swap plan parked before the next.
        # The first expert loaded from the weights checks quantisation (levers.choose_quant) for both.
        fuse_turbo = options.default_mode == "turbo"
        fused = dict.fromkeys(experts, False)
        quantised, quant_checked = 0, hit or quant == "none"
        stand_in = {side: is_skeleton(expert) for side, expert in experts.items()}
        for side, expert in list(experts.items()):
            restored = False
            if hit:
                with cold.step("prepared_cache"):
                    restored = _restore(cache, side, expert, placement.work_device, quant)
            if restored:
                fused[side] = fuse_turbo  # the entry holds the experts as a cold start leaves them
                quantised += count_quantisable(expert) if quant != "none" else 0
            else:
                with cold.step("load" if stand_in[side] else "place"):
                    expert = placement.load(
                        lambda device, side=side, expert=expert: (
                            load_expert(model_path, EXPERT_FOLDERS[side], dtype, device)
                            if stand_in[side]
                            else expert.to(device)
                        )
                    )
                experts[side] = expert
                setattr(pipe, EXPERT_FOLDERS[side], expert)
                if fuse_turbo:
                    with cold.step("lora_fusion"):
                        fused[side] = fuse_turbo = choose_fusion(expert, turbo[side], ladder)
                if quant != "none" and not quant_checked:
                    with cold.step("quantise"):
                        checkable = placement.work_device == device  # not an expert waiting on the CPU to offload
                        probe = Probe(expert.config, device, dtype) if checkable else None
                        quant, count, error = choose_quant(expert, quant, ladder, probe, device)
                    quant_checked, quantised = True, quantised + count
                    why_not = "fell back to none" if quant == "none" else "offload plan: the expert is not on the GPU"
                    cold.facts["self_check"] = {"quantise": _error_or_why(error, why_not)}
                elif quant != "none":
                    with cold.step("quantise"):
                        quantised += quantize_expert(expert, quant)
            fell = [f"{f.what} {f.from_} -> {f.to}" for f in ladder.fallbacks if f.what in ("quantise", "fusion")]
            if writer is not None and fell:  # the entry's fingerprint names the levers asked for, not those that ran
                writer.cancel(f"a lever fell back ({', '.join(fell)})")
                writer = None
            with cold.step("place"):
                align_storage(expert)  # computes as it will after any park and fetch
            if writer is not None:
                with cold.step("prepared_cache"):
                    writer.add(side, expert)
            with cold.step("place"):
                placement.settle(side, expert)
        if writer is not None:
            with cold.step("prepared_cache"):
                writer.commit()
        if quant != "none":
            cold.facts["quantised_linears"] = quantised
            if hit:
                cold.facts["self_check"] = {"quantise": {"not_checked": "restored from the prepared cache"}}
        if ranks.world > 1 and placement.plan.name == "offload":
            raise SettingsError(
                f"memory plan offload on {ranks.world} ranks: each rank must hold the experts it runs (resident or "
                "swap plan); use fewer GPUs per worker, fp8 (WAN_QUANT), or a GPU with more memory"
            )
        with cold.step("load" if is_skeleton(pipe.text_encoder) else "place"):
            # every job starts with the high-noise expert; only rank 0 encodes text (ranks.once)
            placement.finish(
                pipe, HIGH_NOISE, lambda pipe, plan: _place_rest(pipe, plan, device, model_path, text=ranks.leader)
            )
        plan = placement.plan
        # The LoRA hooks, registered before compiling, empty between jobs; the turbo pair on the device,
        # ready for a job of the other mode.
        adapters = {side: Adapter(expert) for side, expert in experts.items()}
        turbo = {side: turbo[side].to(device, dtype) for side in experts} if turbo is not None else {}

        config = pipe.transformer.config
        with cold.step("attention_check"):
            attention = pick_attention(
                device, dtype, config.num_attention_heads, config.attention_head_dim, options.attention, ladder=ladder
            )
            apply_attention(list(experts.values()), attention)
        with cold.step("parallel"):
            layout = ranks.apply(
                list(experts.values()), config.num_attention_heads, attention.backend, options.default_mode
            )

        compile_cache = CompileCache(options.compile_cache if how != "off" else None)
        cache_state = compile_cache.state()  # before compiling fills it
        cold.measure_host_memory()  # the loading is done: what follows runs on the device
        if how != "off":
            with cold.step("compile"):
                compile_cache.activate()
                probe = Probe(config, pipe._execution_device, dtype)
                how, error = choose_compile(list(experts.values()), how, ladder, probe)
            cold.facts.setdefault("self_check", {})["compile"] = _error_or_why(error, "not compiling")
        cold.facts.update(
            device=str(device),
            default_mode=options.default_mode,
            turbo_lora=", ".join(str(p) for p in files.values()) if files else "not found (" + "; ".join(misses) + ")",
            turbo_fused=[side for side, done in fused.items() if done],
            memory_plan=_describe_plan(plan),
            quantization=quant,
            prepared_cache=cache.report(),
            attention=f"{attention.backend} (relative L2 {attention.error:.2g} against math attention)",
            compile=how,
            compile_cache=cache_state if how != "off" else "unused (not compiling)",
            step_cache=options.step_cache,
            vae_dtype=str(pipe.vae.dtype).removeprefix("torch."),
            parallel=layout.as_dict(),
            fallbacks=ladder.report(),
        )

        engine = cls(
            pipe,
            device,
            dtype,
            model,
            options,
            files,
            turbo,
            adapters,
            shapes,
            misses,
            placement,
            quant,
            attention,
            how,
            fused,
            ladder,
            cold,
            revision,
            model_path,
            ranks,
        )
        with cold.step("parallel"):
            facts = {**engine.describe(), "parallel": layout.as_dict(), "turbo_fused": fused}
            ranks.agree({**facts, "fallbacks": [f.what for f in ladder.fallbacks]})
        if not ranks.leader:
            return engine  # rank 0's warm-up runs on every rank
        if options.warmup == "on" or (options.warmup == "auto" and how != "off"):
            with cold.step("warmup"):
                engine.warm_up()
                saved = compile_cache.save() if how != "off" else 0
            if saved:
                cold.facts["compile_cache_saved_bytes"] = saved
        log.info("%s", cold.table())
        return engine

    def warm_up(self) -> None:
        """One small generation per mode this worker serves, so that no user job pays for compiling.

        Both experts run (the fewest steps whose plan reaches the low-noise expert), at 480p and the fewest
        frames; with dynamic shapes that graph serves every resolution and frame count.
        """
        width, height = RESOLUTION_AREAS["480p"]
        image = Image.new("RGB", (width, height), (128, 128, 128))
        modes = [self.default_mode] + [m for m in MODES if m != self.default_mode and self.turbo]
        for mode in modes:
            rules = MODES[mode]
            # Fewer steps than a job may ask for: compiling needs each expert once, not the whole schedule.
            steps = next((n for n in range(2, 51) if LOW_NOISE in self.expert_plan(n, 5.0, mode)), rules.steps[0])
            params = GenerationParams(
                prompt="warm-up",
                negative_prompt=WAN_NEGATIVE_PROMPT,
                width=width,
                height=height,
                num_frames=FRAME_MIN,
                steps=steps,
                guidance_scale=rules.default_guidance,
                guidance_scale_2=rules.default_guidance,
                shift=5.0,
                seed=0,
                mode=mode,
            )
            started = time.perf_counter()
            self.generate(params, image)
            log.info("warm-up (%s, %d steps) took %.1f s", mode, steps, time.perf_counter() - started)

    def describe(self) -> dict:
        """What the operator's settings and the device chose, for each job's `engine` report."""
        return {
            "quantization": self.quant,
            "memory_plan": self.plan.name,
            "attention": self.attention.backend,
            "compiled": self.compiled != "off",
        }

    # ---- per job ------------------------------------------------------------------------------------
    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def release_memory(self) -> None:
        """Free what a failed job left: collect its tensors, return cached GPU blocks to the driver."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def boundary_timestep(self) -> float:
        return self.pipe.config.boundary_ratio * self.pipe.scheduler.config.num_train_timesteps

    def expert_plan(self, steps: int, shift: float, mode: str = "quality") -> list[str]:
        """Which expert runs each step of a job with these settings."""
        return self._experts_for(self._scheduler(mode, shift, steps, "cpu").timesteps)

    def _experts_for(self, timesteps: torch.Tensor) -> list[str]:
        # Wan2.2: the high-noise expert while t >= boundary_ratio * num_train_timesteps, then the low-noise one.
        return [HIGH_NOISE if t >= self.boundary_timestep else LOW_NOISE for t in timesteps]

    def _scheduler(self, mode: str, shift: float, steps: int, device):
        """A fresh scheduler per job (schedulers keep step state, and the shift is a job input)."""
        if mode == "turbo":
            return turbo_scheduler(shift, steps, device)
        scheduler = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config, flow_shift=shift)
        scheduler.set_timesteps(steps, device=device)
        return scheduler

    @torch.inference_mode()
    def generate(
        self,
        params: GenerationParams,
        image: Image.Image,
        last_image: Image.Image | None = None,
        on_progress: ProgressCallback | None = None,
        loras: Sequence[JobLora] = (),
    ) -> Generated:
        """One video. `loras` are attached for this job only: after it, finished or failed, every
        adapter is empty and every patched parameter restored."""
        if self._step_down_due is not None:
            self._step_down_plan()
        try:
            timings: dict[str, float] = {"mode_switch": 0.0, "lora_load": 0.0}
            parts = self._mode_parts(params.mode)
            if parts:
                with timed(timings, "mode_switch", self.sync):
                    self._attach(parts)
            if loras:
                with timed(timings, "lora_load", self.sync):
                    self._attach(self._read_loras(loras))
            attached = {name: adapter for name, adapter in self.adapters.items() if adapter.attached}
            if self.compiled != "off":
                for adapter in attached.values():
                    adapter.settle()

            def run() -> Generated:
                return self._generate(
                    params, image, last_image, on_progress or (lambda phase, **d: None), attached, timings
                )

            with self.ranks.job((params, tuple(loras))):  # the other ranks take the job from here on
                if not all(adapter.uniform for adapter in attached.values()):  # a full delta on a quantised weight
                    return _eager(run)
                try:
                    generated = run()
                except torch._dynamo.exc.FailOnRecompileLimitHit:  # a backstop: settle() should make this unreachable
                    log.warning("the compiled blocks hit torch.compile's recompile limit; running this job eager")
                    generated = _eager(run)
            self._out_of_memory = ((0, 0), 0)
            return generated
        except torch.OutOfMemoryError as exc:
            raise OutOfMemoryError(
                f"the GPU ran out of memory at {params.width}x{params.height}, {params.num_frames} frames; "
                f"this worker will be replaced.{self._count_out_of_memory(params)} Try 480p or fewer frames."
            ) from exc
        finally:
            for name, adapter in self.adapters.items():  # all of them: a load that failed half-way included
                parking = self.parked.get(name)
                adapter.detach(parked=parking is not None and not parking.on_device)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def follow(self, job: tuple[GenerationParams, tuple[JobLora, ...]]) -> None:
        """A follower rank's part of a job rank 0 handed over (ranks.Ranks.follow): the same steps, without
        the images (rank 0 shares the conditioning) and without a result (rank 0 decodes)."""
        params, loras = job
        self.generate(params, image=None, loras=loras)

    def _count_out_of_memory(self, params: GenerationParams) -> str:
        """A second out-of-memory in a row at the same size steps the memory plan down before the next job
        (where the worker lives on: RunPod replaces one that asks, a local or dev-endpoint worker stays)."""
        size = (params.width, params.height)
        last, count = self._out_of_memory
        count = count + 1 if last == size else 1
        self._out_of_memory = (size, count)
        lower = below("place", self.plan.name)
        if count < 2 or lower is None:
            return ""
        self._step_down_due = f"{count} out-of-memory errors in a row at {size[0]}x{size[1]}"
        return f" The memory plan steps down from {self.plan.name} to {lower} before the next job."

    def _step_down_plan(self) -> None:
        why, self._step_down_due = self._step_down_due, None
        self._out_of_memory = ((0, 0), 0)
        self.release_memory()
        self.placement.step_down(torch.OutOfMemoryError(why))
        self.cold_start.facts.update(memory_plan=_describe_plan(self.plan), fallbacks=self.ladder.report())
        self.cold_start.rewrite()
        log.warning("memory plan stepped down to %s: %s", self.plan.name, why)

    def _mode_parts(self, mode: str) -> dict[str, list[tuple[ExpertLora, float]]]:
        """The turbo pair and its strength that put the experts in `mode` for one job (none where the weights are).

        An expert's weights are in the default mode when the turbo pair was fused into it (a turbo worker) or
        not needed (a quality worker). A turbo job attaches the pair to an expert without it; a quality job
        attaches it with strength -1 to an expert with it fused in, which takes the fused delta back out without
        touching (possibly quantised) weights. Where fusing failed at cold start (levers.py), a turbo worker's
        turbo jobs attach the pair as a quality worker's do.
        """
        wanted = {side: (mode == "turbo") != self.fused[side] for side in self.experts}
        if not any(wanted.values()):
            return {}
        if not self.turbo:
            raise InputError(f"mode: 'turbo' is not available on this worker: {missing_message(self.turbo_misses)}")
        strength = 1.0 if mode == "turbo" else -1.0
        return {side: [(self.turbo[side], strength)] for side, attach in wanted.items() if attach}

    def _read_loras(self, loras: Sequence[JobLora]) -> dict[str, list[tuple[ExpertLora, float]]]:
        """Read every file and map it onto its expert before anything is attached; InputError naming the entry."""
        parts: dict[str, list[tuple[ExpertLora, float]]] = {}
        for lora in loras:
            expert = self.experts[lora.expert]
            mapped = parse_lora(read_safetensors(lora.path, lora.label), expert, lora.label, self.shapes[lora.expert])
            if lora.scale != 0.0:  # read and checked all the same: the same file fails at any strength
                parts.setdefault(lora.expert, []).append((mapped.to(self.device, self.compute_dtype), lora.scale))
        return parts

    def _attach(self, parts: dict[str, list[tuple[ExpertLora, float]]]) -> None:
        for name, expert_parts in parts.items():
            self.adapters[name].attach(expert_parts)

    def _use(self, name: str, attached: dict[str, Adapter]):
        """The expert `name`, on the device (swapping it in for the other under the swap plan), adapters patched."""
        parking = self.parked.get(name)
        if parking is not None and not parking.on_device:
            for other, other_parking in self.parked.items():
                if other in self.experts and other != name and other_parking.on_device:
                    if other in attached:  # its device copy is dropped: forget the patch (the host copy has none)
                        attached[other].restore_params(parked=True)
                    other_parking.park()
            parking.fetch()
        if parking is not None:
            parking.ready()
        if name in attached:
            attached[name].patch_params()
        return self.experts[name]

    def _condition(self, p: GenerationParams, image, last_image, generator) -> dict[str, torch.Tensor]:
        """The starting noise and the conditioning latents (first frame, optional last frame, mask)."""
        pipe, device = self.pipe, self.pipe._execution_device
        first = pipe.video_processor.preprocess(image, height=p.height, width=p.width)
        last = None
        if last_image is not None:
            last = pipe.video_processor.preprocess(last_image, height=p.height, width=p.width)
            last = last.to(device, dtype=torch.float32)
        latents, condition = pipe.prepare_latents(
            image=first.to(device, dtype=torch.float32),
            batch_size=1,
            num_channels_latents=pipe.vae.config.z_dim,
            height=p.height,
            width=p.width,
            num_frames=p.num_frames,
            dtype=torch.float32,
            device=device,
            generator=generator,
            latents=None,
            last_image=last,
        )
        return {"latents": latents, "condition": condition}

    def _embed(self, texts: list[str]) -> dict:
        """Embeddings of `texts` ("prompt", and "negative" when asked for; cached ones from the cache) and how
        many came from the cache ("hits")."""
        found = [self.prompts.lookup(text) for text in texts]
        missing = [text for text, embedding in zip(texts, found, strict=True) if embedding is None]
        fresh: dict[str, torch.Tensor] = {}
        if missing:
            encoder = self.parked.get(TEXT_ENCODER)
            if encoder is not None:
                encoder.fetch()
                encoder.ready()
            try:
                for text in dict.fromkeys(missing):  # one at a time: an embedding never depends on its batch
                    fresh[text] = self.pipe._get_t5_prompt_embeds(
                        prompt=[text], max_sequence_length=TEXT_TOKENS, device=self.pipe._execution_device
                    ).to(self.compute_dtype)
                    self.prompts.put(text, fresh[text])
            finally:
                if encoder is not None:
                    encoder.park()
        embeddings = [e if e is not None else fresh[t] for t, e in zip(texts, found, strict=True)]
        negative = embeddings[1] if len(embeddings) > 1 else None
        return {"prompt": embeddings[0], "negative": negative, "hits": len(texts) - len(missing)}

    def _cache_context(self, model, name: str, active: bool):
        return model.cache_context(name) if active else nullcontext()

    def _generate(
        self, p: GenerationParams, image, last_image, report: ProgressCallback, attached, timings
    ) -> Generated:
        pipe = self.pipe
        device = pipe._execution_device
        dtype = self.compute_dtype
        guidance = {HIGH_NOISE: p.guidance_scale, LOW_NOISE: p.guidance_scale_2}
        step_cache = self.step_cache is not None and p.mode == "quality"
        self.ranks.reset_peak()

        # 1. Encode the prompt, and the negative prompt only if some expert uses guidance.
        scheduler = self._scheduler(p.mode, p.shift, p.steps, device)
        plan = self._experts_for(scheduler.timesteps)
        needs_negative = any(guidance[e] > 1.0 for e in set(plan))
        report(Phase.TEXT_ENCODE)
        with timed(timings, Phase.TEXT_ENCODE.value, self.sync):
            texts = [p.prompt, p.negative_prompt] if needs_negative else [p.prompt]
            text = self.ranks.once(lambda: self._embed(texts))
            prompt_embeds, negative_embeds, hits = text["prompt"], text["negative"], text["hits"]

        # 2. Noise and the conditioning latents (first frame, optional last frame, mask).
        generator = torch.Generator("cpu").manual_seed(p.seed)  # same noise on any device
        report(Phase.CONDITION_ENCODE)
        with timed(timings, Phase.CONDITION_ENCODE.value, self.sync):
            shared = self.ranks.once(lambda: self._condition(p, image, last_image, generator))
            latents, condition = shared["latents"], shared["condition"]

        # 3. Denoise: each step runs the expert its timestep belongs to.
        if step_cache:
            from diffusers.hooks import FirstBlockCacheConfig

            for expert in self.experts.values():
                expert.enable_cache(FirstBlockCacheConfig(threshold=self.step_cache))
        try:
            with timed(timings, Phase.DENOISE.value, self.sync):
                for index, (t, expert) in enumerate(zip(scheduler.timesteps, plan, strict=True)):
                    model, scale = self._use(expert, attached), guidance[expert]
                    model_input = torch.cat([latents, condition], dim=1).to(dtype)
                    timestep = t.expand(latents.shape[0])

                    def predict(embeds, branch, model=model, model_input=model_input, timestep=timestep):
                        with self._cache_context(model, branch, step_cache):
                            return _predict(model, model_input, timestep, embeds)

                    # classifier-free guidance for this expert only (at a scale above 1)
                    noise = self.ranks.guided(
                        lambda: predict(prompt_embeds, "cond"), lambda: predict(negative_embeds, "uncond"), scale
                    )
                    latents = scheduler.step(noise, t, latents, return_dict=False)[0]
                    report(Phase.DENOISE, step=index + 1, total_steps=len(plan), expert=expert)
        finally:
            if step_cache:
                for expert in self.experts.values():
                    expert.disable_cache()

        # 4. Decode the latents to frames; under the swap plan the high-noise expert comes back meanwhile.
        self._prefetch_for_next_job(attached)
        report(Phase.VAE_DECODE)
        with timed(timings, Phase.VAE_DECODE.value, self.sync):
            frames = self.ranks.on_leader(lambda: self._decode(latents))
        pipe.maybe_free_model_hooks()
        job_report = {
            **self.describe(),
            "step_cache": self.options.step_cache if step_cache else "none",
            "text_cache_hits": hits,
            "parallel": self.ranks.report(self.ranks.peak_memory_gb()),
        }
        return Generated(video=frames, timings=timings, experts=plan, report=job_report)

    def _prefetch_for_next_job(self, attached: dict[str, Adapter]) -> None:
        high, low = self.parked.get(HIGH_NOISE), self.parked.get(LOW_NOISE)
        if high is None or low is None or high.on_device:
            return
        if LOW_NOISE in attached:
            attached[LOW_NOISE].restore_params(parked=True)
        low.park()
        high.fetch(overlap=True)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(F, H, W, 3) uint8 frames, left on the device for the stage after the decode (interpolation)."""
        vae = self.pipe.vae
        vae_device = self.pipe._execution_device if self.plan.name == "offload" else vae.device
        latents = latents.to(vae_device, dtype=vae.dtype)
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents)
        std = torch.tensor(vae.config.latents_std).view(shape).to(latents)
        video = vae.decode(latents * std + mean, return_dict=False)[0]  # (1, 3, F, H, W) in [-1, 1]
        frames = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return frames.permute(1, 2, 3, 0).contiguous()


def _eager(run: Callable[[], Generated]) -> Generated:
    """One job with the compiled blocks bypassed (their graphs kept for the next job)."""
    with torch.compiler.set_stance("force_eager"):
        generated = run()
    generated.report["compiled"] = False
    return generated


def _describe_plan(plan: MemoryPlan) -> str:
    return (
        f"{plan.name} (text encoder {'on demand' if plan.text_encoder_on_demand else 'resident'}, "
        f"VAE tiling {'on' if plan.vae_tiling else 'off'}; {plan.reason})"
    )


def _error_or_why(error: float, why_not: str) -> dict:
    """A self-check's entry in the cold-start report: its relative L2, or why there was none."""
    return {"not_checked": why_not} if math.isnan(error) else {"relative_l2": round(error, 5)}


def _restore(cache: PreparedCache, side: str, expert, device: torch.device, quant: str) -> bool:
    """Fill the stand-in `expert` from the prepared cache: its structure built as a cold start leaves it (the
    quantised layout made from zeros), then the saved tensors streamed in. False (the entry dropped) when the
    saved tensors do not fit, so the caller loads and prepares it instead."""
    try:
        materialise(expert, device)
        quantize_expert(expert, quant)
        cache.restore(side, expert)
    except (OSError, ValueError) as exc:
        log.warning("prepared cache %s: %s; loading the weights instead", cache.entry, exc)
        cache.drop(f"{side}: {exc}")
        return False
    return True


def _cache_inputs(model_path: Path, revision: Revision | None, options, files, quant: str, dtype, device) -> dict:
    """Everything that shapes the prepared experts: the prepared cache's fingerprint is their hash."""
    fused = options.default_mode == "turbo"
    return {
        "format": CACHE_FORMAT,
        "weights": {folder: weights_identity(model_path / folder) for folder in EXPERT_FOLDERS.values()},
        "revision": {"commit": revision.commit, "dtype": revision.dtype} if revision else None,
        "default_mode": options.default_mode,
        "turbo_pair": {side: file_sha256(path) for side, path in files.items()} if fused else None,
        "quantisation": quant,
        "dtype": str(dtype).removeprefix("torch."),
        "device": device.type,
        "versions": package_versions(),
    }


def _place_rest(
    pipe, plan: MemoryPlan, device: torch.device, model_path: Path | None, text: bool = True
) -> dict[str, Parking]:
    """Put the VAE and the text encoder where the plan says (the experts are placed already); a stand-in text
    encoder is read from `model_path` straight to the device when the plan keeps it there. Without `text` (a
    rank that never encodes text) the text encoder is not loaded at all."""
    if not text:
        pipe.text_encoder = None
    elif is_skeleton(pipe.text_encoder):
        resident = plan.name != "offload" and not plan.text_encoder_on_demand
        dtype = pipe.text_encoder.dtype
        pipe.text_encoder = load_text_encoder(model_path, dtype, device if resident else torch.device("cpu"))
    for module in (pipe.vae, pipe.text_encoder, getattr(pipe, "image_encoder", None)):
        if module is not None:
            align_storage(module)  # as for the experts: the same numbers whichever plan moves them
    if plan.vae_tiling:
        pipe.vae.enable_tiling()
    if plan.name == "offload":
        if device.type == "cuda":
            pipe.enable_model_cpu_offload(device=device)
        return {}
    pipe.vae.to(device)
    if pipe.text_encoder is None:
        return {}
    if plan.text_encoder_on_demand:
        return {TEXT_ENCODER: Parking(pipe.text_encoder, device, park_now=True)}
    pipe.text_encoder.to(device)
    return {}


def _refuse_on_ranks(ranks: Ranks, options: EngineOptions) -> None:
    """The levers that do not run on several ranks, refused at cold start with the reason."""
    if ranks.world > 1 and parse_step_cache(options.step_cache) is not None:
        raise SettingsError(
            f"WAN_STEP_CACHE={options.step_cache} cannot run on {ranks.world} ranks: each rank would decide to skip "
            "a step from its own slice of the tokens, and ranks that decide differently stop each other; "
            "set WAN_STEP_CACHE=none or WAN_GPUS=1"
        )
