"""The job contract, in one place: what a job takes (`JobInput`), what it returns (`JobOutput`) and
how it reports progress while it runs (`Phase`, `progress_event`).

Validation, the README's input and output tables (`python -m wan_i2v.schema`), the error messages and
the `wan-i2v` command's flags all come from these models, so they cannot drift apart. The worker
builds its answer as a `JobOutput`; the client and the batch index read answers through it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from enum import Enum
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import InputError

# Output area per resolution (width x height of a landscape frame); the video keeps the input
# image's aspect ratio at about this many pixels, as the official Wan2.2 code does.
RESOLUTION_AREAS = {"480p": (832, 480), "720p": (1280, 720)}

# Wan2.2's own default negative prompt (wan/configs/shared_config.py, `sample_neg_prompt`).
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)

MAX_PROMPT_CHARS = 5000
FRAME_MIN, FRAME_MAX = 17, 161
SEED_MAX = 2**32 - 1
IMAGE_FORMS = "an http(s) URL, raw base64, or a data:image/...;base64, URI (JPEG, PNG, WebP or GIF)"
LORA_MAX = 3
LORA_SCALE_MAX = 2.0
LORA_SOURCE_FORMS = "a .safetensors file name in the worker's LoRA folder (WAN_LORA_DIR) or an http(s) URL"
LORA_SIDES = ("high", "low")
INTERPOLATE_MAX = 4
InterpolateModel = Literal["rife", "ffmpeg"]  # the job's names for the high-noise and low-noise experts


@dataclass(frozen=True)
class ModeRules:
    """What a mode allows: its step range and defaults, and whether guidance is fixed to 1."""

    steps: tuple[int, int]
    default_steps: int
    default_guidance: float
    guidance_fixed: bool  # the distilled LoRA was trained without guidance: only 1 (or absent) is accepted


# quality: Wan2.2's own sampler. turbo: the 4-step distilled LoRA pair (lightx2v), one forward per step.
MODES = {
    "quality": ModeRules(steps=(15, 50), default_steps=30, default_guidance=3.5, guidance_fixed=False),
    "turbo": ModeRules(steps=(2, 8), default_steps=4, default_guidance=1.0, guidance_fixed=True),
}
Mode = Literal["quality", "turbo"]
Resolution = Literal["480p", "720p"]
RESOLUTIONS: tuple[str, ...] = Resolution.__args__
GUIDANCE_FIELDS = ("guidance_scale", "guidance_scale_2")


def _guidance_field(expert: str):
    return Field(
        None,
        ge=1.0,
        le=10.0,
        allow_inf_nan=False,
        description=f"Guidance of the {expert} expert (1 turns it off). Turbo runs without guidance: only 1.",
    )


def _lora_source(expert: str):
    return Field(
        None,
        min_length=1,
        max_length=2048,
        description=f"LoRA for the {expert} expert: {LORA_SOURCE_FORMS}. Absent: none for that expert.",
    )


def _lora_scale(expert: str):
    return Field(
        None,
        ge=0.0,
        le=LORA_SCALE_MAX,
        allow_inf_nan=False,
        description=f"Strength on the {expert} expert; overrides `scale` there.",
    )


class LoraEntry(BaseModel):
    """One LoRA pair of a job's `loras`: a file for each expert (or for one of them) and its strength."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    high: str | None = _lora_source("high-noise")
    low: str | None = _lora_source("low-noise")
    scale: float = Field(
        1.0, ge=0.0, le=LORA_SCALE_MAX, allow_inf_nan=False, description="Strength on both experts (0 turns it off)."
    )
    high_scale: float | None = _lora_scale("high-noise")
    low_scale: float | None = _lora_scale("low-noise")

    @model_validator(mode="after")
    def _names_a_file(self) -> LoraEntry:
        if self.high is None and self.low is None:
            raise ValueError("names no file: give high, low or both")
        return self

    def files(self) -> dict[str, tuple[str, float]]:
        """{"high" | "low": (source, scale)} for the sides this entry names."""
        scales = {"high": self.high_scale, "low": self.low_scale}
        return {
            side: (source, scales[side] if scales[side] is not None else self.scale)
            for side, source in (("high", self.high), ("low", self.low))
            if source is not None
        }


LORA_FIELD_NAMES = tuple(LoraEntry.model_fields)


