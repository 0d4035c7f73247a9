"""Bulk runs: the prompts file, the plan and its estimate, the batch lifecycle (new, resume, dry run),
and whole batches through `wan-i2v batch` against the local endpoint, killed and resumed.

Workers are real (`python handler.py` on the tiny model); every job is the quickest the schema allows
(QUICKEST: turbo, 2 steps, 17 frames)."""

import csv
import os
import signal
import subprocess
from pathlib import Path

import pytest
from helpers import (
    KEY,
    OUTPUT,
    assert_videos,
    batch_args,
    cli_env,
    client_for,
    ledger_states,
    make_inputs,
    wait_until,
    wan_i2v,
)

from wan_i2v.ops import batch as bulk
from wan_i2v.ops.batch import Batch, BatchError, dry_run, estimate_seconds, may_retry, plan_jobs, read_prompts
from wan_i2v.ops.ledger import Ledger
from wan_i2v.schema import JobOutput


def job_output(**changes) -> dict:
    """A finished job's output (the shared sample, in the worker's own form) with `changes`."""
    return JobOutput.model_validate({**OUTPUT, "generation_time": 2.5, **changes}).to_json()


def read_index(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as index:
        return list(csv.DictReader(index))


@pytest.fixture
def open_ledgers(monkeypatch):
    """The ledgers the batch module opens and has not closed yet."""
    still_open = []

    class Tracked(Ledger):
        def __init__(self, path):
            super().__init__(path)
            still_open.append(self)

        def close(self):
            still_open.remove(self)
            super().close()

    monkeypatch.setattr(bulk, "Ledger", Tracked)
    return still_open


# ---- planning -----------------------------------------------------------------------------------
def test_prompts_are_separated_by_dash_lines_or_blank_lines(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the sun sets\n---\nclouds drift\nslowly by\n\n\na bird\n  lands  \n---\n\n---\n")
    assert read_prompts(prompts) == ["the sun sets", "clouds drift slowly by", "a bird lands"]
    prompts.write_text("one\n\ntwo\n---\nthree")
    assert read_prompts(prompts) == ["one", "two", "three"]


def test_plan_every_image_with_every_prompt_or_in_pairs(tmp_path):
    images = [tmp_path / "a.png", tmp_path / "b.png"]
    jobs = plan_jobs(images, ["x", "y"], one_to_one=False, fields={"seed": 1})
    assert [(Path(i).name, p, f) for i, p, f in jobs] == [
        ("a.png", "x", {"seed": 1}),
        ("a.png", "y", {"seed": 1}),
        ("b.png", "x", {"seed": 1}),
        ("b.png", "y", {"seed": 1}),
    ]
    assert all(Path(image).is_absolute() for image, _, _ in jobs)
    assert [(Path(i).name, p) for i, p, _ in plan_jobs(images, ["x", "y"], True, {})] == [
        ("a.png", "x"),
        ("b.png", "y"),
    ]
    with pytest.raises(ValueError, match=r"--one-to-one needs as many prompts as images \(1 prompts, 2 images\)"):
        plan_jobs(images, ["x"], True, {})
    with pytest.raises(ValueError, match="no images found"):
        plan_jobs([], ["x"], False, {})
    with pytest.raises(ValueError, match="no prompts found"):
        plan_jobs(images, [], False, {})


def test_images_are_listed_by_suffix_in_order(tmp_path):
    images, _ = make_inputs(tmp_path, 2, ["x"])
    (images / "c.JPG").write_bytes(b"")
    assert [p.name for p in bulk.list_images(images)] == ["c.JPG", "shot0.png", "shot1.png"]


def test_estimate_from_the_baseline_or_from_measured_jobs_of_the_same_shape():
    guided = estimate_seconds({"resolution": "480p", "sample_steps": 30, "frame_num": 81})
    assert guided == pytest.approx(30 * 2 * 3.29 + 3.2)  # both experts guided: two forwards a step
    unguided = estimate_seconds({"sample_steps": 30, "guidance_scale": 1.0, "guidance_scale_2": 1.0})
    assert unguided == pytest.approx(30 * 3.29 + 3.2)
    assert estimate_seconds({"resolution": "720p", "frame_num": 41}) == pytest.approx((60 * 12.29 + 8.0) * 41 / 81)
    measured = [({"sample_steps": 15}, 10.0), ({"sample_steps": 15, "seed": 3}, 20.0), ({"sample_steps": 30}, 99.0)]
    assert estimate_seconds({"sample_steps": 15, "prompt": "other"}, measured) == 15.0
    # Turbo: 4 steps by default, no guidance, and never averaged with quality jobs of the same steps.
    assert estimate_seconds({"mode": "turbo"}) == pytest.approx(4 * 3.29 + 3.2)
    assert estimate_seconds({"mode": "turbo", "sample_steps": 15}, measured) == pytest.approx(15 * 3.29 + 3.2)
    # Interpolation adds its new frames' seconds, RIFE by default, and is never averaged with plain jobs.
    turbo = 4 * 3.29 + 3.2
    assert estimate_seconds({"mode": "turbo", "interpolate": 2}) == pytest.approx(turbo + 80 * 0.019)
    four = estimate_seconds({"mode": "turbo", "interpolate": 4, "interpolate_model": "ffmpeg", "resolution": "720p"})
    assert four == pytest.approx(4 * 12.29 + 8.0 + 240 * 0.23)
    assert estimate_seconds({"sample_steps": 15, "interpolate": 2}, measured) != 15.0


def test_the_retry_rule():
    assert may_retry("FAILED", attempts=1, retries=1) and may_retry("TIMED_OUT", attempts=1, retries=1)
    assert not may_retry("FAILED", attempts=2, retries=1)
    assert not may_retry("FAILED", attempts=1, retries=0)
    assert not may_retry("CANCELLED", attempts=1, retries=5)


# ---- lifecycle ----------------------------------------------------------------------------------
def test_a_new_batch_is_refused_where_a_ledger_already_holds_one(tmp_path, open_ledgers):
    ledger = tmp_path / "videos" / "wan-i2v-batch.sqlite"
    jobs = plan_jobs([tmp_path / "a.png"], ["x", "y"], False, {"seed": 1})
    with Batch.plan_new(ledger, jobs, tmp_path / "videos") as batch:
        assert [r.prompt for r in batch.ledger.rows()] == ["x", "y"]
        assert batch.counts()["pending"] == 2
    with pytest.raises(BatchError, match="already holds a batch; --resume it or pass --ledger NEW"):
        Batch.plan_new(ledger, jobs)
    assert open_ledgers == []


def test_resume_needs_a_ledger_and_keeps_its_download_folder(tmp_path, open_ledgers):
    missing = tmp_path / "nowhere" / "wan-i2v-batch.sqlite"
    with pytest.raises(BatchError, match="no ledger at .*nowhere.* to resume"):
        Batch.resume(missing)
    assert not missing.parent.exists()
    Ledger(tmp_path / "empty.sqlite").close()  # as a run killed before it planned its jobs leaves it
    with pytest.raises(BatchError, match="empty.sqlite holds no jobs: .* start it again"):
        Batch.resume(tmp_path / "empty.sqlite")
    Batch.plan_new(tmp_path / "empty.sqlite", [("/a.png", "x", {})]).close()  # which a new batch may use
    ledger = tmp_path / "wan-i2v-batch.sqlite"
    Batch.plan_new(ledger, [("/a.png", "x", {})], tmp_path / "videos").close()
    with Batch.resume(ledger) as batch:
        assert batch.download_dir == tmp_path / "videos"
    with Batch.resume(ledger, tmp_path / "elsewhere") as batch:
        assert batch.download_dir == tmp_path / "elsewhere"
    assert open_ledgers == []


def test_dry_run_estimates_from_the_jobs_a_ledger_has_measured(tmp_path, open_ledgers, capsys):
    jobs = plan_jobs([tmp_path / "a.png", tmp_path / "b.png"], ["x"], False, {"sample_steps": 15, "frame_num": 17})
    ledger = tmp_path / "wan-i2v-batch.sqlite"
    assert dry_run(jobs, ledger, price=0.01) == pytest.approx(2 * estimate_seconds(jobs[0][2]))
    assert not ledger.exists()
    with Batch.plan_new(ledger, jobs[:1]) as batch:
        batch.ledger.update(batch.ledger.rows()[0].key, state="completed", generation_time=50.0)
    assert dry_run(jobs, ledger, price=0.01) == 100.0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-3:] == [
        "   1  a.png  'x'  ~50 GPU s",
        "   2  b.png  'x'  ~50 GPU s",
        "2 jobs, about 100 GPU seconds, about $1.00 at $0.01/GPU-second",
    ]
    assert open_ledgers == []


def test_the_index_takes_its_columns_from_the_typed_output(tmp_path):
    with Batch.plan_new(tmp_path / "l.sqlite", [("/a.png", "x", {}), ("/b.png", "y", {})], tmp_path / "v") as batch:
        done, failed = batch.ledger.rows()
        batch.ledger.update(done.key, state="completed", output=job_output(seed=7), job_id="j1", video_path="/v/1.mp4")
        batch.ledger.update(failed.key, state="failed", error="boom", job_id="j2")
        index = batch.write_index()
        assert batch.results() == [
            {"id": "j1", "output": job_output(seed=7)},
            {"id": "j2", "status": "FAILED", "error": "boom"},
        ]
    rows = read_index(index)
    assert list(rows[0]) == [
        "position",
        "image",
        "prompt",
        "state",
        "job_id",
        "video_path",
        "seed",
        "generation_time",
        "error",
    ]
    assert (rows[0]["seed"], rows[0]["generation_time"], rows[0]["video_path"]) == ("7", "2.5", "/v/1.mp4")
    assert (rows[1]["state"], rows[1]["seed"], rows[1]["error"]) == ("failed", "", "boom")


# ---- whole batches ------------------------------------------------------------------------------
@pytest.mark.load  # four whole jobs and a scale-down wait (a minute); the default tier runs a batch through the dev endpoint below
def test_batch_of_four_with_worker_management(endpoint_factory, tmp_path):
    endpoint = endpoint_factory()
    images, prompts = make_inputs(tmp_path, 2, ["the sun sets", "clouds drift\nslowly by"])
    download = tmp_path / "videos"
    done = subprocess.run(
        wan_i2v(*batch_args(prompts, images, download, max_in_flight=2), "--seed", "1"),
        env=cli_env(endpoint),
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 completed, 0 failed, 0 cancelled" in done.stdout
    rows = read_index(download / "index.csv")
    assert len(rows) == 4 and {r["state"] for r in rows} == {"completed"}
    assert {(Path(r["image"]).name, r["prompt"]) for r in rows} == {
        (f"shot{i}.png", p) for i in range(2) for p in ("the sun sets", "clouds drift slowly by")
    }
    assert {r["seed"] for r in rows} == {"1"} and all(float(r["generation_time"]) > 0 for r in rows)
    assert_videos(r["video_path"] for r in rows)
    assert sorted(p.name for p in download.glob("*.mp4")) == sorted(Path(r["video_path"]).name for r in rows)

    stats = endpoint.stats()
    assert stats.min_workers == 0, "workers were not set back to 0"
    health = client_for(endpoint).health()
    assert health.jobs == {"completed": 4, "failed": 0, "inProgress": 0, "inQueue": 0, "retried": 0}
    assert len(stats.submissions) == 4
    wait_until(lambda: client_for(endpoint).health().workers["idle"] == 0, 30, "the idle worker to stop")
    assert KEY not in done.stdout + done.stderr
    worker_logs = "".join(p.read_text() for p in (tmp_path / "worker-logs").glob("*.log"))
    assert "Started." in worker_logs and "Network connectivity" not in worker_logs  # stays on loopback


@pytest.mark.load  # the default tier kills a batch once (below); this and the load tests kill it mid-job
def test_killed_batch_resumes_without_duplicates_or_losses(endpoint_factory, tmp_path):
    endpoint = endpoint_factory()
    images, prompts = make_inputs(tmp_path, 2, ["waves roll in", "birds fly away"])
    download = tmp_path / "videos"
    ledger = download / "wan-i2v-batch.sqlite"
    args = batch_args(prompts, images, download, max_in_flight=1)
    first = subprocess.Popen(
        wan_i2v(*args), env=cli_env(endpoint), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    # Kill while the second job runs: one finished and downloaded, one in flight, two never sent.
    wait_until(
        lambda: (s := ledger_states(ledger)) and s.count("completed") == 1 and "running" in s, 300, "the 2nd job to run"
    )
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert ledger_states(ledger).count("pending") == 2

    resumed = subprocess.run(
        wan_i2v("batch", "--resume", "--ledger", str(ledger), "--poll", "0.5"),
        env=cli_env(endpoint),
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert ledger_states(ledger) == ["completed"] * 4
    stats = endpoint.stats()
    sent = [(s["input"]["image"], s["input"]["prompt"]) for s in stats.submissions]
    assert len(sent) == 4 and len(set(sent)) == 4, "a job was submitted twice"
    rows = read_index(download / "index.csv")
    assert len(rows) == 4
    assert_videos(r["video_path"] for r in rows)
    assert stats.min_workers == 0


def waiting_for_lock(path: Path, pid: int) -> bool:
    """Whether process `pid` is blocked on the flock of `path` (Linux's /proc/locks marks waiters `->`)."""
    inode = str(path.stat().st_ino)
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields:
            at = fields.index("->")
            if fields[at + 4] == str(pid) and fields[at + 5].rsplit(":", 1)[-1] == inode:
                return True
    return False


def test_batch_killed_before_it_learns_a_job_id_does_not_send_that_job_again(endpoint_factory, held_runs, tmp_path):
    """The one moment RunPod's API cannot make safe by itself: the endpoint has queued the job, and the
    batch is killed before /run answers with the id. The whole process group gets SIGKILL (as Ctrl-C
    or a closed terminal would reach it); the helper that sent the job is in a session of its own,
    records the id, and the resumed batch waits for it instead of sending the job again."""
    endpoint = endpoint_factory()
    proxy = held_runs(endpoint)
    images, prompts = make_inputs(tmp_path, 1, ["waves roll in", "birds fly away"])
    download = tmp_path / "videos"
    ledger = download / "wan-i2v-batch.sqlite"
    proxy.hold.set()
    first = subprocess.Popen(
        wan_i2v(*batch_args(prompts, images, download, max_in_flight=1)),
        env=cli_env(proxy),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert proxy.held.wait(300), "the batch never sent its first job"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert len(endpoint.stats().submissions) == 1 and ledger_states(ledger) == ["submitting", "pending"]

    proxy.hold.clear()
    talked = len(proxy.requests)
    resumed = subprocess.Popen(
        wan_i2v("batch", "--resume", "--ledger", str(ledger), "--poll", "0.5"),
        env=cli_env(proxy),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: len(proxy.requests) > talked, 60, "the resumed batch to reach the endpoint")
    # The resumed batch has come to that job and waits for the killed run's helper, which still holds
    # the send lock (its /run answer is held back): it has not sent the job again.
    lock = Path(f"{ledger}.send-lock")
    wait_until(lambda: waiting_for_lock(lock, resumed.pid), 120, "the resumed batch to wait for the send lock")
    assert len(endpoint.stats().submissions) == 1 and ledger_states(ledger)[0] == "submitting"
    proxy.release.set()
    out, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err[-3000:]
    assert ledger_states(ledger) == ["completed"] * 2
    sent = [(s["input"]["image"], s["input"]["prompt"]) for s in endpoint.stats().submissions]
    assert len(sent) == 2 and len(set(sent)) == 2, "a job was submitted twice"
    assert_videos(r["video_path"] for r in read_index(download / "index.csv"))
    assert KEY not in out + err
