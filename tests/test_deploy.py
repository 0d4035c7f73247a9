"""What can be checked of the deployment without a Docker engine or a GPU."""

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from helpers import ROOT
from packaging.requirements import Requirement

from wan_i2v.schema import parse_job_input

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    done = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_runs_the_handler_offline_on_baked_weights():
    assert 'CMD ["python", "-u", "handler.py"]' in DOCKERFILE
    assert "HF_HUB_OFFLINE=1" in DOCKERFILE and "WAN_MODEL=${WAN_MODEL_ID}" in DOCKERFILE
    assert "WAN_BAKED_MODEL=/models/wan" in DOCKERFILE
    assert re.search(r"^ARG WAN_MODEL_ID=", DOCKERFILE, re.MULTILINE)
    assert "builder/fetch_weights.py" in DOCKERFILE and "--dest /models/wan" in DOCKERFILE
    # Every file the Dockerfile copies exists in the repository.
    for line in re.findall(r"^COPY (.+)$", DOCKERFILE, re.MULTILINE):
        for source in line.split()[:-1]:
            assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"


def test_the_slim_image_skips_only_the_weights_and_starts_from_runpods_model_cache(tiny_model, tmp_path):
    """WAN_BAKE_WEIGHTS=false: the one RUN that downloads is skipped, every file the worker needs is still
    copied, and a worker with the weights only in RunPod's model-cache layout starts from there."""
    from wan_i2v.worker.job import build_worker
    from wan_i2v.worker.settings import Settings

    assert re.search(r"^ARG WAN_BAKE_WEIGHTS=true$", DOCKERFILE, re.MULTILINE)
    (fetch_step,) = [step for step in re.split(r"\n(?=[A-Z]+ )", DOCKERFILE) if "fetch_weights.py --model" in step]
    assert fetch_step.startswith('RUN if [ "${WAN_BAKE_WEIGHTS}" = "true" ]; then') and "\n    fi\n" in fetch_step
    copied = {src for line in re.findall(r"^COPY (.+)$", DOCKERFILE, re.MULTILINE) for src in line.split()[:-1]}
    assert {"handler.py", "src", "pyproject.toml", "builder/requirements.txt"} <= copied

    hub = tmp_path / "huggingface-cache" / "hub"
    repo = hub / "models--Wan-AI--Wan2.2-I2V-A14B-Diffusers"
    commit = "f" * 40
    shutil.copytree(tiny_model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {
        "WAN_MODEL": "Wan-AI/Wan2.2-I2V-A14B-Diffusers",
        "WAN_RUNPOD_CACHE": str(hub),
        "WAN_BAKED_MODEL": str(tmp_path / "not-baked"),
        "WAN_OUTPUT_DIR": str(tmp_path / "out"),
    }
    worker = build_worker(Settings.from_env(env))
    assert worker.engine.cold_start.facts["weights"] == f"RunPod model cache: {repo / 'snapshots' / commit}"


PINS = [
    Requirement(line)
    for line in (ROOT / "builder" / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]


def test_image_pins_stay_inside_the_package_ranges():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["worker"]]
    ranges = {r.name.lower(): r.specifier for r in wanted}
    for pin in PINS:
        (specifier,) = pin.specifier
        assert specifier.operator == "==", f"{pin}: the list pins exact versions"
        if pin.name.lower() in ranges:
            assert ranges[pin.name.lower()].contains(specifier.version), f"{pin} is outside {ranges[pin.name.lower()]}"
    assert set(ranges) <= {p.name.lower() for p in PINS}, "every package the worker asks for is pinned"


def test_the_image_installs_the_stack_the_tests_run_on():
    """One list: the Dockerfile installs builder/requirements.txt (torch's CUDA build of the pinned version from
    PyTorch's index), the README's commands and .ci/run install the same list, and every version this test
    session runs is the pinned one. A drift anywhere fails here."""
    from importlib.metadata import version

    from packaging.version import Version

    python = re.search(r"^FROM python:(\d+\.\d+)-slim-\w+$", DOCKERFILE, re.MULTILINE)
    assert python and python.group(1) == f"{sys.version_info.major}.{sys.version_info.minor}"
    (install,) = [line for line in DOCKERFILE.splitlines() if line.startswith("RUN pip install") and " -r " in line]
    assert install.endswith("-r builder/requirements.txt") and '--extra-index-url "${TORCH_INDEX_URL}"' in install
    index = re.search(r"^ARG TORCH_INDEX_URL=(\S+)$", DOCKERFILE, re.MULTILINE).group(1)
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", index), index
    assert "torch" in {p.name for p in PINS} and "torchao" in {p.name for p in PINS}
    for pin in PINS:
        (specifier,) = pin.specifier
        installed = Version(version(pin.name))
        assert installed.public == specifier.version, f"{pin.name}: {installed} installed, {specifier.version} pinned"
    readme = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.+?)\n```", readme, re.DOTALL)
    ci = (ROOT / ".ci" / "run").read_text()
    for command in (*commands, ci):
        assert "pip install -q -r builder/requirements.txt -e '.[worker" in command


def test_runpod_hub_files_are_valid():
    hub = json.loads((ROOT / ".runpod" / "hub.json").read_text())
    assert hub["type"] == "serverless" and hub["category"] == "video" and hub["config"]["runsOn"] == "GPU"
    assert "AMPERE_80" in hub["config"]["gpuIds"] and "ADA_80_PRO" in hub["config"]["gpuIds"]
    keys = {entry["key"] for entry in hub["config"]["env"]}
    assert {"BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY", "BUCKET_NAME"} <= keys
    # The Hub documents no secret flag: secrets are inputs without a default, never a static value.
    for entry in hub["config"]["env"]:
        if entry["key"] in ("BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY"):
            assert "value" not in entry and "default" not in entry["input"]
    tests = json.loads((ROOT / ".runpod" / "tests.json").read_text())
    assert tests["config"]["gpuCount"] == 1 and tests["tests"]
    for test in tests["tests"]:
        parse_job_input(test["input"])  # each hub test job passes our own validation
        assert test["timeout"] >= 60_000


# The fields the Hub's publishing guide documents (docs.runpod.io/hub/publishing-guide): nothing else.
HUB_FIELDS = {"title", "description", "type", "category", "iconUrl", "config"}
HUB_CONFIG_FIELDS = {
    "runsOn", "endpointType", "containerDiskInGb", "cpuFlavor", "gpuCount", "gpuIds", "allowedCudaVersions", "env",
    "presets",
}  # fmt: skip
HUB_INPUT_FIELDS = {"name", "type", "description", "default", "advanced", "required", "options", "min", "max"}
HUB_INPUT_FIELDS |= {"trueValue", "falseValue"}
TESTS_CONFIG_FIELDS = {"gpuTypeId", "gpuCount", "cpuFlavor", "env", "allowedCudaVersions"}


def test_hub_files_use_only_the_hubs_documented_fields_and_presets_are_real_settings():
    from wan_i2v.worker.settings import Settings

    hub = json.loads((ROOT / ".runpod" / "hub.json").read_text())
    assert set(hub) <= HUB_FIELDS and {"title", "description", "type", "category", "config"} <= set(hub)
    assert hub["category"] in ("audio", "embedding", "language", "video", "image")
    config = hub["config"]
    assert set(config) <= HUB_CONFIG_FIELDS
    assert isinstance(config["containerDiskInGb"], int) and isinstance(config["gpuCount"], int)
    assert isinstance(config["gpuIds"], str) and all(isinstance(v, str) for v in config["allowedCudaVersions"])
    keys = set()
    for entry in config["env"]:
        assert set(entry) in ({"key", "value"}, {"key", "input"}), entry
        keys.add(entry["key"])
        if "input" in entry:
            assert set(entry["input"]) <= HUB_INPUT_FIELDS, entry
            assert entry["input"]["type"] in ("string", "number", "boolean", "huggingface")
    assert len(keys) == len(config["env"])  # each variable once
    assert config["presets"], "presets: at least the turbo and quality defaults"
    settled = []
    for preset in config["presets"]:
        assert set(preset) == {"name", "defaults"} and set(preset["defaults"]) <= keys, preset
        settings = Settings.from_env({key: str(value) for key, value in preset["defaults"].items()})  # valid
        job = parse_job_input(
            {"image": "https://example.com/a.png"}, settings.engine.default_mode, settings.default_resolution
        )
        settled.append((job.mode, job.resolution, job.sample_steps))  # what a job naming neither runs
    assert settled == [  # the first is the default
        ("turbo", "480p", 4), ("quality", "480p", 30), ("turbo", "720p", 4), ("quality", "720p", 30),
        ("quality", "720p", 30), ("turbo", "480p", 4),
    ]  # fmt: skip
    gpus = [preset["defaults"].get("WAN_GPUS") for preset in config["presets"]]
    assert gpus == [None, None, None, 2, 8, None]  # the multi-GPU presets (README, "Several GPUs per worker")
    inputs = {entry["key"]: entry["input"] for entry in config["env"] if "input" in entry}
    for key, value in config["presets"][0]["defaults"].items():  # a listing with no preset chosen is the first
        assert str(inputs[key].get("default", value)) == str(value), key
    tests = json.loads((ROOT / ".runpod" / "tests.json").read_text())
    assert set(tests) == {"tests", "config"} and set(tests["config"]) <= TESTS_CONFIG_FIELDS
    for test in tests["tests"]:
        assert set(test) <= {"name", "input", "timeout"} and isinstance(test["timeout"], int)


def test_test_input_is_a_valid_small_offline_job():
    job = json.loads((ROOT / "test_input.json").read_text())
    request = parse_job_input(job["input"])
    assert request.image.startswith("data:image/png;base64,"), "test_input.json must run offline"
    assert request.frame_num == 17 and request.sample_steps == 15


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.+?)\n```", quick_start, re.DOTALL)
    assert len(commands) == 2, "the Quick start has exactly two commands"
    assert "handler.py" in commands[0] and "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines()
    assert "set -euo pipefail" in ci  # pytest's exit code 5 (no tests) fails CI too


