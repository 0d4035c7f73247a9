"""LoRA files for the Wan2.2 experts: read safely, map onto an expert, fuse into it or attach for one job.

These key layouts are read:
- the original Wan layout of the lightx2v files and of ComfyUI (`diffusion_model.blocks.N.self_attn.q.lora_down.weight`,
  `lora_up.weight`, optional `alpha`, and full deltas `.diff` for weights, `.diff_b` for biases and
  `.diff_m` for modulation tables), as LightX2V's extractor writes them; ai-toolkit writes the same names
  with PEFT's halves (`diffusion_model.blocks.N.self_attn.q.lora_A.weight`, `lora_B.weight`, no alpha);
- DiffSynth-Studio's: PEFT's halves with PEFT's adapter name, on the original names without a prefix
  (`blocks.N.self_attn.q.lora_A.default.weight`, `lora_B.default.weight`, no alpha; `pipe.dit.` in front
  when the trainer was not told to strip it);
- the kohya layout of musubi-tuner, the common Wan trainer (`lora_unet_blocks_N_self_attn_q.lora_down.weight`,
  `lora_up.weight`, `alpha`): the original names with dots flattened to underscores; some files flatten
  only part of the name (`lora_unet_blocks_N.self_attn.q.lora_down.weight`), which reads the same;
- the diffusers/PEFT layout (`transformer.blocks.N.attn1.to_q.lora_A.weight`, `lora_B.weight`, `lora_B.bias`).

diffusers converts the original and kohya layouts too, but drops the norm and modulation deltas that the
lightx2v files carry (see the README's turbo section) and refuses kohya files that skip a layer, so the mapping
is ours; tests check it against diffusers' own conversion on the keys both handle. Keys for Wan2.1's
image branch (`k_img`, `v_img`, `norm_k_img`, `img_emb`), which the lightx2v low-noise file and LoRAs
trained on Wan2.1 carry but Wan2.2 I2V-A14B does not have, are skipped, and so are a kohya file's keys for a
text encoder (`lora_te_`, `lora_te1_`, ...: the worker's LoRAs change the two experts only), counted in
`ExpertLora.text_encoder_keys`; any other key that fits no module, or a shape that does not fit, is an
error naming the key. DoRA files are refused.
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
FLOATS = (torch.float32, torch.bfloat16, torch.float16)
MIN_BUCKET = 16  # ranks below this share one compiled graph (published Wan LoRAs are rank 16 to 128)
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


# Kohya (musubi-tuner) module names: the original names with "." flattened to "_" (ambiguous, hence a table).
KOHYA_NAMES = [
    (re.compile(r"^blocks_(\d+)_(self_attn|cross_attn)_(q|k|v|o|norm_q|norm_k)$"), r"blocks.\1.\2.\3"),
    (re.compile(r"^blocks_(\d+)_ffn_([02])$"), r"blocks.\1.ffn.\2"),
    (re.compile(r"^blocks_(\d+)_(norm3|modulation)$"), r"blocks.\1.\2"),
    (re.compile(r"^(text_embedding|time_embedding)_([02])$"), r"\1.\2"),
    (re.compile(r"^time_projection_1$"), "time_projection.1"),
    (re.compile(r"^head_(head|modulation)$"), r"head.\1"),
    (re.compile(r"^patch_embedding$"), "patch_embedding"),
]
KOHYA_PREFIX = "lora_unet_"
# Checked on the whole key after the prefix: "_" or "." around it (the name may be flattened only in part).
KOHYA_ABSENT_BRANCH = re.compile(r"(^|[_.])(k_img|v_img|norm_k_img|img_emb)([_.]|$)")
# A kohya (sd-scripts lineage) file's text-encoder keys: lora_te_ (one encoder), lora_te1_, lora_te2_, ...
TEXT_ENCODER_KEY = re.compile(r"^lora_te\d*_")
# Prefixes in front of the module names: the original Wan names follow the first two (`pipe.dit.`:
# DiffSynth-Studio without --remove_prefix_in_ckpt); after the others, or none, the names tell.
ORIGINAL_PREFIXES = ("diffusion_model.", "pipe.dit.")
PREFIXES = (*ORIGINAL_PREFIXES, "base_model.model.", "transformer.")
# The two halves of a pair as each layout names them (PEFT's adapter name `default` kept by DiffSynth-Studio).
PAIR_SUFFIXES = {
    "lora_down.weight": "lora_down.weight",
    "lora_up.weight": "lora_up.weight",
    "lora_A.weight": "lora_A.weight",
    "lora_B.weight": "lora_B.weight",
    "lora_A.default.weight": "lora_A.weight",
    "lora_B.default.weight": "lora_B.weight",
    "lora_B.bias": "lora_B.bias",
}


class LoraError(InputError):
    """A LoRA file that cannot be read or does not fit the model."""


def read_safetensors(path: Path, shown: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file, never unpickling anything; LoraError naming the file (or `shown`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    shown = shown or path.name
    if path.suffix != SAFETENSORS_SUFFIX:
        raise LoraError(f"{shown}: only {SAFETENSORS_SUFFIX} files are loaded (no pickle)")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise LoraError(f"{shown}: not a readable safetensors file ({exc})") from None


def is_text_encoder_key(key: str) -> bool:
    """A kohya file's key for a text encoder (`lora_te_...`, `lora_te1_...`): skipped, the experts have no such layer."""
    return TEXT_ENCODER_KEY.match(key) is not None


