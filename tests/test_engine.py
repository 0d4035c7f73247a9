"""The engine's properties through `Engine.generate` directly, on the tiny model at 64x48 and 5 frames.

A whole job is 832x480 (the schema's smallest area) and costs seconds on a CPU; these properties do
not depend on the size, so they are checked here in milliseconds. The job boundary is tested in
test_job.py.
"""

import numpy as np
import pytest
import torch
from helpers import picture

from wan_i2v.errors import OutOfMemoryError
from wan_i2v.schema import Phase
from wan_i2v.worker.engine import HIGH_NOISE, LOW_NOISE, GenerationParams

SMALL = {"prompt": "a boat", "negative_prompt": "blurry", "width": 64, "height": 48, "num_frames": 5, "shift": 5.0}


def params(**changes) -> GenerationParams:
    guided = {"steps": 6, "guidance_scale": 3.5, "guidance_scale_2": 3.5, "seed": 7}
    return GenerationParams(**{**SMALL, **guided, **changes})


FIRST, LAST = picture(64, 48), picture(64, 48).transpose(0)  # a mirrored last frame


def count_forwards(engine):
    counts = {HIGH_NOISE: 0, LOW_NOISE: 0}

    def counter(name):
        return lambda *_: counts.__setitem__(name, counts[name] + 1)

    experts = {HIGH_NOISE: engine.pipe.transformer, LOW_NOISE: engine.pipe.transformer_2}
    return counts, [model.register_forward_hook(counter(name)) for name, model in experts.items()]


def test_frames_have_the_asked_shape_and_type(engine):
    frames = engine.generate(params(), FIRST).frames
    assert frames.shape == (5, 48, 64, 3) and frames.dtype == np.uint8


def test_same_seed_gives_the_same_frames_and_another_seed_differs(engine):
    first = engine.generate(params(seed=7), FIRST).frames
    assert np.array_equal(first, engine.generate(params(seed=7), FIRST).frames)
    other = engine.generate(params(seed=8), FIRST).frames
    assert np.abs(first.astype(int) - other).mean() > 1.0


def test_the_expert_plan_runs_high_noise_first_then_low_noise(engine):
    for steps in (4, 15, 40):
        plan = engine.expert_plan(steps, 5.0)
        switch = plan.index(LOW_NOISE)
        assert len(plan) == steps and 0 < switch < steps
        assert set(plan[:switch]) == {HIGH_NOISE} and set(plan[switch:]) == {LOW_NOISE}
    assert engine.expert_plan(15, 20.0).index(LOW_NOISE) > engine.expert_plan(15, 1.0).index(LOW_NOISE)


@pytest.mark.parametrize("scales", [(1.0, 4.0), (4.0, 1.0), (1.0, 1.0), (3.5, 3.5)])
def test_each_expert_uses_its_own_guidance(engine, scales):
    """A scale of 1 skips that expert's unconditional pass; above 1 it costs a second forward."""
    counts, hooks = count_forwards(engine)
    try:
        result = engine.generate(params(guidance_scale=scales[0], guidance_scale_2=scales[1]), FIRST, LAST)
    finally:
        for hook in hooks:
            hook.remove()
    plan = result.experts
    assert plan == engine.expert_plan(6, 5.0)
    assert counts == {
        HIGH_NOISE: plan.count(HIGH_NOISE) * (2 if scales[0] > 1 else 1),
        LOW_NOISE: plan.count(LOW_NOISE) * (2 if scales[1] > 1 else 1),
    }


def test_progress_reports_each_phase_and_step_with_its_expert(engine):
    events = []
    result = engine.generate(params(), FIRST, on_progress=lambda phase, **detail: events.append((phase, detail)))
    phases = [phase for phase, _ in events if phase is not Phase.DENOISE]
    assert phases == [Phase.TEXT_ENCODE, Phase.CONDITION_ENCODE, Phase.VAE_DECODE]
    steps = [detail for phase, detail in events if phase is Phase.DENOISE]
    assert [s["step"] for s in steps] == list(range(1, 7)) and {s["total_steps"] for s in steps} == {6}
    assert [s["expert"] for s in steps] == result.experts
    assert set(result.timings) == {
        "mode_switch",
        "lora_load",
        "text_encode",
        "condition_encode",
        "denoise",
        "vae_decode",
    }
    assert result.timings["mode_switch"] == 0.0  # the worker's default mode: nothing to switch
    assert all(seconds >= 0 for seconds in result.timings.values())


@pytest.mark.parametrize("plan", ["resident", "swap", "offload"])
@pytest.mark.parametrize("last_image", [None, LAST], ids=["first-frame", "first-and-last-frame"])
def test_frames_match_diffusers_own_pipeline_within_one_level(engine, engine_with, last_image, plan):
    """With equal guidance on both experts (where diffusers' rule and ours agree) and the same generator,
    our steps give diffusers' `WanImageToVideoPipeline.__call__` frames to within one 8-bit level, in
    every memory plan (the reference runs on the plain engine's pipeline, whose weights stay in place)."""
    p = params(steps=5)
    ours = engine_with(memory_plan=plan).generate(p, FIRST, last_image).frames.astype(int)
    video = engine.pipe(
        image=FIRST,
        last_image=last_image,
        prompt=p.prompt,
        negative_prompt=p.negative_prompt,
        height=p.height,
        width=p.width,
        num_frames=p.num_frames,
        num_inference_steps=p.steps,
        guidance_scale=p.guidance_scale,
        guidance_scale_2=p.guidance_scale_2,
        generator=torch.Generator("cpu").manual_seed(p.seed),
        output_type="np",
    ).frames[0]
    theirs = (np.asarray(video) * 255).round().astype(int)
    assert theirs.shape == ours.shape
    assert np.abs(theirs - ours).max() <= 1


def test_the_last_image_changes_the_end_of_the_video(engine):
    plain = engine.generate(params(), FIRST).frames.astype(int)
    ending = engine.generate(params(), FIRST, LAST).frames.astype(int)
    assert np.abs(plain[-1] - ending[-1]).mean() > 1.0


def test_out_of_memory_becomes_a_clear_error(engine, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(engine.pipe.transformer_2, "forward", out_of_memory)
    with pytest.raises(OutOfMemoryError, match=r"^the GPU ran out of memory at 64x48, 5 frames") as caught:
        engine.generate(params(), FIRST)
    assert caught.value.refresh_worker is True
