"""Write a tiny, randomly initialised Wan2.2 I2V pipeline to disk, in the real diffusers layout.

    python builder/tiny_model.py DIR

Same classes and folder layout as Wan-AI/Wan2.2-I2V-A14B-Diffusers (two WanTransformer3DModel
experts with boundary_ratio 0.9, AutoencoderKLWan with z_dim 16, UMT5EncoderModel, a T5 tokenizer,
UniPC flow scheduler), but a few megabytes, built from configs in code: no hub, no network. Tests and
the CPU quick start load it through the same code path as the real model. Its videos are noise.
"""

from __future__ import annotations

import argparse
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


def build_expert(seed: int) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=36,  # 16 noise + 4 mask + 16 condition latents, as in the real I2V experts
        out_channels=16,
        text_dim=TEXT_DIM,
        freq_dim=32,
        ffn_dim=32,
        num_layers=1,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=1024,  # the real value: smaller tables break at 480p and 720p
    )


def build_pipeline(seed: int = 0) -> WanImageToVideoPipeline:
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
        transformer=build_expert(seed + 2),
        transformer_2=build_expert(seed + 3),
        boundary_ratio=0.9,
    )


def write_tiny_model(dest: Path, seed: int = 0) -> Path:
    dest = Path(dest)
    build_pipeline(seed).save_pretrained(dest, safe_serialization=True)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="directory to write (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    path = write_tiny_model(args.dest, args.seed)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    print(f"wrote tiny Wan2.2 I2V pipeline to {path} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
