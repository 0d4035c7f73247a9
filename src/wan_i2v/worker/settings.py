"""The worker's settings, read once from the environment at cold start."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..bucket import BucketSettings
from ..env import env_float, env_int
from ..errors import SettingsError
from ..schema import INTERPOLATE_MAX, RESOLUTIONS
from .netguard import UrlPolicy
from .weights import BAKED, RUNPOD_CACHE, ModelPlaces

DEFAULT_MODEL = "Wan-AI/Wan2.2-I2V-A14B-Diffusers"
VOLUME = Path("/runpod-volume")  # where RunPod mounts an endpoint's network volume
VOLUME_LORA_DIR = VOLUME / "loras"
IMAGE_CACHE = Path("/cache")  # made by the Dockerfile
GB = 1024**3
ON_OFF_AUTO = ("auto", "on", "off")
# The allowed values of the engine's settings; the modules that act on them import these.
QUANT_CHOICES = ("auto", "fp8", "int8", "none")
COMPILE_CHOICES = ("auto", "off", "dynamic", "static")
PLANS = ("resident", "swap", "offload")
FAULTS = (
    "compile",
    "quantise",
    "attention",
    "place",
    "fusion",
    "interpolation",
)  # WAN_FAULTS: the cold-start levers (levers.py)


@dataclass(frozen=True)
class ParallelOptions:
    """One video on several GPUs (README, "Several GPUs per worker"); each field is a WAN_* variable."""

    gpus: int | None = None  # WAN_GPUS: ranks per worker; unset: every visible GPU (1 on a machine without one)
    cfg: str = "auto"  # WAN_CFG_PARALLEL: auto (on for an even count when the default mode is quality) | on | off
    context: str = "auto"  # WAN_CONTEXT_PARALLEL: auto (Ulysses as far as the heads divide, ring for the rest)
    timeout_s: float = 120.0  # WAN_RANK_TIMEOUT_S: the longest any rank waits for another inside a job

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ParallelOptions:
        gpus = env_int(env, "WAN_GPUS", 0) if env.get("WAN_GPUS") else None
        if gpus is not None and not 1 <= gpus <= 64:
            raise SettingsError(f"WAN_GPUS={gpus}: allowed 1..64, or unset for every visible GPU")
        timeout = env_float(env, "WAN_RANK_TIMEOUT_S", cls.timeout_s)
        if not 5 <= timeout <= 3600:
            raise SettingsError(f"WAN_RANK_TIMEOUT_S={timeout}: allowed 5..3600 seconds")
        return cls(
            gpus=gpus,
            cfg=_choice(env, "WAN_CFG_PARALLEL", "auto", ON_OFF_AUTO),
            context=_choice(env, "WAN_CONTEXT_PARALLEL", "auto", ("auto", "ulysses", "ring")),
            timeout_s=timeout,
        )


@dataclass(frozen=True)
class EngineOptions:
    """How the model is loaded and run; each field is a WAN_* variable (README, "Settings")."""

    device: str | None = None  # WAN_DEVICE: cuda, cuda:1, cpu; default: cuda when there is one
    default_mode: str = "quality"  # WAN_DEFAULT_MODE: the mode of jobs that name none (fused at load)
    turbo_lora: Path | None = None  # WAN_TURBO_LORA: folder holding the turbo pair; default MODEL/turbo-lora
    quant: str = "auto"  # WAN_QUANT: auto | fp8 | int8 | none
    compile: str = "auto"  # WAN_COMPILE: auto | off | dynamic | static
    compile_cache: Path | None = None  # WAN_COMPILE_CACHE: directory kept across cold starts
    prepared_cache: Path | None = None  # WAN_PREPARED_CACHE: prepared experts kept across cold starts; None: off
    prepared_cache_keep: int = 2  # WAN_PREPARED_CACHE_KEEP: entries (fingerprints) kept, least recently used go
    memory_plan: str = "auto"  # WAN_MEMORY_PLAN: auto | resident | swap | offload
    attention: str = "auto"  # WAN_ATTENTION: auto, or a diffusers backend name (checked at cold start)
    step_cache: str = "none"  # WAN_STEP_CACHE: none | fbc:THRESHOLD (quality mode only)
    vae_dtype: str = "auto"  # WAN_VAE_DTYPE: auto (bf16 on a GPU) | bf16 | fp32
    prompt_cache: int = 64  # WAN_PROMPT_CACHE: text embeddings kept (0 turns the cache off)
    warmup: str = "auto"  # WAN_WARMUP: auto (on when compiling) | on | off
    faults: tuple[str, ...] = ()  # WAN_FAULTS: levers whose first attempt fails at cold start (levers.py)
    model_places: ModelPlaces = ModelPlaces()  # WAN_RUNPOD_CACHE, WAN_VOLUME_MODEL, WAN_BAKED_MODEL, WAN_MODEL_REVISION
    parallel: ParallelOptions = (
        ParallelOptions()
    )  # WAN_GPUS, WAN_CFG_PARALLEL, WAN_CONTEXT_PARALLEL, WAN_RANK_TIMEOUT_S

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EngineOptions:
        def choice(name: str, default: str, allowed: tuple[str, ...]) -> str:
            return _choice(env, name, default, allowed)

        step_cache = env.get("WAN_STEP_CACHE") or "none"
        parse_step_cache(step_cache)
        entries = env_int(env, "WAN_PROMPT_CACHE", cls.prompt_cache)
        if entries < 0:
            raise SettingsError(f"WAN_PROMPT_CACHE={entries}: allowed 0 or more")
        keep = env_int(env, "WAN_PREPARED_CACHE_KEEP", cls.prepared_cache_keep)
        if keep < 1:
            raise SettingsError(f"WAN_PREPARED_CACHE_KEEP={keep}: allowed 1 or more")
        return cls(
            device=env.get("WAN_DEVICE") or None,
            default_mode=choice("WAN_DEFAULT_MODE", "quality", ("quality", "turbo")),
            turbo_lora=Path(env["WAN_TURBO_LORA"]) if env.get("WAN_TURBO_LORA") else None,
            quant=choice("WAN_QUANT", "auto", QUANT_CHOICES),
            compile=choice("WAN_COMPILE", "auto", COMPILE_CHOICES),
            compile_cache=Path(env["WAN_COMPILE_CACHE"]) if env.get("WAN_COMPILE_CACHE") else default_compile_cache(),
            prepared_cache=prepared_cache_dir(env.get("WAN_PREPARED_CACHE") or None),
            prepared_cache_keep=keep,
            memory_plan=choice("WAN_MEMORY_PLAN", "auto", ("auto", *PLANS)),
            attention=env.get("WAN_ATTENTION") or "auto",
            step_cache=step_cache,
            vae_dtype=choice("WAN_VAE_DTYPE", "auto", ("auto", "bf16", "fp32")),
            prompt_cache=entries,
            warmup=choice("WAN_WARMUP", "auto", ON_OFF_AUTO),
            faults=parse_faults(env.get("WAN_FAULTS")),
            model_places=ModelPlaces(
                runpod_cache=Path(env.get("WAN_RUNPOD_CACHE") or RUNPOD_CACHE),
                volume=Path(env["WAN_VOLUME_MODEL"]) if env.get("WAN_VOLUME_MODEL") else None,
                baked=Path(env.get("WAN_BAKED_MODEL") or BAKED),
                revision=model_revision(env.get("WAN_MODEL_REVISION") or None),
            ),
            parallel=ParallelOptions.from_env(env),
        )


def parse_faults(value: str | None) -> tuple[str, ...]:
    """WAN_FAULTS: a comma list of cold-start levers whose first attempt is made to fail (empty: none)."""
    names = tuple(dict.fromkeys(part.strip() for part in (value or "").split(",") if part.strip()))
    unknown = [name for name in names if name not in FAULTS]
    if unknown:
        raise SettingsError(
            f"WAN_FAULTS={value!r}: unknown {', '.join(unknown)}; allowed a comma list of {', '.join(FAULTS)}"
        )
    return names


def model_revision(value: str | None) -> str | None:
    """WAN_MODEL_REVISION: a whole commit hash (a branch name would move under a running endpoint)."""
    if value is not None and not re.fullmatch(r"[0-9a-f]{40}", value):
        raise SettingsError(f"WAN_MODEL_REVISION={value!r}: allowed a commit hash of 40 hex digits, or unset (any)")
    return value


def default_compile_cache() -> Path | None:
    """Where compiled kernels are kept when WAN_COMPILE_CACHE is not set: on the network volume when there
    is one (shared by every worker and cold start), else in the image's /cache (the Dockerfile makes it)."""
    if VOLUME.is_dir():
        return VOLUME / "torch-compile"
    return IMAGE_CACHE / "torch-compile" if IMAGE_CACHE.is_dir() else None


