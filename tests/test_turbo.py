"""Turbo mode on the tiny model: the distilled schedule, the LoRA pair read from the model's turbo-lora/
folder (written by builder/tiny_model.py in the published files' key layout), fused into the weights on
a turbo worker and attached for one job on a quality worker, and the mode switch between jobs.

Through `Engine.generate` at 64x48 and 5 frames; the job boundary (mode field, errors) at the end.
"""

import shutil
import sys

import numpy as np
import pytest
import torch
from helpers import CHEAP, ROOT, levels, picture, quality, turbo

from wan_i2v.errors import InputError, SettingsError
from wan_i2v.worker.engine import HIGH_NOISE, LOW_NOISE, Engine
from wan_i2v.worker.lora import fuse, parse_lora, read_safetensors
from wan_i2v.worker.settings import EngineOptions, Settings
from wan_i2v.worker.weights import pair_files

sys.path.insert(0, str(ROOT / "builder"))
from tiny_model import write_lora_pair  # noqa: E402

FIRST = picture(64, 48)


def record_forwards(engine):
    """(expert, timestep, text rows) of every expert forward, and the hook handles to remove."""
    calls = []

    def recorder(name):
        def hook(module, args, kwargs):
            calls.append((name, float(kwargs["timestep"][0]), kwargs["encoder_hidden_states"].shape[0]))

        return hook

    handles = [
        engine.experts[name].register_forward_pre_hook(recorder(name), with_kwargs=True)
        for name in (HIGH_NOISE, LOW_NOISE)
    ]
    return calls, handles


@pytest.fixture(scope="module")
def turbo_engine(engine_with):
    return engine_with(default_mode="turbo")


def test_turbo_runs_the_distilled_schedule_one_forward_per_step(engine):
    calls, handles = record_forwards(engine)
    try:
        result = engine.generate(turbo(), FIRST)
    finally:
        for handle in handles:
            handle.remove()
    # linspace(1000, 0, 5)[:-1] shifted by 5: 1000, 937.5, 833.3, 625; high-noise while t >= 900.
    assert [round(t, 1) for _, t, _ in calls] == [1000.0, 937.5, 833.3, 625.0]
    assert [name for name, _, _ in calls] == [HIGH_NOISE, HIGH_NOISE, LOW_NOISE, LOW_NOISE] == result.experts
    assert result.report["text_cache_hits"] in (0, 1) and engine.expert_plan(4, 5.0, "turbo") == result.experts
    for steps in (2, 8):  # the schema's turbo range: one forward a step, both experts
        assert len(engine.expert_plan(steps, 5.0, "turbo")) == steps


def test_the_turbo_lora_changes_the_frames_and_a_zero_lora_does_not(tiny_model, engine, tmp_path):
    zero = tmp_path / "zero-lora"
    write_lora_pair(zero, engine.pipe.transformer.config, rank=4, std=0.0)
    with_zero = Engine.load(str(tiny_model), EngineOptions(turbo_lora=zero))
    plain_schedule = with_zero.generate(turbo(), FIRST).frames  # the distilled schedule with no change to the weights
    distilled = engine.generate(turbo(), FIRST).frames
    assert levels(plain_schedule, distilled) > 10
    assert np.abs(plain_schedule.astype(int) - distilled).mean() > 1.0


def test_fused_lora_equals_the_attached_lora(engine, turbo_engine):
    """A turbo worker has the pair fused into its weights; a quality worker attaches it for a turbo job.
    Both give the same frames to within one 8-bit level (fp32 on the CPU: they agree exactly here)."""
    attached = engine.generate(turbo(), FIRST)
    fused = turbo_engine.generate(turbo(), FIRST)
    assert attached.timings["mode_switch"] >= 0 and fused.timings["mode_switch"] == 0.0
    assert levels(attached.frames, fused.frames) <= 1


def test_switching_mode_between_jobs_gives_a_fresh_workers_frames(tiny_model, engine, turbo_engine):
    fresh_quality = Engine.load(str(tiny_model)).generate(quality(), FIRST).frames
    fresh_turbo = Engine.load(str(tiny_model), EngineOptions(default_mode="turbo")).generate(turbo(), FIRST).frames
    # A quality worker: quality, turbo, quality. The adapter leaves no trace.
    assert np.array_equal(engine.generate(quality(), FIRST).frames, fresh_quality)
    engine.generate(turbo(), FIRST)
    assert np.array_equal(engine.generate(quality(), FIRST).frames, fresh_quality)
    # A turbo worker: turbo, quality (the fused pair taken back out for the job), turbo.
    assert np.array_equal(turbo_engine.generate(turbo(), FIRST).frames, fresh_turbo)
    unfused = turbo_engine.generate(quality(), FIRST).frames
    assert levels(unfused, fresh_quality) <= 1
    assert np.array_equal(turbo_engine.generate(turbo(), FIRST).frames, fresh_turbo)