def valid_frame_counts() -> list[int]:
    return list(range(FRAME_MIN, FRAME_MAX + 1, 4))


class JobInput(BaseModel):
    """One image-to-video job, as sent in a RunPod job's `input`."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    image: str = Field(
        min_length=1,
        description="First frame of the video. At most 10 MB and 40 megapixels; EXIF orientation is applied, "
        "transparency is flattened onto white, a GIF gives its first frame.",
    )
    prompt: str = Field("", max_length=MAX_PROMPT_CHARS, description="What should happen in the video.")
    negative_prompt: str = Field(
        WAN_NEGATIVE_PROMPT,
        max_length=MAX_PROMPT_CHARS,
        description="What to avoid. Default: Wan2.2's own negative prompt.",
    )
    resolution: Resolution | None = Field(
        None,
        description="Output area: 480p is 832x480, 720p is 1280x720. The video keeps the image's "
        "aspect ratio at that area, each side a multiple of 16 (on a worker with several GPUs per video, "
        "sides whose 16-pixel patches split evenly over them: 832x480 and 1280x720 always do); the image is "
        "resized and centre-cropped. "
        "Absent: the worker's default (`WAN_DEFAULT_RESOLUTION`, 480p unless the operator sets 720p).",
    )
    mode: Mode | None = Field(
        None,
        description="`quality`: Wan2.2's own sampler with guidance. `turbo`: the 4-step distilled LoRA pair, "
        "one forward per step, no guidance; several times faster. Absent: the worker's default "
        "(`WAN_DEFAULT_MODE`, quality unless the operator sets turbo).",
    )
    sample_steps: int | None = Field(
        None,
        ge=min(r.steps[0] for r in MODES.values()),
        le=max(r.steps[1] for r in MODES.values()),
        description="Denoising steps. More is slower and finer.",
    )
    frame_num: int = Field(
        81,
        ge=FRAME_MIN,
        le=FRAME_MAX,
        description="Frames generated; must be 4n+1 (81 is 5 s at 16 fps). `interpolate` adds more to the MP4.",
    )
    fps: int = Field(
        16,
        ge=8,
        le=30,
        description="Playback rate of the generated frames. Does not change the frames generated; with "
        "`interpolate` k the MP4 plays at k times this rate.",
    )
    seed: int | None = Field(
        None, ge=0, le=SEED_MAX, description="Random seed. Absent means random; the seed used is always returned."
    )
    guidance_scale: float | None = _guidance_field("high-noise")
    guidance_scale_2: float | None = _guidance_field("low-noise")
    shift: float = Field(5.0, ge=1.0, le=20.0, allow_inf_nan=False, description="Flow-matching timestep shift.")
    last_image: str | None = Field(
        None,
        min_length=1,
        description="Optional last frame, for a video that ends on it; same forms and limits as `image`.",
    )
    loras: list[LoraEntry] = Field(
        default_factory=list,
        max_length=LORA_MAX,
        description='Your own LoRAs for this job only, at most 3 pairs, each `{"high": SOURCE, "low": SOURCE, '
        '"scale": 1}` (either side may be left out; `high_scale`/`low_scale` override `scale` per expert). '
        'SOURCE: a `.safetensors` name in the worker\'s LoRA folder or an http(s) URL (README, "Your own LoRAs").',
    )
    interpolate: int | None = Field(
        None,
        ge=1,
        le=INTERPOLATE_MAX,
        description="Smoother motion: k - 1 new frames between each pair of generated frames, so `frame_num` "
        "frames become (frame_num - 1) x k + 1, played at `fps` x k (same duration; 81 frames at 16 fps with 2: "
        "161 frames at 32 fps). The generated frames are kept unchanged; a scene cut is repeated, not morphed. "
        "1 turns it off. Absent: the worker's default (`WAN_DEFAULT_INTERPOLATE`, 1 unless the operator sets one).",
    )
    interpolate_model: InterpolateModel | None = Field(
        None,
        description="`rife`: the RIFE v4.26 model on the GPU (seconds). `ffmpeg`: ffmpeg's motion-compensated "
        "`minterpolate` on the CPU, slower and softer, for workers without RIFE weights. Absent: `rife` where "
        "the worker has its weights, else `ffmpeg`.",
    )
    return_base64: bool = Field(
        False,
        description="Return the MP4 inline as a data:video/mp4;base64, URI in `video_url` instead of storing it. "
        "Refused for videos over the inline cap (7 MB by default).",
    )

    @field_validator("frame_num")
    @classmethod
    def _four_n_plus_one(cls, value: int) -> int:
        if (value - 1) % 4:
            below = value - (value - 1) % 4
            nearest = [n for n in (below, below + 4) if FRAME_MIN <= n <= FRAME_MAX]
            raise ValueError(f"must be 4n+1; nearest valid: {' or '.join(map(str, nearest))}")
        return value

    def settled(
        self, default_mode: Mode = "quality", default_resolution: Resolution = "480p", default_interpolate: int = 1
    ) -> JobInput:
        """This job with its mode, the mode's defaults and its resolution filled in; InputError if a field
        breaks the mode's rules.

        The mode-dependent fields are optional in the schema because their defaults depend on the mode,
        and the mode and resolution may come from the worker (`WAN_DEFAULT_MODE`, `WAN_DEFAULT_RESOLUTION`).
        """
        mode = self.mode or default_mode
        rules = MODES[mode]
        problems = []
        low, high = rules.steps
        if self.sample_steps is not None and not low <= self.sample_steps <= high:
            problems.append(
                f"sample_steps: {self.sample_steps} is not allowed in {mode} mode, "
                f"allowed: {allowed_values('sample_steps')}"
            )
        if rules.guidance_fixed:
            for name in GUIDANCE_FIELDS:
                value = getattr(self, name)
                if value is not None and value != 1.0:
                    problems.append(
                        f"{name}: {value!r} is not allowed in {mode} mode, allowed: 1 or absent (the {mode} LoRA "
                        "was distilled to run without guidance; send mode 'quality' to use guidance)"
                    )
        if problems:
            raise InputError("; ".join(problems))
        return self.model_copy(
            update={
                "mode": mode,
                "resolution": self.resolution or default_resolution,
                "interpolate": self.interpolate if self.interpolate is not None else default_interpolate,
                "sample_steps": self.sample_steps if self.sample_steps is not None else rules.default_steps,
                **{
                    n: getattr(self, n) if getattr(self, n) is not None else rules.default_guidance
                    for n in GUIDANCE_FIELDS
                },
            }
        )


FIELD_NAMES = tuple(JobInput.model_fields)


class Phase(str, Enum):
    """The phases of a job, in order; the keys of `timings` and the `phase` of progress events."""

    FETCH_IMAGE = "fetch_image"
    TEXT_ENCODE = "text_encode"
    CONDITION_ENCODE = "condition_encode"
    DENOISE = "denoise"
    VAE_DECODE = "vae_decode"
    INTERPOLATE = "interpolate"
    ENCODE_MP4 = "encode_mp4"
    UPLOAD = "upload"


# Share of the whole job (percent) at which each phase ends, for the progress percentage.
PHASE_END_PERCENT = {
    Phase.FETCH_IMAGE: 2,
    Phase.TEXT_ENCODE: 4,
    Phase.CONDITION_ENCODE: 6,
    Phase.DENOISE: 90,
    Phase.VAE_DECODE: 95,
    Phase.INTERPOLATE: 97,
    Phase.ENCODE_MP4: 99,
    Phase.UPLOAD: 100,
}


def progress_event(phase: Phase, **detail: Any) -> dict:
    """A progress event as /status shows it while the job runs: {"phase", "percent", ...detail}.

    Denoise events carry `step`, `total_steps` and `expert`, interpolation events `done` and `total` (pairs
    of frames); their percent moves with the count.
    """
    phases = list(Phase)
    start = PHASE_END_PERCENT[phases[phases.index(phase) - 1]] if phase is not phases[0] else 0
    percent = start
    done, total = {Phase.DENOISE: ("step", "total_steps"), Phase.INTERPOLATE: ("done", "total")}.get(phase, ("", ""))
    if detail.get(total):
        percent = start + (PHASE_END_PERCENT[phase] - start) * detail[done] / detail[total]
    return {"phase": phase.value, **detail, "percent": round(percent, 1)}


class Timings(BaseModel):
    """Seconds spent in each phase of the job, and in all."""

    model_config = ConfigDict(extra="allow", frozen=True)

    fetch_image: float
    text_encode: float
    condition_encode: float
    denoise: float
    vae_decode: float
    encode_mp4: float
    upload: float
    total: float
    mode_switch: float = Field(
        0.0, description="Seconds spent putting the experts in this job's mode when it is not the worker's default."
    )
    lora_fetch: float = Field(0.0, description="Seconds spent finding, downloading and checking the job's LoRA files.")
    lora_load: float = Field(0.0, description="Seconds spent reading the job's LoRAs onto the experts.")
    interpolate: float = Field(0.0, description="Seconds spent making the interpolated frames (0 without).")


class AppliedLoraFile(BaseModel):
    """One LoRA file a job ran with."""

    model_config = ConfigDict(extra="allow", frozen=True)

    source: str = Field(description="The folder name as given, or the URL without its query string.")
    scale: float = Field(description="The strength it ran at on this expert.")
    sha256: str = Field(description="SHA-256 of the file, to tell which version ran.")
    skipped_text_encoder_keys: int = Field(
        0,
        description="Keys of the file for a text encoder (kohya's `lora_te*`), skipped: a job's LoRAs change the "
        "two experts only.",
    )


class AppliedLora(BaseModel):
    """One entry of the job's `loras` as it ran: the file on each expert it names."""

    model_config = ConfigDict(extra="allow", frozen=True)

    high: AppliedLoraFile | None = None
    low: AppliedLoraFile | None = None