def prepared_cache_dir(value: str | None) -> Path | None:
    """WAN_PREPARED_CACHE: a folder, or `off`. Unset: on the network volume when there is one, else off: a
    container disk starts empty at every cold start, so an entry written there would never be read again."""
    if value == "off":
        return None
    if value is not None:
        return Path(value)
    return VOLUME / "prepared-experts" if VOLUME.is_dir() else None


def parse_step_cache(value: str) -> float | None:
    """The FirstBlockCache threshold of `WAN_STEP_CACHE` (None when off)."""
    if value == "none":
        return None
    name, _, threshold = value.partition(":")
    try:
        number = float(threshold or "0.05")
    except ValueError:
        number = -1.0
    if name != "fbc" or not 0 < number < 1:
        raise SettingsError(f"WAN_STEP_CACHE={value!r}: allowed none, fbc or fbc:THRESHOLD with 0 < THRESHOLD < 1")
    return number


@dataclass(frozen=True)
class LoraSettings:
    """Where a job's LoRAs come from and how URL downloads are bounded (README, "Your own LoRAs")."""

    folder: Path | None = None  # WAN_LORA_DIR; default /runpod-volume/loras when it exists
    cache_dir: Path = Path("~/.cache/wan-i2v/loras").expanduser()  # WAN_LORA_CACHE_DIR
    cache_gb: float = 20.0  # WAN_LORA_CACHE_GB: the download cache's bound (least recently used files go)
    max_gb: float = 2.0  # WAN_LORA_MAX_GB: the largest LoRA file a URL may give
    timeout_s: float = 600.0  # WAN_LORA_TIMEOUT_S: the longest one download may take

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LoraSettings:
        if env.get("WAN_LORA_DIR"):
            folder = Path(env["WAN_LORA_DIR"])
        else:
            folder = VOLUME_LORA_DIR if VOLUME_LORA_DIR.is_dir() else None
        values = {}
        for name, field, low in (
            ("WAN_LORA_CACHE_GB", "cache_gb", 0.0),
            ("WAN_LORA_MAX_GB", "max_gb", 0.0),
            ("WAN_LORA_TIMEOUT_S", "timeout_s", 1.0),
        ):
            values[field] = env_float(env, name, getattr(cls, field))
            if not values[field] > low or values[field] != values[field] or values[field] == float("inf"):
                raise SettingsError(f"{name}={env.get(name)!r}: must be a number above {low:g}")
        cache_dir = Path(env["WAN_LORA_CACHE_DIR"]).expanduser() if env.get("WAN_LORA_CACHE_DIR") else cls.cache_dir
        return cls(folder=folder, cache_dir=cache_dir, **values)


