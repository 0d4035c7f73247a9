"""Write a tiny, randomly initialised Wan2.2 I2V pipeline to disk, in the real diffusers layout.

    python builder/tiny_model.py DIR

It also writes a tiny turbo LoRA pair into DIR/turbo-lora/, in the key layout of the published
lightx2v Wan2.2-Distill-Loras I2V files (see `write_lora_pair`), so that `WAN_MODEL=DIR` serves turbo
jobs and the real LoRA reading and fusing code runs in tests; example user LoRA pairs into
DIR/loras/ in the key layouts trainers write (see `write_user_loras`), for `WAN_LORA_DIR=DIR/loras`;
and random RIFE v4.26 weights into DIR/interpolation/flownet.pkl, as the published file holds them
(`write_rife`), so that interpolation jobs run the real loading and RIFE code.

Same classes and folder layout as Wan-AI/Wan2.2-I2V-A14B-Diffusers (two WanTransformer3DModel
experts with boundary_ratio 0.9, AutoencoderKLWan with z_dim 16, UMT5EncoderModel, a T5 tokenizer,
UniPC flow scheduler), but a few megabytes, built from configs in code: no hub, no network. Tests and
the CPU quick start load it through the same code path as the real model. Its videos are noise.
"""

from __future__ import annotations

import argparse
import json
import string
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import T5TokenizerFast, UMT5Config, UMT5EncoderModel

TEXT_DIM = 32


def build_tokenizer() -> T5TokenizerFast:
    """A small unigram tokenizer over ASCII; anything else is <unk>, as with the real one's rare pieces."""
    specials = ["<pad>", "</s>", "<unk>"]
    symbols = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = [(s, 0.0) for s in specials] + [("▁", -2.0)]
    vocab += [(c, -3.0) for c in symbols] + [("▁" + c, -2.5) for c in symbols]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_ids=0,
        model_max_length=512,
    )


def build_expert(seed: int, **sizes) -> WanTransformer3DModel:
    """A tiny expert; `sizes` overrides its widths and depth (tests of memory use want a larger one)."""
    torch.manual_seed(seed)
    config = dict(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=36,  # 16 noise + 4 mask + 16 condition latents, as in the real I2V experts
        out_channels=16,
        text_dim=TEXT_DIM,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,  # two: the step cache (FirstBlockCache) needs a first block and a rest
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=1024,  # the real value: smaller tables break at 480p and 720p
    )
    return WanTransformer3DModel(**{**config, **sizes})


def build_pipeline(seed: int = 0, **expert_sizes) -> WanImageToVideoPipeline:
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=TEXT_DIM,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=32,
            feed_forward_proj="gated-gelu",
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )
    torch.manual_seed(seed + 1)
    # Narrow and without residual blocks: the pixel-level convolutions dominate CPU job time, and the
    # load and endurance tests run hundreds of jobs (the real VAE: base_dim 96, dim_mult [1, 2, 4, 4]).
    vae = AutoencoderKLWan(base_dim=2, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=0)
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=5.0
    )
    return WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        transformer=build_expert(seed + 2, **expert_sizes),
        transformer_2=build_expert(seed + 3, **expert_sizes),
        boundary_ratio=0.9,
    )


def _lora_shapes(config) -> dict[str, tuple[int, int]]:
    """(out, in) of each linear layer a lightx2v I2V LoRA covers, in the original Wan names."""
    dim = config.num_attention_heads * config.attention_head_dim
    shapes = {}
    for n in range(config.num_layers):
        for attn in ("self_attn", "cross_attn"):
            for proj in "qkvo":
                shapes[f"blocks.{n}.{attn}.{proj}"] = (dim, dim)
        shapes[f"blocks.{n}.ffn.0"] = (config.ffn_dim, dim)
        shapes[f"blocks.{n}.ffn.2"] = (dim, config.ffn_dim)
    shapes["text_embedding.0"] = (dim, config.text_dim)
    shapes["text_embedding.2"] = (dim, dim)
    shapes["time_embedding.0"] = (dim, config.freq_dim)
    shapes["time_embedding.2"] = (dim, dim)
    shapes["time_projection.1"] = (dim * 6, dim)
    return shapes


