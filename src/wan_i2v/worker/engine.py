"""The Wan2.2 I2V-A14B diffusers pipeline: find the weights, load once, generate frames per job.

`generate` follows the steps of diffusers' WanImageToVideoPipeline.__call__ with two changes that
matter to a service: each expert's guidance is honoured on its own (diffusers decides classifier-free
guidance from the high-noise scale alone, so `guidance_scale=1, guidance_scale_2=3.5` would silently
drop guidance, and a scale of 1 would still pay for the unconditional pass), and every phase is
timed and reported. The engine knows nothing of buckets, jobs or HTTP.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..errors import ModelNotFoundError, OutOfMemoryError
from ..schema import Phase
from .timing import timed
from .weights import resolve_model

log = logging.getLogger(__name__)

HIGH_NOISE, LOW_NOISE = "high_noise", "low_noise"
TEXT_TOKENS = 512  # Wan2.2 text_len

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


@dataclass
class Generated:
    frames: np.ndarray  # (num_frames, height, width, 3) uint8 RGB
    timings: dict[str, float] = field(default_factory=dict)  # seconds per Phase value
    experts: list[str] = field(default_factory=list)  # the expert that ran each step


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_placement(device: torch.device, requested: str = "auto") -> str:
    """'resident' keeps every model on the GPU; 'model_offload' moves each to the GPU only while it runs.

    All of Wan2.2 I2V-A14B resident takes 64.5 GiB before a job and runs out of memory at 720p on an
    80 GB GPU (measured on an H100 80GB), so 'auto' keeps it resident only on GPUs of at least 100 GiB.
    """
    if requested != "auto":
        if requested not in ("resident", "model_offload"):
            raise ValueError(f"WAN_PLACEMENT={requested!r}; allowed: auto, resident, model_offload")
        return requested
    if device.type != "cuda":
        return "resident"
    total = torch.cuda.get_device_properties(device).total_memory
    return "resident" if total >= 100 * 1024**3 else "model_offload"


def _predict(model, model_input: torch.Tensor, timestep: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    return model(hidden_states=model_input, timestep=timestep, encoder_hidden_states=text_embeds, return_dict=False)[0]


class Engine:
    """One loaded pipeline. Built once per worker; `generate` keeps no state between jobs."""

    def __init__(self, pipe, device: torch.device, placement: str, model: str, load_seconds: float):
        self.pipe = pipe
        self.device = device
        self.placement = placement
        self.model = model
        self.load_seconds = load_seconds

    @classmethod
    def load(cls, model: str, device: str | None = None, placement: str = "auto") -> Engine:
        import diffusers
        import transformers
        from diffusers import AutoencoderKLWan, WanImageToVideoPipeline

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
        start = time.perf_counter()
        path = resolve_model(model)
        target = pick_device(device)
        dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
        # The VAE stays in fp32, as Wan2.2 and the diffusers examples run it.
        vae = AutoencoderKLWan.from_pretrained(path, subfolder="vae", dtype=torch.float32)
        pipe = WanImageToVideoPipeline.from_pretrained(path, vae=vae, dtype=dtype)
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
        chosen = pick_placement(target, placement)
        if chosen == "model_offload":
            pipe.enable_model_cpu_offload(device=target)
        else:
            pipe.to(target)
        seconds = time.perf_counter() - start
        log.info("loaded %s on %s (%s, %s) in %.1f s", model, target, dtype, chosen, seconds)
        return cls(pipe, target, chosen, model, seconds)

    def _sync(self) -> None:
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

    def expert_plan(self, steps: int, shift: float) -> list[str]:
        """Which expert runs each step of a job with these settings."""
        scheduler = self._scheduler(shift)
        scheduler.set_timesteps(steps, device="cpu")
        return self._experts_for(scheduler.timesteps)

    def _experts_for(self, timesteps: torch.Tensor) -> list[str]:
        # Wan2.2: the high-noise expert while t >= boundary_ratio * num_train_timesteps, then the low-noise one.
        return [HIGH_NOISE if t >= self.boundary_timestep else LOW_NOISE for t in timesteps]

    def _scheduler(self, shift: float):
        # A fresh scheduler per job: schedulers keep step state, and the shift is a job input.
        return type(self.pipe.scheduler).from_config(self.pipe.scheduler.config, flow_shift=shift)

    @torch.inference_mode()
    def generate(
        self,
        params: GenerationParams,
        image: Image.Image,
        last_image: Image.Image | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Generated:
        try:
            return self._generate(params, image, last_image, on_progress or (lambda phase, **detail: None))
        except torch.OutOfMemoryError as exc:
            raise OutOfMemoryError(
                f"the GPU ran out of memory at {params.width}x{params.height}, {params.num_frames} frames; "
                "this worker will be replaced. Try 480p or fewer frames."
            ) from exc
        finally:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _generate(self, p: GenerationParams, image, last_image, report: ProgressCallback) -> Generated:
        pipe, timings = self.pipe, {}
        device = pipe._execution_device
        transformer_dtype = pipe.transformer.dtype
        guidance = {HIGH_NOISE: p.guidance_scale, LOW_NOISE: p.guidance_scale_2}
        experts = {HIGH_NOISE: pipe.transformer, LOW_NOISE: pipe.transformer_2}

        # 1. Encode the prompt, and the negative prompt only if some expert uses guidance.
        scheduler = self._scheduler(p.shift)
        scheduler.set_timesteps(p.steps, device=device)
        plan = self._experts_for(scheduler.timesteps)
        needs_negative = any(guidance[e] > 1.0 for e in set(plan))
        report(Phase.TEXT_ENCODE)
        with timed(timings, Phase.TEXT_ENCODE.value, self._sync):
            prompt_embeds, negative_embeds = pipe.encode_prompt(
                prompt=p.prompt,
                negative_prompt=p.negative_prompt,
                do_classifier_free_guidance=needs_negative,
                max_sequence_length=TEXT_TOKENS,
                device=device,
            )
            prompt_embeds = prompt_embeds.to(transformer_dtype)
            if negative_embeds is not None:
                negative_embeds = negative_embeds.to(transformer_dtype)

        # 2. Noise and the conditioning latents (first frame, optional last frame, mask).
        generator = torch.Generator("cpu").manual_seed(p.seed)  # same noise on any device
        report(Phase.CONDITION_ENCODE)
        with timed(timings, Phase.CONDITION_ENCODE.value, self._sync):
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

        # 3. Denoise: each step runs the expert its timestep belongs to.
        with timed(timings, Phase.DENOISE.value, self._sync):
            for index, (t, expert) in enumerate(zip(scheduler.timesteps, plan, strict=True)):
                model, scale = experts[expert], guidance[expert]
                model_input = torch.cat([latents, condition], dim=1).to(transformer_dtype)
                timestep = t.expand(latents.shape[0])
                noise = _predict(model, model_input, timestep, prompt_embeds)
                if scale > 1.0:  # classifier-free guidance, for this expert only
                    uncond = _predict(model, model_input, timestep, negative_embeds)
                    noise = uncond + scale * (noise - uncond)
                latents = scheduler.step(noise, t, latents, return_dict=False)[0]
                report(Phase.DENOISE, step=index + 1, total_steps=len(plan), expert=expert)

        # 4. Decode the latents to frames.
        report(Phase.VAE_DECODE)
        with timed(timings, Phase.VAE_DECODE.value, self._sync):
            frames = self._decode(latents)
        pipe.maybe_free_model_hooks()
        return Generated(frames=frames, timings=timings, experts=plan)

    def _decode(self, latents: torch.Tensor) -> np.ndarray:
        vae = self.pipe.vae
        vae_device = self.pipe._execution_device if self.placement == "model_offload" else vae.device
        latents = latents.to(vae_device, dtype=vae.dtype)
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents)
        std = torch.tensor(vae.config.latents_std).view(shape).to(latents)
        video = vae.decode(latents * std + mean, return_dict=False)[0]  # (1, 3, F, H, W) in [-1, 1]
        frames = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return frames.permute(1, 2, 3, 0).cpu().numpy()