class ParallelReport(BaseModel):
    """How a worker's GPUs shared the job: ranks = cfg x ulysses x ring (README, "Several GPUs per worker")."""

    model_config = ConfigDict(extra="allow", frozen=True)

    ranks: int = Field(description="Processes, one per GPU, that ran the job (1 on a single-GPU worker).")
    ulysses: int = Field(description="Ranks splitting each frame's tokens with Ulysses (all-to-all) attention.")
    ring: int = Field(description="Ranks splitting them further with ring attention.")
    cfg: int = Field(
        description="Guidance groups: 2 runs a guided step's conditional and unconditional passes on different ranks."
    )
    peak_memory_gb: list[float] | None = Field(
        None, description="Each rank's peak GPU memory during the job, GiB, rank 0 first (absent on a CPU)."
    )


class EngineReport(BaseModel):
    """How the worker ran the job (what the operator's settings and the GPU chose)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    quantization: str = Field(description="`fp8`, `int8` or `none` (bf16/fp32 experts).")
    memory_plan: str = Field(description="`resident`, `swap` or `offload`.")
    attention: str = Field(description="The attention backend used.")
    compiled: bool = Field(description="Whether the transformer blocks ran compiled.")
    step_cache: str = Field(description="The step cache that ran (`none` when off or in turbo mode).")
    text_cache_hits: int = Field(
        description="How many of the job's texts (prompt, negative prompt) came from the cache."
    )
    parallel: ParallelReport | None = Field(
        None, description="How the worker's GPUs shared the job: `{ranks, ulysses, ring, cfg, peak_memory_gb}`."
    )


class ModelRevision(BaseModel):
    """Which copy of the weights the worker serves, from the copy's provenance file (`builder/fetch_weights.py`
    writes it) or, in a Hugging Face cache (RunPod's model cache), the snapshot's folder names."""

    model_config = ConfigDict(extra="allow", frozen=True)

    repo: str | None = Field(None, description="The hub repository the weights came from.")
    commit: str | None = Field(None, description="Its commit (the snapshot's hash).")
    dtype: str | None = Field(None, description="`bf16` (our converted copy), `as-published`, or the tiny model's.")
    date: str | None = Field(None, description="When the copy was made (ISO 8601, UTC).")


class JobOutput(BaseModel):
    """What a finished job returns as its `output`.

    `extra="allow"`: a client reading a newer worker's answer keeps the fields it does not know.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    video_url: str = Field(
        description="The MP4: a presigned (or `BUCKET_PUBLIC_URL`) https URL in the bucket, a `file://` URL "
        "on the worker when no bucket is set, or a `data:video/mp4;base64,` URI with `return_base64`."
    )
    video_url_expires_at: str | None = Field(
        None, description="When a presigned `video_url` stops working (ISO 8601, UTC); absent otherwise."
    )
    generation_time: float = Field(description="Seconds the whole job took on the worker (same as `timings.total`).")
    video_size_mb: float = Field(description="Size of the MP4 in MiB.")
    resolution: Resolution = Field(description="The job's `resolution`.")
    mode: Mode = Field("quality", description="The mode the job ran in.")
    sample_steps: int = Field(description="The job's `sample_steps`.")
    frame_num: int = Field(description="Frames generated (the job's `frame_num`).")
    interpolate: int | None = Field(None, description="The interpolation factor the video was made with (1: none).")
    interpolate_model: InterpolateModel | None = Field(
        None, description="`rife` or `ffmpeg`: what made the new frames; absent when `interpolate` is 1."
    )
    frames_in_video: int | None = Field(None, description="Frames in the MP4: (frame_num - 1) x interpolate + 1.")
    width: int = Field(description="Video width in pixels (the image's aspect ratio at the resolution's area).")
    height: int = Field(description="Video height in pixels.")
    fps: int = Field(description="Playback rate of the MP4: the job's `fps` x `interpolate`.")
    seed: int = Field(description="The seed used; send it back to get the same video again.")
    model: str = Field(description="The model the worker loaded (`WAN_MODEL`).")
    model_revision: ModelRevision | None = Field(
        None,
        description="Which copy of the weights ran: `repo`, `commit`, `dtype`, `date` (each absent when unknown); "
        "absent for a folder with no provenance.",
    )
    storage: Literal["s3", "local", "inline"] = Field(
        description="Where `video_url` points: the bucket, the worker's disk, or inline."
    )
    timings: Timings = Field(
        description="Seconds per phase: "
        + ", ".join(f"`{p.value}`" + (" (0 without)" if p is Phase.INTERPOLATE else "") for p in Phase)
        + ", `mode_switch` (0 in the worker's default mode), `lora_fetch` and `lora_load` (0 without LoRAs), "
        "and `total`."
    )
    loras: list[AppliedLora] = Field(
        default_factory=list,
        description='The job\'s LoRAs as they ran, in order: `{"high": {source, scale, sha256, '
        'skipped_text_encoder_keys}, "low": ...}` per entry (empty without LoRAs).',
    )
    engine: EngineReport | None = Field(
        None,
        description="How the worker ran it: `quantization`, `memory_plan`, `attention`, `compiled`, `step_cache`, "
        "`text_cache_hits`, `parallel` (`{ranks, ulysses, ring, cfg}`: how its GPUs shared the job, with each "
        "rank's `peak_memory_gb` on GPUs).",
    )

    def to_json(self) -> dict:
        """The output as the job returns it (fields without a value are left out)."""
        return self.model_dump(mode="json", exclude_none=True)


