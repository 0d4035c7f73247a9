"""Finding the weights on disk, never downloading: a folder, or a hub id already in the local cache;
and the builder's check of a baked folder, which uses the same rules."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

from wan_i2v.errors import ModelNotFoundError
from wan_i2v.worker.weights import ModelPlaces, find_model, resolve_model


def resolve_in_subprocess(model: str, hf_home: Path) -> subprocess.CompletedProcess:
    """resolve_model with its own Hugging Face cache (huggingface_hub reads HF_HOME at import)."""
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    code = f"from wan_i2v.worker.weights import resolve_model; print(resolve_model({model!r}))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_fetch_weights_verifies_a_folder(tiny_model, tmp_path):
    script = [sys.executable, str(ROOT / "builder" / "fetch_weights.py"), "--verify-only", "--dest"]
    good = subprocess.run(script + [str(tiny_model)], capture_output=True, text=True)
    assert good.returncode == 0 and "complete Wan2.2 I2V diffusers pipeline" in good.stdout
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    for file in (broken / "vae").glob("*.safetensors"):
        file.unlink()
    bad = subprocess.run(script + [str(broken)], capture_output=True, text=True)
    assert bad.returncode == 1 and "missing: vae/*.safetensors" in bad.stderr


def test_fetch_weights_checks_the_turbo_pair_unless_told_there_is_none(tiny_model, tmp_path):
    script = [sys.executable, str(ROOT / "builder" / "fetch_weights.py"), "--verify-only", "--dest"]
    good = subprocess.run(script + [str(tiny_model)], capture_output=True, text=True)
    assert "turbo LoRA pair: wan2.2_i2v_A14b_high_noise_lora_rank4" in good.stdout
    bare = tmp_path / "bare"
    shutil.copytree(tiny_model, bare, ignore=shutil.ignore_patterns("turbo-lora"))
    missing = subprocess.run(script + [str(bare)], capture_output=True, text=True)
    assert (
        missing.returncode == 1
        and "turbo LoRA pair incomplete: " in missing.stderr
        and "bare/turbo-lora" in missing.stderr
    )
    quality_only = subprocess.run(script + [str(bare), "--turbo-lora-files", ""], capture_output=True, text=True)
    assert quality_only.returncode == 0 and "turbo LoRA" not in quality_only.stdout
    swapped = subprocess.run(
        script + [str(bare), "--turbo-lora-files", "a_low_noise.st,b_high_noise.st"], capture_output=True, text=True
    )
    assert swapped.returncode == 2 and "the *high_noise* file first" in swapped.stderr


def _cache_snapshot(hf_home: Path, repo_id: str, source: Path) -> Path:
    """Lay out a Hugging Face cache entry by hand, as a build-time download leaves it."""
    repo_dir = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo_dir / "snapshots" / commit
    shutil.copytree(source, snapshot)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


def test_a_hub_id_resolves_to_its_cached_snapshot_without_network(tiny_model, tmp_path):
    snapshot = _cache_snapshot(tmp_path / "hf", "Wan-AI/Wan2.2-I2V-A14B-Diffusers", tiny_model)
    done = resolve_in_subprocess("Wan-AI/Wan2.2-I2V-A14B-Diffusers", tmp_path / "hf")
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == snapshot


def test_a_local_directory_must_be_complete(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such directory"):
        resolve_model(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="missing: model_index.json, transformer/config.json"):
        resolve_model(str(tmp_path / "empty"))


def test_a_hub_id_that_is_not_cached_is_never_downloaded(tmp_path):
    done = resolve_in_subprocess("Wan-AI/Wan2.2-I2V-A14B-Diffusers", tmp_path / "hf")
    assert done.returncode == 1 and "ModelNotFoundError" in done.stderr
    assert "local Hugging Face cache: no snapshot in" in done.stderr
    assert "nothing is downloaded at run time" in done.stderr and "builder/fetch_weights.py" in done.stderr


def test_a_missing_or_incomplete_folder_says_what_is_missing_and_how_to_bake(tiny_model, tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such directory.*builder/fetch_weights.py"):
        resolve_model(str(tmp_path / "nowhere"))
    partial = tmp_path / "partial"
    shutil.copytree(tiny_model, partial)
    shutil.rmtree(partial / "transformer_2")
    with pytest.raises(ModelNotFoundError, match="missing: transformer_2/config.json, transformer_2/\\*.safetensors"):
        resolve_model(str(partial))
    assert resolve_model(str(tiny_model)) == tiny_model


REPO = "Wan-AI/Wan2.2-I2V-A14B-Diffusers"


def runpod_cache_entry(root: Path, source: Path, commits: dict[str, Path | None], main: str) -> Path:
    """RunPod's model cache layout: ROOT/models--ORG--NAME/snapshots/<hash>/ per commit, refs/main naming one."""
    folder = root / f"models--{REPO.replace('/', '--')}"
    for commit, content in commits.items():
        if content is None:
            (folder / "snapshots" / commit).mkdir(parents=True)
        else:
            shutil.copytree(content, folder / "snapshots" / commit)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(main + "\n")
    return folder / "snapshots" / main


