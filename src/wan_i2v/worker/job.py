"""One job from start to end: validate, fetch, generate, encode, store, report progress and errors.

Errors are values here: every failure becomes the job's `error` (with `refresh_worker` when the
worker's state can no longer be trusted), so the worker keeps serving the next job.
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..bucket import BucketSettings
from ..errors import InputError, JobError, SettingsError
from ..framing import output_size
from ..schema import (
    SEED_MAX,
    AppliedLora,
    AppliedLoraFile,
    EngineReport,
    JobInput,
    JobOutput,
    LoraEntry,
    ModelRevision,
    Phase,
    Timings,
    parse_job_input,
    progress_event,
)
from .engine import HIGH_NOISE, LOW_NOISE, Engine, GenerationParams, JobLora
from .hostmem import resident_bytes, trim_heap
from .images import fit_image, load_image
from .interpolation.stage import Interpolator
from .lora import text_encoder_key_count
from .lora_files import LoraFile, LoraStore
from .netguard import BlockedAddressError
from .ranks import Ranks
from .settings import GB, Settings
from .storage import StoredVideo, inline_data_uri, local_name, object_key, save_local, upload_s3
from .timing import timed
from .video import encode_mp4

log = logging.getLogger(__name__)

# Receives (job, progress event) while a job runs; handler.py sends it to RunPod's /status.
ProgressSink = Callable[[dict, dict], None]
EXPERT_OF_SIDE = {"high": HIGH_NOISE, "low": LOW_NOISE}


class Worker:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        progress: ProgressSink | None = None,
        interpolator: Interpolator | None = None,
    ):
        self.engine = engine
        self.settings = settings
        self.progress = progress
        self.interpolator = interpolator or Interpolator.load(
            settings.interpolation, engine.device, engine.model_path, engine.ladder, engine.cold_start
        )
        lora = settings.loras
        self.lora_store = LoraStore(
            folder=lora.folder,
            cache_dir=lora.cache_dir,
            cache_max_bytes=int(lora.cache_gb * GB),
            max_file_bytes=int(lora.max_gb * GB),
            policy=settings.url_policy,
            total_timeout_s=lora.timeout_s,
        )

    def handle(self, job: dict) -> dict:
        job_id = str(job.get("id") or "local") if isinstance(job, dict) else "local"
        try:
            with self.engine.ranks.serving():  # a rank lost meanwhile ends the worker after this answer
                return self._answer(job, job_id)
        finally:
            self._release_host_memory(job_id)

    def _answer(self, job: dict, job_id: str) -> dict:
        started = time.perf_counter()
        generating = False  # whether the failure can hold the job's tensors
        try:
            if not isinstance(job, dict):
                raise InputError("job: must be an object with an 'input' object")
            request = parse_job_input(
                job.get("input"),
                self.engine.default_mode,
                self.settings.default_resolution,
                self.settings.interpolation.default_factor,
            )
            smoothing = self.interpolator.check(request.interpolate_model) if request.interpolate > 1 else None
            bucket = self._bucket_for(job)
            generating = True
            output = self._run(job, job_id, request, smoothing, bucket, started)
        except JobError as exc:
            # The text only: a log record holding the exception would keep the failed job's tensors alive.
            log.warning("job %s failed: %s", job_id, str(exc))
            result: dict[str, Any] = {"error": str(exc)}
            if exc.refresh_worker:
                result["refresh_worker"] = True
        except Exception as exc:  # a bug or a state we cannot trust: answer, then let RunPod replace us
            log.exception("job %s failed unexpectedly", job_id)
            result = {"error": f"internal error: {type(exc).__name__}: {exc}", "refresh_worker": True}
        else:
            log.info("job %s done in %.2f s: %s", job_id, output.generation_time, dict(output.timings))
            return output.to_json()
        if generating:
            # The failed job's tensors became unreachable with its exception: hand their memory back now.
            # (A job refused at validation never made any; a full collection would cost it 0.15 s.)
            self.engine.release_memory()
        return result

    @staticmethod
    def _release_host_memory(job_id: str) -> None:
        """Every job ends here, so a long-lived worker's resident memory stays flat (see hostmem)."""
        before, started = resident_bytes(), time.perf_counter()
        if trim_heap() and before is not None:
            log.debug(
                "job %s: heap trimmed from %d to %d MiB in %.0f ms",
                job_id,
                before >> 20,
                (resident_bytes() or 0) >> 20,
                (time.perf_counter() - started) * 1000,
            )

    def _report(self, job: dict, phase: Phase, **detail: Any) -> None:
        event = progress_event(phase, **detail)
        log.debug("job %s progress %s", job.get("id"), event)
        if self.progress is not None:
            try:
                self.progress(job, event)
            except Exception as exc:  # progress is best effort; it never fails the job
                # The type only: the message of a failed request names its URL, which may carry a token.
                log.warning("job %s: progress update failed (%s)", job.get("id"), type(exc).__name__)

    def _run(
        self,
        job: dict,
        job_id: str,
        request: JobInput,
        smoothing: str | None,
        bucket: BucketSettings | None,
        started: float,
    ) -> JobOutput:
        timings: dict[str, float] = {}

        self._report(job, Phase.FETCH_IMAGE)
        with timed(timings, Phase.FETCH_IMAGE.value):
            policy = self.settings.url_policy
            image = load_image("image", request.image, policy)
            width, height = output_size(
                image.width, image.height, request.resolution, tokens_multiple=self.engine.tokens_multiple
            )
            image = fit_image(image, (width, height))
            last = None
            if request.last_image is not None:
                last = fit_image(load_image("last_image", request.last_image, policy), (width, height))

        seed = request.seed if request.seed is not None else secrets.randbelow(SEED_MAX + 1)
        params = GenerationParams(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            width=width,
            height=height,
            num_frames=request.frame_num,
            steps=request.sample_steps,
            guidance_scale=request.guidance_scale,
            guidance_scale_2=request.guidance_scale_2,
            shift=request.shift,
            seed=seed,
            mode=request.mode,
        )
        with self.lora_store.checkout() as fetch_lora:  # the files stay on disk until the job is done
            with timed(timings, "lora_fetch"):
                loras, applied = _fetch_loras(fetch_lora, request.loras)
            generated = self.engine.generate(
                params, image, last, on_progress=lambda *e, **d: self._report(job, *e, **d), loras=loras
            )
        timings.update(generated.timings)
        report = generated.report

        # 5. New frames between the generated ones, on the device that decoded them.
        factor, video = request.interpolate, generated.video
        if smoothing is not None:
            self._report(job, Phase.INTERPOLATE, model=smoothing)
            with timed(timings, Phase.INTERPOLATE.value, self.engine.sync):
                video = self.interpolator.run(
                    video, factor, smoothing, lambda **d: self._report(job, Phase.INTERPOLATE, **d)
                )
        frames = video.cpu().numpy()
        del video, generated

        with tempfile.TemporaryDirectory(prefix="wan-i2v-") as tmp:
            path = Path(tmp) / "video.mp4"
            self._report(job, Phase.ENCODE_MP4)
            with timed(timings, Phase.ENCODE_MP4.value):
                encode_mp4(frames, path, request.fps * factor, crf=self.settings.video_crf)
            size = path.stat().st_size
            self._report(job, Phase.UPLOAD)
            with timed(timings, Phase.UPLOAD.value):
                stored = self._store(path, request, bucket, job_id)

        total = round(time.perf_counter() - started, 2)
        return JobOutput(
            video_url=stored.url,
            video_url_expires_at=stored.expires_at,
            generation_time=total,
            video_size_mb=round(size / 1024 / 1024, 2),
            resolution=request.resolution,
            mode=request.mode,
            sample_steps=request.sample_steps,
            frame_num=request.frame_num,
            interpolate=factor,
            interpolate_model=smoothing,
            frames_in_video=len(frames),
            width=width,
            height=height,
            fps=request.fps * factor,
            seed=seed,
            model=self.settings.model,
            model_revision=_revision(self.engine.revision),
            storage=stored.location,
            timings=Timings(**timings, total=total),
            loras=applied,
            engine=EngineReport(**report),
        )

    def _bucket_for(self, job: dict) -> BucketSettings | None:
        s3_config = job.get("s3Config")
        if s3_config is None:
            return self.settings.bucket
        if not isinstance(s3_config, dict):
            raise InputError("s3Config: must be an object {accessId, accessSecret, bucketName, endpointUrl}")
        try:
            bucket = BucketSettings.for_job(s3_config, self.settings.bucket)
        except SettingsError as exc:
            raise InputError(str(exc)) from None
        # The caller names this endpoint: the same address rules as for image URLs apply.
        try:
            self.settings.url_policy.check_url(bucket.endpoint_url)
        except ValueError as exc:
            raise InputError(f"s3Config: endpointUrl {exc}") from None
        except BlockedAddressError as exc:
            raise InputError(f"s3Config: endpointUrl refused: {exc}") from None
        return bucket

    def _store(self, path: Path, request: JobInput, bucket: BucketSettings | None, job_id: str) -> StoredVideo:
        now = datetime.now(timezone.utc)
        if request.return_base64:
            return inline_data_uri(path, self.settings.base64_max_mb)
        if bucket is not None:
            return upload_s3(path, bucket, object_key(bucket.prefix, job_id, now))
        return save_local(path, self.settings.output_dir, local_name(job_id, now))


