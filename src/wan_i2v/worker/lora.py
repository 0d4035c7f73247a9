"""LoRA files for the Wan2.2 experts: read safely, map onto an expert, fuse into it or attach for one job.

Two key layouts are read:
- the original Wan layout of the lightx2v files (`diffusion_model.blocks.N.self_attn.q.lora_down.weight`,
  `lora_up.weight`, optional `alpha`, and full deltas `.diff` for weights, `.diff_b` for biases and
  `.diff_m` for modulation tables), as LightX2V's extractor writes them;
- the diffusers/PEFT layout (`transformer.blocks.N.attn1.to_q.lora_A.weight`, `lora_B.weight`, `lora_B.bias`).

diffusers converts the first layout too, but drops the norm and modulation deltas that the lightx2v
files carry (see the README's turbo section), so the mapping is ours; tests check it against diffusers'
own conversion on the keys both handle. Keys for Wan2.1's image branch (`k_img`, `v_img`, `norm_k_img`,
`img_emb`), which the lightx2v low-noise file carries but Wan2.2 I2V-A14B does not have, are skipped;
any other key that fits no module, or a shape that does not fit, is an error naming the key.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import InputError

log = logging.getLogger(__name__)

SAFETENSORS_SUFFIX = ".safetensors"
# Wan2.1's image-conditioning branch: present in some lightx2v I2V files, absent from Wan2.2 I2V-A14B.
ABSENT_BRANCH = re.compile(r"(^|\.)(k_img|v_img|norm_k_img|img_emb)(\.|$)")

# Original Wan module names -> diffusers WanTransformer3DModel names.
RENAMES = [
    (re.compile(r"^blocks\.(\d+)\.self_attn\.([qkv])$"), r"blocks.\1.attn1.to_\2"),
    (re.compile(r"^blocks\.(\d+)\.self_attn\.o$"), r"blocks.\1.attn1.to_out.0"),
    (re.compile(r"^blocks\.(\d+)\.self_attn\.norm_([qk])$"), r"blocks.\1.attn1.norm_\2"),
    (re.compile(r"^blocks\.(\d+)\.cross_attn\.([qkv])$"), r"blocks.\1.attn2.to_\2"),
    (re.compile(r"^blocks\.(\d+)\.cross_attn\.o$"), r"blocks.\1.attn2.to_out.0"),
    (re.compile(r"^blocks\.(\d+)\.cross_attn\.norm_([qk])$"), r"blocks.\1.attn2.norm_\2"),
    (re.compile(r"^blocks\.(\d+)\.ffn\.0$"), r"blocks.\1.ffn.net.0.proj"),
    (re.compile(r"^blocks\.(\d+)\.ffn\.2$"), r"blocks.\1.ffn.net.2"),
    (re.compile(r"^blocks\.(\d+)\.norm3$"), r"blocks.\1.norm2"),  # Wan's norm3 is the cross-attention norm
    (re.compile(r"^blocks\.(\d+)\.modulation$"), r"blocks.\1.scale_shift_table"),
    (re.compile(r"^text_embedding\.0$"), "condition_embedder.text_embedder.linear_1"),
    (re.compile(r"^text_embedding\.2$"), "condition_embedder.text_embedder.linear_2"),
    (re.compile(r"^time_embedding\.0$"), "condition_embedder.time_embedder.linear_1"),
    (re.compile(r"^time_embedding\.2$"), "condition_embedder.time_embedder.linear_2"),
    (re.compile(r"^time_projection\.1$"), "condition_embedder.time_proj"),
    (re.compile(r"^head\.head$"), "proj_out"),
    (re.compile(r"^head\.modulation$"), "scale_shift_table"),
    (re.compile(r"^patch_embedding$"), "patch_embedding"),
]


class LoraError(InputError):
    """A LoRA file that cannot be read or does not fit the model."""


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file, never unpickling anything; LoraError naming the file otherwise."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if path.suffix != SAFETENSORS_SUFFIX:
        raise LoraError(f"{path.name}: only {SAFETENSORS_SUFFIX} files are loaded (no pickle)")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise LoraError(f"{path.name}: not a readable safetensors file ({exc})") from None


def diffusers_name(original: str) -> str | None:
    for pattern, replacement in RENAMES:
        if pattern.match(original):
            return pattern.sub(replacement, original)
    return None


@dataclass
class LowRank:
    down: torch.Tensor  # (rank, in)
    up: torch.Tensor  # (out, rank)
    scale: float  # alpha / rank, 1 without alpha

    def delta(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """up @ down * scale in fp32, computed on `device` (the weight's: the GPU does it in milliseconds)."""
        return (self.up.to(device, torch.float32) @ self.down.to(device, torch.float32)) * self.scale


@dataclass
class ExpertLora:
    """What one LoRA file changes in one expert, in the expert's own names."""

    source: str
    low_rank: dict[str, LowRank] = field(default_factory=dict)  # Linear module path -> pair
    diffs: dict[str, torch.Tensor] = field(default_factory=dict)  # parameter path -> full delta
    skipped: list[str] = field(default_factory=list)

    def to(self, device: torch.device, dtype: torch.dtype) -> ExpertLora:
        return ExpertLora(
            self.source,
            {k: LowRank(v.down.to(device, dtype), v.up.to(device, dtype), v.scale) for k, v in self.low_rank.items()},
            {k: v.to(device, dtype) for k, v in self.diffs.items()},
            self.skipped,
        )


def _split(key: str) -> tuple[str, str]:
    """('blocks.0.self_attn.q', 'lora_down.weight') for an original-layout key without its prefix."""
    for suffix in ("lora_down.weight", "lora_up.weight", "lora_A.weight", "lora_B.weight", "lora_B.bias"):
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], suffix
    module, _, suffix = key.rpartition(".")
    return module, suffix


