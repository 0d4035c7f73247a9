"""The prepared-experts cache: a cold start writes the experts as it left them (turbo fused, int8 here on the
CPU), the next one with the same fingerprint reads them instead of fusing and quantising, with the same frames
bit for bit; anything else is rebuilt, and a cache that cannot be written never stops the worker."""

import json
import os
import shutil

import numpy as np
import pytest
from helpers import SMALL, picture, turbo

from wan_i2v.worker.engine import Engine
from wan_i2v.worker.prepared_cache import PARTIAL_PREFIX
from wan_i2v.worker.settings import EngineOptions

IMAGE = picture(64, 48)


def start(tiny_model, cache, **options):
    options = {"quant": "int8", "default_mode": "turbo", "prepared_cache": cache, **options}
    engine = Engine.load(str(tiny_model), EngineOptions(**options))
    return engine, engine.cold_start.as_dict()


def frames(engine, **changes):
    return engine.generate(turbo(**changes), IMAGE).frames


def entries(cache):
    return sorted(p.name for p in cache.iterdir() if not p.name.startswith(PARTIAL_PREFIX))


def test_a_second_cold_start_reads_the_prepared_experts_and_gives_the_same_frames(tiny_model, tmp_path):
    cache = tmp_path / "prepared"
    first, report = start(tiny_model, cache)
    assert report["prepared_cache"].startswith("miss (written ") and report["prepared_cache"].endswith(" MB)")
    assert report["seconds"]["lora_fusion"] >= 0 and report["seconds"]["quantise"] >= 0
    (entry,) = entries(cache)
    manifest = json.loads((cache / entry / "manifest.json").read_text())
    assert manifest["inputs"]["quantisation"] == "int8" and manifest["inputs"]["default_mode"] == "turbo"
    assert set(manifest["inputs"]["turbo_pair"]) == {"high_noise", "low_noise"}  # fused: its hashes count

    second, report = start(tiny_model, cache)
    assert report["prepared_cache"] == "hit"
    assert "lora_fusion" not in report["seconds"] and "quantise" not in report["seconds"]  # neither ran
    assert report["quantised_linears"] == first.cold_start.facts["quantised_linears"] > 0
    assert np.array_equal(frames(first), frames(second))
    # The other mode still works on a worker started from the cache (the pair attached, -1 here).
    assert np.array_equal(first.generate(_quality(), IMAGE).frames, second.generate(_quality(), IMAGE).frames)


def _quality():
    from helpers import quality

    return quality(steps=6)


def test_another_setting_is_stale_and_rebuilt_and_a_cut_file_is_rebuilt(tiny_model, tmp_path):
    cache = tmp_path / "prepared"
    start(tiny_model, cache)
    quality_worker, report = start(tiny_model, cache, default_mode="quality")
    assert report["prepared_cache"].startswith("stale (default_mode turbo -> quality; turbo_pair {")
    assert "written " in report["prepared_cache"] and "lora_fusion" not in report["seconds"]
    assert len(entries(cache)) == 2  # both kept (WAN_PREPARED_CACHE_KEEP=2)

    _, report = start(tiny_model, cache, default_mode="quality")
    assert report["prepared_cache"] == "hit"
    (entry,) = [e for e in entries(cache) if json.loads((cache / e / "manifest.json").read_text())["inputs"]
                ["default_mode"] == "quality"]  # fmt: skip
    shard = cache / entry / "low_noise.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    rebuilt, report = start(tiny_model, cache, default_mode="quality")
    assert report["prepared_cache"].startswith("stale (low_noise.safetensors: truncated: tensor ")
    assert "written " in report["prepared_cache"] and report["seconds"]["quantise"] >= 0
    again, report = start(tiny_model, cache, default_mode="quality")
    assert report["prepared_cache"] == "hit"
    assert np.array_equal(rebuilt.generate(_quality(), IMAGE).frames, again.generate(_quality(), IMAGE).frames)
    assert np.array_equal(quality_worker.generate(_quality(), IMAGE).frames, again.generate(_quality(), IMAGE).frames)

    # At most WAN_PREPARED_CACHE_KEEP entries: the least recently used goes.
    _, report = start(tiny_model, cache, default_mode="quality", prepared_cache_keep=1)
    assert report["prepared_cache"] == "hit" and len(entries(cache)) == 2  # a hit writes nothing, evicts nothing
    _, report = start(tiny_model, cache, default_mode="quality", quant="none", prepared_cache_keep=1)
    assert report["prepared_cache"].startswith("stale (quantisation int8 -> none; written ")
    assert len(entries(cache)) == 1


def test_a_half_written_entry_is_never_read_and_an_abandoned_one_is_swept(tiny_model, tmp_path):
    cache = tmp_path / "prepared"
    start(tiny_model, cache)
    (entry,) = entries(cache)
    killed = cache / f"{PARTIAL_PREFIX}{entry}-dead"  # a worker killed before its rename
    shutil.copytree(cache / entry, killed)
    shutil.rmtree(cache / entry)
    _, report = start(tiny_model, cache)
    assert report["prepared_cache"].startswith("miss (written ")  # the partial copy was not taken for an entry
    assert killed.is_dir()  # young: another worker may still be writing it
    old = 1_000_000_000
    for path in [killed, *killed.iterdir()]:
        os.utime(path, (old, old))
    shutil.rmtree(cache / entry)
    start(tiny_model, cache)
    assert not killed.exists() and entries(cache) == [entry]


def test_a_cache_that_cannot_be_written_warns_and_the_worker_serves(tiny_model, tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with caplog.at_level("WARNING", logger="wan_i2v.worker.prepared_cache"):
        engine, report = start(tiny_model, blocker / "prepared")
    assert report["prepared_cache"].startswith("miss (not written: ")
    assert "not written" in caplog.text and "the worker serves all the same" in caplog.text
    assert frames(engine).shape == (SMALL["num_frames"], SMALL["height"], SMALL["width"], 3)


@pytest.mark.parametrize("value, expected", [("off", None), ("/x/y", "/x/y")])
def test_the_cache_folder_setting(value, expected):
    from wan_i2v.worker.settings import Settings

    found = Settings.from_env({"WAN_PREPARED_CACHE": value}).engine.prepared_cache
    assert (str(found) if found else None) == expected
