"""Where the model weights are: a diffusers folder on local disk, found and checked without any download."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import ModelNotFoundError
from .safetensors_layout import LayoutError, check_layout

log = logging.getLogger(__name__)

RUNPOD_CACHE = Path("/runpod-volume/huggingface-cache/hub")  # where RunPod puts an endpoint's cached model
VOLUME_MODELS = Path("/runpod-volume/models")  # a network volume's model folders (fetch_weights.py --dest)
BAKED = Path("/models/wan")  # where the Dockerfile's build bakes the weights
PROVENANCE = "provenance.json"  # where a copy came from, written beside model_index.json by builder/
BAKE = (
    "Give the endpoint the model in RunPod's model cache, copy it to a network volume "
    "(`python builder/fetch_weights.py --dest /runpod-volume/models/Wan2.2-I2V-A14B-Diffusers`), or bake it "
    "into the image (docker build --build-arg WAN_MODEL_ID=...); for a CPU test `python builder/tiny_model.py "
    "DIR` and WAN_MODEL=DIR."
)

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
    """What a diffusers Wan2.2 I2V folder lacks, or holds broken; empty when complete.

    Besides each component's files, every shard its `*.safetensors.index.json` names must be there, and
    every weight file must pass the safetensors layout check (a copy cut short fails here, at once,
    rather than as an obscure error half-way through loading 69 GB or more)."""
    missing = [] if (path / "model_index.json").is_file() else ["model_index.json"]
    for component, patterns in REQUIRED_COMPONENTS.items():
        for pattern in patterns:
            if not any((path / component).glob(pattern)):
                missing.append(f"{component}/{pattern}")
        missing += _broken_weights(path / component)
    return missing


def _broken_weights(folder: Path) -> list[str]:
    problems = []
    for index in folder.glob("*.safetensors.index.json"):
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            problems.append(f"{folder.name}/{index.name} (unreadable)")
            continue
        problems += [f"{folder.name}/{shard}" for shard in sorted(shards) if not (folder / shard).is_file()]
    for weights, problem in broken_files(folder):
        problems.append(f"{folder.name}/{weights.name} ({problem})")
    return problems


def broken_files(folder: Path) -> list[tuple[Path, str]]:
    """The weight files of `folder` (searched recursively) that fail the safetensors layout check, and why."""
    broken = []
    for weights in sorted(folder.rglob("*.safetensors")):
        try:
            check_layout(weights)
        except LayoutError as exc:
            broken.append((weights, str(exc)))
    return broken


@dataclass(frozen=True)
class ModelPlaces:
    """Where a hub id's weights may already be on disk, looked at in this order after an explicit directory,
    and which commit of them is wanted."""

    runpod_cache: Path = RUNPOD_CACHE  # WAN_RUNPOD_CACHE: RunPod's cached models (an endpoint's "model" setting)
    volume: Path | None = None  # WAN_VOLUME_MODEL; default /runpod-volume/models/<repo name>
    baked: Path = BAKED  # WAN_BAKED_MODEL: where the image's build put them
    local_cache: bool = True  # the local Hugging Face cache (HF_HOME)
    revision: str | None = None  # WAN_MODEL_REVISION: the commit (40 hex digits) to serve; None: any

    def volume_folder(self, repo_id: str) -> Path:
        return self.volume if self.volume is not None else VOLUME_MODELS / repo_id.split("/")[-1]


@dataclass(frozen=True)
class Revision:
    """Where a copy of the weights came from: the provenance file `builder/fetch_weights.py` writes, or for a
    Hugging Face cache snapshot (RunPod's model cache, the local cache) its folder names. Unknown fields are None."""

    repo: str | None = None
    commit: str | None = None
    dtype: str | None = None  # "bf16" (our converted copy), "as-published" (fp32 for this model), "fp32" (tiny)
    date: str | None = None  # when the copy was made (ISO 8601, UTC)

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        if self.repo is None and self.commit is None:
            return "unknown (no provenance.json; not a Hugging Face cache snapshot)"
        return f"{self.repo or '?'} at {self.commit or 'an unknown commit'}, {self.dtype or 'dtype unknown'}" + (
            f", copied {self.date}" if self.date else ""
        )


@dataclass(frozen=True)
class FoundModel:
    path: Path
    source: (
        str  # "directory", "RunPod model cache", "network volume", "baked into the image", "local Hugging Face cache"
    )
    revision: Revision = Revision()


def is_hub_id(model: str) -> bool:
    return model.count("/") == 1 and not model.startswith((".", "/", "~")) and all(model.split("/"))


def read_revision(path: Path) -> Revision:
    """The provenance of the copy in `path`; ModelNotFoundError when its provenance file is unreadable. In a
    Hugging Face cache snapshot the folder names give the repository and the commit."""
    record, facts = path / PROVENANCE, {}
    if record.is_file():
        try:
            facts = json.loads(record.read_text())
            if not isinstance(facts, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(f"{record}: unreadable ({exc}); write it again with builder/fetch_weights.py")
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        repo = path.parent.parent.name.removeprefix("models--").replace("--", "/")
        facts = {"dtype": "as-published", **facts, "repo": repo, "commit": path.name}
    return Revision(**{name: _text(facts.get(name)) for name in ("repo", "commit", "dtype", "date")})


def _text(value) -> str | None:
    return str(value) if value is not None else None


def revision_matches(wanted: str | None, revision: Revision) -> str | None:
    """None when `revision` is the wanted commit (or nothing is wanted); else why not."""
    if wanted is None:
        return None
    if revision.commit is None:
        return f"its commit is unknown (no {PROVENANCE}), and WAN_MODEL_REVISION={wanted} asks for one"
    if revision.commit != wanted:
        return f"it holds commit {revision.commit}, WAN_MODEL_REVISION={wanted}"
    return None


def runpod_snapshot(root: Path, repo_id: str, revision: str | None = None) -> Path | str:
    """The snapshot RunPod's model cache holds for `repo_id`, or why there is none.

    RunPod documents the layout `models--ORG--NAME/snapshots/<hash>/` and no more: `refs/main` names the
    snapshot when it is there; without it the one complete snapshot is taken, or the newest complete one
    when there are several (incomplete ones are logged and skipped). `revision` picks a snapshot by hash.
    """
    folder = root / f"models--{repo_id.replace('/', '--')}"
    if not folder.is_dir():
        return f"no {folder.name} in {root}"
    snapshots = folder / "snapshots"
    names = sorted(p.name for p in snapshots.iterdir() if p.is_dir()) if snapshots.is_dir() else []
    if revision is not None:
        if revision not in names:
            return f"{folder}: no snapshots/{revision} for WAN_MODEL_REVISION (have: {', '.join(names) or 'none'})"
        return snapshots / revision
    ref = folder / "refs" / "main"
    if ref.is_file():
        commit = ref.read_text().strip()
        snapshot = snapshots / commit
        if not commit or "/" in commit or not snapshot.is_dir():
            return f"{folder}: refs/main names {commit!r}, but snapshots/{commit} is missing"
        return snapshot
    complete, skipped = [], []
    for name in names:
        missing = missing_parts(snapshots / name)
        if missing:
            skipped.append(f"snapshots/{name} lacks {', '.join(missing)}")
        else:
            complete.append(snapshots / name)
    for reason in skipped:
        log.warning("RunPod model cache %s: %s; skipped", folder, reason)
    if not complete:
        return f"{folder}: no refs/main and no complete snapshot ({'; '.join(skipped) or 'snapshots/ is empty'})"
    newest = max(complete, key=lambda p: (p.stat().st_mtime, p.name))
    log.info(
        "RunPod model cache %s: no refs/main; using snapshot %s (%s)",
        folder,
        newest.name,
        "the only complete one" if len(complete) == 1 else f"the newest of {len(complete)} complete ones",
    )
    return newest


def find_model(model: str, places: ModelPlaces | None = None) -> FoundModel:
    """A complete local copy of `model`, never downloading: WAN_MODEL itself when it is a directory (it
    must be complete: no silent fallback); for a hub id, in order, RunPod's model cache, a network volume
    folder, the image's baked folder, the local Hugging Face cache. With WAN_MODEL_REVISION only a copy of
    that commit is taken. ModelNotFoundError lists each place and what it lacked."""
    places = places or ModelPlaces()
    candidate = Path(model).expanduser()
    if candidate.is_dir() or not is_hub_id(model):
        if not candidate.is_dir():
            raise ModelNotFoundError(f"WAN_MODEL={model!r}: no such directory. {BAKE}")
        missing = missing_parts(candidate)
        if missing:
            raise ModelNotFoundError(
                f"WAN_MODEL={model!r} (directory {candidate.resolve()}) is not a complete Wan2.2 I2V diffusers "
                f"pipeline; missing: {', '.join(missing)}. {BAKE}"
            )
        revision = read_revision(candidate)
        wrong = revision_matches(places.revision, revision)
        if wrong:
            raise ModelNotFoundError(f"WAN_MODEL={model!r} (directory {candidate.resolve()}): {wrong}")
        return FoundModel(candidate, "directory", revision)
    looked = []
    for source, path in _hub_places(model, places):
        if isinstance(path, str):
            looked.append(f"{source}: {path}")
            continue
        missing = missing_parts(path)
        if missing:
            looked.append(f"{source}: {path} is incomplete, missing {', '.join(missing)}")
            continue
        revision = read_revision(path)
        wrong = revision_matches(places.revision, revision)
        if wrong:
            looked.append(f"{source}: {path}: {wrong}")
            continue
        return FoundModel(path, source, revision)
    raise ModelNotFoundError(
        f"WAN_MODEL={model!r}: no complete copy on this machine, and nothing is downloaded at run time. "
        f"Looked at, in order: {'; '.join(looked)}. {BAKE}"
    )


def _hub_places(repo_id: str, places: ModelPlaces):
    """(source, folder or why there is none) for each place a hub id may be, in order; lazily."""
    yield "RunPod model cache", runpod_snapshot(places.runpod_cache, repo_id, places.revision)
    volume = places.volume_folder(repo_id)
    yield "network volume", volume if volume.is_dir() else f"no folder {volume}"
    yield "baked into the image", places.baked if places.baked.is_dir() else f"no folder {places.baked}"
    if places.local_cache:
        yield "local Hugging Face cache", _local_snapshot(repo_id, places.revision)


def _local_snapshot(repo_id: str, revision: str | None) -> Path | str:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id=repo_id, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        return f"no snapshot{f' of {revision}' if revision else ''} in {constants.HF_HUB_CACHE}"


def resolve_model(model: str, places: ModelPlaces | None = None) -> Path:
    return find_model(model, places).path


def places(configured: Path | None, model_path: Path | None, model_places: ModelPlaces | None = None) -> list[Path]:
    """Where the pair is looked for, in order: WAN_TURBO_LORA; the model folder's turbo-lora/ (wherever the
    model was found); then, as for the model, a network volume's models/turbo-lora and the baked folder's."""
    model_places = model_places or ModelPlaces()
    found = [configured] if configured else []
    if model_path is not None:
        found.append(model_path / FOLDER_IN_MODEL)
    for folder in (VOLUME_MODELS / FOLDER_IN_MODEL, model_places.baked / FOLDER_IN_MODEL):
        if folder not in found and folder.is_dir():
            found.append(folder)
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


def find_pair(
    configured: Path | None, model_path: Path | None, model_places: ModelPlaces | None = None
) -> tuple[dict[str, Path] | None, list[str]]:
    """The first place holding a pair, and what each place looked at lacked."""
    misses = []
    for folder in places(configured, model_path, model_places):
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
        "`docker build --build-arg WAN_TURBO_LORA_FILES=...` or `python builder/fetch_weights.py --dest MODEL_FOLDER` "
        "(it fetches the pair unless --turbo-lora-files is empty)."
    )