def test_each_source_in_order_and_refs_main_picks_the_snapshot(tiny_model, tmp_path):
    places = ModelPlaces(
        runpod_cache=tmp_path / "hf-cache" / "hub",
        volume=tmp_path / "volume" / "wan",
        baked=tmp_path / "baked",
        local_cache=False,
    )
    with pytest.raises(ModelNotFoundError) as nowhere:
        find_model(REPO, places)
    text = str(nowhere.value)
    assert "Looked at, in order: RunPod model cache: no models--Wan-AI--Wan2.2-I2V-A14B-Diffusers in" in text
    assert f"; network volume: no folder {tmp_path / 'volume' / 'wan'}" in text
    assert f"; baked into the image: no folder {tmp_path / 'baked'}" in text and "nothing is downloaded" in text
    shutil.copytree(tiny_model, tmp_path / "baked")
    found = find_model(REPO, places)
    assert (found.path, found.source) == (tmp_path / "baked", "baked into the image")
    shutil.copytree(tiny_model, tmp_path / "volume" / "wan")
    assert find_model(REPO, places).source == "network volume"
    old, new = "a" * 40, "b" * 40
    chosen = runpod_cache_entry(places.runpod_cache, tiny_model, {old: tiny_model, new: tiny_model}, main=new)
    found = find_model(REPO, places)
    assert (found.path, found.source) == (chosen, "RunPod model cache") and found.path.name == new
    # An explicit directory wins over everything and must be complete itself.
    assert find_model(str(tiny_model), places).source == "directory"


