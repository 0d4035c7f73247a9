"""Turbo mode: the 4-step distilled LoRA pair from lightx2v and the schedule it was distilled with.

Files (README, "Turbo mode"): lightx2v/Wan2.2-Distill-Loras
`wan2.2_i2v_A14b_{high,low}_noise_lora_rank64_lightx2v_4step_1022.safetensors`; the older
lightx2v/Wan2.2-Lightning `Wan2.2-I2V-A14B-4steps-lora-rank64-Seko-V1/{high,low}_noise_model.safetensors`
load too. The schedule (LightX2V `configs/distill/wan22/wan_moe_i2v_distill_with_lora.json`,
`Wan22StepDistillScheduler`; Wan2.2-Lightning `EulerScheduler`): plain Euler flow matching over the
timesteps linspace(1000, 0, steps + 1) without the last, shifted by `shift` (5), guidance 1; with the
Wan2.2 boundary at t = 900 the high-noise expert takes steps 1-2 of 4 and the low-noise expert 3-4.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import JobError, SettingsError
from .lora import ExpertLora, parse_lora, read_safetensors


def turbo_sigmas(steps: int) -> list[float]:
    """The unshifted sigmas of an n-step distilled schedule: 1, 1 - 1/n, ..., 1/n (the scheduler applies the shift)."""
    return np.linspace(1.0, 0.0, steps + 1)[:-1].tolist()


def turbo_scheduler(shift: float, steps: int, device):
    """A fresh Euler flow-matching scheduler set to the distilled timesteps; returns it ready to step."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(sigmas=turbo_sigmas(steps), device=device)
    return scheduler


def load_pair(files: dict[str, Path], experts: dict[str, torch.nn.Module]) -> dict[str, ExpertLora]:
    """Read and map both files onto their experts (by side: high_noise, low_noise); SettingsError naming
    the file when one does not fit."""
    mapped = {}
    for side, path in files.items():
        try:
            mapped[side] = parse_lora(read_safetensors(path), experts[side], path.name)
        except JobError as exc:
            raise SettingsError(f"turbo LoRA {path}: {exc}") from None
        except Exception as exc:
            raise SettingsError(f"turbo LoRA {path}: {type(exc).__name__}: {exc}") from None
    return mapped
