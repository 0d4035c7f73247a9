"""bench/ in its CPU smoke forms: the same code as the GPU runs (quick paths, real-size rows), on the tiny model."""

import ast
import json
import os
import re
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

import pytest
from helpers import ROOT
from packaging.requirements import Requirement

TARGETS = {
    "quality_480p_s",
    "turbo_480p_s",
    "quality_720p_s",
    "turbo_720p_s",
    "cold_start_prepared_s",
    "cold_start_bf16_s",
    "cold_start_peak_host_gib",
    "peak_vram_fp8_720p_gib",
    "err_compile",
    "err_fp8",
    "err_int8",
}
ENGINE_PATHS = {
    "quality-bf16": ("480p",),
    "quality-fp8-fbc": ("480p",),
    "turbo-bf16-swap": ("480p", "720p"),
    "turbo-fp8": ("480p", "720p"),
    "quality-fp8": ("480p", "720p"),
    "quality-bf16-compiled": ("480p",),
    "quality-int8": ("480p",),
    "turbo-fp8-loras": ("480p",),
    "quality-bf16-compiled-static": ("480p",),
}
OTHER_PATHS = {"depth-fit", "baseline", "disk", "swap-copy", "vae-decode", "attention", "cold-start", "interpolation"}
INTERPOLATION_CASES = {
    "480p_k2": (2, "64x48"),
    "480p_k4": (4, "64x48"),
    "720p_k2": (2, "96x64"),
    "720p_k4": (4, "96x64"),
}


