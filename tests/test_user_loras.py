"""A job's own LoRAs on the tiny model: the key layouts trainers write (example pairs written by
builder/tiny_model.py into the model's loras/ folder), each giving the frames of the same deltas in the PEFT
layout, their effect through `Engine.generate` at 64x48 and 5 frames (strength 0, 1, one expert only, on top
of turbo), the experts left exactly as they were after every job (finished or failed), and at the job
boundary: the folder and a loopback URL, the output's list of what ran (text-encoder keys counted), and
hostile files and URLs refused without harm to the next job.

The fetching rules themselves (paths, pickle, caps, deadlines, the cache) are tested in test_lora_files.py.
"""

import hashlib
import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import CHEAP, ROOT, levels, picture, quality, turbo
from safetensors.torch import save_file

from wan_i2v.errors import InputError
from wan_i2v.schema import JobOutput
from wan_i2v.worker.engine import HIGH_NOISE, LOW_NOISE, JobLora
from wan_i2v.worker.lora import fuse, parse_lora
from wan_i2v.worker.netguard import UrlPolicy
from wan_i2v.worker.settings import GB, LoraSettings, Settings

sys.path.insert(0, str(ROOT / "builder"))
from tiny_model import NO_ALPHA, SAME_DELTAS_AS, USER_LORA_LAYOUTS, user_lora_state  # noqa: E402

FIRST = picture(64, 48)
EXPERT = {"high": HIGH_NOISE, "low": LOW_NOISE}


def example(tiny_model, layout: str, side: str, scale: float = 1.0) -> JobLora:
    """One of the builder's example files (DIR/loras/tiny-{layout}-{side}.safetensors) for its expert."""
    path = tiny_model / "loras" / f"tiny-{layout}-{side}.safetensors"
    return JobLora(EXPERT[side], path, scale, f"{layout}-{side}")


def snapshot(engine) -> dict[str, torch.Tensor]:
    return {
        f"{side}.{name}": p.detach().clone()
        for side, expert in engine.experts.items()
        for name, p in expert.named_parameters()
    }


def assert_untouched(engine, before: dict[str, torch.Tensor]) -> None:
    """Every expert parameter bit-for-bit as before, and no adapter holding anything."""
    after = snapshot(engine)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)
    assert not any(adapter.attached for adapter in engine.adapters.values())


# ---- the key layouts ---------------------------------------------------------------------------------------


def test_every_layout_maps_onto_the_same_layers_with_the_same_deltas(engine):
    expert = engine.pipe.transformer
    config = expert.config
    parsed = {
        layout: parse_lora(user_lora_state(config, layout, rank=4, seed=5, alpha=2.0), expert, layout)
        for layout in USER_LORA_LAYOUTS
    }
    assert "blocks.1.attn2.to_out.0" in parsed["kohya"].low_rank and "blocks.0.ffn.net.2" in parsed["peft"].low_rank
    assert len(parsed["wan"].low_rank) == 2 * 10  # two blocks, ten linears each
    for layout, lora in parsed.items():
        assert set(lora.low_rank) == set(parsed["wan"].low_rank) and not lora.diffs and not lora.skipped, layout
        assert len(lora.text_encoder_keys) == (6 if layout == "kohya-te" else 0), layout
        for name, pair in parsed["wan"].low_rank.items():
            assert pair.scale == 0.5  # alpha 2 over rank 4
            if layout in NO_ALPHA:  # no alpha in the file: the builder folds alpha / rank into up, in bf16
                assert lora.low_rank[name].scale == 1.0
                torch.testing.assert_close(lora.low_rank[name].delta(), pair.delta(), rtol=1e-2, atol=1e-4)
            else:
                assert torch.equal(lora.low_rank[name].delta(), pair.delta()), (layout, name)


