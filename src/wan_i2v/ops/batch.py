"""Bulk runs: every image x every prompt (or pairs), kept in a ledger, resumable, auto-downloaded.

wan-i2v batch prompts.txt --images-dir shots/ --download videos/
wan-i2v batch --resume --ledger videos/wan-i2v-batch.sqlite
"""

from __future__ import annotations

import csv
import logging
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .api import ApiError
from .client import Client, download
from .handoff import send, send_lock
from .ledger import OPEN_STATES, Ledger, Row

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif"}
# Seconds of GPU per expert forward at 81 frames, one H100 80GB, plain diffusers (shared/BASELINE.md),
# and the VAE decode; used to estimate a job before any has been measured.
FORWARD_S = {"480p": 3.29, "720p": 12.29}
DECODE_S = {"480p": 3.2, "720p": 8.0}
DEFAULT_PRICE_PER_GPU_S = 0.00116  # USD per second of an 80 GB GPU on RunPod serverless (flex); configurable


def read_prompts(path: Path) -> list[str]:
    """Prompts separated by lines of `---` or by blank lines."""
    text = Path(path).read_text(encoding="utf-8")
    blocks = re.split(r"\n\s*(?:---+\s*)?\n|\n---+\s*(?:\n|$)", text.strip())
    prompts = [" ".join(block.split()) for block in blocks]
    return [p for p in prompts if p and p.strip("-")]


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def plan_jobs(images: list[Path], prompts: list[str], one_to_one: bool, fields: dict) -> list[tuple[str, str, dict]]:
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


def estimate_seconds(fields: dict, measured: list[tuple[dict, float]] = ()) -> float:
    """GPU seconds for one job: the mean of measured jobs of the same shape, else the baseline model."""
    shape = _shape(fields)
    same = [seconds for other, seconds in measured if _shape(other) == shape]
    if same:
        return sum(same) / len(same)
    resolution, steps, frames = shape[0], shape[1], shape[2]
    guided = (fields.get("guidance_scale", 3.5) > 1) + (fields.get("guidance_scale_2", 3.5) > 1)
    forwards = steps * (1 + guided / 2)
    return forwards * FORWARD_S[resolution] * frames / 81 + DECODE_S[resolution] * frames / 81


def _shape(fields: dict) -> tuple:
    return (fields.get("resolution", "480p"), fields.get("sample_steps", 30), fields.get("frame_num", 81))


def video_name(row: Row) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", row.prompt.lower()).strip("-")[:40] or "prompt"
    return f"{row.position + 1:04d}-{Path(row.image).stem}-{slug}.mp4"


@dataclass
class BatchRunner:
    client: Client
    ledger: Ledger
    download_dir: Path | None
    manage_workers: bool = True
    max_in_flight: int = 4
    retries: int = 1
    poll_s: float = 5.0
    ready_timeout_s: float = 600.0
    price_per_gpu_s: float = DEFAULT_PRICE_PER_GPU_S
    on_change: Callable[[Row, str], None] = field(default=lambda row, state: None)

    def run(self) -> dict[str, int]:
        try:
            if self.manage_workers and self.ledger.rows(OPEN_STATES):
                self.client.management.enable(1)
                self.client.management.wait_ready(timeout_s=self.ready_timeout_s, poll_s=min(self.poll_s, 5.0))
            while self.ledger.rows(OPEN_STATES):
                self._step()
                time.sleep(self.poll_s)
        finally:
            if self.manage_workers:
                scaled, health = self.client.management.scale_down_if_idle()
                log.info("min workers %s: %s", "set to 0" if scaled else "left as they are", health.line())
            self.write_index()
        return self.ledger.counts()

    def _step(self) -> None:
        rows = self.ledger.rows(OPEN_STATES)
        in_flight = [r for r in rows if r.state in ("submitting", "submitted", "running")]
        for row in in_flight:
            if row.state == "submitting":  # a killed run's: sent only if its helper never recorded an id
                self._submit(row)
            else:
                self._poll(row)
        room = self.max_in_flight - len(in_flight)
        for row in [r for r in rows if r.state == "pending"][: max(0, room)]:
            self._submit(row)

    def _submit(self, row: Row) -> None:
        """Send one job through a detached helper (see `handoff`), so a kill at any moment sends it at most once."""
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
                self._set(row, "failed", error=f"job {row.job_id} is gone from the endpoint (results expire)")
                return
            raise
        state = answer.get("status")
        if state == "IN_PROGRESS" and row.state != "running":
            self._set(row, "running")
        elif state == "COMPLETED":
            output = answer.get("output") or {}
            path = None
            if self.download_dir is not None:
                path = str(download(output["video_url"], self.download_dir / video_name(row)))
            self._set(row, "completed", output=output, video_path=path, generation_time=output.get("generation_time"))
        elif state in ("FAILED", "TIMED_OUT"):
            if row.attempts <= self.retries:
                self.client.retry(row.job_id)
                self._set(row, "submitted", attempts=row.attempts + 1, error=str(answer.get("error")))
            else:
                self._set(row, "failed", error=str(answer.get("error") or state))
        elif state == "CANCELLED":
            self._set(row, "cancelled")

    def _set(self, row: Row, state: str, **changes) -> None:
        self.ledger.update(row.key, state=state, **changes)
        row.state = state
        for name, value in changes.items():
            setattr(row, name, value)
        self.on_change(row, state)

    def write_index(self) -> Path | None:
        if self.download_dir is None:
            return None
        self.download_dir.mkdir(parents=True, exist_ok=True)
        index = self.download_dir / "index.csv"
        columns = ["position", "image", "prompt", "state", "job_id", "video_path", "seed", "generation_time", "error"]
        partial = index.with_suffix(".csv.partial")
        with open(partial, "w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(columns)
            for row in self.ledger.rows():
                seed = (row.output or {}).get("seed", "")
                writer.writerow(
                    [
                        row.position + 1,
                        row.image,
                        row.prompt,
                        row.state,
                        row.job_id or "",
                        row.video_path or "",
                        seed,
                        row.generation_time or "",
                        row.error or "",
                    ]
                )
        partial.replace(index)
        return index

    def cost(self) -> tuple[float, float]:
        """(GPU seconds, USD) measured over the completed jobs."""
        seconds = sum(r.generation_time or 0 for r in self.ledger.rows(("completed",)))
        return seconds, seconds * self.price_per_gpu_s


def print_plan(
    jobs: list[tuple[str, str, dict]], measured: list[tuple[dict, float]], price: float, out=sys.stdout
) -> float:
    total = 0.0
    for position, (image, prompt, fields) in enumerate(jobs, 1):
        seconds = estimate_seconds(fields, measured)
        total += seconds
        print(f"{position:4d}  {Path(image).name}  {prompt[:60]!r}  ~{seconds:.0f} GPU s", file=out)
    print(
        f"{len(jobs)} jobs, about {total:.0f} GPU seconds, about ${total * price:.2f} at ${price}/GPU-second", file=out
    )
    return total