def text_encoder_key_count(path: Path) -> int:
    """How many text-encoder keys `parse_lora` will skip in this file, from its header alone (milliseconds,
    no tensor read); 0 for a file that cannot be opened (reading it for the job then names the problem)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            keys = file.keys()
    except (SafetensorError, OSError, ValueError):
        return 0
    return sum(1 for key in keys if is_text_encoder_key(key))


def kohya_to_original(flat: str) -> str | None:
    """`blocks_0_self_attn_q` -> `blocks.0.self_attn.q` (None for a name of no Wan module)."""
    for pattern, replacement in KOHYA_NAMES:
        if pattern.match(flat):
            return pattern.sub(replacement, flat)
    return None


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
    skipped: list[str] = field(default_factory=list)  # keys of Wan2.1's image branch
    text_encoder_keys: list[str] = field(default_factory=list)  # a kohya file's lora_te* keys, skipped

    def to(self, device: torch.device, dtype: torch.dtype) -> ExpertLora:
        return ExpertLora(
            self.source,
            {k: LowRank(v.down.to(device, dtype), v.up.to(device, dtype), v.scale) for k, v in self.low_rank.items()},
            {k: v.to(device, dtype) for k, v in self.diffs.items()},
            self.skipped,
            self.text_encoder_keys,
        )


def _split(key: str) -> tuple[str, str]:
    """('blocks.0.self_attn.q', 'lora_down.weight') for an original-layout key without its prefix; PEFT's
    adapter name dropped (`lora_A.default.weight` -> `lora_A.weight`), a modulation delta named as a parameter
    (`blocks.0.diff_m` -> `blocks.0.modulation`, 'diff')."""
    for suffix, canonical in PAIR_SUFFIXES.items():
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], canonical
    module, _, suffix = key.rpartition(".")
    if suffix == "diff_m":  # blocks.N.diff_m and head.diff_m: the modulation table of that module
        return (f"{module}.modulation" if module else "modulation"), "diff"
    return module, suffix


def _bare(key: str) -> str:
    """The key without the prefix in front of its module name (`diffusion_model.`, `transformer.`, ...)."""
    for prefix in PREFIXES:
        key = key.removeprefix(prefix)
    return key


def _original_names(bare_keys: list[str], modules: dict, parameters: dict) -> bool:
    """Whether keys without a telling prefix name the original Wan modules (DiffSynth-Studio's files,
    PEFT on the original model): some name is none of the expert's own but has the form of an original one."""
    for bare in bare_keys:
        module_name, _ = _split(bare)
        if module_name in modules or module_name in parameters or ABSENT_BRANCH.search(bare):
            continue
        if diffusers_name(module_name) is not None:
            return True
    return False