@pytest.mark.parametrize("layout", ["kohya", "peft"])
def test_our_mapping_fuses_like_diffusers_own_loader(tiny_model, layout):
    """diffusers' `load_lora_weights` (its musubi-tuner converter for kohya files, PEFT as is) and
    `fuse_lora` change every weight exactly as fusing through our mapping does."""
    from diffusers import WanImageToVideoPipeline

    theirs = WanImageToVideoPipeline.from_pretrained(tiny_model, dtype=torch.float32)
    ours = WanImageToVideoPipeline.from_pretrained(tiny_model, dtype=torch.float32).transformer
    state = user_lora_state(ours.config, layout, rank=4, seed=7, alpha=2.0)
    before = {name: p.detach().clone() for name, p in ours.named_parameters()}
    theirs.load_lora_weights({k: v.clone() for k, v in state.items()}, adapter_name="user")
    theirs.fuse_lora(components=["transformer"], lora_scale=1.0)
    theirs.unload_lora_weights()
    fuse(ours, parse_lora(state, ours, layout), 1.0)
    theirs_params, ours_params = dict(theirs.transformer.named_parameters()), dict(ours.named_parameters())
    changed = [name for name, p in theirs_params.items() if not torch.equal(p, before[name])]
    assert len(changed) == 2 * 10  # two blocks, ten linears each
    assert changed == [name for name, p in ours_params.items() if not torch.equal(p, before[name])]
    for name in changed:
        torch.testing.assert_close(ours_params[name], theirs_params[name], rtol=1e-5, atol=1e-6)


