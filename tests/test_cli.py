"""The `wan-i2v` command: exit codes, the key never printed, dry runs, batches it refuses to start, the
summary it prints, and progress shown from the jobs' progress events. No test here runs a job."""

import json
import os
import sqlite3
import subprocess

import pytest
import requests
from helpers import KEY, batch_args, cli_env, ledger_states, make_inputs, wan_i2v

from wan_i2v.ops import cli
from wan_i2v.ops.batch import Batch
from wan_i2v.ops.devserver import DevEndpoint
from wan_i2v.schema import Phase, progress_event


def no_endpoint_env() -> dict:
    """The command's settings, pointing at a port where nothing listens (for commands that call nothing)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "BUCKET_"))}
    return {
        **env,
        "RUNPOD_API_KEY": KEY,
        "RUNPOD_ENDPOINT_ID": "dev",
        "RUNPOD_ENDPOINT_BASE_URL": "http://127.0.0.1:9/v2",
    }


def run(*args, env, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        wan_i2v(*args), check=False, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def test_a_bad_or_missing_api_key_exits_2_without_printing_it(idle_endpoint):
    env = {**cli_env(idle_endpoint), "RUNPOD_API_KEY": "wrong-key-123"}
    done = run("health", env=env, timeout=60)
    assert done.returncode == 2 and "HTTP 401" in done.stderr and "wrong-key-123" not in done.stdout + done.stderr
    missing = run("health", env={**env, "RUNPOD_API_KEY": ""})
    assert missing.returncode == 2 and "no RunPod API key" in missing.stderr


def test_dry_run_lists_jobs_and_cost_without_submitting(idle_endpoint, tmp_path):
    images, prompts = make_inputs(tmp_path, 2, ["a", "b", "c"])
    done = run(
        "batch",
        str(prompts),
        "--images-dir",
        str(images),
        "--dry-run",
        "--resolution",
        "720p",
        "--price-per-second",
        "0.001",
        env=cli_env(idle_endpoint),
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 7 and lines[-1].startswith("6 jobs, about ") and "$0.001/GPU-second" in lines[-1]
    assert idle_endpoint.stats().submissions == [] and not (tmp_path / "wan-i2v-batch.sqlite").exists()


def test_a_batch_job_refused_by_the_api_stops_the_batch_with_the_apis_error(idle_endpoint, tmp_path):
    """The helper that sends each batch job hands RunPod's refusal back: exit 2, the HTTP status, no key."""
    images, prompts = make_inputs(tmp_path, 1, ["waves roll in"])
    download = tmp_path / "videos"
    env = {**cli_env(idle_endpoint), "RUNPOD_API_KEY": "wrong-key-123"}
    done = run(*batch_args(prompts, images, download, max_in_flight=1), "--no-manage-workers", env=env)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "POST v2/dev/run failed: HTTP 401" in done.stderr and "wrong-key-123" not in done.stdout + done.stderr
    assert idle_endpoint.stats().submissions == []
    assert ledger_states(download / "wan-i2v-batch.sqlite") == ["submitting"]


def test_a_missing_count_or_dev_endpoint_key_is_a_usage_error(monkeypatch, capsys):
    """Exit 2 with the command's own words, in process (nothing is called)."""
    for name, value in no_endpoint_env().items():
        monkeypatch.setenv(name, value)
    assert cli.main(["workers", "set"]) == 2
    assert "wan-i2v workers set: give the number of min workers" in capsys.readouterr().err
    monkeypatch.delenv("RUNPOD_API_KEY")
    assert cli.main(["dev-endpoint"]) == 2
    assert "wan-i2v dev-endpoint: give --api-key or set RUNPOD_API_KEY" in capsys.readouterr().err


@pytest.fixture
def bare_endpoint(monkeypatch):
    """A dev endpoint with no worker process and no model, and the command's settings pointing at it
    (the command runs in this process: `cli.main`)."""
    with DevEndpoint(api_key=KEY, spawn_workers=False, idle_timeout_s=7) as endpoint:
        for name in [n for n in os.environ if n.startswith(("RUNPOD_", "BUCKET_"))]:
            monkeypatch.delenv(name)
        for name, value in cli_env(endpoint).items():
            if name.startswith("RUNPOD_"):
                monkeypatch.setenv(name, value)
        yield endpoint


def workers_of(endpoint) -> dict:
    url = f"{endpoint.url}/v2/serverless/dev"
    return requests.get(url, headers={"Authorization": f"Bearer {KEY}"}, timeout=10).json()["workers"]


def test_workers_set_with_only_a_minimum_keeps_the_endpoints_maximum(bare_endpoint, capsys):
    """The dev endpoint replaces the whole `workers` object on PATCH (a min-only PATCH would put max back
    to 3 and idleTimeout to 10), so this fails if `workers set` sends only the minimum."""
    assert cli.main(["workers", "set", "0", "--max", "2"]) == 0
    assert cli.main(["--json", "workers", "set", "1"]) == 0
    answer = json.loads(capsys.readouterr().out.split("min workers set to 0\n", 1)[1])
    assert answer["workers"] == workers_of(bare_endpoint) == {"min": 1, "max": 2, "idleTimeout": 7}

    assert cli.main(["workers", "set", "3"]) == 2
    assert "wan-i2v: min workers (3) cannot exceed max workers (2, the endpoint's current maximum)" in (
        capsys.readouterr().err
    )
    assert workers_of(bare_endpoint) == {"min": 1, "max": 2, "idleTimeout": 7}


