"""What the playground's routes do, without the web framework: check and send jobs, follow them, keep them.

The RunPod API key lives in the `Client` here and never leaves this module: what the page receives is
built from the history and from answers with the key nowhere in them (snippets read it from the
caller's environment).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import pprint
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests
from pydantic import ValidationError

from ...errors import InputError
from ...framing import MAX_IMAGE_BYTES, crop_in_source, output_size
from ...schema import MODES, RESOLUTION_AREAS, JobInput, JobOutput, validate_job_input
from ..api import ApiError
from ..client import Client, download
from .history import TERMINAL, History

log = logging.getLogger(__name__)

POSTER_MAX_BYTES = 2 * 1024 * 1024
STATUS_EVERY_S = 0.4  # pages polling faster than this (two tabs, say) read the last answer instead
REFETCH_EVERY_S = 10.0  # a finished job's video that could not be fetched is tried again at most this often
FORGET_AFTER_S = 1800.0  # RunPod keeps a job 30 minutes after it ends: a younger job's 404 is not final
_DATA_URI = re.compile(r"^data:(image/[a-z0-9.+-]+)?(;[a-z0-9=.+-]+)*;base64,", re.IGNORECASE)
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)
_BASE64 = re.compile(r"^[A-Za-z0-9+/=\s]+$")
# What the page is given an image back as: sniffed from the bytes, never taken from the sender.
_IMAGE_TYPES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"),
)
_FIELD = re.compile(r"^(?P<name>[a-z_0-9]+(\[\d+\])?(\.[a-z_0-9]+)?): ")
IMAGE_FIELDS = ("image", "last_image")


class PlaygroundError(Exception):
    """A request the page made that cannot be done: HTTP status, message, and field errors if any."""

    def __init__(self, status: int, message: str, fields: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.fields = status, message, fields or {}


def field_errors(message: str) -> dict[str, str]:
    """{"frame_num": "frame_num: 83 is not allowed ..."} from a worker or schema message ("a: ...; b: ...")."""
    fields: dict[str, str] = {}
    for part in re.split(r"; (?=[a-z_0-9]+(?:\[\d+\])?(?:\.[a-z_0-9]+)?: )", message):
        match = _FIELD.match(part)
        if match:
            name = match.group("name")
            fields[name] = f"{fields[name]}; {part}" if name in fields else part
    return fields


def check_input(raw: Any) -> JobInput:
    """The worker's own schema; the mode-dependent rules only when the job names its mode (an absent mode
    is the worker's default, which the playground does not know). Images must be what the worker takes
    from a caller (an http(s) URL, a data URI or base64): a path is refused, never read on this machine."""
    if not isinstance(raw, dict) or not isinstance(raw.get("image"), str):
        raise PlaygroundError(422, "image: required", {"image": "image: required (a file, a pasted image or a URL)"})
    try:
        request = validate_job_input(raw)
        if request.mode is not None:
            request.settled(request.mode)
    except InputError as exc:
        raise PlaygroundError(422, str(exc), field_errors(str(exc))) from None
    for name in IMAGE_FIELDS:
        value = getattr(request, name)
        if value is not None:
            image_bytes(name, value)
    return request


def image_bytes(name: str, value: str) -> bytes | None:
    """The bytes of an inline image (data URI or base64), None for an http(s) URL; PlaygroundError naming
    the field for anything else or for an image over the worker's cap."""
    if value.startswith(("http://", "https://")):
        return None
    match = _DATA_URI.match(value)
    payload = value[match.end() :] if match else value
    if not match and (_SCHEME.match(value) or not _BASE64.match(value)):
        text = (
            f"{name}: give an http(s) URL, a data:image/...;base64, URI or base64 (the playground never reads a "
            "path on its own machine: pick the file in the page instead)"
        )
        raise PlaygroundError(422, text, {name: text})
    compact = "".join(payload.split())
    if len(compact) * 3 // 4 > MAX_IMAGE_BYTES + 3:
        text = f"{name}: images may be at most {MAX_IMAGE_BYTES // (1024 * 1024)} MB"
        raise PlaygroundError(413, text, {name: text})
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        text = f"{name}: not valid base64"
        raise PlaygroundError(422, text, {name: text}) from None


