"""What a Wan2.2 I2V-A14B folder's configs must say, checked before any weight is read.

diffusers loads a config that does not fit the weights with a warning at most: a `transformer/config.json`
with Wan2.1's image branch (`image_dim`, `added_kv_proj_dim`), which a revision of the hub repository once
had, gets those layers initialised at random, and the attention then attends over an empty set of image
tokens: bad videos and no error (README, "Deploy"). So the worker refuses any config that is not this
model's, naming the file, the field, the value found and the value expected.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ModelConfigError

PIPELINE_CLASS = "WanImageToVideoPipeline"
EXPERT_CLASS = "WanTransformer3DModel"
EXPERTS = ("transformer", "transformer_2")
IN_CHANNELS = 36  # 16 noise + 4 mask + 16 first/last-frame latents
# Wan2.1's image branch (CLIP image tokens through extra key/value projections): Wan2.2 I2V-A14B has none.
ABSENT_FIELDS = ("image_dim", "added_kv_proj_dim")


def check_model_configs(path: Path) -> None:
    """Raise ModelConfigError unless `path`'s configs are those of a two-expert Wan2.2 I2V-A14B pipeline."""
    problems = []
    index = _read(path, "model_index.json")
    if index.get("_class_name") != PIPELINE_CLASS:
        problems.append(_wrong("model_index.json", "_class_name", index.get("_class_name"), repr(PIPELINE_CLASS)))
    ratio = index.get("boundary_ratio")
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0 < ratio < 1:
        found = "missing" if "boundary_ratio" not in index else repr(ratio)
        problems.append(
            f"model_index.json: boundary_ratio is {found}; expected a number between 0 and 1 (0.9 for "
            "Wan2.2 I2V-A14B: where the low-noise expert takes over)"
        )
    if index.get("expand_timesteps"):
        problems.append(_wrong("model_index.json", "expand_timesteps", index["expand_timesteps"], "false or absent"))
    configs = {name: _read(path, f"{name}/config.json") for name in EXPERTS}
    for name, config in configs.items():
        file = f"{name}/config.json"
        if config.get("_class_name") != EXPERT_CLASS:
            problems.append(_wrong(file, "_class_name", config.get("_class_name"), repr(EXPERT_CLASS)))
        for field in ABSENT_FIELDS:
            if config.get(field) is not None:
                problems.append(_wrong(file, field, config[field], "null (Wan2.1's image branch; Wan2.2 has none)"))
        if config.get("in_channels") != IN_CHANNELS:
            problems.append(_wrong(file, "in_channels", config.get("in_channels"), str(IN_CHANNELS)))
    high, low = configs.values()
    for field in sorted({*high, *low}):
        if not field.startswith("_") and high.get(field) != low.get(field):
            problems.append(
                f"transformer/config.json and transformer_2/config.json differ in {field}: {high.get(field)!r} "
                f"and {low.get(field)!r}; expected the same value (the two experts share one architecture)"
            )
    if problems:
        raise ModelConfigError(
            f"{path} is not a Wan2.2 I2V-A14B pipeline diffusers can load correctly: {'; '.join(problems)}. "
            'Use a copy of Wan-AI/Wan2.2-I2V-A14B-Diffusers at a checked revision (README, "Deploy").'
        )


def _read(path: Path, name: str) -> dict:
    try:
        config = json.loads((path / name).read_text())
    except (OSError, ValueError) as exc:
        raise ModelConfigError(f"{path / name}: unreadable ({exc})") from None
    if not isinstance(config, dict):
        raise ModelConfigError(f"{path / name}: not a JSON object")
    return config


def _wrong(file: str, field: str, found, expected: str) -> str:
    return f"{file}: {field} is {json.dumps(found)}; expected {expected}"
