"""What can be checked of the deployment without a Docker engine or a GPU."""

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

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
    assert settled == [("turbo", "480p", 4), ("quality", "480p", 30), ("turbo", "720p", 4)]  # the first is the default
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