def output_markdown_table() -> str:
    """The README's output table, generated from `JobOutput`."""
    lines = ["| field | type | description |", "|---|---|---|"]
    for name, info in JobOutput.model_fields.items():
        annotation = info.annotation
        literal = [a for a in (annotation, *get_args(annotation)) if get_origin(a) is Literal]
        if literal:
            kind = " or ".join(f'`"{v}"`' for v in get_args(literal[0]))
            kind += " or absent" if annotation is not literal[0] else ""
        elif annotation == int | None:
            kind = "integer or absent"
        elif annotation == str | None:
            kind = "string or absent"
        else:
            kinds = {
                str: "string",
                int: "integer",
                float: "number",
                Timings: "object",
                EngineReport | None: "object",
                ModelRevision | None: "object or absent",
            }
            kind = kinds.get(annotation, "list of objects")
        lines.append(f"| `{name}` | {kind} | {info.description} |")
    return "\n".join(lines)


def allowed_values(name: str, model: type[BaseModel] = JobInput) -> str:
    """Describe what a field accepts, from its annotation and constraints."""
    info = model.model_fields[name]
    annotation = info.annotation
    if get_origin(annotation) in (Union, UnionType) and type(None) in get_args(annotation):  # X | None
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(v) for v in get_args(annotation))
    if model is LoraEntry and name in LORA_SIDES:
        return LORA_SOURCE_FORMS
    if name == "loras":
        return f"a list of at most {LORA_MAX} objects {{{', '.join(LORA_FIELD_NAMES)}}}, each naming high, low or both"
    bounds = {type(m).__name__: m for m in info.metadata}
    kind = {int: "integer", float: "number", bool: "true or false"}.get(annotation)
    kind = kind or {int | None: "integer", float | None: "number"}.get(annotation)
    if name == "sample_steps":
        return " or ".join(f"integer from {r.steps[0]} to {r.steps[1]} ({m})" for m, r in MODES.items())
    if kind in ("integer", "number") and "Ge" in bounds and "Le" in bounds:
        text = f"{kind} from {bounds['Ge'].ge} to {bounds['Le'].le}"
        if name == "frame_num":
            text += " of the form 4n+1 (17, 21, ..., 81, ..., 161)"
        return text
    if kind:
        return kind
    if name in ("image", "last_image"):
        return IMAGE_FORMS
    return f"a string of at most {MAX_PROMPT_CHARS} characters"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _located(loc: tuple) -> tuple[str, type[BaseModel], str | None]:
    """The error's field as the caller writes it (`loras[1].scale`), the model it belongs to, its own name."""
    shown, model, field_name = "", JobInput, None
    for part in loc:
        if isinstance(part, int):
            shown += f"[{part}]"
            model, field_name = LoraEntry, None
        else:
            shown += f".{part}" if shown else str(part)
            field_name = str(part)
    return shown or "input", model, field_name


