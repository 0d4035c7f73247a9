"""The worker's settings, read once from the environment at cold start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..bucket import BucketSettings
from ..env import env_float, env_int
from ..errors import SettingsError
from .netguard import UrlPolicy

DEFAULT_MODEL = "Wan-AI/Wan2.2-I2V-A14B-Diffusers"


@dataclass(frozen=True)
class Settings:
    model: str = DEFAULT_MODEL
    device: str | None = None
    placement: str = "auto"
    output_dir: Path = Path("outputs")
    base64_max_mb: float = 7.0
    video_crf: int = 18
    bucket: BucketSettings | None = None
    url_policy: UrlPolicy = UrlPolicy()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        crf = env_int(env, "WAN_VIDEO_CRF", cls.video_crf)
        if not 0 <= crf <= 51:
            raise SettingsError(f"WAN_VIDEO_CRF={crf}: allowed 0..51")
        return cls(
            model=env.get("WAN_MODEL") or DEFAULT_MODEL,
            device=env.get("WAN_DEVICE") or None,
            placement=env.get("WAN_PLACEMENT", "auto"),
            output_dir=Path(env.get("WAN_OUTPUT_DIR") or "outputs"),
            base64_max_mb=env_float(env, "WAN_BASE64_MAX_MB", cls.base64_max_mb),
            video_crf=crf,
            bucket=BucketSettings.from_env(env),
            url_policy=_url_policy(env),
        )


def _url_policy(env: Mapping[str, str]) -> UrlPolicy:
    try:
        return UrlPolicy.from_allow_list(env.get("WAN_URL_ALLOW", ""))
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
