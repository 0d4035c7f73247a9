"""The cold-start levers' fallback ladder (worker/levers.py): each lever that fails steps down one rung, the
worker goes on, the report says why, and the frames are those of a worker set to that rung from the start.

Each case is a whole cold start (`Engine.load` of the tiny model with `WAN_FAULTS`) and a job through
`Engine.generate` at a small size; the worker-level paths (the handler's exit, the dev endpoint's /health) are
checked in test_client.py and below."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import ROOT, picture

from wan_i2v.errors import ColdStartError, OutOfMemoryError, SettingsError
from wan_i2v.worker import levers
from wan_i2v.worker.engine import Engine, GenerationParams
from wan_i2v.worker.settings import EngineOptions

FIRST = picture(64, 48)


def params(**changes) -> GenerationParams:
    base = dict(
        prompt="a boat", negative_prompt="blurry", width=64, height=48, num_frames=5, steps=3,
        guidance_scale=3.5, guidance_scale_2=3.5, shift=5.0, seed=7,
    )  # fmt: skip
    return GenerationParams(**{**base, **changes})


def turbo(**changes) -> GenerationParams:
    return params(mode="turbo", steps=4, guidance_scale=1.0, guidance_scale_2=1.0, **changes)


def fallbacks(engine: Engine) -> list[tuple[str, str, str]]:
    return [(f["what"], f["from"], f["to"]) for f in engine.cold_start.as_dict()["fallbacks"]]


# (WAN_FAULTS, the settings that turn that lever on, the fallback, the settings of a worker on that rung)
CASES = [
    ("quantise", {"quant": "int8"}, ("quantise", "int8", "none"), {}),
    ("compile", {"compile": "dynamic"}, ("compile", "dynamic", "off"), {}),
    ("attention", {}, ("attention", "native", "_native_math"), {"attention": "_native_math"}),
    ("place", {}, ("place", "resident", "swap"), {"memory_plan": "swap"}),
    ("place", {"memory_plan": "swap"}, ("place", "swap", "offload"), {"memory_plan": "offload"}),
]


@pytest.mark.parametrize(("fault", "settings", "fallback", "rung"), CASES, ids=[f"{c[0]}-{c[2][1]}" for c in CASES])
def test_each_fault_steps_its_lever_down_and_the_frames_are_those_of_that_rung(
    tiny_model, engine_with, fault, settings, fallback, rung
):
    fallen = Engine.load(str(tiny_model), EngineOptions(faults=(fault,), **settings))
    assert fallbacks(fallen) == [fallback]
    [entry] = fallen.cold_start.as_dict()["fallbacks"]
    assert entry["why"] == f"injected by WAN_FAULTS={fault}"
    reference = engine_with(**rung)
    assert np.array_equal(fallen.generate(params(), FIRST).frames, reference.generate(params(), FIRST).frames)
    report = fallen.cold_start.as_dict()
    assert (report["quantization"], report["compile"], report["memory_plan"].split(" ")[0]) == (
        reference.quant,
        reference.compiled,
        reference.plan.name,
    )
    assert fallen.attention.backend == reference.attention.backend


def test_a_fusion_that_fails_attaches_the_turbo_pair_per_job(tiny_model, engine):
    """A turbo worker whose fusion fails serves turbo jobs as a quality worker does (the pair attached for the
    job), and quality jobs with the experts' own weights: the same frames as the quality worker, bit for bit."""
    fallen = Engine.load(str(tiny_model), EngineOptions(default_mode="turbo", faults=("fusion",)))
    assert fallbacks(fallen) == [("fusion", "fused", "attached")]
    assert fallen.cold_start.facts["turbo_fused"] == [] and fallen.default_mode == "turbo"
    for job in (turbo(), params()):
        assert np.array_equal(fallen.generate(job, FIRST).frames, engine.generate(job, FIRST).frames)


def test_two_faults_at_once_step_both_levers_down(tiny_model, engine_with):
    fallen = Engine.load(str(tiny_model), EngineOptions(quant="int8", faults=("quantise", "place")))
    assert sorted(fallbacks(fallen)) == [("place", "resident", "swap"), ("quantise", "int8", "none")]
    swap = engine_with(memory_plan="swap")
    assert np.array_equal(fallen.generate(params(), FIRST).frames, swap.generate(params(), FIRST).frames)