# ---- RIFE v4.26, baked by the builder (README, "Smooth video") --------------------------------------------------
def builder():
    sys.path.insert(0, str(ROOT / "builder"))
    import fetch_weights

    return fetch_weights


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def rife_zip(path: Path, flownet: Path) -> tuple[Path, str]:
    """A zip laid out as hzwer/RIFE's RIFEv4.26_0921.zip: the weights in a folder, macOS shadows beside them."""
    import zipfile

    with zipfile.ZipFile(path, "w") as zipped:
        zipped.writestr("RIFEv4.26_0921/", b"")
        zipped.write(flownet, "RIFEv4.26_0921/flownet.pkl")
        zipped.writestr("__MACOSX/._flownet.pkl", b"\x00\x05\x16\x07 not weights")
        zipped.writestr("__MACOSX/RIFEv4.26_0921/._flownet.pkl", b"\x00\x05\x16\x07 not weights")
    return path, sha256(path)


@pytest.fixture(scope="module")
def rife_files(tmp_path_factory):
    """Random weights in the published flownet.pkl's form, and the pipeline without any RIFE weights."""
    sys.path.insert(0, str(ROOT / "builder"))
    from tiny_model import write_rife

    folder = tmp_path_factory.mktemp("rife")
    return write_rife(folder / "flownet.pkl", seed=7)


