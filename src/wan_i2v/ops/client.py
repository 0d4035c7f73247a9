"""A Python client for a wan-i2v endpoint on RunPod's queue API (or the local dev endpoint).

    client = Client.from_env()                      # RUNPOD_API_KEY, RUNPOD_ENDPOINT_ID
    output = client.generate({"image": "cat.jpg", "prompt": "the cat blinks"}, download_dir="videos")

No torch, no diffusers: an operator's laptop needs only `pip install wan-i2v`. A finished job's output
is read through the schema's `JobOutput`, so an answer this client cannot read fails here, by name.
"""

from __future__ import annotations

import base64
import hashlib
import json
import mimetypes
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import requests
from pydantic import ValidationError

from ..bucket import BucketSettings, s3_client
from ..files import written_whole
from ..schema import JobOutput
from .api import MANAGEMENT_BASE_URL, QUEUE_BASE_URL, ApiError, ApiSession, job_id_of
from .management import Health, Management

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")
RUN_LIMIT_BYTES = 10 * 1000 * 1000  # RunPod's /run request limit
INLINE_MARGIN_BYTES = 64 * 1024  # room for the rest of the request
IMAGE_FIELDS = ("image", "last_image")


class JobFailed(Exception):
    """A job ended FAILED, CANCELLED or TIMED_OUT; carries the job's own `error`."""

    def __init__(self, job_id: str, status: str, error: Any):
        self.job_id, self.status, self.error = job_id, status, error
        super().__init__(f"job {job_id} {status}: {error}")


class OutputError(JobFailed):
    """A job COMPLETED with an output that is not a wan-i2v `JobOutput` (another worker image or version)."""

    def __init__(self, job_id: str, problem: str):
        super().__init__(job_id, "COMPLETED", f"its output is not a wan-i2v output: {problem}")


def read_output(job_id: str, raw: Any) -> JobOutput:
    """A COMPLETED job's output, typed; OutputError naming the job and every bad field otherwise."""
    try:
        return JobOutput.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'output'}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise OutputError(job_id, problems) from None


