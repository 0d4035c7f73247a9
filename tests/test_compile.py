"""Compiled blocks with a compile cache, on the tiny model on the CPU (load tier: compiling takes a minute here).

The first cold start compiles in its self-check and warm-up and saves the cache; a second worker process with
the same cache directory reports it warm and spends far less compiling. Compiled frames match eager ones, and a
new resolution after the warm-up's does not fail (dynamic shapes).
"""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT, picture
from safetensors.torch import save_file

from wan_i2v.worker.engine import HIGH_NOISE, LOW_NOISE, GenerationParams, JobLora
from wan_i2v.worker.levers import COMPILE_BOUND

sys.path.insert(0, str(ROOT / "builder"))
from tiny_model import user_lora_state  # noqa: E402

pytestmark = [pytest.mark.load, pytest.mark.timeout(1200)]

COLD_START = """
import json, sys
from pathlib import Path
from wan_i2v.worker.engine import Engine
from wan_i2v.worker.settings import EngineOptions
engine = Engine.load(sys.argv[1], EngineOptions(compile="dynamic", compile_cache=Path(sys.argv[2])))
print(json.dumps(engine.cold_start.as_dict()))
"""


def cold_start(model, cache) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", COLD_START, str(model), str(cache)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_warm_compile_cache_is_used_by_the_next_cold_start(tiny_model, tmp_path):
    quality_only = tmp_path / "model"  # one mode to warm up (the pair doubles it, and the other test covers it)
    shutil.copytree(tiny_model, quality_only, ignore=shutil.ignore_patterns("turbo-lora"))
    cache = tmp_path / "compile-cache"
    first = cold_start(quality_only, cache)
    assert first["compile_cache"].startswith("empty") and first["compile"] == "dynamic"
    assert first["compile_cache_saved_bytes"] > 0 and (cache / "portable-cache.bin").is_file()
    assert {"compile", "warmup"} <= set(first["seconds"])  # one warm-up generation per mode, timed
    second = cold_start(quality_only, cache)
    assert second["compile_cache"].startswith("warm")
    # The blocks compile in the cold start's self-check forward (levers.py), so the `compile` step is where the
    # cache shows: 25.6 s cold and 8.0 s warm here (2026-12-04); the warm-up generation costs the same both times.
    assert second["seconds"]["compile"] < 0.6 * first["seconds"]["compile"]
    assert (
        second["seconds"]["compile"] + second["seconds"]["warmup"]
        < first["seconds"]["compile"] + first["seconds"]["warmup"]
    )


def test_compiled_frames_match_eager_and_new_shapes_need_no_new_warm_up(engine, engine_with, tiny_model, tmp_path):
    compiled = engine_with(compile="dynamic", warmup="off")
    # The cold start's self-check compiled the blocks on its probe (levers.py) and found them within the bound.
    assert 0 <= compiled.cold_start.facts["self_check"]["compile"]["relative_l2"] <= COMPILE_BOUND
    assert compiled.cold_start.facts["fallbacks"] == [] and compiled.compiled == "dynamic"
    for width, height in ((64, 48), (80, 48), (48, 64)):
        p = GenerationParams("a boat", "blurry", width, height, 5, 6, 3.5, 3.5, 5.0, 9)
        eager = engine.generate(p, picture(width, height)).frames.astype(float)
        fast = compiled.generate(p, picture(width, height)).frames.astype(float)
        assert np.linalg.norm(fast - eager) / np.linalg.norm(eager) <= 0.02
    assert compiled.generate(p, picture(48, 64)).report["compiled"] is True
    # The turbo adapter's hooks were registered before compiling: a turbo job on this quality worker runs
    # them inside the compiled blocks (hooks added after compiling would be silently skipped), and the
    # next quality job runs without them again.
    turbo = GenerationParams("a boat", "blurry", 64, 48, 5, 4, 1.0, 1.0, 5.0, 9, "turbo")
    eager_turbo = engine.generate(turbo, picture(64, 48)).frames.astype(float)
    fast_turbo = compiled.generate(turbo, picture(64, 48)).frames.astype(float)
    assert np.linalg.norm(fast_turbo - eager_turbo) / np.linalg.norm(eager_turbo) <= 0.02
    quality = GenerationParams("a boat", "blurry", 64, 48, 5, 6, 3.5, 3.5, 5.0, 9)
    eager_quality = engine.generate(quality, picture(64, 48)).frames.astype(float)
    fast_quality = compiled.generate(quality, picture(64, 48)).frames.astype(float)
    assert np.linalg.norm(fast_quality - eager_quality) / np.linalg.norm(eager_quality) <= 0.02
    # A job's own LoRAs run in the same hooks: any rank, any strength, on top of turbo, then gone again.
    save_file(
        user_lora_state(engine.pipe.transformer.config, "kohya", rank=8, seed=4), str(tmp_path / "r8.safetensors")
    )
    loras = [
        JobLora(HIGH_NOISE, tiny_model / "loras" / "tiny-wan-high.safetensors", 0.6, "loras[0].high"),
        JobLora(LOW_NOISE, tmp_path / "r8.safetensors", 1.3, "loras[1].low"),
    ]
    for params in (quality, turbo):
        eager_lora = engine.generate(params, picture(64, 48), loras=loras).frames.astype(float)
        fast_lora = compiled.generate(params, picture(64, 48), loras=loras).frames.astype(float)
        assert np.linalg.norm(fast_lora - eager_lora) / np.linalg.norm(eager_lora) <= 0.02
        assert np.linalg.norm(fast_lora - eager_quality) / np.linalg.norm(eager_quality) > 0.05
    again = compiled.generate(quality, picture(64, 48)).frames.astype(float)
    assert np.linalg.norm(again - eager_quality) / np.linalg.norm(eager_quality) <= 0.02


def test_loras_over_other_layers_and_ranks_reuse_the_compiled_blocks(engine, engine_with, tmp_path):
    """A shared block graph used to recompile for each new pattern of covered layers or rank, and the
    ninth job failed at torch.compile's limit; now every job pads to one structure per rank bucket."""
    from torch._dynamo.utils import counters

    compiled = engine_with(compile="dynamic", warmup="off")
    params = GenerationParams("a boat", "blurry", 64, 48, 5, 2, 3.5, 3.5, 5.0, 9)
    layers = ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k"]
    jobs = []
    for i in range(10):  # ranks 2..11, one layer each, in every block or only the first
        state = user_lora_state(engine.pipe.transformer.config, "wan", rank=2 + i, seed=20 + i)
        keep = f".{layers[i % len(layers)]}."
        state = {k: v for k, v in state.items() if keep in k and (i % 2 == 0 or ".blocks.0." in k)}
        save_file(state, str(tmp_path / f"l{i}.safetensors"))
        jobs.append([JobLora(HIGH_NOISE if i % 3 else LOW_NOISE, tmp_path / f"l{i}.safetensors", 1.0, "loras[0]")])
    compiled.generate(params, picture(64, 48), loras=jobs[0])  # the graph with LoRAs at rank bucket 16
    graphs = counters["stats"]["unique_graphs"]
    for loras in jobs[1:]:
        result = compiled.generate(params, picture(64, 48), loras=loras)
        assert result.report["compiled"] is True
    assert counters["stats"]["unique_graphs"] == graphs  # not one recompile in nine jobs
    eager = engine.generate(params, picture(64, 48), loras=jobs[-1]).frames.astype(float)
    fast = compiled.generate(params, picture(64, 48), loras=jobs[-1]).frames.astype(float)
    assert np.linalg.norm(fast - eager) / np.linalg.norm(eager) <= 0.02