def parse_lora(state: dict[str, torch.Tensor], expert: torch.nn.Module, source: str) -> ExpertLora:
    """Map a LoRA state dict onto `expert`, checking every key and shape; LoraError naming what does not fit."""
    if not state:
        raise LoraError(f"{source}: holds no tensors")
    original = any(k.startswith("diffusion_model.") for k in state)
    modules = dict(expert.named_modules())
    parameters = dict(expert.named_parameters())
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    result = ExpertLora(source)
    for key, tensor in state.items():
        bare = key.removeprefix("diffusion_model.").removeprefix("transformer.")
        if ABSENT_BRANCH.search(bare):
            result.skipped.append(key)
            continue
        module_name, suffix = _split(bare)
        if suffix == "diff_m":  # blocks.N.diff_m and head.diff_m: the modulation table of that module
            module_name, suffix = f"{module_name}.modulation" if module_name else "modulation", "diff"
        name = diffusers_name(module_name) if original else module_name
        if name is None or (name not in modules and name not in parameters):
            raise LoraError(f"{source}: key {key!r} fits no module of Wan2.2 I2V-A14B")
        if suffix in ("lora_down.weight", "lora_A.weight", "lora_up.weight", "lora_B.weight", "alpha"):
            pairs.setdefault(name, {})[suffix] = tensor
        elif suffix in ("diff", "diff_b", "lora_B.bias"):
            param = name if name in parameters else f"{name}.{'weight' if suffix == 'diff' else 'bias'}"
            if param not in parameters:
                raise LoraError(f"{source}: key {key!r}: {name} has no such parameter")
            if tuple(tensor.shape) != tuple(parameters[param].shape):
                raise LoraError(
                    f"{source}: key {key!r} has shape {tuple(tensor.shape)}, "
                    f"{param} has {tuple(parameters[param].shape)}"
                )
            result.diffs[param] = tensor
        else:
            raise LoraError(f"{source}: key {key!r} is not a LoRA tensor (lora_down/lora_up/alpha/diff/diff_b/diff_m)")
    for name, parts in pairs.items():
        down = parts.get("lora_down.weight", parts.get("lora_A.weight"))
        up = parts.get("lora_up.weight", parts.get("lora_B.weight"))
        module = modules.get(name)
        if down is None or up is None:
            raise LoraError(f"{source}: {name} has only one half of its LoRA pair")
        if not isinstance(module, torch.nn.Linear):
            raise LoraError(f"{source}: {name} is not a linear layer; LoRA pairs fit linear layers only")
        out_features, in_features = module.weight.shape
        if down.dim() != 2 or up.dim() != 2 or down.shape[0] != up.shape[1]:
            raise LoraError(f"{source}: {name}: down {tuple(down.shape)} and up {tuple(up.shape)} are not a LoRA pair")
        if down.shape[1] != in_features or up.shape[0] != out_features:
            raise LoraError(
                f"{source}: {name}: LoRA maps {down.shape[1]} -> {up.shape[0]} features, the layer "
                f"{in_features} -> {out_features}"
            )
        alpha = parts.get("alpha")
        scale = float(alpha) / down.shape[0] if alpha is not None else 1.0
        result.low_rank[name] = LowRank(down, up, scale)
    if result.skipped:
        log.info(
            "%s: %d keys for Wan2.1's image branch skipped (Wan2.2 I2V-A14B has none)", source, len(result.skipped)
        )
    return result


