"""Cold start by weight source: `python handler.py` from process start to ready, on the tiny model (CPU).

    python bench/cold_start.py                       # every source, 3 starts each
    python bench/cold_start.py --sources directory,runpod-cache --runs 1 --out cold.json

The tiny model is laid out as each source keeps it (README, "Deploy"): a directory named by WAN_MODEL,
RunPod's model cache (`models--ORG--NAME/snapshots/<hash>/` with `refs/main`), a network volume folder,
the image's baked folder, the local Hugging Face cache. Ready is the moment the worker's local API
(`--rp_serve_api`) accepts connections: the model is loaded and the handler can take a job. The real
model's cold start is dominated by reading the weights from that source's disk (126 GB as published in
RunPod's model cache, 69 GB for the worker's bf16 copy, 29 GB of prepared fp8 experts plus 12 GB of text
encoder and VAE from the prepared cache); on a GPU, `bench/run.py --rows cold-start` measures a real-size cold
start from the bf16 copy and from the prepared cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "builder"))

from tiny_model import write_tiny_model

REPO = "Wan-AI/Wan2.2-I2V-A14B-Diffusers"
COMMIT = "0" * 40
SOURCES = ("directory", "runpod-cache", "volume", "baked", "hf-cache")


def lay_out(source: str, model: Path, root: Path) -> dict[str, str]:
    """Put the tiny model where `source` keeps it under `root`; the environment that finds it there."""
    nowhere = {
        "WAN_MODEL": REPO,
        "WAN_RUNPOD_CACHE": str(root / "no-runpod-cache"),
        "WAN_VOLUME_MODEL": str(root / "no-volume"),
        "WAN_BAKED_MODEL": str(root / "no-baked"),
        "HF_HOME": str(root / "no-hf-home"),
    }
    if source == "directory":
        shutil.copytree(model, root / "dir")
        return {**nowhere, "WAN_MODEL": str(root / "dir")}
    if source in ("runpod-cache", "hf-cache"):
        hub = root / ("runpod-cache" if source == "runpod-cache" else "hf-home/hub")
        folder = hub / f"models--{REPO.replace('/', '--')}"
        shutil.copytree(model, folder / "snapshots" / COMMIT)
        (folder / "refs").mkdir()
        (folder / "refs" / "main").write_text(COMMIT)
        key, value = ("WAN_RUNPOD_CACHE", hub) if source == "runpod-cache" else ("HF_HOME", root / "hf-home")
        return {**nowhere, key: str(value)}
    folder = root / source
    shutil.copytree(model, folder)
    return {**nowhere, "WAN_VOLUME_MODEL" if source == "volume" else "WAN_BAKED_MODEL": str(folder)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def time_to_ready(env: dict[str, str], work: Path, timeout_s: float = 300) -> tuple[float, dict]:
    """Seconds from spawning `python handler.py --rp_serve_api` to its port accepting, and its cold-start report."""
    port, report = _free_port(), work / f"report-{time.monotonic_ns()}.json"
    command = [sys.executable, str(ROOT / "handler.py"), "--rp_serve_api", "--rp_api_host", "127.0.0.1"]
    environment = {**os.environ, **env, "WAN_COLD_START_REPORT": str(report), "HF_HUB_OFFLINE": "1"}
    started = time.monotonic()
    process = subprocess.Popen(
        [*command, "--rp_api_port", str(port)], cwd=work, env=environment,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        while time.monotonic() - started < timeout_s:
            if process.poll() is not None:
                raise RuntimeError(f"the worker exited with {process.returncode}: {process.stderr.read()[-2000:]}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return time.monotonic() - started, json.loads(report.read_text())
            time.sleep(0.05)
        raise TimeoutError(f"not ready within {timeout_s} s")
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def measure(sources: list[str], runs: int) -> dict:
    results = {}
    with tempfile.TemporaryDirectory(prefix="wan-cold-start-") as tmp:
        model = write_tiny_model(Path(tmp) / "tiny")
        for source in sources:
            root = Path(tmp) / source
            root.mkdir()
            env = lay_out(source, model, root)
            seconds, reports = [], []
            for _ in range(runs):
                elapsed, report = time_to_ready(env, root)
                seconds.append(elapsed)
                reports.append(report)
            results[source] = {
                "ready_s": [round(s, 2) for s in seconds],
                "median_ready_s": round(statistics.median(seconds), 2),
                "load_s": reports[-1]["seconds"].get("load"),
                "weights": reports[-1].get("weights"),
            }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", default=",".join(SOURCES), help=f"comma-separated, from {', '.join(SOURCES)}")
    parser.add_argument("--runs", type=int, default=3, help="starts per source (default 3)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here too")
    args = parser.parse_args(argv)
    sources = [s for s in args.sources.split(",") if s]
    unknown = set(sources) - set(SOURCES)
    if unknown:
        parser.error(f"unknown sources {', '.join(sorted(unknown))}; choose from {', '.join(SOURCES)}")
    results = {"machine": f"{os.cpu_count()} CPU cores, tiny model", "sources": measure(sources, args.runs)}
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
