"""bench/ in its CPU smoke mode: the same code as the GPU run (real-size rows), on the tiny model."""

import json
import subprocess
import sys

import pytest
from helpers import ROOT

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


def test_the_benchmark_smoke_run_writes_results_of_the_gpu_shape(tmp_path):
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