def test_an_incomplete_or_dangling_model_cache_snapshot_is_named_and_the_next_place_used(tiny_model, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(tiny_model, partial, ignore=shutil.ignore_patterns("transformer_2"))
    places = ModelPlaces(
        runpod_cache=tmp_path / "hub", volume=tmp_path / "none", baked=tmp_path / "none", local_cache=False
    )
    snapshot = runpod_cache_entry(places.runpod_cache, tiny_model, {"c" * 40: partial}, main="c" * 40)
    with pytest.raises(
        ModelNotFoundError,
        match=f"RunPod model cache: {snapshot} is incomplete, missing transformer_2/config.json",
    ):
        find_model(REPO, places)
    (places.runpod_cache / f"models--{REPO.replace('/', '--')}" / "refs" / "main").write_text("d" * 40)
    with pytest.raises(ModelNotFoundError, match="refs/main names 'dddd.*', but snapshots/dddd.* is missing"):
        find_model(REPO, places)
    shutil.copytree(tiny_model, tmp_path / "baked")
    assert find_model(REPO, ModelPlaces(places.runpod_cache, tmp_path / "none", tmp_path / "baked", False)).source == (
        "baked into the image"
    )


def test_a_weight_file_cut_short_or_a_shard_missing_from_its_index_is_named(tiny_model, tmp_path):
    """A copy cut short (a volume copy interrupted, a disk that filled) is found from the headers at once."""
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    (shard,) = (copy / "transformer").glob("*.safetensors")
    shard.write_bytes(shard.read_bytes()[:-1000])
    index = copy / "vae" / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text('{"weight_map": {"a": "diffusion_pytorch_model-00002-of-00002.safetensors"}}')
    with pytest.raises(ModelNotFoundError) as broken:
        resolve_model(str(copy))
    text = str(broken.value)
    assert f"transformer/{shard.name} (truncated: tensor " in text
    assert "vae/diffusion_pytorch_model-00002-of-00002.safetensors" in text
    verify = [sys.executable, str(ROOT / "builder" / "fetch_weights.py"), "--verify-only", "--dest", str(copy)]
    done = subprocess.run(verify, capture_output=True, text=True)
    assert done.returncode == 1 and f"transformer/{shard.name} (truncated" in done.stderr


def test_a_repair_run_removes_only_the_broken_files_before_downloading_again(tiny_model, tmp_path):
    sys.path.insert(0, str(ROOT / "builder"))
    from fetch_weights import remove_broken

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    (shard,) = (copy / "transformer_2").glob("*.safetensors")
    shard.write_bytes(shard.read_bytes()[:-64])
    record = copy / ".cache" / "huggingface" / "download" / "transformer_2" / f"{shard.name}.metadata"
    record.parent.mkdir(parents=True)
    record.write_text("etag\n")  # what huggingface_hub keeps to skip a file it already has
    kept = sorted(p for p in copy.rglob("*.safetensors") if p != shard)
    assert remove_broken(copy) == [shard]
    assert not shard.exists() and not record.exists()
    assert sorted(copy.rglob("*.safetensors")) == kept
    assert remove_broken(copy) == []


def test_the_turbo_pair_is_found_beside_the_weights_wherever_they_came_from(tiny_model, tmp_path):
    from wan_i2v.worker.weights import find_pair

    snapshot = tmp_path / "snapshot"  # a model from RunPod's cache: no turbo-lora/ inside
    shutil.copytree(tiny_model, snapshot, ignore=shutil.ignore_patterns("turbo-lora"))
    baked = tmp_path / "baked"
    shutil.copytree(tiny_model / "turbo-lora", baked / "turbo-lora")
    files, misses = find_pair(None, snapshot, ModelPlaces(baked=baked))
    assert files is not None and files["high_noise"].parent == baked / "turbo-lora"
    assert misses == [f"{snapshot / 'turbo-lora'}: no such folder"]
    files, misses = find_pair(None, snapshot, ModelPlaces(baked=tmp_path / "nothing"))
    assert files is None and misses == [f"{snapshot / 'turbo-lora'}: no such folder"]


def test_a_model_cache_without_refs_main_is_served_from_its_complete_snapshot(tiny_model, tmp_path, caplog):
    """RunPod documents snapshots/<hash>/ and no more: refs/main may be absent (its own helper falls back)."""
    partial = tmp_path / "partial"
    shutil.copytree(tiny_model, partial, ignore=shutil.ignore_patterns("transformer_2"))
    places = ModelPlaces(
        runpod_cache=tmp_path / "hub", volume=tmp_path / "no", baked=tmp_path / "no", local_cache=False
    )
    folder = places.runpod_cache / f"models--{REPO.replace('/', '--')}"
    runpod_cache_entry(places.runpod_cache, tiny_model, {"e" * 40: tiny_model, "f" * 40: partial}, main="e" * 40)
    (folder / "refs" / "main").unlink()
    os.utime(folder / "snapshots" / ("f" * 40), (2e9, 2e9))  # the incomplete one is the newest: still skipped
    with caplog.at_level("INFO"):
        found = find_model(REPO, places)
    assert (found.path.name, found.source) == ("e" * 40, "RunPod model cache")
    assert found.revision.commit == "e" * 40 and found.revision.repo == REPO
    assert f"snapshots/{'f' * 40} lacks transformer_2/config.json" in caplog.text
    assert f"no refs/main; using snapshot {'e' * 40} (the only complete one)" in caplog.text

    # Two complete snapshots: the newest one.
    shutil.copytree(tiny_model, folder / "snapshots" / ("a" * 40))
    os.utime(folder / "snapshots" / ("a" * 40), (1e9, 1e9))
    os.utime(folder / "snapshots" / ("e" * 40), (1.5e9, 1.5e9))
    assert find_model(REPO, places).path.name == "e" * 40
    os.utime(folder / "snapshots" / ("a" * 40), (1.8e9, 1.8e9))
    assert find_model(REPO, places).path.name == "a" * 40

    # WAN_MODEL_REVISION names one, refs/main or not; a name with no snapshot is said and the next place used.
    (folder / "refs" / "main").write_text("a" * 40)
    pinned = ModelPlaces(places.runpod_cache, tmp_path / "no", tmp_path / "no", False, revision="e" * 40)
    assert find_model(REPO, pinned).path.name == "e" * 40
    absent = ModelPlaces(places.runpod_cache, tmp_path / "no", tmp_path / "no", False, revision="9" * 40)
    with pytest.raises(ModelNotFoundError, match=f"no snapshots/{'9' * 40} for WAN_MODEL_REVISION"):
        find_model(REPO, absent)


def test_a_pinned_revision_refuses_a_copy_of_another_or_an_unknown_commit(tiny_model, tmp_path):
    from wan_i2v.errors import SettingsError
    from wan_i2v.worker.settings import Settings

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    (copy / "provenance.json").write_text(json.dumps({"repo": REPO, "commit": "1" * 40, "dtype": "bf16"}))
    assert find_model(str(copy), ModelPlaces(revision="1" * 40)).revision.dtype == "bf16"
    with pytest.raises(ModelNotFoundError, match=f"it holds commit {'1' * 40}, WAN_MODEL_REVISION={'2' * 40}"):
        find_model(str(copy), ModelPlaces(revision="2" * 40))
    places = ModelPlaces(runpod_cache=tmp_path / "no", volume=tmp_path / "no", baked=tiny_model, local_cache=False)
    with pytest.raises(ModelNotFoundError, match="baked into the image: .*its commit is unknown"):
        find_model(REPO, ModelPlaces(**{**places.__dict__, "revision": "2" * 40}))
    assert Settings.from_env({"WAN_MODEL_REVISION": "3" * 40}).engine.model_places.revision == "3" * 40
    with pytest.raises(SettingsError, match="WAN_MODEL_REVISION='main': allowed a commit hash of 40 hex digits"):
        Settings.from_env({"WAN_MODEL_REVISION": "main"})
