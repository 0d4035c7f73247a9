"""One video on several ranks (worker/ranks.py): two gloo ranks on the CPU, the second one a real follower
process, give the frames of one rank; the layout each setting gives; what a lost rank does to a worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

import psutil
import pytest
import requests
from helpers import ROOT, data_uri, encode, free_port, levels, picture, quality, turbo, wait_for_port, wait_until

from wan_i2v.errors import SettingsError
from wan_i2v.framing import SIDE_MULTIPLE, output_size
from wan_i2v.worker.engine import HIGH_NOISE, LOW_NOISE, Engine, JobLora
from wan_i2v.worker.ranks import Layout, Ranks, choose_layout
from wan_i2v.worker.settings import ParallelOptions, Settings

FIRST, LAST = picture(64, 48), picture(64, 48).transpose(0)  # Image.FLIP_LEFT_RIGHT


# ---- the layout: pure ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "ranks, heads, cfg, context, mode, expected",
    [
        (1, 40, "auto", "auto", "quality", Layout()),
        (2, 40, "auto", "auto", "quality", Layout(2, ulysses=1, ring=1, cfg=2)),
        (2, 40, "auto", "auto", "turbo", Layout(2, ulysses=2, ring=1, cfg=1)),
        (8, 40, "auto", "auto", "quality", Layout(8, ulysses=4, ring=1, cfg=2)),  # 8 = 2 x 4, as in the issue
        (8, 40, "off", "auto", "quality", Layout(8, ulysses=8, ring=1, cfg=1)),
        (5, 40, "auto", "auto", "quality", Layout(5, ulysses=5, ring=1, cfg=1)),  # odd: no guidance groups
        (6, 40, "off", "auto", "quality", Layout(6, ulysses=2, ring=3, cfg=1)),  # 40 heads do not divide by 6
        (4, 40, "off", "ring", "quality", Layout(4, ulysses=1, ring=4, cfg=1)),
        (4, 40, "on", "auto", "turbo", Layout(4, ulysses=2, ring=1, cfg=2)),
    ],
)
def test_the_layout_each_setting_gives(ranks, heads, cfg, context, mode, expected):
    layout = choose_layout(ranks, heads, ParallelOptions(cfg=cfg, context=context), mode)
    assert layout == expected and layout.cfg * layout.context == ranks


def test_layouts_that_cannot_run_are_refused_naming_the_setting_and_what_is_allowed():
    with pytest.raises(SettingsError, match=r"WAN_CFG_PARALLEL=on needs an even WAN_GPUS .* it is 3"):
        choose_layout(3, 40, ParallelOptions(cfg="on"), "quality")
    with pytest.raises(SettingsError, match=r"40 attention heads do not divide by 3; allowed degrees: \[2, 4, 5, 8"):
        choose_layout(3, 40, ParallelOptions(context="ulysses"), "quality")
    with pytest.raises(SettingsError, match=r"WAN_GPUS=7: 7 ranks cannot split the tokens of the cold start's 480p"):
        choose_layout(7, 40, ParallelOptions(), "quality")  # its 3120 tokens do not divide by 7


@pytest.mark.parametrize(
    "env, message",
    [
        ({"WAN_GPUS": "0"}, r"WAN_GPUS=0: allowed 1..64"),
        ({"WAN_GPUS": "two"}, r"WAN_GPUS='two': must be an integer"),
        ({"WAN_CFG_PARALLEL": "yes"}, r"WAN_CFG_PARALLEL='yes': allowed auto, on, off"),
        ({"WAN_CONTEXT_PARALLEL": "fsdp"}, r"WAN_CONTEXT_PARALLEL='fsdp': allowed auto, ulysses, ring"),
        ({"WAN_RANK_TIMEOUT_S": "1"}, r"WAN_RANK_TIMEOUT_S=1.0: allowed 5..3600"),
    ],
)
def test_bad_parallel_settings_are_refused(env, message):
    with pytest.raises(SettingsError, match=message):
        ParallelOptions.from_env(env)


def test_the_hubs_multi_gpu_presets_give_the_layouts_they_name():
    hub = json.loads((ROOT / ".runpod" / "hub.json").read_text())["config"]["presets"]
    named = {}
    for preset in hub:
        settings = Settings.from_env({key: str(value) for key, value in preset["defaults"].items()})
        options = settings.engine.parallel
        if options.gpus is not None:
            named[options.gpus] = choose_layout(options.gpus, 40, options, settings.engine.default_mode)
    assert named == {2: Layout(2, ulysses=1, ring=1, cfg=2), 8: Layout(8, ulysses=4, ring=1, cfg=2)}
    assert "2 x 4" in hub[4]["name"] and "2 GPUs" in hub[3]["name"]


def test_frame_sizes_split_evenly_over_the_ranks_that_share_each_frame():
    for width, height in [(832, 480), (1000, 1000), (777, 1234), (1600, 900), (300, 1100), (640, 641)]:
        for resolution in ("480p", "720p"):
            plain = output_size(width, height, resolution)
            for multiple in (1, 2, 4, 5, 8):
                w, h = output_size(width, height, resolution, tokens_multiple=multiple)
                assert (w // SIDE_MULTIPLE) * (h // SIDE_MULTIPLE) % multiple == 0, (width, height, multiple)
                assert w <= plain[0] and h <= plain[1] and w % SIDE_MULTIPLE == 0 == h % SIDE_MULTIPLE
    assert output_size(832, 480, "480p", tokens_multiple=8) == (832, 480)  # the standard sizes are untouched
    assert output_size(1280, 720, "720p", tokens_multiple=8) == (1280, 720)


# ---- two gloo ranks against one ----------------------------------------------------------------------
def rank_env(tiny_model, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUCKET_", "RUNPOD_", "WAN_"))}
    env.update({"WAN_MODEL": str(tiny_model), "PYTHONUNBUFFERED": "1", "WAN_RANK_TIMEOUT_S": "60", **extra})
    return env


LAYOUTS = {
    "cfg": {"WAN_GPUS": "2", "WAN_CFG_PARALLEL": "on"},
    "ulysses": {"WAN_GPUS": "2", "WAN_CFG_PARALLEL": "off"},
    # the load tier: compiling costs a minute here; four processes on two cores; the swap plan
    "ulysses-compiled": {"WAN_GPUS": "2", "WAN_CFG_PARALLEL": "off", "WAN_COMPILE": "dynamic"},
    "cfg-x-ulysses": {"WAN_GPUS": "4", "WAN_CFG_PARALLEL": "on"},  # 2 x 2, as 8 GPUs are 2 x 4
    "ulysses-swap": {"WAN_GPUS": "2", "WAN_CFG_PARALLEL": "off", "WAN_MEMORY_PLAN": "swap"},
}
HEAVY = ("ulysses-compiled", "cfg-x-ulysses", "ulysses-swap")


@pytest.fixture(
    scope="module",
    params=[name if name not in HEAVY else pytest.param(name, marks=pytest.mark.load) for name in LAYOUTS],
)
def ranked(request, tiny_model):
    """This test process as rank 0 and follower processes: guidance-parallel, context-parallel (Ulysses; ring
    attention needs a backend with log-sum-exp, which the CPU's has not), both, eager or compiled (against the
    eager single rank)."""
    import torch.distributed as dist

    env = rank_env(tiny_model, **LAYOUTS[request.param])
    lost: list[int] = []
    settings = Settings.from_env(env)
    with mock.patch.dict(os.environ, env, clear=True):
        ranks = Ranks.start(settings.engine.parallel, leave=lost.append)  # this test run is rank 0: it stays
    try:
        yield Engine.load(settings.model, ranks.engine_options(settings.engine), ranks)
    finally:
        ranks.shutdown()
        dist.destroy_process_group()
    assert not lost, "a rank was lost during the tests"


def wan_lora(tiny_model, side: str) -> JobLora:
    path = tiny_model / "loras" / f"tiny-wan-{side}.safetensors"
    return JobLora(HIGH_NOISE if side == "high" else LOW_NOISE, path, 0.8, f"loras[0].{side}")


JOBS = {
    "turbo": (turbo(), {}),
    "guided quality": (quality(), {}),
    "guided quality, one expert guided": (quality(guidance_scale=1.0, guidance_scale_2=4.0), {}),
    "last image": (quality(), {"last_image": LAST}),
}


@pytest.mark.parametrize("job", list(JOBS))
def test_several_ranks_give_the_frames_of_one(ranked, engine, job):
    params, extra = JOBS[job]
    one = engine.generate(params, FIRST, **extra)
    two = ranked.generate(params, FIRST, **extra)
    assert levels(one.frames, two.frames) <= 1
    layout = ranked.ranks.layout
    assert two.report["parallel"] == layout.as_dict() and layout.ranks == ranked.ranks.world > 1
    assert layout.cfg * layout.context == layout.ranks and two.report["memory_plan"] == ranked.plan.name
    assert two.report["compiled"] == (ranked.options.compile == "dynamic")
    assert one.report["parallel"] == Layout().as_dict()


def test_several_ranks_with_a_job_lora_give_the_frames_of_one_and_forget_it(ranked, engine, tiny_model):
    loras = [wan_lora(tiny_model, "high"), wan_lora(tiny_model, "low")]
    plain = engine.generate(quality(), FIRST).frames
    one = engine.generate(quality(), FIRST, loras=loras).frames
    two = ranked.generate(quality(), FIRST, loras=loras).frames
    assert levels(one, two) <= 1 and levels(one, plain) > 1  # the LoRA ran on every rank
    assert levels(ranked.generate(quality(), FIRST).frames, plain) <= 1  # and left every rank after the job


EXPECTED = {
    "cfg": Layout(2, ulysses=1, ring=1, cfg=2),
    "ulysses": Layout(2, ulysses=2, ring=1, cfg=1),
    "ulysses-compiled": Layout(2, ulysses=2, ring=1, cfg=1),
    "cfg-x-ulysses": Layout(4, ulysses=2, ring=1, cfg=2),
    "ulysses-swap": Layout(2, ulysses=2, ring=1, cfg=1),
}


def test_the_cold_start_report_says_how_the_ranks_share_the_work(ranked, request):
    facts = ranked.cold_start.facts
    assert ranked.ranks.layout == EXPECTED[request.node.callspec.params["ranked"]]
    assert facts["parallel"] == ranked.ranks.layout.as_dict()
    assert facts["compile"] == ranked.options.compile.replace("auto", "off")  # the CPU's auto is off
    assert "parallel" in ranked.cold_start.seconds


# ---- a whole worker: RunPod's local API, a lost rank --------------------------------------------------
def as_pid_1() -> list[str]:
    """A prefix that runs a command as PID 1 of a new PID namespace, as a container runs its command (a
    follower's parent is then PID 1: it must not take that for an orphan's init), where this machine allows it."""
    for prefix in (["unshare", "--pid", "--fork", "--mount-proc"], ["unshare", "--user", "--map-root-user", "--pid",
                   "--fork", "--mount-proc"]):  # fmt: skip
        try:
            if subprocess.run([*prefix, "true"], check=False, capture_output=True, timeout=10).returncode == 0:
                return prefix
        except (OSError, subprocess.TimeoutExpired):
            pass
    return []


def family(pid: int) -> list[psutil.Process]:
    try:
        return [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    left = []
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                left.append(process)
        except psutil.NoSuchProcess:
            pass
    return left


@pytest.mark.load  # a kill run: a whole worker of two ranks, one killed mid-job
def test_a_two_rank_worker_serves_a_job_and_a_killed_rank_fails_the_next_and_ends_the_worker(tiny_model, tmp_path):
    """Through `handler.py --rp_serve_api` with WAN_GPUS=2: a job on both ranks; then rank 1 is killed in
    the middle of a long job, which fails naming it within the rank timeout; the worker exits non-zero and
    leaves no process behind."""
    port = free_port()
    env = rank_env(tiny_model, WAN_GPUS="2", WAN_RANK_TIMEOUT_S="30", WAN_OUTPUT_DIR=str(tmp_path / "out"))
    command = [sys.executable, "handler.py", "--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)]
    command = as_pid_1() + command  # as in the image, whose command is the worker itself
    with open(tmp_path / "worker.log", "w") as log:
        worker = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, 120, worker)
        processes = family(worker.pid)
        followers = [p for p in processes if "wan_i2v.worker.follower" in " ".join(p.cmdline())]
        assert len(followers) == 1, processes

        image = {"image": data_uri(encode(picture(160, 96)))}
        job = {**image, "prompt": "waves", "mode": "turbo", "sample_steps": 2, "frame_num": 17, "seed": 1}
        answer = requests.post(f"http://127.0.0.1:{port}/runsync", json={"input": job}, timeout=120).json()
        assert answer["status"] == "COMPLETED", answer
        assert answer["output"]["engine"]["parallel"] == {"ranks": 2, "ulysses": 1, "ring": 1, "cfg": 2}

        long_job = {**job, "mode": "quality", "sample_steps": 40, "frame_num": 41}
        started = time.monotonic()
        pending = ThreadPoolExecutor(1).submit(
            requests.post, f"http://127.0.0.1:{port}/runsync", json={"input": long_job}, timeout=120
        )
        time.sleep(3)  # the job is well into its steps by then
        assert not pending.done(), "the long job ended before the kill: make it longer"
        followers[0].send_signal(signal.SIGKILL)
        answer = pending.result().json()
        assert answer["status"] == "FAILED", answer
        assert "rank 1 of 2 was lost (it was killed by signal 9)" in answer["error"], answer
        assert time.monotonic() - started < 3 + 30 + 10  # within WAN_RANK_TIMEOUT_S (at once, here)
        assert worker.wait(30) != 0
        wait_until(lambda: not alive(processes), 10, "every rank process to end")
    finally:
        for process in alive(family(worker.pid)):
            process.kill()
    assert "rank 1 of 2 was lost" in (tmp_path / "worker.log").read_text()


@pytest.mark.load  # a whole worker's cold start on two ranks
def test_a_follower_that_cannot_start_fails_the_cold_start_and_leaves_no_process(tiny_model, tmp_path):
    """Ring attention on the CPU (whose attention has no log-sum-exp) is refused on every rank at cold start."""
    env = rank_env(tiny_model, WAN_GPUS="2", WAN_CONTEXT_PARALLEL="ring", WAN_CFG_PARALLEL="off")
    env["WAN_RANK_TIMEOUT_S"] = "20"
    run = subprocess.run(
        [sys.executable, "handler.py"], check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode != 0
    assert "ring attention over 2 ranks needs an attention backend that returns its log-sum-exp" in run.stderr
    time.sleep(1)
    assert not alive([p for p in psutil.process_iter() if _ring_follower(p)])


def _ring_follower(process: psutil.Process) -> bool:
    try:
        return (
            "wan_i2v.worker.follower" in " ".join(process.cmdline())
            and process.environ().get("WAN_CONTEXT_PARALLEL") == "ring"
        )
    except psutil.Error:
        return False


HANG = """
import os, signal, sys, time
sys.path.insert(0, sys.argv[2])
from helpers import picture, quality
from wan_i2v.worker.engine import Engine
from wan_i2v.worker.ranks import Ranks
from wan_i2v.worker.settings import Settings