def test_a_fault_with_no_rung_left_fails_the_cold_start_naming_what_to_change(tiny_model, tmp_path):
    with pytest.raises(ColdStartError, match=r"^place: offload failed \(injected by WAN_FAULTS=place\) and nothing "
                       r"is left to fall back to; use a GPU with more memory"):  # fmt: skip
        Engine.load(str(tiny_model), EngineOptions(memory_plan="offload", faults=("place",)))
    # The worker process: exits at once with the message (RunPod shows it), no crash loop of jobs.
    env = {"WAN_MODEL": str(tiny_model), "WAN_MEMORY_PLAN": "offload", "WAN_FAULTS": "place",
           "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(ROOT / "handler.py")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert "wan-i2v cannot start: place: offload failed (injected by WAN_FAULTS=place)" in done.stderr
    assert not list(tmp_path.glob("outputs/*"))


def test_wan_faults_is_read_from_the_environment_and_a_wrong_name_is_refused():
    assert EngineOptions.from_env({"WAN_FAULTS": "compile, place"}).faults == ("compile", "place")
    assert EngineOptions.from_env({}).faults == ()
    with pytest.raises(SettingsError, match="WAN_FAULTS='compile,gpu': unknown gpu; allowed a comma list of "
                       "compile, quantise, attention, place, fusion"):  # fmt: skip
        EngineOptions.from_env({"WAN_FAULTS": "compile,gpu"})


def test_a_quantisation_over_its_self_check_bound_falls_back_and_says_so(tiny_model, engine, monkeypatch):
    checked = Engine.load(str(tiny_model), EngineOptions(quant="int8"))
    error = checked.cold_start.facts["self_check"]["quantise"]["relative_l2"]
    assert 0 < error <= levers.QUANT_BOUND["int8"] and fallbacks(checked) == []

    monkeypatch.setitem(levers.QUANT_BOUND, "int8", 0.0)
    fallen = Engine.load(str(tiny_model), EngineOptions(quant="int8"))
    [entry] = fallen.cold_start.as_dict()["fallbacks"]
    assert (entry["what"], entry["from"], entry["to"]) == ("quantise", "int8", "none")
    assert entry["why"] == (
        f"self-check: int8 output differs from the plain bf16 forward by relative L2 {error:.3g} (bound 0)"
    )
    # The rung that failed left the weights as they were: the frames of a worker that never quantised.
    assert fallen.quant == "none" and fallen.cold_start.facts.get("quantised_linears") is None
    assert fallen.cold_start.facts["self_check"]["quantise"] == {"not_checked": "fell back to none"}
    assert np.array_equal(fallen.generate(params(), FIRST).frames, engine.generate(params(), FIRST).frames)


def test_a_second_out_of_memory_at_the_same_size_steps_the_plan_down_before_the_next_job(
    tiny_model, engine_with, monkeypatch, tmp_path
):
    worker = Engine.load(str(tiny_model))
    worker.cold_start.write(tmp_path / "cold-start.json")
    real_forward = worker.pipe.transformer_2.forward

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(worker.pipe.transformer_2, "forward", out_of_memory)
    with pytest.raises(OutOfMemoryError) as first:
        worker.generate(params(), FIRST)
    assert "steps down" not in str(first.value)
    with pytest.raises(OutOfMemoryError):
        worker.generate(params(width=48, height=64), FIRST)  # another size: not in a row at one size
    with pytest.raises(OutOfMemoryError) as second:
        worker.generate(params(width=48, height=64), FIRST)
    assert second.value.refresh_worker is True
    assert "The memory plan steps down from resident to swap before the next job." in str(second.value)
    assert worker.plan.name == "resident"  # not yet: the failed job's memory is released first

    monkeypatch.setattr(worker.pipe.transformer_2, "forward", real_forward)
    frames = worker.generate(params(), FIRST).frames
    assert worker.plan.name == "swap" and fallbacks(worker) == [("place", "resident", "swap")]
    report = json.loads((tmp_path / "cold-start.json").read_text())  # rewritten: the dev endpoint's /health
    assert report["memory_plan"].startswith("swap") and report["fallbacks"][0]["why"] == (
        "OutOfMemoryError: 2 out-of-memory errors in a row at 48x64"
    )
    assert np.array_equal(frames, engine_with(memory_plan="swap").generate(params(), FIRST).frames)


def test_a_quantisation_that_fell_back_writes_no_prepared_entry(tiny_model, tmp_path):
    """The entry's fingerprint names the quantisation asked for: experts that fell back must not be saved under it."""
    fallen = Engine.load(
        str(tiny_model), EngineOptions(quant="int8", faults=("quantise",), prepared_cache=tmp_path / "prepared")
    )
    assert fallen.cold_start.facts["prepared_cache"] == "miss (not written: a lever fell back (quantise int8 -> none))"
    assert list((tmp_path / "prepared").iterdir()) == []  # nothing half-written either
