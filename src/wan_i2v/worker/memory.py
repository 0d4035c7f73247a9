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
from .settings import PLANS

log = logging.getLogger(__name__)

GIB = 1024**3
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


def named_leaves(t: torch.Tensor, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """The plain tensors holding a tensor's data, each with its path inside `t` (`""` for `t` itself, `":qdata"`
    for a tensor subclass's inner tensor, torchao's fp8 and int8 weights being such subclasses)."""
    if type(t) in (torch.Tensor, torch.nn.Parameter) or not hasattr(t, "__tensor_flatten__"):
        return [(prefix, t)]
    names, _ = t.__tensor_flatten__()
    return [pair for name in names for pair in named_leaves(getattr(t, name), f"{prefix}:{name}")]


def _leaves(t: torch.Tensor) -> list[torch.Tensor]:
    return [leaf for _, leaf in named_leaves(t)]


def module_leaves(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every plain tensor of `module`'s parameters and buffers (non-persistent ones too), by a unique name."""
    return {
        name + path: leaf
        for name, t in (*module.named_parameters(), *module.named_buffers())
        for path, leaf in named_leaves(t)
    }


def align_storage(module: torch.nn.Module, align: int = 64) -> int:
    """Gives every tensor of `module` whose data does not start on an `align`-byte boundary storage of its own.

    Weights read from safetensors on the CPU are views at odd offsets of the file's buffer, and CPU kernels
    (oneDNN, int8 with VNNI) choose their code path by alignment: the same weights then compute slightly
    differently before and after a park and fetch (which allocates aligned), and int8 activations magnify
    that into different frames. Aligned at load, every memory plan computes the same video. A no-op on a
    GPU, whose allocator aligns to 512 bytes. Returns how many tensors were copied.
    """
    copied = 0
    for t in (*module.parameters(), *module.buffers()):
        for leaf in _leaves(t):
            if leaf.numel() and leaf.data_ptr() % align:
                fresh = torch.empty_strided(leaf.shape, leaf.stride(), dtype=leaf.dtype, device=leaf.device)
                leaf.data = fresh.copy_(leaf.detach())
                copied += 1
    return copied


def _span(t: torch.Tensor) -> int:
    """Elements of storage a (possibly strided) tensor covers."""
    if t.numel() == 0:
        return 0
    return 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True))