def _message(error: dict) -> str:
    name, model, field_name = _located(error.get("loc") or ())
    kind = error["type"]
    fields = LORA_FIELD_NAMES if model is LoraEntry else FIELD_NAMES
    if kind == "extra_forbidden":
        return f"{name}: unknown field, allowed fields: {' '.join(fields)}"
    if field_name is None or field_name not in model.model_fields:  # a whole entry of `loras`
        allowed = f"an object {{{', '.join(LORA_FIELD_NAMES)}}} naming high, low or both"
    else:
        allowed = allowed_values(field_name, model)
    if kind == "missing":
        return f"{name}: required, give {allowed}"
    problem = error["msg"].removeprefix("Value error, ")
    return f"{name}: {_shown(error.get('input'))} is not allowed ({problem}), allowed: {allowed}"


def parse_job_input(
    raw: Any, default_mode: Mode = "quality", default_resolution: Resolution = "480p", default_interpolate: int = 1
) -> JobInput:
    """Validate a job's `input` and settle its mode's defaults (see `JobInput.settled`).

    Raises InputError naming every bad field ("field: problem" joined by "; ").
    """
    return validate_job_input(raw).settled(default_mode, default_resolution, default_interpolate)


def validate_job_input(raw: Any) -> JobInput:
    """The schema's checks alone (no mode settled); InputError naming every bad field."""
    if not isinstance(raw, dict):
        raise InputError(f"input: must be a JSON object with at least 'image', got {type(raw).__name__}")
    try:
        return JobInput.model_validate(raw)
    except ValidationError as exc:
        raise InputError("; ".join(_message(e) for e in exc.errors())) from None


