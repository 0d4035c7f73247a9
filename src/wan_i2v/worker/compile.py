"""Regional compilation of the experts' repeated blocks, with a compile cache that outlives the worker.

Compiling the 40 identical WanTransformerBlocks once (diffusers' `compile_repeated_blocks`) costs a
fraction of compiling the whole model and ran a 480p forward in 2.74 s against 3.29 s eager on an H100
(../shared/BASELINE.md). The first call compiles (13 to 20 s per expert; 177 s with fp8); the cache
directory keeps Inductor's artifacts (`TORCHINDUCTOR_CACHE_DIR`) and PyTorch's portable cache
(`torch.compiler.save_cache_artifacts`), so the next cold start on the same image, volume or GPU type
loads instead of compiling. `dynamic` marks the shapes symbolic, so a new resolution or frame count
does not recompile; `static` specialises on the warm-up's shape (faster, but recompiles per new shape).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from ..errors import SettingsError
from ..files import written_whole
from .settings import COMPILE_CHOICES

log = logging.getLogger(__name__)

PORTABLE_CACHE = "portable-cache.bin"
RECOMPILE_LIMIT = 16


def pick_compile(requested: str, device: torch.device) -> str:
    """`WAN_COMPILE`: auto compiles (dynamic shapes) on a GPU, not on the CPU (where it costs more than it saves)."""
    if requested not in COMPILE_CHOICES:
        raise SettingsError(f"WAN_COMPILE={requested!r}: allowed {', '.join(COMPILE_CHOICES)}")
    if requested == "auto":
        return "dynamic" if device.type == "cuda" else "off"
    return requested


def compile_experts(experts: list[torch.nn.Module], how: str) -> None:
    if how == "off":
        return
    # One graph without LoRAs and one per rank bucket (lora.rank_bucket: 16 to 2048) must fit.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    for expert in experts:
        if getattr(expert, "_parallel_config", None) is None:
            expert.compile_repeated_blocks(fullgraph=True, dynamic=how == "dynamic")
            continue
        # Under context parallelism (ranks.py) diffusers wraps the first block's forward in the hook that splits
        # the tokens, which Dynamo cannot trace ("Unsupported hasattr call" in diffusers/hooks/hooks.py): that
        # block runs eager, the other blocks compile whole, their all-to-all and ring collectives included.
        for block in expert.blocks:
            if not hasattr(block, "_diffusers_hook"):
                block.compile(fullgraph=True, dynamic=how == "dynamic")


def uncompile_experts(experts: list[torch.nn.Module]) -> None:
    """Undo `compile_experts`: each block runs eager again (after a compile that failed its self-check)."""
    for expert in experts:
        for module in expert.modules():
            if getattr(module, "_compiled_call_impl", None) is not None:
                module._compiled_call_impl = None
    torch._dynamo.reset()


class CompileCache:
    """A compile cache directory: Inductor's files under `inductor/`, PyTorch's portable cache beside them."""

    def __init__(self, directory: Path | None):
        self.directory = Path(directory) if directory else None

    def state(self) -> str:
        if self.directory is None:
            return "none (WAN_COMPILE_CACHE not set: every cold start compiles)"
        portable = self.directory / PORTABLE_CACHE
        files = (
            sum(1 for f in (self.directory / "inductor").rglob("*") if f.is_file()) if self.directory.is_dir() else 0
        )
        if not portable.is_file() and not files:
            return f"empty ({self.directory})"
        size = portable.stat().st_size if portable.is_file() else 0
        return f"warm ({self.directory}: {files} inductor files, portable cache {size / 2**20:.1f} MiB)"

    def activate(self) -> None:
        """Point Inductor at the directory and load the portable cache, before anything is compiled."""
        if self.directory is None:
            return
        inductor = self.directory / "inductor"
        inductor.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(inductor)
        portable = self.directory / PORTABLE_CACHE
        if portable.is_file():
            try:
                torch.compiler.load_cache_artifacts(portable.read_bytes())
            except Exception as exc:  # a cache from another PyTorch: compile afresh, then overwrite it
                log.warning("compile cache %s not loaded (%s): compiling afresh", portable, exc)

    def save(self) -> int:
        """Write the portable cache after the warm-up; returns its size in bytes (0 when there is nothing)."""
        if self.directory is None:
            return 0
        saved = torch.compiler.save_cache_artifacts()
        if not saved:
            return 0
        data, _info = saved
        with written_whole(self.directory / PORTABLE_CACHE) as tmp:
            Path(tmp).write_bytes(data)
        return len(data)
