"""Bulk runs: every image x every prompt (or pairs), kept in a ledger, resumable, auto-downloaded.

    wan-i2v batch prompts.txt --images-dir shots/ --download videos/
    wan-i2v batch --resume --ledger videos/wan-i2v-batch.sqlite

The one batch engine: `Batch.run` drives the jobs of a ledger to their ends (the command's batches,
and `Client.run_batch` on a throwaway ledger). Each job is sent by a detached helper (`handoff`), so
a run killed at any moment can be resumed without sending a job twice.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from pydantic import ValidationError

from ..files import written_whole
from ..schema import GUIDANCE_FIELDS, INTERPOLATE_MAX, MODES, JobOutput
from .api import ApiError
from .client import Client, OutputError, download, read_output
from .handoff import send, send_lock
from .ledger import OPEN_STATES, Ledger, Row

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif"}
# Seconds of GPU per expert forward at 81 frames, one H100 80GB, plain diffusers (our measurements),
# and the VAE decode; used to estimate a job before any has been measured.
FORWARD_S = {"480p": 3.29, "720p": 12.29}
DECODE_S = {"480p": 3.2, "720p": 8.0}
# Seconds per new frame of interpolation (the worker is billed while it runs): RIFE from the targets on
# one H100 (480p k=2: 1.5 s for 80 frames; 720p k=4: 6 s for 240), ffmpeg's minterpolate as measured on a CPU
# core at 832x480 (0.1 s a frame; 720p scaled by its pixels).
INTERPOLATE_S = {"rife": {"480p": 0.019, "720p": 0.025}, "ffmpeg": {"480p": 0.1, "720p": 0.23}}
DEFAULT_PRICE_PER_GPU_S = 0.00116  # USD per second of an 80 GB GPU on RunPod serverless (flex); configurable

PlannedJob = tuple[str, str, dict]  # image, prompt, the other job fields


class BatchError(ValueError):
    """A batch cannot start: nothing to resume, or the ledger already holds another batch."""


# ---- planning ---------------------------------------------------------------------------------
def read_prompts(path: Path) -> list[str]:
    """Prompts separated by lines of `---` or by blank lines."""
    text = Path(path).read_text(encoding="utf-8")
    blocks = re.split(r"\n\s*(?:---+\s*)?\n|\n---+\s*(?:\n|$)", text.strip())
    prompts = [" ".join(block.split()) for block in blocks]
    return [p for p in prompts if p and p.strip("-")]


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def plan_jobs(images: list[Path], prompts: list[str], one_to_one: bool, fields: dict) -> list[PlannedJob]:
    if not images:
        raise ValueError("no images found (looked for .jpg, .jpeg, .png, .webp, .gif)")
    if not prompts:
        raise ValueError("no prompts found")
    if one_to_one:
        if len(images) != len(prompts):
            raise ValueError(
                f"--one-to-one needs as many prompts as images ({len(prompts)} prompts, {len(images)} images)"
            )
        pairs = zip(images, prompts, strict=True)
    else:
        pairs = ((image, prompt) for image in images for prompt in prompts)
    return [(str(image.resolve()), prompt, dict(fields)) for image, prompt in pairs]


def plan_inputs(inputs: list[dict]) -> list[PlannedJob]:
    """Whole job inputs as planned jobs (what `Client.run_batch` is given)."""
    planned = []
    for number, job in enumerate(inputs, 1):
        fields = dict(job)
        image, prompt = fields.pop("image", None), fields.pop("prompt", "")
        if not isinstance(image, (str, os.PathLike)) or not isinstance(prompt, str):
            raise TypeError(f"job {number}: needs an image (a path, URL or data URI) and a text prompt")
        fields = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in fields.items()}
        planned.append((os.fspath(image), prompt, fields))
    return planned


def estimate_seconds(fields: dict, measured: list[tuple[dict, float]] = ()) -> float:
    """GPU seconds for one job: the mean of measured jobs of the same shape, else the baseline model."""
    shape = _shape(fields)
    same = [seconds for other, seconds in measured if _shape(other) == shape]
    if same:
        return sum(same) / len(same)
    resolution, steps, frames, mode, factor, smoothing = shape
    rules = MODES[mode]
    guided = sum(fields.get(name, rules.default_guidance) > 1 for name in GUIDANCE_FIELDS)
    forwards = steps * (1 + guided / 2)
    new_frames = (frames - 1) * (factor - 1)
    return (
        forwards * FORWARD_S[resolution] * frames / 81
        + DECODE_S[resolution] * frames / 81
        + new_frames * INTERPOLATE_S[smoothing][resolution]
    )


def _shape(fields: dict) -> tuple:
    """(resolution, steps, frames, mode, interpolate, its model); a job without a mode counts as quality, one
    without `interpolate` as 1 and without `interpolate_model` as rife (the workers' usual defaults)."""
    mode = fields.get("mode") if fields.get("mode") in MODES else "quality"
    steps = fields.get("sample_steps", MODES[mode].default_steps)
    smoothing = fields.get("interpolate_model") if fields.get("interpolate_model") in INTERPOLATE_S else "rife"
    factor = fields.get("interpolate") if fields.get("interpolate") in range(1, INTERPOLATE_MAX + 1) else 1
    return (fields.get("resolution", "480p"), steps, fields.get("frame_num", 81), mode, factor, smoothing)


def print_plan(jobs: list[PlannedJob], measured: list[tuple[dict, float]], price: float, out=None) -> float:
    out = out or sys.stdout  # looked up now, so that a redirected stdout is honoured
    total = 0.0
    for position, (image, prompt, fields) in enumerate(jobs, 1):
        seconds = estimate_seconds(fields, measured)
        total += seconds
        print(f"{position:4d}  {Path(image).name}  {prompt[:60]!r}  ~{seconds:.0f} GPU s", file=out)
    print(
        f"{len(jobs)} jobs, about {total:.0f} GPU seconds, about ${total * price:.2f} at ${price}/GPU-second", file=out
    )
    return total


def dry_run(jobs: list[PlannedJob], ledger_path: Path, price: float, out=None) -> float:
    """Print the jobs and their estimated cost, from the jobs an existing ledger has measured; send nothing."""
    measured = []
    if Path(ledger_path).exists():
        with Ledger(ledger_path) as ledger:
            done = ledger.rows(("completed",))
        measured = [(r.fields, r.generation_time) for r in done if r.generation_time]
    return print_plan(jobs, measured, price, out)


# ---- running ----------------------------------------------------------------------------------
RETRIED_STATUSES = ("FAILED", "TIMED_OUT")
FINAL_STATUSES = ("FAILED", "TIMED_OUT", "CANCELLED")


def may_retry(status: str, attempts: int, retries: int) -> bool:
    """The retry rule: a job that ended FAILED or TIMED_OUT runs again (RunPod's /retry, same id) until
    it has been started `retries` + 1 times. CANCELLED is final: someone meant it."""
    return status in RETRIED_STATUSES and attempts <= retries


@dataclass(frozen=True)
class RunOptions:
    manage_workers: bool = True  # min workers to 1 first, back to 0 at the end when idle
    max_in_flight: int = 4  # jobs submitted and not yet finished
    retries: int = 1  # see may_retry
    poll_s: float = 5.0
    ready_timeout_s: float = 600.0
    stall_timeout_s: float | None = None  # TimeoutError when no job has moved on for this long
    # Send each job from a detached helper (see handoff), so a killed run can be resumed without sending a
    # job twice. A throwaway ledger (Client.run_batch) is never resumed: it sends in-process instead.
    detached_send: bool = True


def video_name(row: Row) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", row.prompt.lower()).strip("-")[:40] or "prompt"
    return f"{row.position + 1:04d}-{Path(row.image).stem}-{slug}.mp4"


INDEX_COLUMNS = ("position", "image", "prompt", "state", "job_id", "video_path")
OUTPUT_COLUMNS = ("seed", "generation_time")  # fields of JobOutput


def _output_values(output: dict | None) -> list:
    if not output:
        return [""] * len(OUTPUT_COLUMNS)
    try:
        values = JobOutput.model_validate(output).model_dump()
    except ValidationError:  # an output stored before outputs were checked (a version 0 ledger)
        values = output
    return [values.get(name, "") for name in OUTPUT_COLUMNS]


class Batch:
    """The jobs of one ledger, with where their videos go; close it (or use `with`) when done."""

    def __init__(self, ledger: Ledger, download_dir: Path | None = None):
        self.ledger = ledger
        self.download_dir = Path(download_dir) if download_dir else None

    @classmethod
    def plan_new(cls, ledger_path: Path, jobs: list[PlannedJob], download_dir: Path | None = None) -> Batch:
        """A new batch in `ledger_path`; BatchError when that ledger already holds one."""
        ledger = Ledger(ledger_path)
        try:
            if ledger.rows():
                raise BatchError(f"{ledger_path} already holds a batch; --resume it or pass --ledger NEW")
            ledger.plan(jobs, {"download": str(download_dir) if download_dir else None})
        except BaseException:
            ledger.close()
            raise
        return cls(ledger, download_dir)

    @classmethod
    def resume(cls, ledger_path: Path, download_dir: Path | None = None) -> Batch:
        """The batch in an existing ledger; its videos go where the batch was started with, unless told."""
        if not Path(ledger_path).exists():
            raise BatchError(f"no ledger at {ledger_path} to resume")
        ledger = Ledger(ledger_path)
        try:
            if not ledger.rows():  # a run killed between creating the file and planning its jobs
                raise BatchError(
                    f"{ledger_path} holds no jobs: the batch stopped before it planned them; start it again"
                )
            saved = (ledger.settings() or {}).get("download")
        except BaseException:
            ledger.close()
            raise
        return cls(ledger, download_dir or (Path(saved) if saved else None))

    def close(self) -> None:
        self.ledger.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def counts(self) -> dict[str, int]:
        return self.ledger.counts()

    def run(
        self,
        client: Client,
        options: RunOptions = RunOptions(),
        on_change: Callable[[Row, str], None] | None = None,
    ) -> dict[str, int]:
        """Run every open job to its end; returns the counts per state. The index is written even on failure."""
        try:
            _Engine(client, self.ledger, self.download_dir, options, on_change or (lambda row, state: None)).run()
        finally:
            self.write_index()
        return self.ledger.counts()

    def results(self) -> list[dict]:
        """Every job in plan order: {"id", "output"} when it completed, else {"id", "status", "error"}."""
        return [
            {"id": row.job_id, "output": row.output}
            if row.state == "completed"
            else {"id": row.job_id, "status": row.status or row.state.upper(), "error": row.error}
            for row in self.ledger.rows()
        ]

    def cost(self, price_per_gpu_s: float = DEFAULT_PRICE_PER_GPU_S) -> tuple[float, float]:
        """(GPU seconds, USD) measured over the completed jobs."""
        seconds = sum(r.generation_time or 0 for r in self.ledger.rows(("completed",)))
        return seconds, seconds * price_per_gpu_s

    def write_index(self) -> Path | None:
        """DIR/index.csv: one line per job; the output columns come from the job's `JobOutput`."""
        if self.download_dir is None:
            return None
        self.download_dir.mkdir(parents=True, exist_ok=True)
        index = self.download_dir / "index.csv"
        with written_whole(index) as partial, open(partial, "w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow([*INDEX_COLUMNS, *OUTPUT_COLUMNS, "error"])
            for row in self.ledger.rows():
                job = [row.position + 1, row.image, row.prompt, row.state, row.job_id or "", row.video_path or ""]
                writer.writerow([*job, *_output_values(row.output), row.error or ""])
        return index


@dataclass
class _Engine:
    """Keeps up to `max_in_flight` jobs submitted, polls them, downloads, retries and records each move."""

    client: Client
    ledger: Ledger
    download_dir: Path | None
    options: RunOptions
    on_change: Callable[[Row, str], None]
    moved: float = field(default_factory=time.monotonic, init=False)  # when a job last changed state

    def run(self) -> None:
        management, options = self.client.management, self.options
        try:
            if options.manage_workers and self.ledger.rows(OPEN_STATES):
                management.enable(1)
                management.wait_ready(timeout_s=options.ready_timeout_s, poll_s=min(options.poll_s, 5.0))
                self.moved = time.monotonic()
            while self._step():
                self._check_stall()
                time.sleep(options.poll_s)
        finally:
            if options.manage_workers:
                scaled, health = management.scale_down_if_idle()
                if scaled:
                    log.info("min workers set to 0: %s", health.line())
                else:  # a paid worker stays warm: say so where a library user sees it
                    log.warning("left min workers as they are, the endpoint is busy: %s", health.line())

    def _step(self) -> bool:
        """Poll or send what is in flight, then fill the free places; whether any job is still open."""
        rows = self.ledger.rows(OPEN_STATES)
        in_flight = [r for r in rows if r.state in ("submitting", "submitted", "running")]
        for row in in_flight:
            if row.state == "submitting":  # a killed run's: sent only if its helper never recorded an id
                self._submit(row)
            else:
                self._poll(row)
        room = self.options.max_in_flight - len(in_flight)
        for row in [r for r in rows if r.state == "pending"][: max(0, room)]:
            self._submit(row)
        return any(row.state in OPEN_STATES for row in rows)

    def _check_stall(self) -> None:
        limit = self.options.stall_timeout_s
        if limit is not None and time.monotonic() - self.moved > limit:
            left = len(self.ledger.rows(OPEN_STATES))
            raise TimeoutError(f"no job of the batch moved on in {limit:.0f} s; {left} still queued or running")

    def _submit(self, row: Row) -> None:
        """Send one job through a detached helper (see `handoff`), so a kill at any moment sends it at most once."""
        if not self.options.detached_send:
            self._set(row, "submitting", attempts=row.attempts + 1)
            self._set(row, "submitted", job_id=self.client.submit(row.job_input()))
            return
        with send_lock(self.ledger.path) as lock:
            now = self.ledger.row(row.key)
            if now.state not in ("pending", "submitting"):
                log.info("job %d was sent by the run before, as %s", row.position + 1, now.job_id)
                return
            url, body = self.client.run_request(row.job_input())
            self._set(row, "submitting", attempts=now.attempts + 1)
            job_id = send(lock, self.ledger.path, row.key, self.client.api, url, body)
        self._set(row, "submitted", job_id=job_id)

    def _poll(self, row: Row) -> None:
        try:
            answer = self.client.status(row.job_id)
        except ApiError as exc:
            if exc.status == 404:
                gone = f"job {row.job_id} is gone from the endpoint (results expire)"
                self._set(row, "failed", status=None, error=gone)
                return
            raise
        status = answer.get("status")
        if status == "IN_PROGRESS" and row.state != "running":
            self._set(row, "running", status=status)
        elif status == "COMPLETED":
            self._complete(row, answer.get("output"))
        elif status in FINAL_STATUSES:
            error = _text(answer.get("error") or answer.get("output") or status)
            if may_retry(status, row.attempts, self.options.retries):
                log.warning("job %d %s (%s); retrying", row.position + 1, status, error)
                self.client.retry(row.job_id)
                self._set(row, "submitted", status=status, attempts=row.attempts + 1, error=error)
            else:
                self._set(row, "cancelled" if status == "CANCELLED" else "failed", status=status, error=error)

    def _complete(self, row: Row, raw_output) -> None:
        try:
            output = read_output(row.job_id, raw_output)
        except OutputError as exc:
            self._set(row, "failed", status="COMPLETED", error=exc.error)
            return
        path = None
        if self.download_dir is not None:
            path = str(download(output.video_url, self.download_dir / video_name(row)))
        self._set(
            row,
            "completed",
            status="COMPLETED",
            output=output.to_json(),
            video_path=path,
            generation_time=output.generation_time,
            error=None,
        )

    def _set(self, row: Row, state: str, **changes) -> None:
        self.ledger.update(row.key, state=state, **changes)
        row.state = state
        for name, value in changes.items():
            setattr(row, name, value)
        self.moved = time.monotonic()
        self.on_change(row, state)


def _text(error) -> str:
    return error if isinstance(error, str) else json.dumps(error, default=str)