def _default_text(name: str) -> str:
    info = JobInput.model_fields[name]
    if info.is_required():
        return "required"
    if name == "negative_prompt":
        return "Wan2.2 default"
    if name == "mode":
        return "worker's (`quality`)"
    if name == "resolution":
        return "worker's (`480p`)"
    if name == "interpolate":
        return "worker's (`1`)"
    if name == "interpolate_model":
        return "`rife` if the worker has it, else `ffmpeg`"
    if name == "loras":
        return "none"
    if name == "sample_steps":
        return " / ".join(f"`{r.default_steps}` ({m})" for m, r in MODES.items())
    if name in GUIDANCE_FIELDS:
        return " / ".join(f"`{r.default_guidance}` ({m})" for m, r in MODES.items())
    if info.default is None:
        return "none" if name != "seed" else "random"
    if isinstance(info.default, bool):
        return f"`{str(info.default).lower()}`"
    return f"`{info.default!r}`".replace("'", '"') if isinstance(info.default, str) else f"`{info.default}`"


def markdown_table() -> str:
    """The README's input table, generated from `JobInput`."""
    lines = ["| field | default | allowed | description |", "|---|---|---|---|"]
    for name, info in JobInput.model_fields.items():
        lines.append(f"| `{name}` | {_default_text(name)} | {allowed_values(name)} | {info.description} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(f"Inputs:\n\n{markdown_table()}\n\nOutputs:\n\n{output_markdown_table()}\n")