def _fetch_loras(
    fetch: Callable[[str, str], LoraFile], entries: list[LoraEntry]
) -> tuple[list[JobLora], list[AppliedLora]]:
    """Every file of the job's `loras` on local disk and checked, before the engine reads any."""
    loras, applied = [], []
    for index, entry in enumerate(entries):
        ran = {}
        for side, (source, scale) in entry.files().items():
            field = f"loras[{index}].{side}"
            found = fetch(field, source)
            loras.append(JobLora(EXPERT_OF_SIDE[side], found.path, scale, f"{field} ({found.shown})"))
            # The engine skips the same keys when it reads the file (lora.parse_lora); counted here from the header.
            ran[side] = AppliedLoraFile(
                source=found.shown,
                scale=scale,
                sha256=found.sha256,
                skipped_text_encoder_keys=text_encoder_key_count(found.path),
            )
        applied.append(AppliedLora(**ran))
    return loras, applied


def _revision(revision) -> ModelRevision | None:
    facts = {name: value for name, value in revision.as_dict().items() if value is not None}
    return ModelRevision(**facts) if facts else None


def build_worker(settings: Settings | None = None, progress: ProgressSink | None = None) -> Worker:
    """Cold start: read settings, load the model once, log what was chosen."""
    started = time.perf_counter()
    settings = settings or Settings.from_env()
    ranks = Ranks.start(settings.engine.parallel)  # the other GPUs' processes, when there are several
    try:
        engine = Engine.load(settings.model, ranks.engine_options(settings.engine), ranks)
    except BaseException:
        ranks.shutdown()
        raise
    interpolator = Interpolator.load(
        settings.interpolation, engine.device, engine.model_path, engine.ladder, engine.cold_start
    )
    engine.cold_start.write(
        Path(os.environ["WAN_COLD_START_REPORT"]) if os.environ.get("WAN_COLD_START_REPORT") else None
    )
    storage = (
        f"bucket '{settings.bucket.bucket_name}' at {settings.bucket.endpoint_url}"
        if settings.bucket
        else f"local directory {settings.output_dir.resolve()} (no bucket configured)"
    )
    log.info(
        "cold start done in %.1f s: model %s on %s, default mode %s at %s, memory plan %s, quantization %s; "
        "videos go to %s",
        time.perf_counter() - started,
        settings.model,
        engine.device if ranks.world == 1 else f"{ranks.world} ranks {ranks.layout.as_dict()}",
        engine.default_mode,
        settings.default_resolution,
        engine.plan.name,
        engine.quant,
        storage,
    )
    lora = settings.loras
    log.info(
        "job LoRAs: folder %s; URLs cached in %s (at most %g GB, files up to %g GB)",
        lora.folder if lora.folder is not None else "none (set WAN_LORA_DIR)",
        lora.cache_dir,
        lora.cache_gb,
        lora.max_gb,
    )
    if settings.bucket is None and os.environ.get("RUNPOD_POD_ID"):
        log.warning(
            "no bucket configured: videos stay on this worker's disk and video_url is a file:// URL "
            "no caller can fetch; set BUCKET_ENDPOINT_URL, BUCKET_NAME, BUCKET_ACCESS_KEY_ID and "
            "BUCKET_SECRET_ACCESS_KEY, or send return_base64 for short clips"
        )
    return Worker(engine, settings, progress, interpolator)
