"""Reading numbers from environment variables, with errors that name the variable."""

from __future__ import annotations

from collections.abc import Mapping

from .errors import SettingsError


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(env.get(name) or default)
    except ValueError:
        raise SettingsError(f"{name}={env.get(name)!r}: must be an integer") from None


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        return float(env.get(name) or default)
    except ValueError:
        raise SettingsError(f"{name}={env.get(name)!r}: must be a number") from None