def test_swap_and_resident_give_the_same_frames_in_both_modes(engine, engine_with):
    swap = engine_with(memory_plan="swap")
    low = swap.pipe.transformer_2
    assert all(p.numel() == 0 for p in low.parameters())  # parked: its weights are not on the device
    for params in (quality(), turbo(), quality(seed=4)):
        assert np.array_equal(swap.generate(params, FIRST).frames, engine.generate(params, FIRST).frames)
    assert swap.parked["text_encoder"].on_device is False  # parked again after encoding


def test_our_lora_mapping_matches_diffusers_own_conversion(tiny_model):
    """On the keys diffusers converts (LoRA pairs, bias deltas, the head's full delta), fusing through our
    mapping changes each weight exactly as diffusers' `load_lora_weights` + `fuse_lora` does; the norm and
    modulation deltas it drops (see the README) are applied by ours."""
    from diffusers import WanImageToVideoPipeline

    files = pair_files(tiny_model / "turbo-lora")
    state = read_safetensors(files["high_noise"])
    theirs = WanImageToVideoPipeline.from_pretrained(tiny_model, dtype=torch.float32)
    ours = WanImageToVideoPipeline.from_pretrained(tiny_model, dtype=torch.float32).transformer
    before = {name: p.detach().clone() for name, p in ours.named_parameters()}
    theirs.load_lora_weights(dict(state), adapter_name="turbo")
    theirs.fuse_lora(components=["transformer"], lora_scale=1.0)
    theirs.unload_lora_weights()  # keeps the fused weights, drops the adapter modules
    fuse(ours, parse_lora(state, ours, files["high_noise"].name), 1.0)

    theirs_params = dict(theirs.transformer.named_parameters())
    changed_by_diffusers = [n for n, p in theirs_params.items() if not torch.equal(p, before[n])]
    assert "blocks.0.attn1.to_q.weight" in changed_by_diffusers and "proj_out.weight" in changed_by_diffusers
    for name in changed_by_diffusers:
        torch.testing.assert_close(dict(ours.named_parameters())[name], theirs_params[name], rtol=1e-5, atol=1e-6)
    ours_params = dict(ours.named_parameters())
    for name in (
        "blocks.0.scale_shift_table",
        "blocks.0.attn1.norm_q.weight",
        "blocks.0.norm2.weight",
        "scale_shift_table",
    ):
        assert name not in changed_by_diffusers and not torch.equal(ours_params[name], before[name])


def test_lora_mapping_reads_the_diffusers_layout_too(tiny_model, engine):
    """A PEFT-layout file (transformer.blocks.N.attn1.to_q.lora_A.weight) maps onto the same modules."""
    expert = engine.pipe.transformer
    rank, dim = 2, expert.config.num_attention_heads * expert.config.attention_head_dim
    state = {
        "transformer.blocks.0.attn1.to_q.lora_A.weight": torch.ones(rank, dim),
        "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.ones(dim, rank),
        "transformer.blocks.1.ffn.net.2.lora_B.bias": torch.ones(dim),
    }
    lora = parse_lora(state, expert, "peft.safetensors")
    assert set(lora.low_rank) == {"blocks.0.attn1.to_q"} and set(lora.diffs) == {"blocks.1.ffn.net.2.bias"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda s: s.update({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 7)}),
            r"blocks\.0\.attn1\.to_q: LoRA maps 7 -> 24 features, the layer 24 -> 24",
        ),
        (
            lambda s: s.update({"diffusion_model.blocks.9.self_attn.q.lora_down.weight": torch.zeros(4, 24)}),
            r"key 'diffusion_model\.blocks\.9\.self_attn\.q\.lora_down\.weight' fits no module",
        ),
        (
            lambda s: s.update({"diffusion_model.head.head.diff": torch.zeros(3, 3)}),
            r"key 'diffusion_model\.head\.head\.diff' has shape \(3, 3\), proj_out\.weight has \(64, 24\)",
        ),
        (
            lambda s: s.pop("diffusion_model.blocks.0.ffn.0.lora_up.weight"),
            r"blocks\.0\.ffn\.net\.0\.proj has only one half of its LoRA pair",
        ),
    ],
    ids=["wrong-shape", "unknown-block", "wrong-diff-shape", "half-a-pair"],
)
def test_a_lora_that_does_not_fit_is_refused_naming_the_key(engine, change, message):
    files = pair_files(engine.turbo_files["high_noise"].parent)
    state = read_safetensors(files["high_noise"])
    change(state)
    with pytest.raises(InputError, match=message):
        parse_lora(state, engine.pipe.transformer, "high.safetensors")