def image_type(data: bytes) -> str:
    """The MIME type the page gets an image back with, from its first bytes (never SVG or HTML)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((kind for magic, kind in _IMAGE_TYPES if data.startswith(magic)), "application/octet-stream")


@dataclass
class Playground:
    client: Client
    history: History
    label: str  # how the page names the endpoint; a history row names the endpoint it was sent to this way
    forget_after_s: float = FORGET_AFTER_S
    _locks: dict = field(default_factory=dict, repr=False)  # job id -> Lock: one refresh of a job at a time
    _asked: dict = field(default_factory=dict, repr=False)  # job id -> (monotonic time, queue) of the last ask
    _guard: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def config(self) -> dict:
        return {
            "schema": JobInput.model_json_schema(),
            "modes": {
                name: {
                    "steps": list(rules.steps),
                    "default_steps": rules.default_steps,
                    "default_guidance": rules.default_guidance,
                    "guidance_fixed": rules.guidance_fixed,
                }
                for name, rules in MODES.items()
            },
            "resolutions": {name: list(area) for name, area in RESOLUTION_AREAS.items()},
            "limits": {"image_bytes": MAX_IMAGE_BYTES},
            "field_rules": {"frame_num": "4n+1"},
            "endpoint": {"label": self.label},
        }

    @staticmethod
    def preview(body: Any) -> dict:
        """The video size and the crop of the source the worker will make (framing: the worker's own rule)."""
        body = body if isinstance(body, dict) else {}
        width, height, resolution = body.get("width"), body.get("height"), body.get("resolution") or "480p"
        if not isinstance(width, int) or not isinstance(height, int) or resolution not in RESOLUTION_AREAS:
            raise PlaygroundError(422, "preview: give width and height (integers) and a resolution")
        try:
            size = output_size(width, height, resolution)
        except InputError as exc:
            raise PlaygroundError(422, str(exc), {"image": str(exc)}) from None
        return {"width": size[0], "height": size[1], "crop": crop_in_source(width, height, size)}

    # ---- jobs --------------------------------------------------------------------------------------
    def submit(self, body: Any) -> dict:
        raw = body.get("input") if isinstance(body, dict) else None
        check_input(raw)
        image = image_bytes("image", raw["image"])
        try:
            job_id = self.client.submit(raw, prepare=False)  # exactly as checked: no local file is read
        except ApiError as exc:
            raise PlaygroundError(502, f"the endpoint refused the job: {exc}") from None
        kept = {**raw, "image": None} if image is not None else dict(raw)  # the bytes go beside the row
        self.history.add(job_id, self.label, kept, image, image_type(image) if image is not None else None)
        return {"id": job_id}

    def job(self, job_id: str, refresh: bool = True) -> dict:
        if self.history.get(job_id) is None:
            raise PlaygroundError(404, f"job {job_id}: not sent from this playground")
        with self._lock_of(job_id):  # two tabs polling one job: one asks, one download, the other waits
            record, queue = self.history.get(job_id), None
            asked_at, last_queue = self._asked.get(job_id, (float("-inf"), None))
            if refresh and record["status"] not in TERMINAL:
                if time.monotonic() - asked_at < STATUS_EVERY_S:
                    queue = last_queue
                else:
                    record, queue = self._refresh(record)
                    self._asked[job_id] = (time.monotonic(), queue)
            elif refresh and self._video_missing(record) and time.monotonic() - asked_at >= REFETCH_EVERY_S:
                self._asked[job_id] = (time.monotonic(), None)
                record = self._fetch_again(record)
        return self._shown(record, queue)

    def jobs(self) -> list[dict]:
        return [self._shown(record, None) for record in self.history.all()]

    def cancel(self, job_id: str) -> dict:
        record = self.history.get(job_id)
        if record is None:
            raise PlaygroundError(404, f"job {job_id}: not sent from this playground")
        if not self.follows(record):
            elsewhere = f"job {job_id} was sent to {record['endpoint']}; this playground drives {self.label}"
            raise PlaygroundError(409, elsewhere)
        try:
            answer = self.client.cancel(job_id)
        except ApiError as exc:
            raise PlaygroundError(502, f"cancel: {exc}") from None
        status = answer.get("status") if isinstance(answer, dict) else None
        if status == "CANCELLED":
            self.history.update(job_id, status=status, ended_at=record["ended_at"] or time.time())
        elif status in TERMINAL:  # it ended first: collect its video or error as a poll would
            with self._lock_of(job_id):
                record = self.history.get(job_id)
                if record["status"] not in TERMINAL:
                    record, _ = self._refresh(record)
            status = record["status"]
        return {"status": status or record["status"]}

    def save_poster(self, job_id: str, data: bytes) -> None:
        if self.history.get(job_id) is None:
            raise PlaygroundError(404, f"job {job_id}: not sent from this playground")
        if not data.startswith(b"\x89PNG\r\n\x1a\n") or len(data) > POSTER_MAX_BYTES:
            raise PlaygroundError(422, f"poster: a PNG of at most {POSTER_MAX_BYTES // 1024 // 1024} MB")
        path = self.history.poster_path(job_id)
        path.write_bytes(data)

    def image_uri(self, job_id: str) -> str | None:
        found = self.history.image(job_id)
        if found is None:
            return None
        data, _ = found
        return f"data:{image_type(data)};base64,{base64.b64encode(data).decode()}"

    def snippets(self, job_id: str) -> dict:
        """The exact job as curl and as Python; the key comes from the caller's RUNPOD_API_KEY."""
        record = self.history.get(job_id)
        if record is None:
            raise PlaygroundError(404, f"job {job_id}: not sent from this playground")
        job_input = dict(record["input"])
        if job_input.get("image") is None:
            job_input["image"] = self.image_uri(job_id)
        body = json.dumps({"input": job_input})
        url = f"{self.client.url}/run"
        curl = (
            f"curl -X POST '{url}' \\\n  -H \"Authorization: Bearer $RUNPOD_API_KEY\" \\\n"
            f"  -H 'Content-Type: application/json' \\\n  -d @- <<'JOB'\n{body}\nJOB"
        )
        python = (
            "import os\n\nimport requests\n\n"
            f"job = {pprint.pformat(job_input, indent=4, width=100, sort_dicts=False)}\n"  # Python: True, None
            f"answer = requests.post(\n    {url!r},\n"
            '    headers={"Authorization": f"Bearer {os.environ[\'RUNPOD_API_KEY\']}"},\n'
            '    json={"input": job},\n    timeout=60,\n)\n'
            'print(answer.json())  # {"id": ..., "status": "IN_QUEUE"}: poll /status/<id>\n'
        )
        return {"curl": curl, "python": python}

    # ---- internals ----------------------------------------------------------------------------------
    def _lock_of(self, job_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(job_id, threading.Lock())

    def _refresh(self, record: dict) -> tuple[dict, dict | None]:
        job_id = record["id"]
        if not self.follows(record):
            return record, None  # another endpoint's job: its last known state, not asked of this one
        try:
            answer = self.client.status(job_id)
        except ApiError as exc:
            if exc.status == 404 and time.time() - record["submitted_at"] > self.forget_after_s:
                return self._forgotten(record)  # RunPod forgets a job 30 minutes after it ends
            log.warning("status of %s: %s", job_id, exc)
            return record, None
        except ValueError as exc:  # an answer that is not JSON
            log.warning("status of %s: not JSON (%s)", job_id, exc)
            return record, None
        status = answer.get("status") if isinstance(answer, dict) else None
        if not isinstance(status, str):
            return record, None
        update: dict[str, Any] = {"status": status}
        now = time.time()
        if status == "IN_PROGRESS":
            update["started_at"] = record["started_at"] or now
            event = answer.get("output")
            if isinstance(event, dict) and isinstance(event.get("phase"), str):
                update["progress"] = event
        if status in TERMINAL:
            update["started_at"] = record["started_at"] or now
            update["ended_at"] = now
            update.update(self._ending(job_id, status, answer))
        self.history.update(job_id, **update)
        queue = self._queue() if status == "IN_QUEUE" else None
        return {**record, **update}, queue

    def follows(self, record: dict) -> bool:
        """Whether a job was sent to the endpoint this playground drives (a history holds every endpoint's)."""
        return record["endpoint"] == self.label

    def _forgotten(self, record: dict) -> tuple[dict, None]:
        was = record["status"].lower().replace("_", " ")
        message = (
            f"the endpoint no longer knows job {record['id']}: it was last seen {was}, and RunPod forgets a job "
            "30 minutes after it ends (a dev endpoint, when it stops); its result was not collected in time"
        )
        update = {"status": "FAILED", "error": {"message": message}}
        self.history.update(record["id"], **update)
        return {**record, **update}, None

    def _ending(self, job_id: str, status: str, answer: dict) -> dict:
        if status == "COMPLETED":
            try:
                output = JobOutput.model_validate(answer.get("output"))
            except ValidationError as exc:
                return {"status": "FAILED", "error": {"message": f"the worker's output is not valid: {exc}"}}
            ended = {"output": _without_url(output), "video_source": output.video_url}  # the URL stays here
            return {**ended, **self._fetch(job_id, output.video_url)}
        error = answer.get("error")
        message = error if isinstance(error, str) else json.dumps(error) if error else status.lower().replace("_", " ")
        return {"error": {"message": message}}

    def _fetch(self, job_id: str, url: str) -> dict:
        """Fetches the video; the row's update: done, or an error saying why in words that never hold the
        (presigned) URL."""
        try:
            download(url, self.history.video_path(job_id))
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else "?"
            why = f"HTTP {code} from the bucket"
        except requests.RequestException as exc:
            why = f"{type(exc).__name__} reaching the bucket"
        except (OSError, ValueError) as exc:
            why = f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or 'could not be written'}"
        else:
            return {"error": None, "progress": {"phase": "done", "percent": 100.0}}
        log.warning("video of %s not fetched: %s", job_id, why)
        text = f"the video could not be fetched ({why}); the playground tries again when the job is opened"
        return {"error": {"message": text}}

    def _video_missing(self, record: dict) -> bool:
        return (
            record["status"] == "COMPLETED"
            and bool(record.get("video_source"))
            and not self.history.video_path(record["id"]).is_file()
        )

    def _fetch_again(self, record: dict) -> dict:
        update = self._fetch(record["id"], record["video_source"])
        self.history.update(record["id"], **update)
        return {**record, **update}

    def _queue(self) -> dict | None:
        try:
            health = self.client.health()
        except ApiError:
            return None
        return {
            "in_queue": health.jobs["inQueue"],
            "in_progress": health.jobs["inProgress"],
            "workers_ready": max(health.workers["idle"], health.workers["ready"]),
            "workers_running": health.workers["running"],
            "workers_initializing": health.workers["initializing"],
        }

    def _shown(self, record: dict, queue: dict | None) -> dict:
        job_id = record["id"]
        job_input = dict(record["input"])
        if job_input.get("image") is None:
            job_input["image"] = f"/api/jobs/{job_id}/image"
        for name in IMAGE_FIELDS:  # a large inline last image stays on this side
            value = job_input.get(name)
            if name != "image" and isinstance(value, str) and not value.startswith(("http://", "https://")):
                job_input[name] = "(inline image)"
        error = record["error"]
        if error is not None:
            error = {**error, "fields": field_errors(error.get("message") or "")}
        video = self.history.video_path(job_id)
        poster = self.history.poster_path(job_id)
        return {
            "id": job_id,
            "endpoint": record["endpoint"],
            "followed": self.follows(record),  # False: another endpoint's job, shown as last seen
            "status": record["status"],
            "progress": record["progress"],
            "queue": queue,
            "submitted_at": record["submitted_at"],
            "started_at": record["started_at"],
            "ended_at": record["ended_at"],
            "input": job_input,
            "output": record["output"],
            "video": f"/api/jobs/{job_id}/video" if video.is_file() else None,
            "poster": f"/api/jobs/{job_id}/poster" if poster.is_file() else None,
            "error": error,
        }


def _without_url(output: JobOutput) -> dict:
    shown = output.to_json()
    shown.pop("video_url", None)  # a presigned URL (or a large data URI): the page plays the local copy
    return shown