@pytest.fixture(scope="module")
def bare_pipeline(tiny_model, tmp_path_factory):
    dest = tmp_path_factory.mktemp("bare") / "pipeline"
    shutil.copytree(tiny_model, dest, ignore=shutil.ignore_patterns("interpolation"))
    return dest


def weights_layer(root: Path) -> Path:
    """The files the Dockerfile copies before its weights RUN, laid out as in the image's /app."""
    before_run = DOCKERFILE.split("fetch_weights.py --model")[0]
    for line in re.findall(r"^COPY (.+)$", before_run, re.MULTILINE):
        *sources, target = line.split()
        for source in sources:
            into = root / target / Path(source).name if target.endswith("/") else root / target
            into.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / source, into)
    return root


def test_the_builder_bakes_rife_from_a_local_zip_with_the_images_weights_layer_alone(
    rife_files, bare_pipeline, tmp_path, capsys
):
    """From the files the image's weights layer holds (no worker package beyond them), no network: the zip's
    flownet.pkl becomes interpolation/rife-v4.26.safetensors, equal tensor for tensor, with its provenance."""
    import torch

    from wan_i2v.worker.interpolation.rife import load_rife, published_keys
    from wan_i2v.worker.interpolation.stage import find_weights
    from wan_i2v.worker.settings import InterpolationOptions

    archive, digest = rife_zip(tmp_path / "RIFEv4.26_0921.zip", rife_files)
    layer, dest = weights_layer(tmp_path / "app"), tmp_path / "models"
    run = (
        "import runpy, sys\n"
        f"sys.path[:] = [{str(layer / 'src')!r}] + [p for p in sys.path if p != {str(ROOT / 'src')!r}]\n"
        "import wan_i2v\n"
        f"assert wan_i2v.__file__.startswith({str(layer)!r}), wan_i2v.__file__\n"
        "sys.argv[0] = 'fetch_weights.py'\n"
        f"runpy.run_path({str(layer / 'builder' / 'fetch_weights.py')!r}, run_name='__main__')\n"
    )
    args = ["--source", str(bare_pipeline), "--dest", str(dest), "--dtype", "as-published"]
    args += ["--rife-source", str(archive), "--rife-sha256", digest]
    done = subprocess.run([sys.executable, "-c", run, *args], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    baked = dest / "interpolation" / "rife-v4.26.safetensors"
    assert f"RIFE weights: {baked} from sha256 {digest}" in done.stdout
    assert sorted(p.name for p in (dest / "interpolation").iterdir()) == ["provenance.json", baked.name]
    assert not (dest / ".staging").exists() and not list(dest.rglob("*.partial"))

    model = load_rife(baked, torch.device("cpu"))  # strict: every key, every shape
    published = published_keys(torch.load(rife_files, weights_only=True))
    loaded = model.state_dict()
    assert loaded.keys() == published.keys()
    assert all(torch.equal(loaded[key], value) for key, value in published.items())
    assert find_weights(InterpolationOptions(), dest) == (baked, str(dest / "interpolation"))
    facts = json.loads((dest / "interpolation" / "provenance.json").read_text())
    assert facts["sha256"] == digest and facts["flownet_sha256"] == sha256(rife_files)
    assert facts["safetensors_sha256"] == sha256(baked) and facts["file"] == archive.name
    assert facts["source"] == f"local file {archive}" and facts["date"].endswith("Z")

    fetch_weights = builder()
    before = baked.stat().st_mtime_ns
    assert fetch_weights.main(args) == 0  # again: the same file is not baked twice
    assert "already baked from sha256" in capsys.readouterr().out and baked.stat().st_mtime_ns == before
    assert fetch_weights.main(["--verify-only", "--dest", str(dest)]) == 0  # the worker's own lookup and load
    assert "RIFE 4.26 weights: interpolation/rife-v4.26.safetensors" in capsys.readouterr().out


def test_a_rife_file_with_another_hash_fails_the_build_naming_both_and_leaves_nothing(
    rife_files, bare_pipeline, tmp_path, monkeypatch, capsys
):
    import huggingface_hub

    fetch_weights = builder()
    archive, digest = rife_zip(tmp_path / "RIFEv4.26_0921.zip", rife_files)
    asked = []

    def hf_hub_download(repo_id, filename, revision, local_dir):  # the hub, serving another file
        asked.append((repo_id, filename, revision))
        Path(local_dir).mkdir(parents=True)
        return shutil.copyfile(archive, Path(local_dir) / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    dest = tmp_path / "models"
    assert fetch_weights.main(["--dest", str(dest)]) == 1  # every RIFE default: the published zip
    assert asked == [("hzwer/RIFE", "RIFEv4.26_0921.zip", "01fdc7e97404120c243c3ea7b427046e5dc7643e")]
    published = "1fa9b9cda3d9b8c3e301359e2595960902f97bf926c08598b0e9957a3f3f760e"
    err = capsys.readouterr().err
    assert f"sha256 {digest}, expected {published}" in err
    assert not list(dest.rglob("*"))  # no interpolation/, no download left in .staging

    local = ["--source", str(bare_pipeline), "--dest", str(dest), "--rife-source", str(archive)]
    assert fetch_weights.main(local) == 1  # a local copy is checked against the same hash
    assert f"sha256 {digest}, expected {published}" in capsys.readouterr().err
    assert fetch_weights.main([*local, "--rife-sha256", "0" * 64]) == 1
    assert f"sha256 {digest}, expected {'0' * 64}" in capsys.readouterr().err
    assert not list(dest.rglob("*"))


def test_a_rife_zip_without_v4_26s_layout_fails_the_build_naming_what_is_wrong(
    rife_files, bare_pipeline, tmp_path, capsys
):
    import zipfile

    import torch

    fetch_weights = builder()
    state = torch.load(rife_files, weights_only=True)
    del state["module.block4.lastconv.0.bias"]
    short = tmp_path / "short" / "flownet.pkl"
    short.parent.mkdir()
    torch.save(state, short)
    dest = tmp_path / "models"
    args = ["--source", str(bare_pipeline), "--dest", str(dest), "--rife-sha256", ""]  # no hash: the layout alone

    archive, _ = rife_zip(tmp_path / "short.zip", short)
    assert fetch_weights.main([*args, "--rife-source", str(archive)]) == 1
    err = capsys.readouterr().err
    assert "short.zip: flownet.pkl: not RIFE 4.26's IFNet: missing block4.lastconv.0.bias" in err
    shadows = tmp_path / "shadows.zip"  # only macOS's shadows of the file, not the file
    with zipfile.ZipFile(shadows, "w") as zipped:
        zipped.writestr("__MACOSX/RIFEv4.26_0921/._flownet.pkl", b"\x00\x05\x16\x07")
    assert fetch_weights.main([*args, "--rife-source", str(shadows)]) == 1
    assert "shadows.zip: expected one flownet.pkl in the zip, found none of its 1 members" in capsys.readouterr().err
    assert not list(dest.rglob("*"))


def test_the_dockerfile_passes_the_rife_arguments_with_the_builders_defaults():
    from wan_i2v.worker.interpolation import stage
    from wan_i2v.worker.interpolation.rife import VERSION

    fetch_weights = builder()
    (fetch_step,) = [step for step in re.split(r"\n(?=[A-Z]+ )", DOCKERFILE) if "fetch_weights.py --model" in step]
    for arg, flag, default in [
        ("WAN_RIFE_REPO", "--rife-repo", fetch_weights.RIFE_REPO),
        ("WAN_RIFE_REVISION", "--rife-revision", fetch_weights.RIFE_REVISION),
        ("WAN_RIFE_FILE", "--rife-file", fetch_weights.RIFE_FILE),
        ("WAN_RIFE_SHA256", "--rife-sha256", fetch_weights.RIFE_SHA256),
    ]:
        assert re.search(rf"^ARG {arg}={re.escape(default)}$", DOCKERFILE, re.MULTILINE), arg
        assert f'{flag} "${{{arg}}}"' in fetch_step, flag
    assert "empty WAN_RIFE_FILE skips" in DOCKERFILE
    assert fetch_weights.RIFE_FOLDER == stage.FOLDER_IN_MODEL  # where the worker looks
    assert fetch_weights.RIFE_BAKED == f"rife-v{VERSION}.safetensors"


def test_the_hubs_interpolation_preset_and_setting_are_the_workers_own():
    from wan_i2v.errors import SettingsError
    from wan_i2v.schema import INTERPOLATE_MAX
    from wan_i2v.worker.settings import InterpolationOptions

    hub = json.loads((ROOT / ".runpod" / "hub.json").read_text())["config"]
    smooth = hub["presets"][-1]
    assert "RIFE" in smooth["name"] and "32 fps" in smooth["name"]
    options = InterpolationOptions.from_env({key: str(value) for key, value in smooth["defaults"].items()})
    assert options.default_factor == 2
    assert all("WAN_DEFAULT_INTERPOLATE" not in preset["defaults"] for preset in hub["presets"][:-1])
    (setting,) = [entry["input"] for entry in hub["env"] if entry["key"] == "WAN_DEFAULT_INTERPOLATE"]
    assert setting["type"] == "number" and (setting["min"], setting["max"]) == (1, INTERPOLATE_MAX)
    assert InterpolationOptions.from_env({"WAN_DEFAULT_INTERPOLATE": str(setting["default"])}).default_factor == 1
    for value in range(setting["min"], setting["max"] + 1):
        assert InterpolationOptions.from_env({"WAN_DEFAULT_INTERPOLATE": str(value)}).default_factor == value
    for value in (setting["min"] - 1, setting["max"] + 1):
        with pytest.raises(SettingsError):
            InterpolationOptions.from_env({"WAN_DEFAULT_INTERPOLATE": str(value)})
    tests = json.loads((ROOT / ".runpod" / "tests.json").read_text())["tests"]
    smooth_jobs = [parse_job_input(test["input"]) for test in tests if "interpolate" in test["input"]]
    assert [(job.interpolate, job.frame_num, job.mode) for job in smooth_jobs] == [(2, 17, "turbo")]