settings = Settings.from_env()
ranks = Ranks.start(settings.engine.parallel)
engine = Engine.load(settings.model, ranks.engine_options(settings.engine), ranks)
engine.generate(quality(), picture(64, 48))
print("followers", *[p.pid for p in ranks.followers], flush=True)
ranks.followers[0].send_signal(signal.SIGSTOP)
started = time.monotonic()
try:
    engine.generate(quality(), picture(64, 48))
except Exception as exc:
    print(f"failed after {time.monotonic() - started:.1f} s: {type(exc).__name__}: {exc}", flush=True)
time.sleep(60)  # the worker ends itself before this
"""


@pytest.mark.load  # a hang run: a follower stopped mid-job, the collective timeout, the worker's exit
def test_a_hung_rank_fails_the_job_within_the_timeout_and_the_worker_ends(tiny_model):
    env = rank_env(tiny_model, WAN_GPUS="2", WAN_RANK_TIMEOUT_S="5")
    run = subprocess.run(
        [sys.executable, "-c", HANG, "-", str(ROOT / "tests")],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    followers = [int(pid) for pid in run.stdout.split("followers")[1].split("\n")[0].split()]
    failed = [line for line in run.stdout.splitlines() if line.startswith("failed after")]
    assert failed and "LostRankError: a rank did not answer within WAN_RANK_TIMEOUT_S=5 s" in failed[0], run.stdout
    assert "rank 1: T (stopped)" in failed[0] and float(failed[0].split()[2]) < 5 + 3 + 5
    assert run.returncode == 1  # after the answer's grace, the worker exits non-zero
    assert not alive([psutil.Process(pid) for pid in followers if psutil.pid_exists(pid)])


def test_a_small_dev_shm_is_warned_about_before_nccl_fails_on_it(monkeypatch, caplog):
    from wan_i2v.worker import ranks

    small = os.statvfs_result((4096, 4096, 16384, 16384, 16384, 0, 0, 0, 0, 255))  # 64 MiB, a container's default
    monkeypatch.setattr(ranks.os, "statvfs", lambda path: small)
    ranks._check_shared_memory()
    assert "/dev/shm is 64 MiB: NCCL may fail" in caplog.text and "NCCL_SHM_DISABLE=1" in caplog.text
    caplog.clear()
    monkeypatch.setattr(ranks.os, "statvfs", lambda path: os.statvfs_result((4096, 4096, 1 << 20, *[0] * 7)))
    ranks._check_shared_memory()
    assert caplog.text == ""


FOLLOWER_DIES_AT_ONCE = """
import logging, sys
from wan_i2v.worker.ranks import Ranks
from wan_i2v.worker.settings import ParallelOptions
logging.basicConfig(level=logging.INFO)
Ranks.start(ParallelOptions(gpus=2, timeout_s=120), command=[sys.executable, "-c", "raise SystemExit(3)"])
print("the rendezvous ended first", flush=True)
"""


def test_a_follower_that_dies_before_joining_ends_the_cold_start_naming_it():
    """Watched from the start: rank 0 (its own process here, as the worker is) does not wait out the
    120 s rendezvous for a follower that is gone; it exits non-zero at once, naming it."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", FOLLOWER_DIES_AT_ONCE], capture_output=True, text=True, timeout=90, cwd=ROOT, check=False
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert time.monotonic() - started < 60 and "the rendezvous ended first" not in done.stdout
    assert "rank 1 of 2 was lost (it exited with code 3)" in done.stderr