def test_a_422_from_the_endpoint_is_shown_in_runpods_words_with_exit_2(bare_endpoint, capsys):
    said = "$.workers.max: 9 is above your account's worker quota (5)"  # an entry of RFC 9457 `errors`
    bare_endpoint.refuse_next_update(422, "Request validation failed.", [said])
    assert cli.main(["workers", "set", "1", "--max", "9"]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            f"wan-i2v: PATCH v2/serverless/dev failed: HTTP 422: Unprocessable Entity: Request validation failed. ({said})"
        )
    )
    assert workers_of(bare_endpoint) == {"min": 0, "max": 1, "idleTimeout": 7}  # nothing changed


def test_a_batch_that_cannot_start_is_a_usage_error(tmp_path):
    images, prompts = make_inputs(tmp_path, 1, ["waves roll in"])
    ledger = tmp_path / "videos" / "wan-i2v-batch.sqlite"
    Batch.plan_new(ledger, [("/a.png", "x", {})]).close()
    env = no_endpoint_env()

    again = run(*batch_args(prompts, images, tmp_path / "videos", max_in_flight=1), env=env)
    assert again.returncode == 2
    assert f"wan-i2v batch: {ledger} already holds a batch; --resume it or pass --ledger NEW" in again.stderr
    nothing = run("batch", "--resume", "--ledger", str(tmp_path / "none.sqlite"), env=env)
    assert nothing.returncode == 2 and "wan-i2v batch: no ledger at" in nothing.stderr
    assert not (tmp_path / "none.sqlite").exists()
    half = run("batch", str(prompts), env=env)
    assert half.returncode == 2 and "give PROMPTS_FILE and --images-dir (or --resume)" in half.stderr
    keyless = run(*batch_args(prompts, images, tmp_path / "other", max_in_flight=1), env={**env, "RUNPOD_API_KEY": ""})
    assert keyless.returncode == 2 and "no RunPod API key" in keyless.stderr
    assert not (tmp_path / "other").exists(), "a batch that could not start left a ledger behind"

    with sqlite3.connect(ledger) as db:
        db.execute("PRAGMA user_version = 99")
    newer = run("batch", "--resume", "--ledger", str(ledger), env=env)
    assert newer.returncode == 2 and f"wan-i2v: {ledger} is a version 99 ledger" in newer.stderr
    assert "Traceback" not in again.stderr + nothing.stderr + newer.stderr


def test_a_finished_batch_resumed_prints_its_summary_and_calls_nothing(tmp_path):
    ledger = tmp_path / "videos" / "wan-i2v-batch.sqlite"
    with Batch.plan_new(ledger, [("/a.png", "x", {}), ("/b.png", "y", {})], tmp_path / "videos") as batch:
        first, second = batch.ledger.rows()
        batch.ledger.update(first.key, state="completed", generation_time=10.0, job_id="j1")
        batch.ledger.update(second.key, state="failed", error="boom", job_id="j2")
    args = ("batch", "--resume", "--ledger", str(ledger), "--no-manage-workers", "--price-per-second", "0.01")
    text = run(*args, env=no_endpoint_env())
    assert text.returncode == 1, text.stderr  # a job failed
    assert text.stdout.strip() == (
        f"1 completed, 1 failed, 0 cancelled; 10.0 GPU s, about $0.1000; ledger {ledger}; "
        f"videos and index.csv in {tmp_path / 'videos'}"
    )
    summary = json.loads(run(*args, "--json", env=no_endpoint_env()).stdout)
    assert summary == {
        "counts": {
            "pending": 0,
            "submitting": 0,
            "submitted": 0,
            "running": 0,
            "completed": 1,
            "failed": 1,
            "cancelled": 0,
        },
        "gpu_seconds": 10.0,
        "cost_usd": 0.1,
        "ledger": str(ledger),
        "index": str(tmp_path / "videos" / "index.csv"),
    }
    assert (tmp_path / "videos" / "index.csv").read_text().count("\n") == 3


def test_progress_is_shown_from_the_jobs_progress_events():
    def running(event):
        return {"id": "j", "status": "IN_PROGRESS", "output": event}

    denoise = cli._progress_event(running(progress_event(Phase.DENOISE, step=6, total_steps=15, expert="high")))
    assert denoise["percent"] == pytest.approx(6 + 84 * 6 / 15, abs=0.1)
    assert cli._phase_text(denoise) == "denoise 6/15"
    decode = cli._progress_event(running(progress_event(Phase.VAE_DECODE)))
    assert cli._phase_text(decode) == "vae_decode" and decode["percent"] == 90
    assert cli._progress_event(running(None)) is None
    assert cli._progress_event(running({"phase": "denoise"})) is None  # no percent: not a progress event
    assert cli._progress_event({"status": "COMPLETED", "output": {"phase": "x", "percent": 1}}) is None


def test_lora_flags_become_the_jobs_loras_entries():
    from wan_i2v.ops.cli import _job_fields, build_parser

    parser = build_parser()
    args = parser.parse_args(
        ["generate", "cat.png", "--lora", "a_high.safetensors,a_low.safetensors,0.8", "--lora", ",b_low.safetensors"]
    )
    assert _job_fields(args)["loras"] == [
        {"high": "a_high.safetensors", "low": "a_low.safetensors", "scale": 0.8},
        {"low": "b_low.safetensors"},
    ]
    batch = parser.parse_args(["batch", "p.txt", "--images-dir", "d", "--lora", "https://h.example/s.safetensors,"])
    assert _job_fields(batch)["loras"] == [{"high": "https://h.example/s.safetensors"}]
    assert "loras" not in _job_fields(parser.parse_args(["generate", "cat.png"]))
    for bad in ("only_one.safetensors", ",", "a,b,strong", "a,b,1,2"):
        with pytest.raises(SystemExit) as exited:
            parser.parse_args(["generate", "cat.png", "--lora", bad])
        assert exited.value.code == 2
