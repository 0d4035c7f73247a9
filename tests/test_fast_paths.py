"""The speed features on the tiny model, through `Engine.generate` at 64x48 and 5 frames: the prompt
cache, quantised experts, the step cache, the bf16 VAE, the attention check, the memory plan choice and
the cold-start report. Their GPU figures come from bench/ (BENCHMARKS.md); here, their correctness.
"""

import json
import logging
import math

import numpy as np
import pytest
import torch
from helpers import picture

from wan_i2v.errors import SettingsError
from wan_i2v.worker.attention import pick_attention
from wan_i2v.worker.engine import Engine, GenerationParams
from wan_i2v.worker.memory import GIB, align_storage, choose_plan
from wan_i2v.worker.quantize import pick_quant
from wan_i2v.worker.settings import EngineOptions

FIRST = picture(64, 48)
SMALL = {"prompt": "a boat", "negative_prompt": "blurry", "width": 64, "height": 48, "num_frames": 5, "shift": 5.0}


def params(**changes) -> GenerationParams:
    return GenerationParams(
        **{**SMALL, "steps": 6, "guidance_scale": 3.5, "guidance_scale_2": 3.5, "seed": 5, **changes}
    )


def relative_l2(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_a_cached_prompt_embedding_gives_the_same_frames_as_a_fresh_one(engine_with):
    cached = engine_with(prompt_cache=8)
    uncached = engine_with(prompt_cache=0)
    new = params(prompt="a lighthouse at dusk", negative_prompt="fog")
    first = cached.generate(new, FIRST)
    again = cached.generate(new, FIRST)
    assert (first.report["text_cache_hits"], again.report["text_cache_hits"]) == (0, 2)
    assert np.array_equal(first.frames, again.frames)
    assert np.array_equal(uncached.generate(new, FIRST).frames, again.frames)
    assert uncached.generate(new, FIRST).report["text_cache_hits"] == 0
    # Bounded: eight entries at most, the least recently used goes first.
    for n in range(10):
        cached.generate(params(prompt=f"prompt {n}", negative_prompt="fog", steps=2), FIRST)
    assert len(cached.prompts) == 8 and cached.prompts.lookup("a lighthouse at dusk") is None


def test_int8_experts_stay_close_to_the_full_precision_frames(engine, engine_with):
    int8 = engine_with(quant="int8")
    assert int8.cold_start.facts["quantised_linears"] == 2 * 2 * 10  # 2 experts x 2 blocks x (8 attention + 2 ffn)
    reference = engine.generate(params(), FIRST).frames
    quantised = int8.generate(params(), FIRST).frames
    assert relative_l2(quantised, reference) <= 0.08  # the bound for int8 against the baseline
    assert int8.generate(params(), FIRST).report["quantization"] == "int8"


def test_fp8_on_a_device_without_fp8_falls_back_to_int8_and_says_why(tiny_model, engine_with):
    """Not a crash loop: a worker asked for fp8 on a device without fp8 units steps down to int8 (issue 23)."""
    fallen = Engine.load(str(tiny_model), EngineOptions(quant="fp8"))
    report = fallen.cold_start.as_dict()
    assert report["quantization"] == "int8" and fallen.quant == "int8"
    [fallback] = report["fallbacks"]
    assert (fallback["what"], fallback["from"], fallback["to"]) == ("quantise", "fp8", "int8")
    assert "fp8 needs a GPU of compute capability 8.9" in fallback["why"] and "the CPU" in fallback["why"]
    assert np.array_equal(
        fallen.generate(params(), FIRST).frames, engine_with(quant="int8").generate(params(), FIRST).frames
    )
    assert pick_quant("auto", torch.device("cpu")) == "none"
    with pytest.raises(SettingsError, match="WAN_QUANT='fp4': allowed auto, fp8, int8, none"):
        pick_quant("fp4", torch.device("cpu"))


def test_the_step_cache_does_not_combine_with_compiling(tiny_model):
    with pytest.raises(SettingsError, match="WAN_STEP_CACHE=fbc cannot run with WAN_COMPILE=dynamic"):
        Engine.load(str(tiny_model), EngineOptions(step_cache="fbc", compile="dynamic"))


def test_the_step_cache_skips_work_in_quality_mode_only(engine, engine_with):
    cached = engine_with(step_cache="fbc:0.2")
    long = params(steps=20)
    plain, fast = engine.generate(long, FIRST), cached.generate(long, FIRST)
    assert fast.report["step_cache"] == "fbc:0.2" and plain.report["step_cache"] == "none"
    assert 0 < relative_l2(fast.frames, plain.frames) < 0.5  # blocks were skipped: close, not equal
    turbo = params(steps=4, guidance_scale=1.0, guidance_scale_2=1.0, mode="turbo")
    assert cached.generate(turbo, FIRST).report["step_cache"] == "none"
    assert np.array_equal(cached.generate(turbo, FIRST).frames, engine.generate(turbo, FIRST).frames)
    # The hooks are gone after each job: the next job runs every block again.
    assert np.array_equal(cached.generate(long, FIRST).frames, fast.frames)


def test_a_bf16_vae_decodes_close_to_fp32(engine, engine_with):
    bf16 = engine_with(vae_dtype="bf16")
    assert bf16.pipe.vae.dtype == torch.bfloat16
    # The tiny VAE is random (no trained smoothness), so bf16 rounding shows more than in the real one
    # (bench/ measures that): loose, but a wrong scale or layout would be far off (relative L2 ~0.5).
    assert relative_l2(bf16.generate(params(), FIRST).frames, engine.generate(params(), FIRST).frames) < 0.1


def test_the_attention_check_falls_back_when_a_backend_differs_or_fails():
    def check(backend, *args):
        if backend == "_native_cudnn":
            return 0.3  # wrong output
        if backend == "_native_flash":
            raise RuntimeError("no flash kernel for this GPU")
        return 1e-3

    choice = pick_attention(torch.device("cuda"), torch.bfloat16, 40, 128, check=check)
    assert choice.backend == "native" and choice.error == 1e-3
    assert "relative L2 0.3" in choice.skipped["_native_cudnn"] and "no flash kernel" in choice.skipped["_native_flash"]
    good = pick_attention(torch.device("cuda"), torch.bfloat16, 40, 128, check=lambda *a: 5e-3)
    assert good.backend == "_native_cudnn" and not good.skipped
    # The real check on this machine: native SDPA against math attention.
    real = pick_attention(torch.device("cpu"), torch.float32, 2, 12)
    assert real.backend == "native" and real.error < 1e-4
    # Nothing matches: math attention itself, the reference (the attention ladder's last rung, levers.py).
    refused = pick_attention(torch.device("cpu"), torch.float32, 2, 12, check=lambda *a: math.nan)
    assert refused.backend == "_native_math" and refused.error == 0.0 and "differs" in refused.skipped["native"]


@pytest.mark.parametrize(
    ("gib", "expert_gib", "plan", "text_on_demand"),
    [
        (79.2, 27.5, "swap", True),  # H100 80GB, bf16 experts
        (79.2, 14.5, "resident", True),  # H100 80GB, fp8 experts
        (79.2, 14.5, "resident", True),  # A100 80GB, int8 experts
        (139.8, 27.5, "resident", False),  # H200, bf16 experts
        (44.0, 27.5, "offload", True),  # a 48 GB card, bf16 experts
    ],
)
def test_memory_plans_follow_the_free_memory(gib, expert_gib, plan, text_on_demand):
    chosen = choose_plan(
        "auto", torch.device("cuda"), int(gib * GIB), int(expert_gib * GIB), int(10.6 * GIB), GIB // 2, 2
    )
    assert (chosen.name, chosen.text_encoder_on_demand) == (plan, text_on_demand)
    assert f"{gib:.1f} GiB free" in chosen.reason
    forced = choose_plan(
        "swap", torch.device("cuda"), int(gib * GIB), int(expert_gib * GIB), int(10.6 * GIB), GIB // 2, 2
    )
    assert forced.name == "swap"
    with pytest.raises(SettingsError, match="WAN_MEMORY_PLAN='all': allowed auto, resident, swap, offload"):
        choose_plan("all", torch.device("cuda"), 0, 0, 0, 0)


def test_weights_at_odd_offsets_get_aligned_storage_of_their_own_with_the_same_values():
    """Safetensors read on the CPU leave weights at odd offsets of one buffer, and CPU kernels pick their
    path by alignment: unaligned, a layer computes differently once a park and fetch has aligned it."""
    layer = torch.nn.Linear(24, 40)
    buffer = torch.randn(24 * 40 + 3)
    layer.weight.data = buffer[3:].view(40, 24)  # 12 bytes into the buffer, as a file's tensors are
    before = layer.weight.detach().clone()
    assert layer.weight.data_ptr() % 64 != 0
    assert align_storage(layer) == 1  # the weight; the bias had storage of its own
    assert layer.weight.data_ptr() % 64 == 0 and torch.equal(layer.weight, before)
    assert layer.weight.stride() == (24, 1) and isinstance(layer.weight, torch.nn.Parameter)
    assert align_storage(layer) == 0  # nothing left to copy


def test_the_cold_start_report_names_the_choices_with_timings(tiny_model, engine_with, caplog, tmp_path):
    with caplog.at_level(logging.INFO, logger="wan_i2v.worker.engine"):
        engine = Engine.load(str(tiny_model), EngineOptions(memory_plan="swap", quant="int8"))
    report = engine.cold_start.as_dict()
    # (The warm-up step, which runs when compiling, is in the compile tests of the load tier.)
    assert {"load", "lora_load", "quantise", "place", "attention_check", "total"} <= set(report["seconds"])
    assert report["memory_plan"].startswith("swap (text encoder on demand")
    assert (report["quantization"], report["compile"]) == ("int8", "off")
    assert report["attention"].startswith("native (relative L2")
    assert report["compile_cache"] == "unused (not compiling)"
    assert report["turbo_lora"].endswith("low_noise_lora_rank4_lightx2v_4step_tiny.safetensors")
    table = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("cold start:"))
    for line in (
        "quantise ",
        "memory_plan      swap",
        "quantization     int8",
        "attention        native",
        "compile_cache",
    ):
        assert line in table
    engine.cold_start.write(tmp_path / "report.json")
    assert json.loads((tmp_path / "report.json").read_text())["quantization"] == "int8"
    # Quantised experts park the inner tensors of torchao's int8 weights: nothing left on the device.
    parked_weight = engine.pipe.transformer_2.blocks[0].attn1.to_q.weight
    assert parked_weight.qdata.numel() == 0 and parked_weight.scale.numel() == 0
    for mode_params in (params(), params(steps=4, guidance_scale=1.0, guidance_scale_2=1.0, mode="turbo")):
        resident = engine_with(quant="int8").generate(mode_params, FIRST).frames
        assert np.array_equal(engine.generate(mode_params, FIRST).frames, resident)