def lora_state(config, rank: int, seed: int, image_branch: bool, std: float = 0.02) -> dict[str, torch.Tensor]:
    """A random LoRA in the layout of lightx2v's extracted I2V files (LightX2V tools/extract/lora_extractor.py).

    Large linear layers get `lora_down`/`lora_up` (no alpha: the scale is 1) and `diff_b` for their bias;
    small tensors are full deltas: `head.head.diff` and `diff_b`, `patch_embedding.diff`, the norms' `diff`,
    the modulation tables' `diff_m`. The low-noise file also carries Wan2.1's image-branch keys (`k_img`,
    `v_img`, `norm_k_img`, `img_emb`), which Wan2.2 I2V-A14B lacks. bf16, as published.
    """
    generator = torch.Generator().manual_seed(seed)
    dim = config.num_attention_heads * config.attention_head_dim

    def rand(*shape):
        return (torch.randn(*shape, generator=generator) * std).to(torch.bfloat16)

    state = {}
    shapes = _lora_shapes(config)
    if image_branch:
        for n in range(config.num_layers):
            shapes[f"blocks.{n}.cross_attn.k_img"] = shapes[f"blocks.{n}.cross_attn.v_img"] = (dim, dim)
        shapes["img_emb.proj.1"] = shapes["img_emb.proj.3"] = (dim, dim)
    for name, (out_features, in_features) in shapes.items():
        state[f"diffusion_model.{name}.lora_down.weight"] = rand(rank, in_features)
        state[f"diffusion_model.{name}.lora_up.weight"] = rand(out_features, rank)
        state[f"diffusion_model.{name}.diff_b"] = rand(out_features)
    for n in range(config.num_layers):
        for norm in ("self_attn.norm_q", "self_attn.norm_k", "cross_attn.norm_q", "cross_attn.norm_k"):
            state[f"diffusion_model.blocks.{n}.{norm}.diff"] = rand(dim)
        state[f"diffusion_model.blocks.{n}.norm3.diff"] = rand(dim)
        state[f"diffusion_model.blocks.{n}.norm3.diff_b"] = rand(dim)
        state[f"diffusion_model.blocks.{n}.diff_m"] = rand(1, 6, dim)
        if image_branch:
            state[f"diffusion_model.blocks.{n}.cross_attn.norm_k_img.diff"] = rand(dim)
    head_out = config.out_channels * int(torch.tensor(config.patch_size).prod())
    state["diffusion_model.head.head.diff"] = rand(head_out, dim)
    state["diffusion_model.head.head.diff_b"] = rand(head_out)
    state["diffusion_model.head.diff_m"] = rand(1, 2, dim)
    state["diffusion_model.patch_embedding.diff"] = rand(dim, config.in_channels, *config.patch_size)
    state["diffusion_model.patch_embedding.diff_b"] = rand(dim)
    if image_branch:
        state["diffusion_model.img_emb.proj.0.diff"] = rand(dim)
        state["diffusion_model.img_emb.proj.4.diff"] = rand(dim)
    return state


def write_lora_pair(dest: Path, config, rank: int = 4, seed: int = 0, std: float = 0.02) -> dict[str, Path]:
    """Write a high/low-noise turbo pair for experts of `config` into `dest` (named like the published files)."""
    from safetensors.torch import save_file

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    files = {}
    for offset, side in enumerate(("high_noise", "low_noise")):
        state = lora_state(config, rank, seed + offset, image_branch=side == "low_noise", std=std)
        path = dest / f"wan2.2_i2v_A14b_{side}_lora_rank{rank}_lightx2v_4step_tiny.safetensors"
        save_file(state, str(path))
        files[side] = path
    return files