def test_a_file_that_is_not_safetensors_is_never_unpickled(tmp_path):
    pickled = tmp_path / "evil_high_noise.safetensors"
    torch.save({"x": torch.zeros(1)}, pickled)  # a pickle wearing a .safetensors name
    with pytest.raises(InputError, match="evil_high_noise.safetensors: not a readable safetensors file"):
        read_safetensors(pickled)
    with pytest.raises(InputError, match=r"only \.safetensors files are loaded \(no pickle\)"):
        read_safetensors(tmp_path / "lora.ckpt")


def test_a_turbo_default_without_the_pair_stops_the_cold_start_naming_both_places(tiny_model, tmp_path):
    bare = tmp_path / "bare-model"
    shutil.copytree(tiny_model, bare, ignore=shutil.ignore_patterns("turbo-lora"))
    with pytest.raises(
        SettingsError, match=r"WAN_TURBO_LORA or in the model folder's turbo-lora/.*bare-model/turbo-lora"
    ):
        Engine.load(str(bare), EngineOptions(default_mode="turbo"))
    elsewhere = tmp_path / "empty"
    elsewhere.mkdir()
    with pytest.raises(SettingsError, match=r"empty: no \*high_noise\*\.safetensors file"):
        Engine.load(str(tiny_model), EngineOptions(default_mode="turbo", turbo_lora=elsewhere))


@pytest.mark.load  # a second cold start and whole jobs (most of a minute)
def test_turbo_jobs_on_a_worker_without_the_pair_fail_clearly_and_it_carries_on(tiny_model, tmp_path):
    from wan_i2v.worker.job import Worker

    bare = tmp_path / "bare-model"
    shutil.copytree(tiny_model, bare, ignore=shutil.ignore_patterns("turbo-lora"))
    worker = Worker(Engine.load(str(bare)), Settings(model="tiny", output_dir=tmp_path / "out"))
    answer = worker.handle({"id": "t", "input": {**CHEAP, "mode": "turbo", "sample_steps": 4}})
    assert answer["error"].startswith("mode: 'turbo' is not available on this worker")
    assert "WAN_TURBO_LORA" in answer["error"] and "bare-model/turbo-lora" in answer["error"]
    assert "refresh_worker" not in answer
    good = worker.handle({"id": "q", "input": CHEAP})
    assert good["mode"] == "quality" and good["frame_num"] == 17


BAD_TURBO_FIELDS = [
    (
        {"sample_steps": 15},
        "sample_steps: 15 is not allowed in turbo mode, allowed: "
        "integer from 15 to 50 (quality) or integer from 2 to 8 (turbo)",
    ),
    ({"guidance_scale": 3.5}, "guidance_scale: 3.5 is not allowed in turbo mode, allowed: 1 or absent"),
    ({"sample_steps": 9, "guidance_scale_2": 2.0}, "sample_steps: 9 is not allowed in turbo mode"),
]


def test_turbo_fields_out_of_range_are_refused_and_the_worker_carries_on(engine, tmp_path):
    from wan_i2v.worker.job import Worker

    worker = Worker(engine, Settings(model="tiny", output_dir=tmp_path / "out"))
    job = {k: v for k, v in CHEAP.items() if k not in ("sample_steps", "guidance_scale", "guidance_scale_2")}
    for fields, message in BAD_TURBO_FIELDS:
        answer = worker.handle({"id": "bad", "input": {**job, "mode": "turbo", **fields}})
        assert message in answer["error"] and "refresh_worker" not in answer
    assert "guidance_scale_2: 2.0 is not allowed in turbo mode" in answer["error"]  # every bad field is named
    good = worker.handle({"id": "good", "input": {**job, "mode": "turbo"}})
    assert (good["mode"], good["sample_steps"], good["timings"]["mode_switch"] >= 0) == ("turbo", 4, True)
    assert good["engine"]["memory_plan"] == "resident"
