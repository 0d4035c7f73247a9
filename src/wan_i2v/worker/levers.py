"""The cold-start levers and their fallback ladder: each optimisation checked once, stepped down when it fails.

A worker's speed comes from levers chosen at cold start: quantised experts, compiled blocks, an attention
kernel, a memory plan, the turbo pair fused into the weights. Each has only ever been proven where it was
tried, and a lever that fails on a new GPU, driver or library must not turn into a crash loop (RunPod
restarts a worker that exits, and it would fail the same way again). So each lever is tried from the rung
the settings ask for, down one rung at a time until one works:

    quantise   fp8 -> int8 -> none            self-check: one expert forward within QUANT_BOUND of bf16 eager
    compile    static -> dynamic -> off       self-check: compiled forward within COMPILE_BOUND of eager
    attention  cuDNN -> flash -> native -> math   self-check: attention.check_backend against math attention
    place      resident -> swap -> offload    parking, fetching or loading onto the GPU failing
    fusion     fused -> attached              fusing the turbo pair failing (then attached per job)
    interpolation  fp16 -> fp32               self-check: RIFE's frame within HALF_PSNR_DB of fp32 (interpolation/)

An exception, or a self-check over its bound, is a step down; each is logged with why and kept as a
`Fallback` in the cold-start report's `fallbacks`. The cold start fails (`ColdStartError`, naming what to
change) only when a lever has no rung left. The self-check input is one expert forward at 480p and 5 frames
(`Probe`): small enough to cost well under a second on a GPU, real enough that a broken kernel shows.

`WAN_FAULTS` (a comma list of the lever names above) makes a lever's first attempt raise, as if it had failed
on this GPU: each fallback can be tried on the CPU and on a real deployment.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import torch

from ..errors import ColdStartError
from .compile import compile_experts, uncompile_experts
from .lora import fuse
from .quantize import block_weights, check_capable, quantize_expert, restore_weights
from .settings import FAULTS

log = logging.getLogger(__name__)

T = TypeVar("T")

LADDERS: dict[str, tuple[str, ...]] = {  # one per WAN_FAULTS value (settings.FAULTS)
    "quantise": ("fp8", "int8", "none"),
    "compile": ("static", "dynamic", "off"),
    "attention": ("_native_cudnn", "_native_flash", "native", "_native_math"),
    "place": ("resident", "swap", "offload"),
    "fusion": ("fused", "attached"),
    "interpolation": ("fp16", "fp32"),
}
assert set(LADDERS) == set(FAULTS)
# What an operator can change when a ladder has no rung left.
LAST_RESORT = {
    "quantise": "set WAN_QUANT=none",
    "compile": "set WAN_COMPILE=off",
    "attention": "set WAN_ATTENTION=auto, or a backend this GPU and PyTorch build run",
    "place": "use a GPU with more memory (or fewer jobs' worth of host memory pinned), or WAN_MEMORY_PLAN=offload",
    "fusion": "set WAN_DEFAULT_MODE=quality, or check the turbo LoRA files",
    "interpolation": "check the RIFE weights (WAN_INTERPOLATION_MODEL), or remove them to interpolate with ffmpeg",
}
# Relative L2 of one expert forward against the same expert's plain bf16 eager forward (Probe).
QUANT_BOUND = {"fp8": 0.08, "int8": 0.08}  # fp8 measured 0.054 on an H100 (BASELINE.md); the frames' target
# Compiling reorders bf16 sums: one forward differed by 0.015 on an H100 (../shared/BASELINE.md). A broken kernel
# is off by far more (or NaN); the frames' own target (0.02 against the baseline) is the benchmark's to measure.
COMPILE_BOUND = 0.05
PROBE_SIZE = (832, 480, 5)  # width, height, frames: 480p, the fewest frames a job may ask for


class InjectedFault(RuntimeError):
    """Raised where `WAN_FAULTS` names a lever."""


class SelfCheckFailed(RuntimeError):
    """An optimisation ran, but its output is further from the plain forward than its bound."""


@dataclass(frozen=True)
class Fallback:
    what: str  # the lever: quantise, compile, attention, place, fusion
    from_: str
    to: str
    why: str

    def as_dict(self) -> dict:
        return {"what": self.what, "from": self.from_, "to": self.to, "why": self.why}


def below(what: str, rung: str) -> str | None:
    """The rung under `rung` (None at the bottom). An attention backend not on the ladder falls to native."""
    ladder = LADDERS[what]
    if rung not in ladder:
        return "native" if what == "attention" else None
    index = ladder.index(rung)
    return ladder[index + 1] if index + 1 < len(ladder) else None


class Ladder:
    """The fallbacks of one cold start (and of the worker's life after it), and the faults still to inject."""

    def __init__(self, faults: Iterable[str] = ()):
        self._faults = set(faults)
        self.fallbacks: list[Fallback] = []

    def fault(self, what: str) -> None:
        """Raise once for a lever that `WAN_FAULTS` names: its first attempt fails, the ladder does the rest."""
        if what in self._faults:
            self._faults.discard(what)
            raise InjectedFault(f"injected by WAN_FAULTS={what}")

    def step_down(self, what: str, rung: str, exc: BaseException) -> str:
        """Record that `rung` failed and return the rung below; ColdStartError when there is none."""
        why = str(exc) if isinstance(exc, (SelfCheckFailed, InjectedFault)) else f"{type(exc).__name__}: {exc}"
        why = why[:500]
        lower = below(what, rung)
        if lower is None:
            earlier = "; ".join(f"{f.what} {f.from_} -> {f.to} ({f.why})" for f in self.fallbacks if f.what == what)
            raise ColdStartError(
                f"{what}: {rung} failed ({why}) and nothing is left to fall back to"
                + (f" (earlier: {earlier})" if earlier else "")
                + f"; {LAST_RESORT[what]}"
            ) from exc
        self.fallbacks.append(Fallback(what, rung, lower, why))
        log.warning("%s: %s failed, falling back to %s: %s", what, rung, lower, why)
        return lower

    def climb(self, what: str, rung: str, attempt: Callable[[str], T]) -> tuple[str, T]:
        """`attempt(rung)` from `rung` down, until one returns: (the rung that worked, what it returned).
        `attempt` leaves nothing half-done when it raises."""
        while True:
            try:
                return rung, attempt(rung)
            except (KeyboardInterrupt, SystemExit, ColdStartError):
                raise
            except BaseException as exc:  # noqa: BLE001 - any failure of an optimisation is a step down
                rung = self.step_down(what, rung, exc)

    def report(self) -> list[dict]:
        return [fallback.as_dict() for fallback in self.fallbacks]


def relative_l2(candidate: torch.Tensor, reference: torch.Tensor) -> float:
    reference = reference.float()
    return float((candidate.float() - reference).norm() / reference.norm().clamp_min(1e-12))


class Probe:
    """The self-check input: one expert forward at 480p and 5 frames, random latents and text, fixed seed."""

    def __init__(self, config, device: torch.device, dtype: torch.dtype):
        width, height, frames = PROBE_SIZE
        generator = torch.Generator("cpu").manual_seed(0)
        latent = (1, config.in_channels, (frames - 1) // 4 + 1, height // 8, width // 8)
        self.inputs = {
            "hidden_states": torch.randn(latent, generator=generator).to(device, dtype),
            "encoder_hidden_states": torch.randn(1, 512, config.text_dim, generator=generator).to(device, dtype),
            "timestep": torch.tensor([900.0], device=device),
        }

    @torch.inference_mode()
    def run(self, expert: torch.nn.Module) -> torch.Tensor:
        return expert(**self.inputs, return_dict=False)[0].float()


def checked(rung: str, error: float, bound: float, against: str) -> float:
    """`error` when within `bound`; SelfCheckFailed naming both otherwise (NaN fails too)."""
    if not error <= bound:
        raise SelfCheckFailed(
            f"self-check: {rung} output differs from {against} by relative L2 {error:.3g} (bound {bound:g})"
        )
    return error


def choose_quant(
    expert: torch.nn.Module, rung: str, ladder: Ladder, probe: Probe | None, device: torch.device
) -> tuple[str, int, float]:
    """Quantise `expert` from `rung` down the quantise ladder, each rung checked against its bf16 eager forward
    (`probe`; None skips the check, e.g. an expert waiting on the CPU for the offload plan). Returns the rung that
    passed, the linears it quantised and its measured error (NaN when not checked). A rung that fails leaves
    the expert's weights as they were."""
    reference = probe.run(expert) if probe is not None else None
    measured = {"error": float("nan")}

    def attempt(kind: str) -> int:
        if kind == "none":
            return 0
        saved = block_weights(expert)
        try:
            ladder.fault("quantise")
            check_capable(kind, device)
            count = quantize_expert(expert, kind)
            if reference is not None:
                error = relative_l2(probe.run(expert), reference)
                measured["error"] = checked(kind, error, QUANT_BOUND[kind], "the plain bf16 forward")
            return count
        except BaseException:
            restore_weights(expert, saved)
            raise

    kind, count = ladder.climb("quantise", rung, attempt)
    return kind, count, measured["error"] if kind != "none" else float("nan")


def choose_compile(experts: list[torch.nn.Module], rung: str, ladder: Ladder, probe: Probe) -> tuple[str, float]:
    """Compile the experts' blocks from `rung` down the compile ladder, the first expert's compiled forward
    checked against its eager one (this forward is also where the compiling happens). Returns the rung that
    passed and its error (NaN when off)."""
    reference = probe.run(experts[0])
    measured = {"error": float("nan")}

    def attempt(how: str) -> None:
        if how == "off":
            return
        try:
            ladder.fault("compile")
            compile_experts(experts, how)
            error = relative_l2(probe.run(experts[0]), reference)
            measured["error"] = checked(f"compile {how}", error, COMPILE_BOUND, "the eager forward")
        except BaseException:
            uncompile_experts(experts)
            raise

    how, _ = ladder.climb("compile", rung, attempt)
    return how, measured["error"] if how != "off" else float("nan")


def choose_fusion(expert: torch.nn.Module, pair, ladder: Ladder) -> bool:
    """Fuse the turbo pair's half into `expert`; False (the pair to be attached per job) when fusing fails."""

    def attempt(how: str) -> None:
        if how == "fused":
            ladder.fault("fusion")
            fuse(expert, pair, 1.0)

    how, _ = ladder.climb("fusion", "fused", attempt)
    return how == "fused"