# The layer names of the block linears a style or motion LoRA trains, in each layout's spelling.
USER_LORA_LAYERS = {
    "wan": ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
            "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2"],
    "peft": ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
             "attn2.to_v", "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2"],
}  # fmt: skip
USER_LORA_LAYOUTS = ("wan", "kohya", "peft", "diffsynth", "kohya-dotted", "aitoolkit", "kohya-te")
# Layouts without an alpha: the strength alpha / rank is folded into up (as their trainers' own scale is 1).
NO_ALPHA = ("peft", "diffsynth", "aitoolkit")
# Example pairs (write_user_loras) with the deltas of another layout's pair, so that their frames can be compared.
SAME_DELTAS_AS = {"diffsynth": "peft", "kohya-dotted": "peft", "aitoolkit": "peft", "kohya-te": "peft"}


def user_lora_state(
    config, layout: str, rank: int = 4, seed: int = 0, std: float = 0.1, alpha: float | None = None
) -> dict[str, torch.Tensor]:
    """A random user LoRA over every block's attention and feed-forward linears, in one trainer layout:

    - `wan`: the original Wan names as ComfyUI and most published Wan LoRAs have them
      (`diffusion_model.blocks.0.self_attn.q.lora_down.weight`, `lora_up.weight`, `alpha`);
    - `kohya`: musubi-tuner's (`lora_unet_blocks_0_self_attn_q.lora_down.weight`, `lora_up.weight`, `alpha`);
    - `peft`: diffusers/PEFT's (`transformer.blocks.0.attn1.to_q.lora_A.weight`, `lora_B.weight`, no alpha);
    - `diffsynth`: DiffSynth-Studio's (`blocks.0.self_attn.q.lora_A.default.weight`, `lora_B.default.weight`,
      no prefix, no alpha);
    - `kohya-dotted`: kohya names flattened only up to the block (`lora_unet_blocks_0.self_attn.q.lora_down.weight`,
      `lora_up.weight`, `alpha`), as in files users report (ComfyUI-WanVideoWrapper issue 869);
    - `aitoolkit`: ai-toolkit's (`diffusion_model.blocks.0.self_attn.q.lora_A.weight`, `lora_B.weight`, no alpha);
    - `kohya-te`: `kohya` plus a few keys for the text encoder (`lora_te_encoder_block_0_layer_0_SelfAttention_q...`),
      which the worker skips.
    The same seed gives the same deltas in every layout. Weights in bf16, as trainers save them.
    """
    if layout not in USER_LORA_LAYOUTS:
        raise ValueError(f"layout {layout!r}: one of {', '.join(USER_LORA_LAYOUTS)}")
    generator = torch.Generator().manual_seed(seed)
    dim = config.num_attention_heads * config.attention_head_dim
    shapes = {"ffn.0": (config.ffn_dim, dim), "ffn.2": (dim, config.ffn_dim)}
    alpha = float(rank) if alpha is None else alpha
    state = {}
    for n in range(config.num_layers):
        for original, peft in zip(USER_LORA_LAYERS["wan"], USER_LORA_LAYERS["peft"], strict=True):
            out_features, in_features = shapes.get(original, (dim, dim))
            down = (torch.randn(rank, in_features, generator=generator) * std).to(torch.bfloat16)
            up = (torch.randn(out_features, rank, generator=generator) * std).to(torch.bfloat16)
            if layout in NO_ALPHA:  # the strength alpha/rank goes into up
                prefix, adapter = {
                    "peft": (f"transformer.blocks.{n}.{peft}", ""),
                    "diffsynth": (f"blocks.{n}.{original}", ".default"),
                    "aitoolkit": (f"diffusion_model.blocks.{n}.{original}", ""),
                }[layout]
                state[f"{prefix}.lora_A{adapter}.weight"] = down
                state[f"{prefix}.lora_B{adapter}.weight"] = (up.float() * (alpha / rank)).to(torch.bfloat16)
                continue
            prefix = f"diffusion_model.blocks.{n}.{original}"
            if layout in ("kohya", "kohya-te"):
                prefix = "lora_unet_" + f"blocks.{n}.{original}".replace(".", "_")
            elif layout == "kohya-dotted":
                prefix = f"lora_unet_blocks_{n}.{original}"
            state[f"{prefix}.lora_down.weight"] = down
            state[f"{prefix}.lora_up.weight"] = up
            state[f"{prefix}.alpha"] = torch.tensor(alpha)
    if layout == "kohya-te":  # UMT5 attention projections, named as kohya's sd-scripts lineage names them
        for proj in "qk":
            prefix = f"lora_te_encoder_block_0_layer_0_SelfAttention_{proj}"
            state[f"{prefix}.lora_down.weight"] = (torch.randn(rank, TEXT_DIM, generator=generator) * std).to(
                torch.bfloat16
            )
            state[f"{prefix}.lora_up.weight"] = (torch.randn(TEXT_DIM, rank, generator=generator) * std).to(
                torch.bfloat16
            )
            state[f"{prefix}.alpha"] = torch.tensor(alpha)
    return state


