"""The attention backend: the fastest one on this GPU whose output matches plain attention.

On an H100, PyTorch's SDPA through cuDNN measured 585 TFLOP/s at 480p, against 59.6 ms/layer for
flash-attn 2 and slower still for SageAttention 1 (../shared/BASELINE.md), so cuDNN is tried first.
Each candidate is checked once at cold start against the math kernel in fp32 on random inputs of the
model's head shape; a candidate that fails or differs is a step down the attention ladder (levers.py):
cuDNN, flash, PyTorch's own choice (native), math.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .levers import Ladder, checked, relative_l2

log = logging.getLogger(__name__)

REFERENCE = "_native_math"
FIRST = {"cuda": "_native_cudnn", "cpu": "native"}  # where auto starts on levers.LADDERS["attention"]
TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 1e-2, torch.float32: 1e-4}  # relative L2 against fp32 math


@dataclass(frozen=True)
class AttentionChoice:
    backend: str
    error: float  # relative L2 of its output against fp32 math attention
    skipped: dict[str, str] = field(default_factory=dict)  # candidate -> why it was not used


def _attend(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

    return dispatch_attention_fn(q, k, v, backend=AttentionBackendName(backend))


def check_backend(
    backend: str,
    device: torch.device,
    dtype: torch.dtype,
    heads: int,
    head_dim: int,
    tokens: int = 1024,
    attend: Callable = _attend,
) -> float:
    """Relative L2 between `backend` and fp32 math attention on the same random (batch, tokens, heads, dim) inputs."""
    generator = torch.Generator("cpu").manual_seed(0)
    q, k, v = (torch.randn(1, tokens, heads, head_dim, generator=generator) for _ in range(3))
    reference = attend(REFERENCE, q, k, v)
    out = attend(backend, *(t.to(device, dtype) for t in (q, k, v)))
    return relative_l2(out.cpu(), reference)


def pick_attention(
    device: torch.device,
    dtype: torch.dtype,
    heads: int,
    head_dim: int,
    requested: str = "auto",
    check: Callable[..., float] = check_backend,
    ladder: Ladder | None = None,
) -> AttentionChoice:
    """The first backend on the attention ladder (from the requested one, or the fastest for this device) whose
    output matches fp32 math attention; each one skipped is a fallback on `ladder`. Math attention, the
    reference, is the last rung: right everywhere, but it holds the whole score matrix (small jobs only)."""
    ladder = ladder if ladder is not None else Ladder()
    start = FIRST.get(device.type, "native") if requested == "auto" else requested
    tolerance = TOLERANCE.get(dtype, 2e-2)

    def attempt(backend: str) -> float:
        ladder.fault("attention")
        if backend == REFERENCE:
            return 0.0
        error = check(backend, device, dtype, heads, head_dim)
        return checked(backend, error, tolerance, "math attention")

    first = len(ladder.fallbacks)
    backend, error = ladder.climb("attention", start, attempt)
    skipped = {f.from_: f.why for f in ladder.fallbacks[first:]}
    return AttentionChoice(backend, error, skipped)


def apply_attention(experts: list[torch.nn.Module], choice: AttentionChoice) -> None:
    """Set the backend on every attention processor of the experts, `native` included: a processor left unset
    follows diffusers' process-wide active backend, which any model's `set_attention_backend` changes."""
    for expert in experts:
        expert.set_attention_backend(choice.backend)