@torch.no_grad()
def fuse(expert: torch.nn.Module, lora: ExpertLora, scale: float = 1.0) -> None:
    """Add the LoRA into the expert's weights (computed in fp32): no cost per step afterwards."""
    modules, parameters = dict(expert.named_modules()), dict(expert.named_parameters())
    for name, pair in lora.low_rank.items():
        weight = modules[name].weight
        weight.copy_((weight.float() + scale * pair.delta(weight.device)).to(weight.dtype))
    for name, delta in lora.diffs.items():
        param = parameters[name]
        param.copy_((param.float() + scale * delta.float().to(param.device)).to(param.dtype))


class Adapter:
    """A LoRA kept on an expert, off (scale 0) until a job turns it on, without touching linear weights.

    Linear layers get a forward hook adding `scale * up(down(x))` (and `scale * x @ diff.T` for a full
    weight delta); other parameters (biases, norms, modulation) are patched in place while on and
    restored exactly from a copy. The hooks are registered once, before the blocks are compiled, and
    read `scale` each call: torch.compile traces them with the blocks and guards on the value (one graph
    with the deltas, one without; hooks added after compiling would be silently ignored).
    `patch_params`/`restore_params` are separate so that an expert parked in host memory (the swap
    plan) is patched only while it is on the GPU.
    """

    def __init__(self, expert: torch.nn.Module, lora: ExpertLora):
        self.expert, self.lora, self.scale = expert, lora, 0.0
        self._saved: dict[str, torch.Tensor] = {}
        modules = dict(expert.named_modules())
        linear_weights = {f"{n}.weight": n for n, m in modules.items() if isinstance(m, torch.nn.Linear)}
        by_module: dict[str, list] = {}
        for name, pair in lora.low_rank.items():
            by_module.setdefault(name, []).append(("pair", pair))
        self._param_diffs = {}
        for param, delta in lora.diffs.items():
            if param in linear_weights:
                by_module.setdefault(linear_weights[param], []).append(("full", delta))
            else:
                self._param_diffs[param] = delta
        parameters = dict(expert.named_parameters())  # Parameter objects outlive parking (only .data changes)
        self._params = {name: parameters[name] for name in self._param_diffs}
        self._hooks = [
            modules[name].register_forward_hook(_delta_hook(self, parts)) for name, parts in by_module.items()
        ]

    def activate(self, scale: float) -> None:
        self.scale = float(scale)

    @torch.no_grad()
    def patch_params(self) -> None:
        """Called before each step of the expert: patches what is not patched yet."""
        if self.scale == 0.0:
            return
        for name, delta in self._param_diffs.items():
            if name in self._saved:
                continue
            param = self._params[name]
            self._saved[name] = param.detach().clone()
            param.copy_((param.float() + self.scale * delta.float().to(param.device)).to(param.dtype))

    @torch.no_grad()
    def restore_params(self, parked: bool = False) -> None:
        """Put the saved values back (or, for an expert whose device copy was just dropped, only forget them)."""
        for name, saved in self._saved.items():
            if not parked:
                self._params[name].copy_(saved)
        self._saved.clear()

    def deactivate(self, parked: bool = False) -> None:
        self.scale = 0.0
        self.restore_params(parked)

    def remove(self) -> None:
        self.deactivate()
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()


def _delta_hook(adapter: Adapter, parts: list):
    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        scale = adapter.scale
        if scale == 0.0:
            return output
        x = args[0]
        for kind, value in parts:
            if kind == "pair":
                output = output + F.linear(F.linear(x.to(value.down.dtype), value.down), value.up) * (
                    scale * value.scale
                )
            else:
                output = output + F.linear(x.to(value.dtype), value) * scale
        return output

    return hook
