"""Memory plans: where the experts, the text encoder and the VAE live, chosen once at cold start.

- `resident`: both experts stay on the GPU (quantised experts on 80 GB, anything on 141 GB).
- `swap`: one expert on the GPU, the other parked in pinned host memory; they trade places at the
  high/low-noise boundary of each job, and the high-noise expert comes back while the VAE decodes,
  so that copy is hidden behind compute (bf16 experts on an 80 GB card).
- `offload`: diffusers' model CPU offload, each model on the GPU only while it runs (last resort).

In every plan the text encoder (UMT5-XXL, 10.6 GiB in bf16) is parked in pinned host memory unless
the card has room to spare, and comes to the GPU only when a text misses the prompt cache. The
estimates below come from measurements on an H100 (../shared/BASELINE.md): 26.8 GiB of weights per
bf16 expert and 8 GiB of activations for a 720p, 81-frame forward; the VAE decode at 480p peaks at 9.3 GiB.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ..errors import SettingsError
from ..schema import FRAME_MAX, RESOLUTION_AREAS

log = logging.getLogger(__name__)

GIB = 1024**3
PLANS = ("resident", "swap", "offload")
ACTIVATION_BYTES_PER_TOKEN = 8 * GIB / 75600  # one expert forward at 720p, 81 frames (75600 tokens)
DECODE_BYTES_PER_PIXEL_FRAME = 9.3 * GIB / (832 * 480 * 81)  # fp32 VAE decode, untiled
SPARE_FOR_TEXT_ENCODER = 24 * GIB  # keep the text encoder resident only with this much left over
USABLE_SHARE = 0.9  # of the free memory at cold start: the allocator's fragmentation and CUDA context


def largest_job_tokens() -> int:
    """Tokens of the largest job the schema allows: 720p area, FRAME_MAX frames, 16x16 patches of the latent."""
    width, height = max(RESOLUTION_AREAS.values())
    latent_frames = (FRAME_MAX - 1) // 4 + 1
    return latent_frames * (width // 16) * (height // 16)


def module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def quantised_bytes(expert: torch.nn.Module, quant: str) -> int:
    """An expert's size on the GPU after quantisation (fp8 and int8 weights take one byte per value)."""
    if quant == "none":
        return module_bytes(expert)
    total = 0
    for name, module in expert.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith("blocks."):
            total += module.weight.numel() + (
                module.bias.numel() * module.bias.element_size() if module.bias is not None else 0
            )
        elif not any(True for _ in module.children()):
            total += sum(
                t.numel() * t.element_size()
                for t in (*module.parameters(recurse=False), *module.buffers(recurse=False))
            )
    return total


@dataclass(frozen=True)
class MemoryPlan:
    name: str  # resident | swap | offload
    text_encoder_on_demand: bool  # parked in host memory, brought in only on a prompt-cache miss
    vae_tiling: bool
    reason: str


def choose_plan(
    requested: str,
    device: torch.device,
    free_bytes: int,
    expert_bytes: int,
    text_encoder_bytes: int,
    vae_bytes: int,
    vae_dtype_bytes: int = 4,
) -> MemoryPlan:
    """The plan for `WAN_MEMORY_PLAN=requested` (auto chooses from the free memory and the largest job)."""
    if requested not in ("auto", *PLANS):
        raise SettingsError(f"WAN_MEMORY_PLAN={requested!r}: allowed auto, {', '.join(PLANS)}")
    if device.type != "cuda":
        # One memory for everything: plans only change where weights wait, which the CPU tests still run.
        name = "resident" if requested == "auto" else requested
        return MemoryPlan(name, name != "resident", False, f"{device.type}: host memory only")
    usable = free_bytes * USABLE_SHARE
    activations = ACTIVATION_BYTES_PER_TOKEN * largest_job_tokens()
    width, height = max(RESOLUTION_AREAS.values())
    decode = DECODE_BYTES_PER_PIXEL_FRAME * width * height * FRAME_MAX * vae_dtype_bytes / 4
    working = max(activations, decode, text_encoder_bytes)  # they never run at the same time
    both = 2 * expert_bytes + vae_bytes
    facts = (
        f"{free_bytes / GIB:.1f} GiB free, experts {expert_bytes / GIB:.1f} GiB each, text encoder "
        f"{text_encoder_bytes / GIB:.1f} GiB, largest job needs {activations / GIB:.1f} GiB of activations"
    )
    if requested == "auto":
        if both + working <= usable:
            name = "resident"
        elif expert_bytes + vae_bytes + working <= usable:
            name = "swap"
        else:
            name = "offload"
    else:
        name = requested
    on_gpu = {"resident": both, "swap": expert_bytes + vae_bytes, "offload": 0}[name]
    text_resident = name != "offload" and on_gpu + text_encoder_bytes + working + SPARE_FOR_TEXT_ENCODER <= usable
    tiling = name == "offload" or on_gpu + decode > usable
    return MemoryPlan(name, not text_resident, tiling, facts)


class Parking:
    """A module whose weights wait in (pinned) host memory and come to the device only while needed.

    `park()` frees the device copy at once (the host copy is kept, so nothing is copied back);
    `fetch()` copies it in, on a side stream when one is given so that the copy overlaps compute;
    `ready()` makes the current stream wait for that copy. On the CPU the same steps run, with the
    module's tensors emptied while parked, so the tests see a parked module that would fail if used.

    Quantised experts hold tensor subclasses (torchao) whose storage cannot be swapped in place: they
    move with `module.to()` instead, which copies the device data back on `park()` (`discards` False).
    """

    def __init__(self, module: torch.nn.Module, device: torch.device, park_now: bool):
        self.module, self.device = module, device
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._tensors = [*module.parameters(), *module.buffers()]
        self.discards = all(type(t) in (torch.Tensor, torch.nn.Parameter) for t in self._tensors)
        self._host: list[torch.Tensor] = []
        self._pending = False
        self.on_device = True
        if self.discards:
            pin = device.type == "cuda"
            for t in self._tensors:
                host = t.detach().to("cpu", copy=True)
                self._host.append(host.pin_memory() if pin else host)
        if park_now:
            self.park()

    def park(self) -> None:
        if not self.on_device:
            return
        self.ready()  # a copy still under way must land before its memory is dropped
        if self.discards:
            for t in self._tensors:
                t.data = torch.empty(0, dtype=t.dtype, device=self.device)
        else:
            with torch.inference_mode(False):  # module.to() swaps parameters, which inference mode forbids
                self.module.to("cpu")
        self.on_device = False

    def fetch(self, overlap: bool = False) -> None:
        if self.on_device:
            return
        if not self.discards:
            with torch.inference_mode(False):
                self.module.to(self.device)
            self.on_device = True
            return
        stream = self._stream if overlap and self._stream is not None else None
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            for t, host in zip(self._tensors, self._host, strict=True):
                t.data = host.to(self.device, non_blocking=stream is not None, copy=True)
        self.on_device = True
        self._pending = stream is not None

    def ready(self) -> None:
        """The current stream waits for a copy started by `fetch(overlap=True)`."""
        if self._pending:
            self._pending = False
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self._stream)
            for t in self._tensors:  # made on the side stream, used and freed on this one
                t.data.record_stream(current)