class Parking:
    """A module whose weights wait in pinned host memory and come to the device only while needed.

    The host copy is one flat buffer per module, page-locked with cudaHostRegister at its exact size
    (PyTorch's pinned allocator rounds each tensor up to a power of two: 1.5x the model in host memory),
    taken once. `park()` frees the device copy at once (nothing is copied back); `fetch()` copies it
    in, on a side stream when asked so that the copy overlaps compute; `ready()` makes the current stream
    wait for that copy. Quantised experts (torchao subclasses) park their inner tensors the same way, so
    no module is rebuilt. On the CPU the same steps run, the tensors emptied while parked, so the tests
    see a parked module that would fail if it were used.
    """

    ALIGN = 512  # bytes: every view starts aligned for any dtype

    def __init__(self, module: torch.nn.Module, device: torch.device, park_now: bool):
        self.module, self.device = module, device
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._tensors = [leaf for t in (*module.parameters(), *module.buffers()) for leaf in _leaves(t)]
        self._pending = False
        self._registered = False
        sizes = [-(-_span(t) * t.element_size() // self.ALIGN) * self.ALIGN for t in self._tensors]
        self._buffer = torch.empty(sum(sizes), dtype=torch.uint8)
        if device.type == "cuda" and self._buffer.numel():
            code = torch.cuda.cudart().cudaHostRegister(self._buffer.data_ptr(), self._buffer.numel(), 0)
            self._registered = int(code) == 0
            if not self._registered:
                log.warning(
                    "host memory for %s not page-locked (cudaHostRegister: %s): slower copies",
                    type(module).__name__,
                    code,
                )
        self._host: list[torch.Tensor] = []
        offset = 0
        for t, size in zip(self._tensors, sizes, strict=True):
            raw = self._buffer[offset : offset + _span(t) * t.element_size()]
            view = raw.view(t.dtype).as_strided(t.shape, t.stride()) if t.numel() else torch.empty(0, dtype=t.dtype)
            view.copy_(t.detach())
            self._host.append(view)
            offset += size
        self.on_device = True
        if park_now:
            self.park()

    def __del__(self):
        if self._registered:
            torch.cuda.cudart().cudaHostUnregister(self._buffer.data_ptr())

    def park(self) -> None:
        if not self.on_device:
            return
        self.ready()  # a copy still under way must land before its memory is dropped
        for t in self._tensors:
            t.data = torch.empty(0, dtype=t.dtype, device=self.device)
        self.on_device = False

    def fetch(self, overlap: bool = False) -> None:
        if self.on_device:
            return
        stream = self._stream if overlap and self._stream is not None else None
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            for t, host in zip(self._tensors, self._host, strict=True):
                copy = torch.empty_strided(host.shape, host.stride(), dtype=host.dtype, device=self.device)
                t.data = copy.copy_(host, non_blocking=self._registered)
        self.on_device = True
        self._pending = stream is not None

    def release_to_host(self) -> None:
        """Leave the module in host memory, its tensors the host copy (for the offload plan, which moves it
        itself); this Parking is not used again."""
        self.ready()
        for t, host in zip(self._tensors, self._host, strict=True):
            t.data = host
        self.on_device = False

    def ready(self) -> None:
        """The current stream waits for a copy started by `fetch(overlap=True)`."""
        if self._pending:
            self._pending = False
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self._stream)
            for t in self._tensors:  # made on the side stream, used and freed on this one
                t.data.record_stream(current)


class Placement:
    """Where the models live under the memory plan, stepped down the place ladder (resident -> swap -> offload,
    levers.py) when loading onto the GPU runs out of memory or parking or fetching fails. Every model placed
    so far is moved to where the new plan keeps it, so the plan always describes every model."""

    def __init__(self, plan: MemoryPlan, device: torch.device, replan, ladder):
        self.plan, self.device = plan, device
        self.replan = replan  # plan name -> MemoryPlan (choose_plan with the same sizes)
        self.ladder = ladder
        self.experts: dict[str, torch.nn.Module] = {}
        self.parked: dict[str, Parking] = {}  # the engine reads this same dict
        self._pipe = self._first = self._place_rest = None
        self._rest_plan: str | None = None  # the plan the text encoder and VAE were placed for

    @property
    def work_device(self) -> torch.device:
        """Where an expert is loaded and prepared: the GPU, or the host under the offload plan."""
        return self.device if self.plan.name != "offload" else torch.device("cpu")

    def load(self, make):
        """`make(device)` onto the work device; out of memory there steps the plan down and loads again."""
        while True:
            try:
                return make(self.work_device)
            except torch.OutOfMemoryError as exc:
                self.step_down(exc)

    def settle(self, side: str, expert: torch.nn.Module) -> None:
        """Leave a prepared expert where the plan keeps it between jobs (parked at once under swap: two bf16
        experts need not fit side by side)."""
        self.experts[side] = expert
        self._attempt()

    def finish(self, pipe, first: str, place_rest) -> None:
        """The experts as every job begins (`first` on the device under swap), then the text encoder and VAE
        by `place_rest(pipe, plan)`, which returns what it parked."""
        self._pipe, self._first, self._place_rest = pipe, first, place_rest
        self._attempt()

    def step_down(self, exc: BaseException) -> None:
        """The plan below (ColdStartError when there is none), every model moved to where it keeps it."""
        self._lower(exc)
        self._attempt()

    def _lower(self, exc: BaseException) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.plan = self.replan(self.ladder.step_down("place", self.plan.name, exc))

    def _attempt(self) -> None:
        while True:
            try:
                self.ladder.fault("place")
                self._arrange()
                return
            except (RuntimeError, OSError) as exc:  # out of memory, parking or fetching failed, WAN_FAULTS=place
                self._lower(exc)

    def _arrange(self) -> None:
        offload = self.plan.name == "offload"
        if offload:
            for name in list(self.parked):
                self.parked.pop(name).release_to_host()
        for side, expert in self.experts.items():
            if self.plan.name == "swap" and side not in self.parked:
                self.parked[side] = Parking(expert, self.device, park_now=True)
            elif offload:
                expert.to("cpu")
        if self._pipe is None:
            return
        if self.plan.name == "swap":
            self.parked[self._first].fetch()
        if self._rest_plan is None or (offload and self._rest_plan != "offload"):
            self.parked.update(self._place_rest(self._pipe, self.plan))
            self._rest_plan = self.plan.name
