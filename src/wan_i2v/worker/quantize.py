"""Quantised experts: fp8 (per-row dynamic float8) on GPUs that have fp8 units, int8 on the others.

Only the linear layers of the repeated transformer blocks are quantised (the embeddings, the
modulation tables and the output head stay in bf16), after any LoRA fusion: a quantised weight
cannot take a LoRA delta any more. On one H100 (../shared/BASELINE.md) fp8 compiled blocks run a
480p forward in 2.34 s against 2.74 s for bf16, with a relative L2 of 0.054 on the output.
"""

from __future__ import annotations

import logging

import torch

from ..errors import SettingsError
from .settings import QUANT_CHOICES

log = logging.getLogger(__name__)

FP8_MIN_CAPABILITY = (8, 9)  # Ada and Hopper: L40S, RTX 4090, H100, H200


def fp8_capable(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= FP8_MIN_CAPABILITY


def pick_quant(requested: str, device: torch.device) -> str:
    """The quantisation to try first for `WAN_QUANT=requested` on `device` (the quantise ladder steps down from it).

    auto: fp8 where the GPU has fp8 units, int8 on other GPUs (A100), none on the CPU.
    """
    if requested not in QUANT_CHOICES:
        raise SettingsError(f"WAN_QUANT={requested!r}: allowed {', '.join(QUANT_CHOICES)}")
    if requested == "auto":
        if device.type != "cuda":
            return "none"
        return "fp8" if fp8_capable(device) else "int8"
    return requested


def check_capable(kind: str, device: torch.device) -> None:
    """fp8 needs fp8 units: RuntimeError naming the GPU otherwise (a step down to int8, levers.py)."""
    if kind == "fp8" and not fp8_capable(device):
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "the CPU"
        raise RuntimeError(
            f"fp8 needs a GPU of compute capability 8.9 or more (L40S, RTX 4090, H100, H200); this worker runs "
            f"on {name} (set WAN_QUANT=int8 or none to skip this step)"
        )


def _block_linear(module: torch.nn.Module, name: str) -> bool:
    return isinstance(module, torch.nn.Linear) and name.startswith("blocks.")


def quantize_expert(expert: torch.nn.Module, kind: str) -> int:
    """Quantise the block linears of one expert in place; returns how many were quantised."""
    if kind == "none":
        return 0
    try:
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            Int8DynamicActivationInt8WeightConfig,
            PerRow,
            quantize_,
        )
    except ImportError:
        raise SettingsError(f"WAN_QUANT={kind} needs torchao (pip install torchao); or set WAN_QUANT=none") from None
    config = (
        Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
        if kind == "fp8"
        else Int8DynamicActivationInt8WeightConfig()
    )
    count = count_quantisable(expert)
    quantize_(expert, config, filter_fn=_block_linear)
    return count


def block_weights(expert: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The block linears' weights as they are: quantising replaces them, so these restore the expert exactly."""
    return {name: module.weight for name, module in expert.named_modules() if _block_linear(module, name)}


def restore_weights(expert: torch.nn.Module, saved: dict[str, torch.nn.Parameter]) -> None:
    modules = dict(expert.named_modules())
    for name, weight in saved.items():
        modules[name].weight = weight


def count_quantisable(expert: torch.nn.Module) -> int:
    """The expert's linear layers that quantisation covers (the repeated blocks')."""
    return sum(1 for name, module in expert.named_modules() if _block_linear(module, name))