def parameter_shapes(expert: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Every parameter's shape, taken while the expert is whole (a parked expert's parameters are empty)."""
    return {name: tuple(p.shape) for name, p in expert.named_parameters()}


def parse_lora(
    state: dict[str, torch.Tensor],
    expert: torch.nn.Module,
    source: str,
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> ExpertLora:
    """Map a LoRA state dict onto `expert`, checking every key and shape against `shapes` (default: the
    expert's own, see `parameter_shapes`); LoraError naming what does not fit."""
    if not state:
        raise LoraError(f"{source}: holds no tensors")
    for marker in ("dora_scale", "lora_magnitude_vector"):  # kohya's and PEFT's names for DoRA's magnitudes
        if any(k.endswith(marker) or f".{marker}." in k for k in state):
            raise LoraError(f"{source}: a DoRA file ({marker} keys); only plain LoRA files are supported")
    result = ExpertLora(source)
    result.text_encoder_keys = [k for k in state if is_text_encoder_key(k)]
    if result.text_encoder_keys:
        state = {k: v for k, v in state.items() if not is_text_encoder_key(k)}
        if not state:
            raise LoraError(
                f"{source}: holds only text-encoder keys (lora_te*); the worker's LoRAs change the experts only"
            )
        log.info(
            "%s: %d text-encoder keys (lora_te*) skipped; the worker's LoRAs change the two experts only",
            source,
            len(result.text_encoder_keys),
        )
    if any(k.startswith(KOHYA_PREFIX) for k in state):
        state = _from_kohya(state, source, result.skipped)
    modules = dict(expert.named_modules())
    parameters = shapes if shapes is not None else parameter_shapes(expert)
    bare_keys = {key: _bare(key) for key in state}
    original = any(k.startswith(ORIGINAL_PREFIXES) for k in state) or _original_names(
        list(bare_keys.values()), modules, parameters
    )
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        bare = bare_keys[key]
        if ABSENT_BRANCH.search(bare):
            result.skipped.append(key)
            continue
        module_name, suffix = _split(bare)
        name = diffusers_name(module_name) if original else module_name
        if name is None or (name not in modules and name not in parameters):
            raise LoraError(f"{source}: key {key!r} fits no module of Wan2.2 I2V-A14B")
        if suffix in ("lora_down.weight", "lora_A.weight", "lora_up.weight", "lora_B.weight", "alpha"):
            pairs.setdefault(name, {})[suffix] = tensor
        elif suffix in ("diff", "diff_b", "lora_B.bias"):
            param = name if name in parameters else f"{name}.{'weight' if suffix == 'diff' else 'bias'}"
            if param not in parameters:
                raise LoraError(f"{source}: key {key!r}: {name} has no such parameter")
            if tuple(tensor.shape) != parameters[param]:
                raise LoraError(
                    f"{source}: key {key!r} has shape {tuple(tensor.shape)}, {param} has {parameters[param]}"
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
        out_features, in_features = parameters[f"{name}.weight"]
        if down.dim() != 2 or up.dim() != 2 or down.shape[0] != up.shape[1]:
            raise LoraError(f"{source}: {name}: down {tuple(down.shape)} and up {tuple(up.shape)} are not a LoRA pair")
        if down.shape[1] != in_features or up.shape[0] != out_features:
            raise LoraError(
                f"{source}: {name}: LoRA maps {down.shape[1]} -> {up.shape[0]} features, the layer "
                f"{in_features} -> {out_features}"
            )
        if down.shape[0] == 0:
            raise LoraError(
                f"{source}: {name}: down {tuple(down.shape)} and up {tuple(up.shape)} have rank 0; "
                "a LoRA pair needs a rank of 1 or more"
            )
        scale = _scale(parts.get("alpha"), down.shape[0], f"{source}: {name}")
        result.low_rank[name] = LowRank(down, up, scale)
    if result.skipped:
        log.info(
            "%s: %d keys for Wan2.1's image branch skipped (Wan2.2 I2V-A14B has none)", source, len(result.skipped)
        )
    return result


def _scale(alpha: torch.Tensor | None, rank: int, where: str) -> float:
    """alpha / rank (1 without alpha); LoraError naming `where` unless alpha is one finite number."""
    if alpha is None:
        return 1.0
    if alpha.numel() != 1 or alpha.is_complex():
        raise LoraError(f"{where}: alpha has shape {tuple(alpha.shape)}; it must be a single number")
    if not bool(torch.isfinite(alpha).all()):
        raise LoraError(f"{where}: alpha is {float(alpha)}; it must be a finite number")
    return float(alpha) / rank


def _from_kohya(state: dict[str, torch.Tensor], source: str, skipped: list[str]) -> dict[str, torch.Tensor]:
    """A kohya state dict in the original layout (`diffusion_model.blocks.0.self_attn.q.lora_down.weight`);
    keys of Wan2.1's image branch go to `skipped`."""
    renamed = {}
    for key, tensor in state.items():
        rest = key.removeprefix(KOHYA_PREFIX)
        if not key.startswith(KOHYA_PREFIX) or "." not in rest:
            raise LoraError(f"{source}: key {key!r} mixes layouts; a kohya file has only lora_unet_* keys")
        if KOHYA_ABSENT_BRANCH.search(rest):
            skipped.append(key)
            continue
        found = _kohya_module(rest)
        if found is None:
            raise LoraError(f"{source}: key {key!r} fits no module of Wan2.2 I2V-A14B")
        original, suffix = found
        renamed[f"diffusion_model.{original}.{suffix}"] = tensor
    return renamed


def _kohya_module(rest: str) -> tuple[str, str] | None:
    """('blocks.22.self_attn.k', 'lora_down.weight') for `blocks_22_self_attn_k.lora_down.weight` and for the
    same name flattened only in part (`blocks_22.self_attn.k.lora_down.weight`): the shortest head, up to a
    dot, that names a module once flattened. No module name is the head of another, so this is unambiguous."""
    dot = rest.find(".")
    while dot != -1:
        original = kohya_to_original(rest[:dot].replace(".", "_"))
        if original is not None:
            return original, rest[dot + 1 :]
        dot = rest.find(".", dot + 1)
    return None


@torch.no_grad()
def fuse(expert: torch.nn.Module, lora: ExpertLora, scale: float = 1.0) -> None:
    """Add the LoRA into the expert's weights (computed in fp32): no cost per step afterwards."""
    modules, parameters = dict(expert.named_modules()), dict(expert.named_parameters())
    steps = [(modules[name].weight, pair.delta) for name, pair in lora.low_rank.items()]
    steps += [
        (parameters[name], lambda device, diff=diff: diff.float().to(device)) for name, diff in lora.diffs.items()
    ]
    done = []
    try:
        for target, delta in steps:
            _add_into(target, scale * delta(target.device))
            done.append((target, delta))
    except BaseException:
        for target, delta in reversed(done):  # a fusion that fails part-way takes back out what it added
            _add_into(target, -scale * delta(target.device))
        raise


def _add_into(target: torch.Tensor, delta: torch.Tensor) -> None:
    target.copy_((target.float() + delta).to(target.dtype))


@dataclass
class _Slot:
    """What one linear layer adds to its output while LoRAs are attached; all None when nothing is."""

    down: torch.Tensor | None = None  # (rank, in): the attached pairs' down matrices, stacked
    up: torch.Tensor | None = None  # (out, rank): their up matrices, each pair's strength folded in
    full: torch.Tensor | None = None  # (out, in): the sum of full weight deltas, strengths folded in

    def clear(self) -> None:
        self.down = self.up = self.full = None


class Adapter:
    """The LoRA hooks of one expert: adding nothing until a job attaches LoRAs, and nothing again after it.

    Every linear layer gets a forward hook, registered once before the blocks are compiled, that adds
    `up(down(x))` (and `x @ full.T` for a full weight delta) from its slot. Attaching stacks all of a
    job's LoRAs on that layer into one pair with the strengths folded into `up`, so any number of LoRAs
    costs two thin matmuls, and a strength is data, not a value torch.compile would guard on (a slot that
    is empty or not is: one graph without LoRAs, one with). Low-rank pairs never touch a weight, so
    quantised experts take LoRAs too. Other parameters (biases, norms, modulation) are patched in place
    while attached and restored exactly from a copy; `patch_params`/`restore_params` are separate so
    that an expert parked in host memory (the swap plan) is patched only while it is on the GPU.

    Inside compiled blocks the slots must look the same to torch.compile from job to job: each new pattern
    of covered layers, or each new rank (torch.compile specialises on the shapes of tensors a hook reaches,
    even with dynamic shapes), would be a new graph, and the ninth fails the job. `settle()` therefore
    gives every block linear a pair of one rank once a job's LoRAs are attached: zeros where a layer has
    none, the rank padded up to a power of two (a handful of graphs over a worker's life, each compiled
    once and kept in the compile cache). Full weight deltas on float weights are patched into the weight
    like other parameters. Only a full delta on a quantised block weight cannot be evened out (`uniform` is then
    False, and the engine runs that job eager).
    """

    def __init__(self, expert: torch.nn.Module):
        self.expert = expert
        linears = {name: m for name, m in expert.named_modules() if isinstance(m, torch.nn.Linear)}
        self._slots = {name: _Slot() for name in linears}
        self._features = {name: (m.in_features, m.out_features) for name, m in linears.items()}
        # Plain float weights take a full delta in place; quantised ones (tensor subclasses) only in a slot.
        self._float_weights = {
            name for name, m in linears.items() if type(m.weight.data) is torch.Tensor and m.weight.dtype in FLOATS
        }
        repeated = tuple(getattr(expert, "_repeated_blocks", ()))  # what compile_repeated_blocks compiles
        blocks = tuple(f"{name}." for name, m in expert.named_modules() if type(m).__name__ in repeated)
        self._in_blocks = [name for name in linears if blocks and name.startswith(blocks)]
        self._parameters = dict(expert.named_parameters())  # Parameter objects outlive parking (only .data changes)
        self._param_diffs: dict[str, torch.Tensor] = {}
        self._saved: dict[str, torch.Tensor] = {}
        self._hooks = [module.register_forward_hook(_slot_hook(self._slots[name])) for name, module in linears.items()]

    @property
    def attached(self) -> bool:
        return bool(self._param_diffs) or any(s.down is not None or s.full is not None for s in self._slots.values())

    @torch.no_grad()
    def attach(self, parts: list[tuple[ExpertLora, float]]) -> None:
        """Add these LoRAs at these strengths (0 leaves one out) to what is attached (nothing, between jobs)."""
        downs: dict[str, list[torch.Tensor]] = {}
        ups: dict[str, list[torch.Tensor]] = {}
        fulls: dict[str, torch.Tensor] = {}  # summed in fp32, kept in the LoRA's dtype
        diffs = self._param_diffs  # summed in fp32, added to the parameter in fp32
        dtypes: dict[str, torch.dtype] = {}
        for lora, strength in parts:
            if strength == 0.0:
                continue
            for name, pair in lora.low_rank.items():
                factor = strength * pair.scale
                downs.setdefault(name, []).append(pair.down)
                ups.setdefault(name, []).append(
                    pair.up if factor == 1.0 else (pair.up.float() * factor).to(pair.up.dtype)
                )
            for param, delta in lora.diffs.items():
                module = param.removesuffix(".weight")
                in_slot = param.endswith(".weight") and module in self._slots and module not in self._float_weights
                target, key = (fulls, module) if in_slot else (diffs, param)
                target[key] = target[key] + strength * delta.float() if key in target else strength * delta.float()
                dtypes[key] = delta.dtype
        for name in downs.keys() | fulls.keys():
            slot = self._slots[name]
            if name in downs:
                slot.down = _stacked(slot.down, downs[name], 0)
                slot.up = _stacked(slot.up, ups[name], 1)
            if name in fulls:
                added = fulls[name].to(dtypes[name])
                slot.full = added if slot.full is None else slot.full + added

    @torch.no_grad()
    def settle(self) -> None:
        """After the last `attach` of a job on compiled blocks: every block linear gets a pair of one rank."""
        covered = [self._slots[n].down for n in self._in_blocks if self._slots[n].down is not None]
        if not covered:
            return
        rank, like = rank_bucket(max(down.shape[0] for down in covered)), covered[0]
        for name in self._in_blocks:
            slot = self._slots[name]
            missing = rank - (0 if slot.down is None else slot.down.shape[0])
            if missing:
                in_features, out_features = self._features[name]
                slot.down = _stacked(slot.down, [like.new_zeros(missing, in_features)], 0)
                slot.up = _stacked(slot.up, [like.new_zeros(out_features, missing)], 1)

    @property
    def uniform(self) -> bool:
        """False when a block linear carries a full delta (a quantised weight): compiled blocks would recompile."""
        return all(self._slots[name].full is None for name in self._in_blocks)

    @torch.no_grad()
    def patch_params(self) -> None:
        """Called before each step of the expert: patches what is not patched yet."""
        for name, delta in self._param_diffs.items():
            if name in self._saved:
                continue
            param = self._parameters[name]
            self._saved[name] = param.detach().clone()
            param.copy_((param.float() + delta.to(param.device)).to(param.dtype))

    @torch.no_grad()
    def restore_params(self, parked: bool = False) -> None:
        """Put the saved values back (or, for an expert whose device copy was just dropped, only forget them)."""
        for name, saved in self._saved.items():
            if not parked:
                self._parameters[name].copy_(saved)
        self._saved.clear()

    def detach(self, parked: bool = False) -> None:
        """Back to the expert's own weights: patched parameters restored, every slot empty."""
        self.restore_params(parked)
        self._param_diffs.clear()
        for slot in self._slots.values():
            slot.clear()

    def remove(self) -> None:
        self.detach()
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()


def rank_bucket(rank: int) -> int:
    """The rank a job's stacked pairs are padded to on compiled blocks: the next power of two, at least 16."""
    return max(MIN_BUCKET, 1 << (rank - 1).bit_length())


def _stacked(current: torch.Tensor | None, added: list[torch.Tensor], dim: int) -> torch.Tensor:
    """`current` and `added` concatenated along the rank; a lone LoRA's own tensor (no copy)."""
    tensors = ([current] if current is not None else []) + added
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=dim)


def _slot_hook(slot: _Slot):
    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if slot.down is not None:
            x = args[0]
            output = output + F.linear(F.linear(x.to(slot.down.dtype), slot.down), slot.up)
        if slot.full is not None:
            output = output + F.linear(args[0].to(slot.full.dtype), slot.full)
        return output

    return hook