@dataclass
class Client:
    endpoint_id: str
    api: ApiSession
    base_url: str = QUEUE_BASE_URL
    management_base_url: str = MANAGEMENT_BASE_URL
    bucket: BucketSettings | None = None  # where large local images are uploaded
    poll_s: float = 5.0  # the slowest status polling; waits start at 1 s and back off to this
    _uploaded: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, env=None, **overrides) -> Client:
        """Settings from RUNPOD_API_KEY, RUNPOD_ENDPOINT_ID, RUNPOD_ENDPOINT_BASE_URL (the queue API,
        as RunPod's own SDK reads it), RUNPOD_MANAGEMENT_BASE_URL, and the BUCKET_* variables."""
        env = os.environ if env is None else env
        base_url = overrides.pop("base_url", None) or env.get("RUNPOD_ENDPOINT_BASE_URL") or QUEUE_BASE_URL
        # A non-default queue URL (the dev endpoint) serves management too, unless told otherwise.
        default_management = MANAGEMENT_BASE_URL if base_url == QUEUE_BASE_URL else base_url
        endpoint_id = overrides.pop("endpoint_id", None) or env.get("RUNPOD_ENDPOINT_ID") or ""
        if not endpoint_id:
            raise ApiError("no endpoint id: pass --endpoint or set RUNPOD_ENDPOINT_ID")
        return cls(
            endpoint_id=endpoint_id,
            api=ApiSession(overrides.pop("api_key", None) or env.get("RUNPOD_API_KEY", "")),
            base_url=base_url,
            management_base_url=overrides.pop("management_base_url", None)
            or env.get("RUNPOD_MANAGEMENT_BASE_URL")
            or default_management,
            bucket=BucketSettings.from_env(env),
            **overrides,
        )

    @property
    def url(self) -> str:
        return f"{self.base_url.rstrip('/')}/{self.endpoint_id}"

    @property
    def management(self) -> Management:
        return Management(self.endpoint_id, self.api, self.base_url, self.management_base_url)

    # ---- the queue API ---------------------------------------------------------------------
    def submit(
        self,
        job_input: dict,
        webhook: str | None = None,
        execution_timeout_s: float | None = None,
        ttl_s: float | None = None,
        prepare: bool = True,
    ) -> str:
        """POST /run; local image paths in the input are sent inline or uploaded first (unless `prepare` is
        False: a server taking jobs from others must not read its own files for them). Returns the job id."""
        url, body = self.run_request(job_input, webhook, execution_timeout_s, ttl_s, prepare)
        return job_id_of(self.api.request("POST", url, body))

    def run_request(
        self,
        job_input: dict,
        webhook: str | None = None,
        execution_timeout_s: float | None = None,
        ttl_s: float | None = None,
        prepare: bool = True,
    ) -> tuple[str, dict]:
        """The URL and body of a /run request (local images already inlined or uploaded when `prepare`)."""
        body: dict[str, Any] = {"input": self.prepare_input(job_input) if prepare else dict(job_input)}
        if webhook:
            body["webhook"] = webhook
        policy = {}
        if execution_timeout_s:
            policy["executionTimeout"] = int(execution_timeout_s * 1000)
        if ttl_s:
            policy["ttl"] = int(ttl_s * 1000)
        if policy:
            body["policy"] = policy
        return f"{self.url}/run", body

    def status(self, job_id: str) -> dict:
        return self.api.request("GET", f"{self.url}/status/{job_id}")

    def cancel(self, job_id: str) -> dict:
        return self.api.request("POST", f"{self.url}/cancel/{job_id}")

    def retry(self, job_id: str) -> dict:
        return self.api.request("POST", f"{self.url}/retry/{job_id}")

    def purge_queue(self) -> dict:
        return self.api.request("POST", f"{self.url}/purge-queue")

    def health(self) -> Health:
        return self.management.health()

    def wait(
        self,
        job_id: str,
        timeout_s: float = 3600.0,
        on_status: Callable[[dict], None] | None = None,
    ) -> dict:
        """Poll /status with backoff until the job ends. Returns its output, checked against `JobOutput`
        (as JSON, the form the job returned it in); raises JobFailed (OutputError for an unreadable
        output) or TimeoutError."""
        deadline = time.monotonic() + timeout_s
        delay = min(1.0, self.poll_s)
        while True:
            answer = self.status(job_id)
            if on_status is not None:
                on_status(answer)
            state = answer.get("status")
            if state == "COMPLETED":
                return read_output(job_id, answer.get("output")).to_json()
            if state in TERMINAL:
                raise JobFailed(job_id, state, answer.get("error") or answer.get("output") or state)
            if time.monotonic() + delay > deadline:
                raise TimeoutError(f"job {job_id} still {state} after {timeout_s:.0f} s")
            time.sleep(delay)
            delay = min(delay * 1.5, self.poll_s)

    def generate(
        self,
        job_input: dict,
        download_dir: Path | None = None,
        timeout_s: float = 3600.0,
        on_status: Callable[[dict], None] | None = None,
        **submit,
    ) -> dict:
        """Submit, wait and (optionally) download: returns the output, with `video_path` when downloaded."""
        job_id = self.submit(job_input, **submit)
        output = self.wait(job_id, timeout_s=timeout_s, on_status=on_status)
        if download_dir is not None:
            output["video_path"] = str(download(output["video_url"], Path(download_dir) / f"{job_id}.mp4"))
        return {"id": job_id, **output}

    def run_batch(
        self,
        jobs: list[dict],
        auto_manage_workers: bool = True,
        retries: int = 1,
        timeout_s: float = 3600.0,
        ready_timeout_s: float = 600.0,
        max_in_flight: int | None = None,
    ) -> list[dict]:
        """The seed's process_batch, run by the batch engine (`batch.Batch`) on a throwaway ledger
        (sent in-process: a throwaway ledger is never resumed, so the kill-safe helper would add nothing).

        Results in input order, each {"id", "output"} or {"id", "status", "error"}; a FAILED or
        TIMED_OUT job is retried `retries` times. With auto_manage_workers, min workers go to 1 before
        and back to 0 after, in a `finally`, and only when nothing is queued or running. Every job is
        submitted at once unless `max_in_flight`; TimeoutError when no job moves on for `timeout_s`."""
        from .batch import Batch, RunOptions, plan_inputs  # the batch module builds on this one

        if not jobs:
            return []
        options = RunOptions(
            manage_workers=auto_manage_workers,
            max_in_flight=max_in_flight or len(jobs),
            retries=retries,
            poll_s=self.poll_s,
            ready_timeout_s=ready_timeout_s,
            stall_timeout_s=timeout_s,
            detached_send=False,
        )
        planned = plan_inputs(jobs)
        with (
            tempfile.TemporaryDirectory(prefix="wan-i2v-batch-") as folder,
            Batch.plan_new(Path(folder) / "ledger.sqlite", planned) as batch,
        ):
            batch.run(self, options)
            return batch.results()

    # ---- images ----------------------------------------------------------------------------
    def prepare_input(self, job_input: dict) -> dict:
        """Replace local image paths by inline base64 (small) or a presigned bucket URL (large)."""
        prepared = dict(job_input)
        for name in IMAGE_FIELDS:
            value = prepared.get(name)
            if isinstance(value, (str, os.PathLike)) and _is_local_file(value):
                prepared[name] = self._image_reference(Path(value), prepared)
            elif isinstance(value, os.PathLike):
                prepared[name] = os.fspath(value)  # not a file here; the worker says what is wrong with it
        return prepared

    def _image_reference(self, path: Path, job_input: dict) -> str:
        data = path.read_bytes()
        mime = mimetypes.guess_type(path.name)[0] or "image/png"
        inline = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        others = len(json.dumps({k: v for k, v in job_input.items() if k not in IMAGE_FIELDS}))
        if len(inline) + others + INLINE_MARGIN_BYTES <= RUN_LIMIT_BYTES // len(IMAGE_FIELDS):
            return inline
        return self.upload_image(path, data)

    def upload_image(self, path: Path, data: bytes | None = None) -> str:
        """Upload once per content (key = SHA256), return a presigned GET URL."""
        if self.bucket is None:
            raise ApiError(f"{path} is too large to send inline; set the BUCKET_* variables to upload it")
        data = path.read_bytes() if data is None else data
        digest = hashlib.sha256(data).hexdigest()
        if digest in self._uploaded:
            return self._uploaded[digest]
        from botocore.exceptions import ClientError  # boto3 is needed only for large local images

        key = f"{self.bucket.prefix}inputs/{digest}{path.suffix.lower()}"
        s3 = s3_client(self.bucket)
        try:
            s3.head_object(Bucket=self.bucket.bucket_name, Key=key)
        except ClientError:
            content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            s3.put_object(Bucket=self.bucket.bucket_name, Key=key, Body=data, ContentType=content_type)
        url = s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket.bucket_name, "Key": key}, ExpiresIn=self.bucket.url_expiry_s
        )
        self._uploaded[digest] = url
        return url


def _is_local_file(value: str | os.PathLike) -> bool:
    text = os.fspath(value)
    return not text.startswith(("http://", "https://", "data:")) and len(text) < 4096 and Path(text).is_file()


def download(video_url: str, dest: Path, timeout_s: float = 120.0) -> Path:
    """Fetch a job's video (https, data: or file:) to `dest`, whole or not at all."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with written_whole(dest) as partial:
        if video_url.startswith("data:"):
            partial.write_bytes(base64.b64decode(video_url.split(",", 1)[1]))
        elif video_url.startswith("file://"):
            shutil.copyfile(unquote(urlparse(video_url).path), partial)
        else:
            with requests.get(video_url, stream=True, timeout=(10, timeout_s)) as response:
                response.raise_for_status()
                with open(partial, "wb") as out:
                    out.writelines(response.iter_content(1024 * 1024))
    return dest
