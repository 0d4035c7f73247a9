"""Where the model weights are: a diffusers folder on local disk, found and checked without any download."""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelNotFoundError

# The turbo LoRA pair: a folder holding one *high_noise*.safetensors and one *low_noise*.safetensors
# file, named by WAN_TURBO_LORA or, by default, this folder inside the model folder (where builder/ bakes it).
FOLDER_IN_MODEL = "turbo-lora"
SIDES = ("high_noise", "low_noise")

# Component folders of the diffusers layout and the files each must hold.
REQUIRED_COMPONENTS = {
    "transformer": ("config.json", "*.safetensors"),
    "transformer_2": ("config.json", "*.safetensors"),
    "text_encoder": ("config.json", "*.safetensors"),
    "vae": ("config.json", "*.safetensors"),
    "tokenizer": ("tokenizer_config.json",),
    "scheduler": ("scheduler_config.json",),
}


def missing_parts(path: Path) -> list[str]:
    """What a diffusers Wan2.2 I2V folder lacks; empty when complete."""
    missing = [] if (path / "model_index.json").is_file() else ["model_index.json"]
    for component, patterns in REQUIRED_COMPONENTS.items():
        for pattern in patterns:
            if not any((path / component).glob(pattern)):
                missing.append(f"{component}/{pattern}")
    return missing


def resolve_model(model: str) -> Path:
    """A local diffusers folder for `model`: a directory, or a hub id already in the local HF cache.

    Never downloads. Raises ModelNotFoundError saying what was looked for and how to bake it.
    """
    bake = (
        "Bake the weights into the image (docker build --build-arg WAN_MODEL_ID=...), run "
        "`python builder/fetch_weights.py --model Wan-AI/Wan2.2-I2V-A14B-Diffusers --dest DIR` where a "
        "network is available, or for a CPU test `python builder/tiny_model.py DIR`; then set WAN_MODEL=DIR."
    )
    candidate = Path(model).expanduser()
    if candidate.is_dir():
        path, where = candidate, f"directory {candidate.resolve()}"
    elif "/" in model and not model.startswith((".", "/", "~")) and model.count("/") == 1:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            path = Path(snapshot_download(repo_id=model, local_files_only=True))
        except (LocalEntryNotFoundError, FileNotFoundError, OSError):
            raise ModelNotFoundError(
                f"WAN_MODEL={model!r}: not a directory, and hub id {model!r} has no snapshot in the local "
                f"Hugging Face cache ({constants.HF_HUB_CACHE}). Nothing is downloaded at run time. {bake}"
            ) from None
        where = f"cached snapshot {path}"
    else:
        raise ModelNotFoundError(f"WAN_MODEL={model!r}: no such directory. {bake}")
    missing = missing_parts(path)
    if missing:
        raise ModelNotFoundError(
            f"WAN_MODEL={model!r} ({where}) is not a complete Wan2.2 I2V diffusers pipeline; missing: "
            f"{', '.join(missing)}. {bake}"
        )
    return path


def places(configured: Path | None, model_path: Path | None) -> list[Path]:
    """Where the pair is looked for, in order: WAN_TURBO_LORA, then MODEL/turbo-lora (where builder/ bakes it)."""
    found = [configured] if configured else []
    if model_path is not None:
        found.append(model_path / FOLDER_IN_MODEL)
    return found


def pair_files(folder: Path) -> dict[str, Path] | str:
    """{'high_noise': file, 'low_noise': file} in `folder`, or why the folder does not hold a pair."""
    if not folder.is_dir():
        return f"{folder}: no such folder"
    files = {}
    for side in SIDES:
        matches = sorted(p for p in folder.glob("*.safetensors") if side in p.name)
        if len(matches) != 1:
            what = "no" if not matches else f"{len(matches)}"
            return f"{folder}: {what} *{side}*.safetensors file{'s' if len(matches) > 1 else ''} (need exactly one)"
        files[side] = matches[0]
    return files


def find_pair(configured: Path | None, model_path: Path | None) -> tuple[dict[str, Path] | None, list[str]]:
    """The first place holding a pair, and what each place looked at lacked."""
    misses = []
    for folder in places(configured, model_path):
        found = pair_files(folder)
        if isinstance(found, dict):
            return found, misses
        misses.append(found)
        if configured and folder == configured:
            break  # a folder the operator named must hold the pair: never fall back silently
    return None, misses


def missing_message(misses: list[str]) -> str:
    looked = "; ".join(misses) or "nowhere (no model folder)"
    return (
        "turbo mode needs the 4-step LoRA pair (*high_noise*.safetensors and *low_noise*.safetensors) in "
        f"WAN_TURBO_LORA or in the model folder's {FOLDER_IN_MODEL}/; looked at: {looked}. Bake it with "
        "`docker build --build-arg WAN_TURBO_LORA_FILES=...` or `python builder/fetch_weights.py --turbo-lora`."
    )