def write_user_loras(dest: Path, config, rank: int = 4, seed: int = 100, std: float = 0.1) -> dict[str, Path]:
    """Example pairs, one per layout: DEST/tiny-{layout}-{high,low}.safetensors; returns {stem: path}.

    Each of the first three layouts' pairs has deltas of its own; the later ones (SAME_DELTAS_AS) have the
    deltas of the `peft` pair, so each must give the frames the `peft` pair gives."""
    from safetensors.torch import save_file

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    files = {}
    for layout in USER_LORA_LAYOUTS:
        index = USER_LORA_LAYOUTS.index(SAME_DELTAS_AS.get(layout, layout))
        for offset, side in enumerate(("high", "low")):
            path = dest / f"tiny-{layout}-{side}.safetensors"
            state = user_lora_state(config, layout, rank, seed + 10 * index + offset, std, alpha=rank / 2)
            save_file(state, str(path))
            files[path.stem] = path
    return files


def write_rife(path: Path, seed: int = 0) -> Path:
    """Random RIFE v4.26 weights in the published `flownet.pkl`'s form: a torch-saved state dict whose keys
    carry DataParallel's `module.` prefix. The architecture is small (5.7 M parameters), so these are its
    real shapes (22.7 MB in fp32); only the values are random."""
    from wan_i2v.worker.interpolation.rife import IFNet

    torch.manual_seed(seed)
    state = {f"module.{key}": value.contiguous() for key, value in IFNet().state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def write_tiny_model(
    dest: Path, seed: int = 0, turbo_lora: bool = True, max_shard_size: str | None = None, rife: bool = True
) -> Path:
    """The tiny pipeline in fp32 (as the hub publishes the real experts), with a provenance file saying so;
    `max_shard_size` (e.g. "40KB") splits the large parts into indexed shards, as the real ones are."""
    dest = Path(dest)
    pipe = build_pipeline(seed)
    pipe.save_pretrained(
        dest, safe_serialization=True, **({"max_shard_size": max_shard_size} if max_shard_size else {})
    )
    provenance = {"repo": f"tiny-random (builder/tiny_model.py, seed {seed})", "commit": None, "dtype": "fp32"}
    (dest / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    if turbo_lora:
        # A larger spread than a real LoRA's, so that the tiny model's frames visibly change with it.
        write_lora_pair(dest / "turbo-lora", pipe.transformer.config, rank=4, seed=seed + 10, std=0.1)
    write_user_loras(dest / "loras", pipe.transformer.config, seed=seed + 100)
    if rife:
        write_rife(dest / "interpolation" / "flownet.pkl", seed=seed + 200)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="directory to write (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--no-turbo-lora", action="store_true", help="do not write DIR/turbo-lora/")
    parser.add_argument("--no-rife", action="store_true", help="do not write DIR/interpolation/ (RIFE weights)")
    parser.add_argument("--max-shard-size", help="split the weights into indexed shards of this size (e.g. 40KB)")
    args = parser.parse_args(argv)
    path = write_tiny_model(
        args.dest,
        args.seed,
        turbo_lora=not args.no_turbo_lora,
        max_shard_size=args.max_shard_size,
        rife=not args.no_rife,
    )
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    print(f"wrote tiny Wan2.2 I2V pipeline to {path} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