@dataclass(frozen=True)
class InterpolationOptions:
    """The frame-interpolation stage (README, "Smooth video"); each field is a WAN_* variable."""

    weights: Path | None = None  # WAN_INTERPOLATION_MODEL: a RIFE file or a folder; default MODEL/interpolation/
    default_factor: int = 1  # WAN_DEFAULT_INTERPOLATE: the factor of jobs that name none (1..4)
    budget_gb: float = 4.0  # WAN_INTERPOLATE_BUDGET_GB: GPU memory one batch of RIFE may use, at most
    cut_ssim: float = 0.2  # WAN_INTERPOLATE_CUT: below this thumbnail SSIM a pair is a scene cut
    precision: str = "auto"  # WAN_INTERPOLATE_PRECISION: auto (fp16 on a GPU, self-checked) | fp16 | fp32

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> InterpolationOptions:
        factor = env_int(env, "WAN_DEFAULT_INTERPOLATE", cls.default_factor)
        if not 1 <= factor <= INTERPOLATE_MAX:
            raise SettingsError(f"WAN_DEFAULT_INTERPOLATE={factor}: allowed 1..{INTERPOLATE_MAX}")
        budget = env_float(env, "WAN_INTERPOLATE_BUDGET_GB", cls.budget_gb)
        if not 0 < budget < float("inf"):
            raise SettingsError(f"WAN_INTERPOLATE_BUDGET_GB={budget}: must be a number above 0")
        cut = env_float(env, "WAN_INTERPOLATE_CUT", cls.cut_ssim)
        if not 0 <= cut <= 1:
            raise SettingsError(f"WAN_INTERPOLATE_CUT={cut}: allowed 0..1 (0 turns scene-cut detection off)")
        return cls(
            weights=Path(env["WAN_INTERPOLATION_MODEL"]) if env.get("WAN_INTERPOLATION_MODEL") else None,
            default_factor=factor,
            budget_gb=budget,
            cut_ssim=cut,
            precision=_choice(env, "WAN_INTERPOLATE_PRECISION", "auto", ("auto", "fp16", "fp32")),
        )


@dataclass(frozen=True)
class Settings:
    model: str = DEFAULT_MODEL
    engine: EngineOptions = EngineOptions()
    output_dir: Path = Path("outputs")
    base64_max_mb: float = 7.0
    video_crf: int = 18
    bucket: BucketSettings | None = None
    url_policy: UrlPolicy = UrlPolicy()
    loras: LoraSettings = LoraSettings()
    default_resolution: str = "480p"  # WAN_DEFAULT_RESOLUTION: the resolution of jobs that name none
    interpolation: InterpolationOptions = InterpolationOptions()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        crf = env_int(env, "WAN_VIDEO_CRF", cls.video_crf)
        if not 0 <= crf <= 51:
            raise SettingsError(f"WAN_VIDEO_CRF={crf}: allowed 0..51")
        return cls(
            model=env.get("WAN_MODEL") or DEFAULT_MODEL,
            engine=EngineOptions.from_env(env),
            output_dir=Path(env.get("WAN_OUTPUT_DIR") or "outputs"),
            base64_max_mb=env_float(env, "WAN_BASE64_MAX_MB", cls.base64_max_mb),
            video_crf=crf,
            bucket=BucketSettings.from_env(env),
            url_policy=_url_policy(env),
            loras=LoraSettings.from_env(env),
            default_resolution=_choice(env, "WAN_DEFAULT_RESOLUTION", "480p", RESOLUTIONS),
            interpolation=InterpolationOptions.from_env(env),
        )


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = env.get(name) or default
    if value not in allowed:
        raise SettingsError(f"{name}={value!r}: allowed {', '.join(allowed)}")
    return value


def _url_policy(env: Mapping[str, str]) -> UrlPolicy:
    try:
        return UrlPolicy.from_allow_list(env.get("WAN_URL_ALLOW", ""))
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
