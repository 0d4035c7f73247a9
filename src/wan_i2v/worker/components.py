"""The pipeline's large parts, loaded one at a time straight to where each will live.

`skeleton_pipeline` reads only what is small (configs, the tokenizer, the scheduler, the VAE) and stands the
two experts and the text encoder in as shapes without storage (PyTorch's meta device, in the dtypes loading
would give them): enough to choose the memory plan, map LoRAs and build a prepared expert's structure. Each
large part is then loaded on its own, diffusers and transformers streaming its shards to the device
(`device_map`), so that host memory holds about one shard at a time instead of the whole pipeline.
"""

from __future__ import annotations

from pathlib import Path

import torch

EXPERT_FOLDERS = {"high_noise": "transformer", "low_noise": "transformer_2"}
TEXT_ENCODER_FOLDER = "text_encoder"


def skeleton_pipeline(path: Path, dtype: torch.dtype, vae_dtype: torch.dtype):
    """The pipeline from `path` with its experts and text encoder as meta-device stand-ins (see module doc)."""
    import diffusers
    import transformers
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLWan, WanImageToVideoPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    with init_empty_weights():
        experts = {
            folder: WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(path, subfolder=folder))
            for folder in EXPERT_FOLDERS.values()
        }
        text_encoder = UMT5EncoderModel(UMT5Config.from_pretrained(path, subfolder=TEXT_ENCODER_FOLDER))
    for module in (*experts.values(), text_encoder):
        cast_as_loaded(module, dtype)
    vae = AutoencoderKLWan.from_pretrained(path, subfolder="vae", dtype=vae_dtype)
    return WanImageToVideoPipeline.from_pretrained(path, vae=vae, text_encoder=text_encoder, **experts)


def is_skeleton(module: torch.nn.Module | None) -> bool:
    return module is not None and any(p.is_meta for p in module.parameters())


def fp32_parts(model) -> list[str]:
    """The module names whose parameters loading in bf16 keeps in fp32, for a model class or instance:
    diffusers' `_keep_in_fp32_modules`; transformers 5.1+ keeps only `_keep_in_fp32_modules_strict` in fp32 at
    bf16 (none for UMT5; its `_keep_in_fp32_modules` applies at fp16 only)."""
    cls = model if isinstance(model, type) else type(model)
    if issubclass(cls, _diffusers_model_mixin()):
        return list(model._keep_in_fp32_modules or [])
    return list(getattr(model, "_keep_in_fp32_modules_strict", None) or [])


def kept_fp32(name: str, parts: list[str]) -> bool:
    """diffusers' rule: a dotted part of the parameter's name is one of the kept modules."""
    return any(part in parts for part in name.split("."))


def cast_as_loaded(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Give every floating parameter the dtype `from_pretrained(dtype=...)` would give it."""
    parts = fp32_parts(module)
    for name, param in module.named_parameters():
        if param.is_floating_point():
            param.data = param.data.to(torch.float32 if kept_fp32(name, parts) else dtype)


def load_expert(path: Path, folder: str, dtype: torch.dtype, device: torch.device):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel.from_pretrained(path, subfolder=folder, dtype=dtype, device_map={"": device})


def load_text_encoder(path: Path, dtype: torch.dtype, device: torch.device):
    from transformers import UMT5EncoderModel

    return UMT5EncoderModel.from_pretrained(path, subfolder=TEXT_ENCODER_FOLDER, dtype=dtype, device_map={"": device})


def materialise(skeleton: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Give a meta-device stand-in real storage on `device`, filled with zeros, in the dtypes it carries."""
    for module in skeleton.modules():
        for name, param in list(module._parameters.items()):
            if param is not None and param.is_meta:
                fresh = torch.zeros(param.shape, dtype=param.dtype, device=device)
                module._parameters[name] = torch.nn.Parameter(fresh, requires_grad=param.requires_grad)
    return skeleton.to(device).eval()


def _diffusers_model_mixin():
    from diffusers import ModelMixin

    return ModelMixin