def test_kohya_files_trained_on_wan21_skip_the_image_branch_and_dora_is_refused(engine):
    expert = engine.pipe.transformer
    state = user_lora_state(expert.config, "kohya", seed=1)
    state["lora_unet_blocks_0_cross_attn_k_img.lora_down.weight"] = torch.zeros(4, 24)
    state["lora_unet_blocks_0_cross_attn_k_img.lora_up.weight"] = torch.zeros(24, 4)
    lora = parse_lora(state, expert, "wan21.safetensors")
    assert lora.skipped == [
        "lora_unet_blocks_0_cross_attn_k_img.lora_down.weight",
        "lora_unet_blocks_0_cross_attn_k_img.lora_up.weight",
    ]
    state["lora_unet_blocks_0_self_attn_q.dora_scale"] = torch.ones(1, 24)
    with pytest.raises(InputError, match="dora.safetensors: a DoRA file"):
        parse_lora(state, expert, "dora.safetensors")
    with pytest.raises(InputError, match=r"key 'lora_unet_blocks_0_attn1_to_q.lora_down.weight' fits no module"):
        parse_lora({"lora_unet_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(4, 24)}, expert, "x")


def test_variants_from_the_wild_text_encoder_keys_skipped_and_dora_still_refused(engine):
    """Prefixes and tails seen in published files read as their plain layout; lora_te*, lora_te1_* ... keys are
    skipped and counted (the frames and the job output: below); a DoRA file is refused in any layout."""
    expert = engine.pipe.transformer
    config = expert.config
    expected = parse_lora(user_lora_state(config, "wan", seed=6), expert, "wan").low_rank
    diffsynth = user_lora_state(config, "diffsynth", seed=6)
    kohya_dotted = user_lora_state(config, "kohya-dotted", seed=6)
    variants = {
        # DiffSynth-Studio run without --remove_prefix_in_ckpt "pipe.dit.", and its names without PEFT's adapter name
        "pipe.dit.": {f"pipe.dit.{k}": v for k, v in diffsynth.items()},
        "no .default": {k.replace(".default.", "."): v for k, v in diffsynth.items()},
        # PEFT saved from the original Wan model
        "base_model.model.": {f"base_model.model.{k.replace('.default.', '.')}": v for k, v in diffsynth.items()},
        # a kohya file with every dot of the name kept
        "lora_unet_blocks.N": {k.replace("lora_unet_blocks_", "lora_unet_blocks."): v for k, v in kohya_dotted.items()},
    }
    for variant, state in variants.items():
        lora = parse_lora(state, expert, variant)
        assert set(lora.low_rank) == set(expected), variant
        for name, pair in expected.items():
            torch.testing.assert_close(lora.low_rank[name].delta(), pair.delta(), rtol=1e-2, atol=1e-4)

    with_image_branch = {**kohya_dotted, "lora_unet_blocks_0.cross_attn.k_img.lora_down.weight": torch.zeros(4, 24)}
    assert parse_lora(with_image_branch, expert, "x").skipped == [
        "lora_unet_blocks_0.cross_attn.k_img.lora_down.weight"
    ]
    encoders = {f"lora_te{n}_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight": torch.zeros(4, 8) for n in "12"}
    lora = parse_lora({**user_lora_state(config, "kohya-te", seed=6), **encoders}, expert, "two-encoders")
    assert len(lora.text_encoder_keys) == 6 + 2 and set(lora.low_rank) == set(expected)
    with pytest.raises(InputError, match=r"^te-only: holds only text-encoder keys \(lora_te\*\)"):
        parse_lora(encoders, expert, "te-only")

    with pytest.raises(InputError, match=r"^dora.safetensors: a DoRA file \(dora_scale keys\)"):
        parse_lora(
            {
                **user_lora_state(config, "kohya-te", seed=6),
                "lora_unet_blocks_0.self_attn.q.dora_scale": torch.ones(1, 24),
            },
            expert,
            "dora.safetensors",
        )
    peft_dora = {**diffsynth, "blocks.0.self_attn.q.lora_magnitude_vector.default.weight": torch.ones(24)}
    with pytest.raises(InputError, match=r"^dora.safetensors: a DoRA file \(lora_magnitude_vector keys\)"):
        parse_lora(peft_dora, expert, "dora.safetensors")
    # Still refused as before: a kohya file with keys of another layout, a name of no module in any spelling.
    with pytest.raises(InputError, match=r"key 'diffusion_model.blocks.0.self_attn.q.alpha' mixes layouts"):
        parse_lora({**kohya_dotted, "diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(4.0)}, expert, "x")
    with pytest.raises(InputError, match=r"key 'blocks.0.self_attn.x.lora_A.default.weight' fits no module"):
        parse_lora({**diffsynth, "blocks.0.self_attn.x.lora_A.default.weight": torch.zeros(4, 24)}, expert, "x")


# ---- what a job's LoRAs do ---------------------------------------------------------------------------------


def test_each_layout_from_the_wild_gives_the_frames_of_the_same_deltas_in_peft_layout(tiny_model, engine, caplog):
    """DiffSynth-Studio's, kohya's with dotted tails, ai-toolkit's, and kohya's with text-encoder keys: the
    builder writes each pair with the deltas of the PEFT pair (SAME_DELTAS_AS), so the frames must match it."""
    plain = engine.generate(quality(), FIRST).frames
    peft = engine.generate(quality(), FIRST, loras=[example(tiny_model, "peft", s) for s in ("high", "low")]).frames
    assert levels(peft, plain) > 10
    assert set(SAME_DELTAS_AS) == {"diffsynth", "kohya-dotted", "aitoolkit", "kohya-te"}
    for layout in SAME_DELTAS_AS:
        with caplog.at_level(logging.INFO, logger="wan_i2v.worker.lora"):
            caplog.clear()
            frames = engine.generate(
                quality(), FIRST, loras=[example(tiny_model, layout, s) for s in ("high", "low")]
            ).frames
        assert levels(frames, peft) <= 1 and levels(frames, plain) > 10, layout
        skipped = [r.getMessage() for r in caplog.records if "text-encoder keys" in r.getMessage()]
        if layout == "kohya-te":  # one line per file, with its count
            assert skipped == [f"kohya-te-{side}: 6 text-encoder keys (lora_te*) skipped; the worker's LoRAs change "
                               "the two experts only" for side in ("high", "low")]  # fmt: skip
        else:
            assert skipped == [], layout


def test_strength_zero_is_no_lora_and_strength_one_changes_the_frames(tiny_model, engine):
    plain = engine.generate(quality(), FIRST).frames
    zero = engine.generate(quality(), FIRST, loras=[example(tiny_model, "kohya", s, 0.0) for s in ("high", "low")])
    assert np.array_equal(zero.frames, plain)
    one = engine.generate(quality(), FIRST, loras=[example(tiny_model, "kohya", s) for s in ("high", "low")])
    assert levels(one.frames, plain) > 10 and one.timings["lora_load"] > 0
    half = engine.generate(quality(), FIRST, loras=[example(tiny_model, "kohya", s, 0.5) for s in ("high", "low")])
    assert 0 < levels(half.frames, plain) and not np.array_equal(half.frames, one.frames)


def record_outputs(engine):
    """Each expert's output at every forward, and the hook handles to remove."""
    outputs = {HIGH_NOISE: [], LOW_NOISE: []}
    handles = [
        engine.experts[name].register_forward_hook(lambda m, a, out, name=name: outputs[name].append(out[0].clone()))
        for name in outputs
    ]
    return outputs, handles


def run_recording(engine, loras):
    outputs, handles = record_outputs(engine)
    try:
        frames = engine.generate(quality(), FIRST, loras=loras).frames
    finally:
        for handle in handles:
            handle.remove()
    return frames, outputs


def test_a_one_expert_lora_changes_only_that_experts_steps(tiny_model, engine):
    """High-only: every high-noise forward as with the pair, every one differing from no LoRA; the
    low-noise forwards then see other latents but no LoRA. Low-only: high-noise forwards as with none."""
    none_frames, none = run_recording(engine, [])
    pair_frames, pair = run_recording(engine, [example(tiny_model, "peft", s) for s in ("high", "low")])
    high_frames, high_only = run_recording(engine, [example(tiny_model, "peft", "high")])
    low_frames, low_only = run_recording(engine, [example(tiny_model, "peft", "low")])
    assert len(none[HIGH_NOISE]) >= 2 and len(none[LOW_NOISE]) >= 2
    assert all(torch.equal(a, b) for a, b in zip(high_only[HIGH_NOISE], pair[HIGH_NOISE], strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(high_only[HIGH_NOISE], none[HIGH_NOISE], strict=True))
    assert not torch.equal(high_only[LOW_NOISE][-1], pair[LOW_NOISE][-1])
    assert all(torch.equal(a, b) for a, b in zip(low_only[HIGH_NOISE], none[HIGH_NOISE], strict=True))
    assert not torch.equal(low_only[LOW_NOISE][0], none[LOW_NOISE][0])
    assert len({f.tobytes() for f in (none_frames, pair_frames, high_frames, low_frames)}) == 4


def test_after_a_lora_job_the_experts_are_a_fresh_workers(tiny_model, engine, engine_with):
    fresh = engine_with(warmup="off")  # another engine, loaded now (warm-up is off on the CPU anyway)
    assert fresh is not engine
    expected = fresh.generate(quality(), FIRST).frames
    before = snapshot(engine)
    loras = [example(tiny_model, layout, side) for layout in ("wan", "kohya", "peft") for side in ("high", "low")]
    engine.generate(quality(), FIRST, loras=loras)
    assert_untouched(engine, before)
    assert np.array_equal(engine.generate(quality(), FIRST).frames, expected)


def test_a_load_that_fails_half_way_leaves_nothing_attached(tiny_model, engine, tmp_path):
    config = engine.pipe.transformer.config
    wrong = user_lora_state(config, "wan", seed=2)
    wrong["diffusion_model.blocks.1.ffn.0.lora_down.weight"] = torch.zeros(4, 30)
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    expected = engine.generate(quality(), FIRST).frames
    before = snapshot(engine)
    loras = [
        example(tiny_model, "wan", "high"),
        example(tiny_model, "wan", "low"),
        JobLora(LOW_NOISE, tmp_path / "wrong.safetensors", 1.0, "loras[1].low (wrong.safetensors)"),
    ]
    with pytest.raises(InputError, match=r"loras\[1\]\.low \(wrong\.safetensors\): blocks\.1\.ffn\.net\.0\.proj: "):
        engine.generate(quality(), FIRST, loras=loras)
    assert_untouched(engine, before)
    assert np.array_equal(engine.generate(quality(), FIRST).frames, expected)


def test_user_loras_apply_on_top_of_turbo_fused_or_attached(tiny_model, engine, engine_with):
    turbo_worker = engine_with(default_mode="turbo")
    loras = [example(tiny_model, "wan", s) for s in ("high", "low")]
    plain = turbo_worker.generate(turbo(), FIRST).frames
    before = snapshot(turbo_worker)
    styled = turbo_worker.generate(turbo(), FIRST, loras=loras).frames
    assert levels(styled, plain) > 10
    assert_untouched(turbo_worker, before)
    assert np.array_equal(turbo_worker.generate(turbo(), FIRST).frames, plain)
    # A quality worker attaching the turbo pair and the same LoRAs for the job: the same video.
    assert levels(engine.generate(turbo(), FIRST, loras=loras).frames, styled) <= 1
    # And a quality job on the turbo worker (the fused pair taken back out) with the LoRAs: as on a quality worker.
    assert levels(turbo_worker.generate(quality(), FIRST, loras=loras).frames,
                  engine.generate(quality(), FIRST, loras=loras).frames) <= 1  # fmt: skip


def test_the_swap_plan_gives_the_same_frames_with_loras(tiny_model, engine, engine_with):
    swap = engine_with(memory_plan="swap")
    loras = [example(tiny_model, "kohya", "high"), example(tiny_model, "peft", "low", 1.5)]
    for params in (quality(), turbo()):
        assert np.array_equal(swap.generate(params, FIRST, loras=loras).frames,
                              engine.generate(params, FIRST, loras=loras).frames)  # fmt: skip
    before = snapshot(swap)  # parked experts included: the low-noise one is back on the host, unpatched
    swap.generate(turbo(), FIRST, loras=loras)
    assert_untouched(swap, before)


# ---- at the job boundary -----------------------------------------------------------------------------------


@pytest.fixture
def lora_worker(engine, tiny_model, tmp_path, http_server):
    """A worker with a LoRA folder (the builder's examples), a download cache, and a loopback server allowed
    by host name (`localhost`), so that a redirect to 127.0.0.1 by address is a refused address."""
    from wan_i2v.worker.job import Worker

    folder = tmp_path / "loras"
    shutil.copytree(tiny_model / "loras", folder)
    for path in folder.iterdir():
        http_server.routes[f"/{path.name}"] = http_server.Route(body=path.read_bytes())
    settings = Settings(
        model="tiny",
        output_dir=tmp_path / "out",
        url_policy=UrlPolicy.from_allow_list("localhost"),
        loras=LoraSettings(folder=folder, cache_dir=tmp_path / "cache", cache_gb=1.0, max_gb=32768 / GB, timeout_s=1.0),
    )
    http_server.local = http_server.url.replace("127.0.0.1", "localhost")
    return Worker(engine, settings), folder, http_server


@pytest.mark.load  # a dozen refusals and whole jobs (about a minute)
def test_hostile_loras_are_refused_clearly_and_the_next_job_runs_with_its_own(engine, lora_worker, tmp_path):
    worker, folder, server = lora_worker
    good = (folder / "tiny-peft-low.safetensors").read_bytes()
    torch.save({"x": torch.zeros(1)}, folder / "evil.safetensors")  # a pickle wearing a .safetensors name
    wrong = user_lora_state(engine.pipe.transformer.config, "wan", seed=3)
    wrong["diffusion_model.blocks.0.self_attn.o.lora_up.weight"] = torch.zeros(30, 4, dtype=torch.bfloat16)
    save_file(wrong, str(folder / "wrong.safetensors"))
    shutil.copy(folder / "tiny-wan-high.safetensors", tmp_path / "outside.safetensors")
    (folder / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    server.routes["/truncated.safetensors"] = server.Route(body=good[:-64])
    server.routes["/big.safetensors"] = server.Route(body=good + b"\0" * 40_000)
    server.routes["/slow.safetensors"] = server.Route(body=good, trickle=0.01)
    server.routes["/hop.safetensors"] = server.Route(
        status=302, headers={"Location": f"{server.url}/tiny-peft-low.safetensors"}
    )
    hostile = [
        ({"high": "evil.safetensors"}, "loras[0].high", "safetensors"),
        ({"low": f"{server.local}/truncated.safetensors"}, "loras[0].low", "truncated.safetensors"),
        ({"low": "wrong.safetensors"}, "loras[0].low (wrong.safetensors): blocks.0.attn1.to_out.0: LoRA maps", ""),
        ({"high": "../loras/tiny-wan-high.safetensors"}, "loras[0].high", ".."),
        ({"high": "link.safetensors"}, "loras[0].high", "link.safetensors"),
        ({"high": f"{server.local}/big.safetensors"}, "loras[0].high", "big.safetensors"),
        ({"high": f"{server.local}/slow.safetensors"}, "loras[0].high", "slow.safetensors"),
        ({"high": f"{server.local}/hop.safetensors"}, "loras[0].high", "refused"),
    ]
    before = snapshot(engine)
    for entry, field, detail in hostile:
        answer = worker.handle({"id": "bad", "input": {**CHEAP, "loras": [entry]}})
        assert field in answer.get("error", ""), (entry, answer)
        assert detail in answer["error"] and "refresh_worker" not in answer, (entry, answer)
    four = worker.handle({"id": "four", "input": {**CHEAP, "loras": [{"high": "tiny-wan-high.safetensors"}] * 4}})
    assert four["error"].startswith("loras: ") and "at most 3" in four["error"]
    assert_untouched(engine, before)
    cache = tmp_path / "cache"  # nothing kept from the refused downloads, no partial file, no job's link
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == ["in-use"]
    assert list((cache / "in-use").iterdir()) == []

    url = f"{server.local}/tiny-peft-low.safetensors?token=do-not-show"
    answer = worker.handle(
        {
            "id": "good",
            "input": {**CHEAP, "loras": [{"high": "tiny-kohya-te-high.safetensors", "low": url, "scale": 0.7}]},
        }
    )
    assert "error" not in answer, answer
    output = JobOutput.model_validate(answer)
    assert [entry.model_dump() for entry in output.loras] == [
        {
            "high": {
                "source": "tiny-kohya-te-high.safetensors",
                "scale": 0.7,
                "sha256": hashlib.sha256((folder / "tiny-kohya-te-high.safetensors").read_bytes()).hexdigest(),
                "skipped_text_encoder_keys": 6,  # the file's lora_te_* keys, as the engine skipped them
            },
            "low": {
                "source": f"{server.local}/tiny-peft-low.safetensors",
                "scale": 0.7,
                "sha256": hashlib.sha256(good).hexdigest(),
                "skipped_text_encoder_keys": 0,
            },
        }
    ]
    assert output.timings.lora_fetch > 0 and output.timings.lora_load > 0
    assert "do-not-show" not in json.dumps(answer)
    assert_untouched(engine, before)


FETCH_IN_A_PROCESS = """
import sys
from pathlib import Path
from wan_i2v.worker.lora_files import LoraStore
from wan_i2v.worker.netguard import UrlPolicy

store = LoraStore(None, Path(sys.argv[1]), 10**9, 10**8, UrlPolicy.from_allow_list("127.0.0.1"))
with store.checkout() as fetch:
    print(fetch("loras[0].high", sys.argv[2]).sha256)
"""


def test_two_workers_sharing_a_cache_download_the_same_url_once(tiny_model, tmp_path, http_server):
    body = (tiny_model / "loras" / "tiny-wan-high.safetensors").read_bytes()
    http_server.routes["/shared.safetensors"] = http_server.Route(body=body, delay=1.0)
    args = [sys.executable, "-c", FETCH_IN_A_PROCESS, str(tmp_path / "cache"), f"{http_server.url}/shared.safetensors"]
    workers = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    digests = [worker.communicate(timeout=120)[0].strip() for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0]
    assert digests == [hashlib.sha256(body).hexdigest()] * 2
    assert http_server.hits == ["/shared.safetensors"]