@pytest.fixture(scope="module")
def gpu_check(tmp_path_factory):
    """`bash bench/gpu-check.sh --smoke`: the GPU machine's script end to end, the quick run on the CPU."""
    work = tmp_path_factory.mktemp("gpu-check")
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "RESULTS": str(work / "cpu-smoke.json"),
        "OUT": str(work / "out"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu-check.sh"), "--smoke"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return json.loads((work / "cpu-smoke.json").read_text()), done.stdout, work / "out"


def figure(entry: dict, key: str, basis: str) -> float:
    """The value of a figure of that basis, checking its shape: an estimate carries its formula."""
    assert entry[key]["basis"] == basis, (key, entry[key])
    if basis == "estimated":
        assert entry[key]["formula"], entry[key]
    return entry[key]["value"]


def check_interpolation(entry: dict, frames: int = 5) -> None:
    """bench/interpolation.py's row at the smoke sizes: the four cases, (F - 1) * k + 1 frames each, every pair
    moving, the ffmpeg margin positive, RIFE's not measured without real weights, the targets open on a CPU."""
    assert entry["ok"] is True and entry["weights"] == "random" and entry["dtype"] == "float32"
    assert set(entry["cases"]) == set(INTERPOLATION_CASES)
    for name, (factor, size) in INTERPOLATION_CASES.items():
        case = entry["cases"][name]
        assert case["ok"] is True and case["size"] == size and case["factor"] == factor, (name, case)
        assert case["frames_in"] == frames and case["frames_out"] == (frames - 1) * factor + 1
        assert case["new_frames"] == (frames - 1) * (factor - 1) and case["moving_pairs"] == frames - 1
        assert figure(case, "seconds", "measured") > 0 and figure(case, "per_new_frame_s", "measured") > 0
        assert case["peak_extra_gib"]["basis"] == "not measured"  # no GPU memory on the CPU
        assert figure(case, "pairs_per_batch", "measured") == frames - 1  # the CPU budget holds every pair
        assert figure(case, "planned_pairs_per_batch", "estimated") >= frames - 1
    quality = entry["quality"]
    assert figure(quality, "ffmpeg", "measured") > 0 and quality["ffmpeg"]["kept_unchanged"] is True
    assert quality["rife"] == {"value": None, "basis": "not measured", "why": "no real RIFE weights"}
    assert set(entry["targets"]) == {"480p_k2_seconds", "720p_k4_seconds", "720p_k4_peak_extra_gib"}
    assert all(check["met"] is None for check in entry["targets"].values())


def test_the_quick_smoke_run_writes_every_path_in_the_gpu_runs_shape(gpu_check):
    results, _, _ = gpu_check
    quick = results["quick"]
    assert quick["blocks"] == 2 and quick["blocks_full"] == 40 and quick["setup"]["ok"] is True
    assert set(quick["paths"]) == set(ENGINE_PATHS) | OTHER_PATHS
    assert all(entry["ok"] is True for entry in quick["paths"].values()), {
        name: entry.get("error") for name, entry in quick["paths"].items() if not entry["ok"]
    }
    for name in [*ENGINE_PATHS, "baseline"]:  # every job path: per forward, whole job, error, memory
        for resolution in ENGINE_PATHS.get(name, ("480p",)):
            job = quick["paths"][name]["resolutions"][resolution]
            at_n = figure(job, "per_forward_s", "measured")
            assert 0 < at_n < figure(job, "per_forward_s_at_40", "estimated") < figure(job, "job_s", "estimated")
            assert {"rel_l2_vs_baseline", "peak_gib", "peak_gib_at_40"} <= set(job)
            assert job["peak_gib"]["value"] is None and job["peak_gib_at_40"]["value"] is None  # no GPU memory
            if name in ENGINE_PATHS:
                assert "fallbacks" in quick["paths"][name] and job["phases_s"]["vae_decode"] > 0
    paths = quick["paths"]
    quality = {name: paths[name]["resolutions"]["480p"] for name in ENGINE_PATHS if name.startswith("quality")}
    for name, job in quality.items():  # our engine against diffusers' own call: the same inputs and seed
        assert figure(job, "rel_l2_vs_baseline", "measured") < (0.005 if "bf16" in name else 0.02), name
    assert paths["turbo-fp8"]["resolutions"]["480p"]["rel_l2_vs_baseline"]["value"] is None  # another schedule
    assert "40 steps x 2 forwards" in quality["quality-bf16"]["job_s"]["formula"]
    assert "4 steps x 1 forwards" in paths["turbo-fp8"]["resolutions"]["720p"]["job_s"]["formula"]
    assert paths["quality-fp8-fbc"]["resolutions"]["480p"]["engine"]["step_cache"] == "fbc:0.05"
    swap = paths["turbo-bf16-swap"]["resolutions"]["480p"]
    assert swap["engine"]["memory_plan"] == "swap" and "boundary fetch" in swap["job_s"]["formula"]
    loras = paths["turbo-fp8-loras"]["resolutions"]["480p"]
    assert loras["phases_s"]["lora_load"] > 0 and "lora_load x 40 / N" in loras["job_s"]["formula"]
    assert paths["turbo-fp8"]["options"]["warmup"] == "auto"  # the cold start with an empty compile cache

    check = paths["depth-fit"]["480p"]["check"]
    assert check["blocks"] == 4 and isinstance(check["relative_error"], float) and quick["extrapolation_check"]
    assert figure(paths["swap-copy"], "fetch_s", "measured") > 0 and paths["swap-copy"]["bytes"] > 0
    assert figure(paths["disk"], "read_gb_s", "measured") > 0 and paths["disk"]["read_s"]["bf16_copy"]["formula"]
    assert figure(paths["vae-decode"], "rel_l2_bf16_vs_fp32", "measured") >= 0
    backends = paths["attention"]["backends"]
    assert backends["native"]["ok"] and backends["_native_math"]["rel_l2_vs_math"]["value"] == 0
    assert "_native_cudnn" in backends and "_native_flash" in backends  # no GPU: each says why it did not run
    cold = paths["cold-start"]["estimates"]
    assert figure(cold, "cold_start_bf16_s", "estimated") > 0 and figure(cold, "cold_start_prepared_s", "estimated") > 0
    assert quick["fixed_phases"]["480p"]["encode_mp4_s"]["value"] > 0 and quick["packages"]["torch"]
    check_interpolation(paths["interpolation"])

    assert set(results["targets"]) == TARGETS == set(results["targets_basis"])
    basis = results["targets_basis"]
    assert results["targets"]["turbo_480p_s"] == paths["turbo-fp8"]["resolutions"]["480p"]["job_s"]["value"]
    assert basis["turbo_480p_s"].startswith("estimated: ") and basis["err_int8"].startswith("measured (quick")
    assert results["targets"]["err_int8"] == paths["quality-int8"]["resolutions"]["480p"]["rel_l2_vs_baseline"]["value"]
    assert results["targets"]["cold_start_peak_host_gib"] is None and basis["cold_start_peak_host_gib"]
    assert results["baseline"] == paths["baseline"]


def test_gpu_check_prints_a_line_per_path_and_the_table_and_copies_its_files(gpu_check):
    results, stdout, out = gpu_check
    for name in results["quick"]["paths"]:
        assert re.search(rf"^\[ *\d+ s\] {re.escape(name)}: ok in ", stdout, re.MULTILINE), name
    assert "targets on cpu-smoke (~ estimated):" in stdout and "~" in stdout.split("targets on", 1)[1]
    assert "interpolation (quick): RIFE random weights" in stdout and "margin ffmpeg" in stdout
    assert {p.name for p in out.iterdir()} == {"cpu-smoke.json", "cpu-smoke.png", "gpu-check.log"}
    assert (out / "cpu-smoke.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_time_budget_skips_what_does_not_fit_and_stops_what_overruns():
    """quick.run_paths: a failure is its path's result, a path over the budget is stopped (even inside code that
    catches Exception, as the engine's fallback ladders do), one that would not fit or cannot run is skipped."""
    sys.path.insert(0, str(ROOT / "bench"))
    import quick

    def overruns(entry):
        try:
            time.sleep(5)
        except Exception:  # noqa: BLE001 - the ladders' way: any failure is a step down
            time.sleep(5)

    def cannot(entry):
        raise quick.Skipped("needs another path")

    paths = [
        quick.BenchPath("fine", 0, lambda entry: entry.update(figure=1)),
        quick.BenchPath("fails", 0, lambda entry: 1 / 0),
        quick.BenchPath("cannot", 0, cannot),
        quick.BenchPath("overruns", 0, overruns),
        quick.BenchPath("too-long", 60, lambda entry: None),
    ]
    entries, finished = {}, []
    began = time.monotonic()
    quick.run_paths(paths, quick.Budget(0.3, grace_s=0.2), entries, lambda name, entry: finished.append(name))
    assert time.monotonic() - began < 3
    assert finished == ["fine", "fails", "cannot", "overruns", "too-long"]
    assert entries["fine"] == {"ok": True, "figure": 1, "seconds": entries["fine"]["seconds"]}
    assert entries["fails"]["ok"] is False and entries["fails"]["error"].startswith("ZeroDivisionError")
    assert entries["cannot"]["ok"] is None and entries["cannot"]["skipped"] == "needs another path"
    assert entries["overruns"]["ok"] is False and "past the time budget" in entries["overruns"]["error"]
    assert entries["too-long"]["ok"] is None and entries["too-long"]["skipped"] == "time budget"


def test_the_interpolation_rows_clip_and_its_rife_margin_with_weights_found(tmp_path):
    """bench/interpolation.py: the device clip is bench/motion.py's texture (16 fps: every other frame), and with
    RIFE weights found (here a random state dict in the published file's place) the row loads them through the
    stage and measures RIFE's margin too (meaningless figures for random weights: the code path is checked)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import interpolation
    import numpy as np
    import torch
    from motion import synthetic_clip
    from safetensors.torch import save_file

    from wan_i2v.worker.interpolation.rife import IFNet

    made = interpolation.moving_clip(5, 48, 80, seed=3).numpy()
    expected = synthetic_clip(9, 48, 80, seed=3)[::2]
    assert made.dtype == np.uint8 and np.abs(made.astype(int) - expected.astype(int)).max() <= 1

    folder = tmp_path / "model" / "interpolation"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    save_file(IFNet().state_dict(), str(folder / "rife.safetensors"))
    entry = interpolation.row({"480p": (64, 48)}, 3, smoke=True, model_dir=tmp_path / "model")
    assert entry["weights"] == str(folder / "rife.safetensors") and entry["ok"] is True
    assert set(entry["cases"]) == {"480p_k2", "480p_k4"} and entry["cases"]["480p_k4"]["frames_out"] == 9
    rife = entry["quality"]["rife"]
    assert rife["basis"] == "measured" and isinstance(rife["value"], float) and rife["kept_unchanged"] is True
    assert entry["targets"]["720p_k4_seconds"]["value"] is None  # no 720p case in this call


# ---- several GPUs: two gloo ranks on the CPU ----------------------------------------------------------
LAYOUTS = {"turbo-fp8": {"ulysses": 2, "cfg": 1}, "quality-fp8": {"ulysses": 1, "cfg": 2}}  # N = 2, 2 heads


def run_bench(*args: str, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    script = [sys.executable, str(ROOT / "bench" / "run.py"), *args, "--out", str(out)]
    done = subprocess.run(script, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return json.loads(out.read_text())


def test_gpu_check_runs_the_paths_of_several_gpus_at_n_1_after_the_quick_run(gpu_check):
    """gpu-check.sh's step 3b on one device: `--quick --gpus 1`, the multi-rank code path on one rank."""
    results, stdout, _ = gpu_check
    assert "running bench/run.py --quick --gpus 1 --smoke " in stdout and "quick" in results
    report = results["quick_gpus1"]
    assert all(entry["ok"] is True for entry in report["paths"].values()), report["paths"]
    job = report["paths"]["turbo-fp8-gpus1"]["resolutions"]["720p"]
    assert job["layout"] == {"ranks": 1, "ulysses": 1, "ring": 1, "cfg": 1}
    assert job["scaling"]["efficiency_per_forward"]["value"] == 1.0  # one rank is its own reference
    assert re.search(r"^turbo_720p_s on 1 GPUs: [\d.]+ \(target 8, met None\)$", stdout, re.MULTILINE)


@pytest.mark.load
def test_quick_gpus_2_on_two_gloo_ranks_gives_the_layout_each_ranks_peak_and_the_scaling(tmp_path):
    """bench/run.py --quick --smoke --gpus 2: this process and one follower; each path on one rank, then on two."""
    results = run_bench("--quick", "--smoke", "--gpus", "2", out=tmp_path / "cpu-smoke.json")
    assert "quick" not in results  # the one-GPU quick object is left as it was
    report = results["quick_gpus2"]
    assert report["gpus"] == 2 and set(report["paths"]) == {"depth-fit", "turbo-fp8-gpus2", "quality-fp8-gpus2"}
    for name, layout in LAYOUTS.items():
        entry = report["paths"][f"{name}-gpus2"]
        assert entry["ok"] is True and entry["options"]["compile"] == "off", entry.get("error")
        for resolution in ("480p", "720p"):
            job = entry["resolutions"][resolution]
            assert job["layout"] == {"ranks": 2, "ring": 1, **layout}
            assert job["peak_gib_per_rank"]["basis"] == "not measured"  # no GPU memory on the CPU
            scaling = job["scaling"]
            assert scaling["gpus"] == 2 and figure(scaling, "per_forward_s_1_gpu", "measured") > 0
            assert figure(scaling, "job_s_1_gpu", "estimated") > 0
            assert 0 < figure(scaling, "efficiency_per_forward", "measured") < 2
            assert 0 < figure(scaling, "efficiency_job", "estimated") < 2
            assert figure(scaling, "rel_l2_vs_1_gpu", "measured") < 0.01  # two ranks make the frames of one
    assert set(report["targets"]) == {
        "quality_720p_s",
        "turbo_720p_s",
        "efficiency_quality_720p",
        "efficiency_turbo_720p",
    }
    assert all(check["met"] is None and check["value"] > 0 for check in report["targets"].values())  # not 8 GPUs


@pytest.mark.load
def test_a_row_with_gpus_2_on_two_gloo_ranks_is_stored_beside_the_rows_with_its_scaling(tmp_path):
    """bench/run.py --smoke --gpus 2 --rows turbo-fp8: the row on one rank, then on two, as `turbo-fp8-gpus2`."""
    results = run_bench("--smoke", "--gpus", "2", "--rows", "turbo-fp8", out=tmp_path / "cpu-smoke.json")
    row = results["rows"]["turbo-fp8-gpus2"]
    assert set(results["rows"]) == {"turbo-fp8-gpus2"} and row["gpus"] == 2 and row["reference_1_gpu_cold_start_s"] > 0
    for resolution in ("480p", "720p"):
        entry = row[resolution]
        assert entry["layout"] == {"ranks": 2, "ring": 1, **LAYOUTS["turbo-fp8"]} and entry["peak_gib_per_rank"] is None
        scaling = entry["scaling"]
        assert scaling["per_forward_s_1_gpu"] > 0 and scaling["job_s_1_gpu"] > 0
        assert 0 < scaling["efficiency_per_forward"] < 2 and 0 < scaling["efficiency_job"] < 2
        assert scaling["rel_l2_vs_1_gpu"] < 0.01
    assert results["targets"]["turbo_480p_s"] is None  # a row on several ranks is not the one-GPU target


# ---- the wheels a GPU machine without network installs ------------------------------------------------
def shell_array(script: Path, name: str) -> list[str]:
    found = re.search(rf"^{name}=\(([^)]*)\)", script.read_text(), re.MULTILINE)
    return found.group(1).split()


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


MACHINE = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux", "os_name": "posix"}
MACHINE |= {"platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython", "extra": ""}
MACHINE |= {"platform_python_implementation": "CPython"}


def requirements(name: str) -> set[str]:
    """The distributions `name` requires on the GPU machine (CPython 3.12, Linux), from its installed metadata."""
    try:
        required = distribution(name).requires or []
    except PackageNotFoundError:
        return set()
    chosen = (Requirement(line) for line in required)
    return {normalised(r.name) for r in chosen if r.marker is None or r.marker.evaluate(MACHINE)}


def closure(names: list[str]) -> set[str]:
    seen, todo = set(), [normalised(n) for n in names]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += requirements(name)
    return seen


def imports(path: Path, module: str) -> set[str]:
    """Every module `path` imports (in functions too), relative imports resolved against `module`."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([node.module] if node.module else [])])
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return found


def worker_file(module: str) -> Path | None:
    base = ROOT / "src" / Path(*module.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def bench_imports() -> set[str]:
    """The top-level names of what bench/run.py --quick imports: the bench's files, and every worker module they
    reach (its packages' __init__ too)."""
    bench = ["bench/run.py", "bench/quick.py", "bench/chart.py", "bench/interpolation.py", "bench/motion.py"]
    bench.append("builder/tiny_model.py")
    found = set().union(*(imports(ROOT / f, Path(f).stem) for f in bench))
    todo, seen = [m for m in found if m.startswith("wan_i2v")], set()
    while todo:
        parts = todo.pop().split(".")
        for module in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):
            path = worker_file(module)
            if module not in seen and path is not None:
                seen.add(module)
                reached = imports(path, module)
                found |= reached
                todo += [m for m in reached if m.startswith("wan_i2v")]
    local = {"wan_i2v", "run", "quick", "chart", "interpolation", "motion", "tiny_model", "__future__"}
    return {m.split(".")[0] for m in found} - local - set(sys.stdlib_module_names)


def test_the_wheel_list_covers_what_the_bench_imports_beyond_the_gpu_machines_packages():
    """bench/fetch-wheels.sh's WHEELS: with the GPU machine's packages (PRESENT and their dependencies, less those
    it is known to lack), every distribution the bench imports is there, and so is every one the wheels require
    (but those never imported on Python 3.12, UNUSED)."""
    script = ROOT / "bench" / "fetch-wheels.sh"
    for shell in (script, ROOT / "bench" / "gpu-check.sh"):
        subprocess.run(["bash", "-n", str(shell)], check=True)
    wheels = {normalised(n) for n in shell_array(script, "WHEELS")}
    present = closure(shell_array(script, "PRESENT")) - {normalised(n) for n in shell_array(script, "ABSENT")}
    pinned = re.findall(r"^([A-Za-z0-9._-]+)==", (ROOT / "builder" / "requirements.txt").read_text(), re.MULTILINE)
    pins = {normalised(name) for name in pinned}
    assert wheels <= pins, wheels - pins  # the versions the worker ships

    owners = packages_distributions()
    uploads_only = {"boto3", "botocore"}  # the storage module's lazy imports: the quick run uploads nothing
    imported = {normalised(d) for name in bench_imports() - uploads_only for d in owners.get(name, [name])}
    assert {"diffusers", "torchao", "pydantic", "imageio-ffmpeg", "torch"} <= imported  # the walk sees them
    assert imported - present <= wheels, imported - present - wheels
    required = set().union(*(requirements(name) for name in wheels))
    unused = {normalised(n) for n in shell_array(script, "UNUSED")}
    assert required - unused <= present | wheels, required - unused - present - wheels


# ---- the slow mode's rows -----------------------------------------------------------------------------
@pytest.mark.load
def test_the_benchmark_smoke_run_writes_results_of_the_gpu_shape(tmp_path):
    """bench/run.py --smoke: the rows' code (the quick run covers the same engine paths in the default tier)."""
    out = tmp_path / "cpu-smoke.json"
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--out", str(out)], check=True, timeout=300
    )
    results = json.loads(out.read_text())
    assert set(results["targets"]) == TARGETS
    assert results["smoke"] is True and results["frames"] == 5
    assert {"quality_480p", "turbo-shape_480p"} <= set(results["baseline"])
    rows = results["rows"]
    assert {"baseline", "quality-bf16", "quality-fp8-fbc", "quality-int8", "turbo-fp8", "turbo-bf16-swap"} <= set(rows)
    for name in ("quality-bf16", "quality-int8"):
        entry = rows[name]["480p"]
        assert entry["job_s_at_40_steps"] > entry["warm_job_phases_s"]["denoise"] > 0
        assert entry["rel_l2_vs_baseline"] < 0.02  # our engine against diffusers' own call, same inputs and seed
    assert rows["quality-bf16"]["480p"]["rel_l2_vs_baseline"] < 0.005
    assert rows["turbo-bf16-swap"]["480p"]["engine"]["memory_plan"] == "swap"
    assert rows["turbo-fp8"]["cold_start"]["seconds"]["lora_fusion"] >= 0
    with_loras = rows["turbo-fp8-loras"]["480p"]
    assert with_loras["warm_job_phases_s"]["lora_load"] > 0 and with_loras["user_loras"].startswith("3 pairs")
    assert rows["turbo-fp8"]["480p"]["warm_job_phases_s"]["lora_load"] == 0.0
    assert rows["quality-fp8-fbc"]["480p"]["engine"]["step_cache"] == "fbc:0.05"
    assert results["targets"]["turbo_480p_s"] == rows["turbo-fp8"]["480p"]["job_s"] > 0
    assert results["targets"]["err_int8"] == rows["quality-int8"]["480p"]["rel_l2_vs_baseline"]
    assert set(results["targets_basis"]) == TARGETS and results["targets_basis"]["turbo_480p_s"] == "measured"
    check_interpolation(rows["interpolation"])

    chart = tmp_path / "chart.png"
    subprocess.run([sys.executable, str(ROOT / "bench" / "chart.py"), str(out), str(chart)], check=True)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.load
def test_cold_start_by_source_finds_each_layout_and_times_it(tmp_path):
    """bench/cold_start.py: `python handler.py` to ready with the weights in each source's layout."""
    out = tmp_path / "cold.json"
    script = [sys.executable, str(ROOT / "bench" / "cold_start.py"), "--runs", "1", "--out", str(out)]
    subprocess.run(script, check=True, timeout=600, capture_output=True)
    sources = json.loads(out.read_text())["sources"]
    expected = {
        "directory": "directory: ",
        "runpod-cache": "RunPod model cache: ",
        "volume": "network volume: ",
        "baked": "baked into the image: ",
        "hf-cache": "local Hugging Face cache: ",
    }
    for source, prefix in expected.items():
        assert sources[source]["weights"].startswith(prefix), sources[source]
        assert 0 < sources[source]["load_s"] < sources[source]["median_ready_s"]
    assert sources["runpod-cache"]["weights"].endswith("/snapshots/" + "0" * 40)


@pytest.mark.load
def test_the_cold_start_row_reads_the_bf16_copy_then_the_prepared_cache(tmp_path):
    """bench/run.py --rows cold-start in its smoke form: two fresh processes, the second from the prepared cache."""
    out = tmp_path / "cold.json"
    script = [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--rows", "cold-start", "--out", str(out)]
    subprocess.run(script, check=True, timeout=600, capture_output=True)
    results = json.loads(out.read_text())
    row = results["rows"]["cold-start"]
    first, second = row["runs"]["bf16_copy_nothing_cached"], row["runs"]["prepared_cache_compile_warm"]
    assert first["prepared_cache"].startswith("miss (written ") and second["prepared_cache"] == "hit"
    assert "quantise" in first["seconds"] and "quantise" not in second["seconds"]
    assert row["layers"] == 2 and row["cache_bytes"] > 0 and first["files_read_bytes"] > 0
    assert 0 < first["host_rss_before_gib"] <= first["peak_host_rss_gib"]
    assert results["targets"]["cold_start_prepared_s"] == second["ready_s"] > 0
    assert results["targets"]["cold_start_peak_host_gib"] == max(
        first["peak_host_rss_gib"], second["peak_host_rss_gib"]
    )
