"""Put the model weights in a folder, as the worker's own bf16 copy: baked into the image at build time, or onto a volume.

    python builder/fetch_weights.py --dest /models/wan                  # the hub's weights, converted to bf16
    python builder/fetch_weights.py --dest /runpod-volume/models/Wan2.2-I2V-A14B-Diffusers   # a volume
    python builder/fetch_weights.py --source DIR --dest OUT             # convert a local diffusers folder, no network
    python builder/fetch_weights.py --dtype as-published --dest DIR     # the files as published (fp32 experts)
    python builder/fetch_weights.py --verify-only --dest DIR            # check a folder, no network

Wan-AI/Wan2.2-I2V-A14B-Diffusers publishes the experts in fp32: 12 shards of about 4.9 GB each, about 57 GB
per expert, 126 GB for the whole pipeline (its text encoder is bf16 already). The worker computes in bf16,
so by default each expert shard is converted to bf16 as it arrives (one shard is held on disk and in memory
at a time): about 69 GB in all, half the bytes every cold start reads. What diffusers keeps in fp32 when it
loads these models in bf16 stays fp32 (`_keep_in_fp32_modules`: the modulation tables, the time embedder,
the cross-attention norm; transformers keeps nothing of UMT5 in fp32 at bf16). Shard names and the index
files stay as published, with the index's `total_size` updated, so diffusers loads the copy as it would the
original. `provenance.json` records the repository, the resolved commit, the dtype and the date: the worker
logs it at cold start and returns it as `model_revision` with every job.

Run again on a folder, it converts or downloads only what is missing or broken (an interrupted copy resumes):
a weight file whose safetensors layout does not check (cut short) is fetched again. The turbo LoRA pair goes
into DEST/turbo-lora/, where the worker looks for it by default (`--turbo-lora-files ''` skips it).

The RIFE v4.26 weights for frame interpolation (README, "Smooth video") go into DEST/interpolation/, where the
worker looks for them (`--rife-file ''` skips them). Published in the Hugging Face repo hzwer/RIFE as
RIFEv4.26_0921.zip at commit 01fdc7e97404120c243c3ea7b427046e5dc7643e: 22,869,906 bytes, sha256
1fa9b9cda3d9b8c3e301359e2595960902f97bf926c08598b0e9957a3f3f760e (checked; ModelTC/LightX2V's
tools/download_rife.py fetches the same zip). Its flownet.pkl (24,636,301 bytes, sha256
45c7f74156704769dc9f85cfcaf8552e1e926f9399dcfa3a553dee88fac6f53f) is taken out by its name alone, read with
torch's weights-only unpickler, checked key for key against the worker's IFNet and written as
rife-v4.26.safetensors, so the worker never unpickles at run time; DEST/interpolation/provenance.json records
where it came from, and a run that finds both matching the sha256 asked for skips it. `--rife-source` bakes a
local zip, flownet.pkl or .safetensors instead, with no network.

The folder is then checked with the worker's own rules (wan_i2v.worker.weights and model_config: complete,
every shard whole, configs of Wan2.2 I2V-A14B), so a broken copy fails the build, not the first cold start.
A gated or private repository reads its token from HF_TOKEN.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import zipfile
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

if importlib.util.find_spec("wan_i2v") is None:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from wan_i2v.errors import ModelConfigError  # noqa: E402
from wan_i2v.files import file_sha256  # noqa: E402
from wan_i2v.worker.components import fp32_parts, kept_fp32  # noqa: E402
from wan_i2v.worker.model_config import check_model_configs  # noqa: E402
from wan_i2v.worker.safetensors_layout import LayoutError, check_layout  # noqa: E402
from wan_i2v.worker.weights import (  # noqa: E402
    FOLDER_IN_MODEL,
    PROVENANCE,
    REQUIRED_COMPONENTS,
    broken_files,
    missing_parts,
    pair_files,
    read_revision,
)

MODEL = "Wan-AI/Wan2.2-I2V-A14B-Diffusers"
# The commit whose configs we checked (README, "Deploy"): no image branch, boundary_ratio 0.9.
CHECKED_REVISION = "596658fd9ca6b7b71d5057529bbf319ecbc61d74"
ALLOW_PATTERNS = ["model_index.json"] + [f"{component}/*" for component in REQUIRED_COMPONENTS]
CONVERTED = ("transformer", "transformer_2", "text_encoder")  # the large parts; the VAE is kept as published
DTYPES = ("bf16", "as-published")
# The current recommended 4-step pair for Wan2.2 I2V-A14B (README, "Turbo mode"): high-noise, low-noise.
TURBO_REPO = "lightx2v/Wan2.2-Distill-Loras"
TURBO_FILES = (
    "wan2.2_i2v_A14b_high_noise_lora_rank64_lightx2v_4step_1022.safetensors,"
    "wan2.2_i2v_A14b_low_noise_lora_rank64_lightx2v_4step_1022.safetensors"
)
# RIFE v4.26 (README, "Smooth video"), as LightX2V's tools/download_rife.py fetches it; the flownet.pkl inside
# is recorded in provenance.json, not checked: the zip's hash covers it, and a --rife-source may be another file.
RIFE_REPO = "hzwer/RIFE"
RIFE_REVISION = "01fdc7e97404120c243c3ea7b427046e5dc7643e"
RIFE_FILE = "RIFEv4.26_0921.zip"  # 22,869,906 bytes
RIFE_SHA256 = "1fa9b9cda3d9b8c3e301359e2595960902f97bf926c08598b0e9957a3f3f760e"
RIFE_MEMBER = "flownet.pkl"  # found in the zip by its base name; the __MACOSX/ shadows are not it
RIFE_MEMBER_MAX = 256 * 1024**2  # bytes; a member claiming more is not RIFE's 25 MB file
RIFE_FOLDER = "interpolation"  # the worker's MODEL/interpolation/ (interpolation.stage.FOLDER_IN_MODEL)
RIFE_BAKED = "rife-v4.26.safetensors"


# ---- the bf16 conversion -------------------------------------------------------------------------------
def fp32_modules(component: str) -> list[str]:
    """The module names whose parameters loading in bf16 keeps in fp32, for one component folder."""
    if component.startswith("transformer"):
        from diffusers import WanTransformer3DModel as model
    else:
        from transformers import UMT5EncoderModel as model
    return fp32_parts(model)


def is_converted(path: Path, keep: list[str]) -> bool:
    """Whether a shard is whole and holds no fp32 tensor but the kept ones."""
    try:
        header = check_layout(path)
    except (OSError, LayoutError):
        return False
    return all(info["dtype"] != "F32" or kept_fp32(key, keep) for key, info in header.items() if key != "__metadata__")


def convert_shard(source: Path, dest: Path, keep: list[str]) -> None:
    """Write `source`'s tensors to `dest` with fp32 ones in bf16 except the kept ones; whole or not at all."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from wan_i2v.files import written_whole

    with safe_open(str(source), framework="pt") as file:
        metadata = file.metadata() or {"format": "pt"}
        tensors = {}
        for key in file.keys():
            tensor = file.get_tensor(key)
            if tensor.dtype == torch.float32 and not kept_fp32(key, keep):
                tensor = tensor.to(torch.bfloat16)
            tensors[key] = tensor
    dest.parent.mkdir(parents=True, exist_ok=True)
    with written_whole(dest) as partial:
        save_file(tensors, str(partial), metadata=metadata)


def update_indexes(dest: Path) -> None:
    """Set each converted component's index `total_size` to the bytes its shards now hold."""
    for component in CONVERTED:
        for index in (dest / component).glob("*.safetensors.index.json"):
            data = json.loads(index.read_text())
            total = 0
            for shard in set(data["weight_map"].values()):
                header = check_layout(dest / component / shard)
                total += sum(
                    i["data_offsets"][1] - i["data_offsets"][0] for k, i in header.items() if k != "__metadata__"
                )
            data.setdefault("metadata", {})["total_size"] = total
            index.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def copy_folder(source: Path, dest: Path, dtype: str) -> None:
    """A local diffusers folder into `dest`: the large parts' shards converted, everything else copied."""
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if not path.is_file() or relative.parts[0] == ".cache" or relative.name == PROVENANCE:
            continue
        target = dest / relative
        if dtype == "bf16" and relative.parts[0] in CONVERTED and path.suffix == ".safetensors":
            keep = fp32_modules(relative.parts[0])
            if not is_converted(target, keep):
                print(f"converting {relative}", flush=True)
                convert_shard(path, target, keep)
        elif not target.is_file() or target.stat().st_size != path.stat().st_size:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


# ---- the hub --------------------------------------------------------------------------------------------
def resolve_commit(model: str, revision: str | None) -> tuple[str, list[str]]:
    """The commit a branch, tag or commit names, and the files the worker loads at that commit."""
    from fnmatch import fnmatch

    from huggingface_hub import HfApi

    info = HfApi().model_info(model, revision=revision or "main")
    names = [s.rfilename for s in info.siblings or [] if any(fnmatch(s.rfilename, p) for p in ALLOW_PATTERNS)]
    return info.sha, names


def fetch(model: str, commit: str, names: list[str], dest: Path, dtype: str) -> None:
    """Download the worker's files at `commit`; with bf16, each large shard is converted as it arrives and its
    download deleted, so the disk holds the copy plus one published shard at a time."""
    from huggingface_hub import hf_hub_download

    staging = dest / ".staging"
    for name in names:
        parts = Path(name).parts
        target = dest / name
        if dtype == "bf16" and parts[0] in CONVERTED and name.endswith(".safetensors"):
            keep = fp32_modules(parts[0])
            if is_converted(target, keep):
                continue
            print(f"downloading and converting {name}", flush=True)
            downloaded = Path(hf_hub_download(repo_id=model, filename=name, revision=commit, local_dir=staging))
            convert_shard(downloaded, target, keep)
            downloaded.unlink()
        else:
            hf_hub_download(repo_id=model, filename=name, revision=commit, local_dir=dest)
    shutil.rmtree(staging, ignore_errors=True)


def remove_broken(dest: Path) -> list[Path]:
    """Remove weight files that fail the layout check, with the download record that would skip them."""
    removed = []
    for path, problem in broken_files(dest):
        print(f"{path.relative_to(dest)}: {problem}; fetching it again", flush=True)
        record = dest / ".cache" / "huggingface" / "download" / f"{path.relative_to(dest)}.metadata"
        path.unlink()
        record.unlink(missing_ok=True)
        removed.append(path)
    return removed


def fetch_turbo_lora(repo: str, files: list[str], dest: Path, revision: str | None) -> None:
    from huggingface_hub import hf_hub_download

    for name in files:
        hf_hub_download(repo_id=repo, filename=name, revision=revision, local_dir=dest / FOLDER_IN_MODEL)


# ---- RIFE -----------------------------------------------------------------------------------------------
class RifeBakeError(Exception):
    """RIFE weights that are not baked: a hash that differs, no flownet.pkl, not v4.26's layout."""


def flownet_from_zip(archive: Path, out: Path) -> Path:
    """Copy the zip's one flownet.pkl, found by base name, to `out`: that member only, never the whole zip."""
    with zipfile.ZipFile(archive) as zipped:
        found = [
            member
            for member in zipped.infolist()
            if not member.is_dir()
            and PurePosixPath(member.filename).name == RIFE_MEMBER
            and PurePosixPath(member.filename).parts[0] != "__MACOSX"
        ]
        if len(found) != 1:
            names = ", ".join(m.filename for m in found) or f"none of its {len(zipped.infolist())} members"
            raise RifeBakeError(f"{archive.name}: expected one {RIFE_MEMBER} in the zip, found {names}")
        (member,) = found
        if member.file_size > RIFE_MEMBER_MAX:
            raise RifeBakeError(f"{archive.name}: {member.filename} claims {member.file_size:,} bytes, not RIFE's")
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipped.open(member) as source, out.open("wb") as target:
            shutil.copyfileobj(source, target)
    return out


def read_rife(path: Path, name: str) -> dict:
    """The state dict of a flownet.pkl or .safetensors, keys as IFNet names them, checked against IFNet's own."""
    import pickle

    import torch
    from safetensors import SafetensorError

    from wan_i2v.worker.interpolation.rife import RifeWeightsError, check_layout, published_keys, read_state_dict

    unreadable = (pickle.UnpicklingError, EOFError, RuntimeError, OSError, ValueError, SafetensorError)
    try:
        state = published_keys(read_state_dict(path))
    except unreadable as exc:  # the weights-only unpickler's refusals, a cut file, a bad header
        raise RifeBakeError(f"{name}: not a readable state dict: {exc}") from None
    odd = sorted(key for key, value in state.items() if not isinstance(value, torch.Tensor))
    if odd:
        raise RifeBakeError(f"{name}: entries that are not tensors: {', '.join(odd[:6])}")
    try:
        check_layout(state)
    except RifeWeightsError as exc:
        raise RifeBakeError(f"{name}: {exc}") from None
    return state


def rife_is_baked(folder: Path, sha256: str) -> bool:
    """Whether `folder` holds the safetensors baked from a file with this sha256, unchanged since."""
    try:
        facts = json.loads((folder / PROVENANCE).read_text())
        return facts["sha256"] == sha256 and file_sha256(folder / RIFE_BAKED) == facts["safetensors_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def bake_rife(dest: Path, repo: str, revision: str, filename: str, expected: str, source: Path | None = None) -> dict:
    """Write DEST/interpolation/rife-v4.26.safetensors and its provenance.json from the hub's file (or `source`),
    whose sha256 must be `expected` unless that is empty. Nothing lands in DEST/interpolation/ unless it checks."""
    folder, staging = dest / RIFE_FOLDER, dest / ".staging" / "rife"
    known = expected or (file_sha256(source) if source is not None else "")
    if known and rife_is_baked(folder, known):
        print(f"RIFE weights: {folder / RIFE_BAKED} already baked from sha256 {known}", flush=True)
        return json.loads((folder / PROVENANCE).read_text())
    try:
        if source is None:
            from huggingface_hub import hf_hub_download

            print(f"downloading RIFE weights {filename} from {repo} at {revision}", flush=True)
            fetched = Path(hf_hub_download(repo_id=repo, filename=filename, revision=revision, local_dir=staging))
        else:
            fetched = source
        digest = file_sha256(fetched)
        if expected and digest != expected:
            raise RifeBakeError(f"{fetched.name}: sha256 {digest}, expected {expected} (--rife-sha256)")
        weights = flownet_from_zip(fetched, staging / RIFE_MEMBER) if zipfile.is_zipfile(fetched) else fetched
        state = read_rife(weights, fetched.name if weights == fetched else f"{fetched.name}: {RIFE_MEMBER}")
        facts = {
            "model": "RIFE v4.26",
            "repo": repo if source is None else None,
            "revision": revision if source is None else None,
            "file": filename if source is None else fetched.name,
            "sha256": digest,  # of `file`, the zip as published
            "flownet_sha256": file_sha256(weights) if weights.suffix != ".safetensors" else None,
            "source": "hub" if source is None else f"local file {source}",
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "written_by": "builder/fetch_weights.py",
        }
        write_rife(folder, state, facts)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if staging.parent.is_dir() and not any(staging.parent.iterdir()):
            staging.parent.rmdir()
    print(f"RIFE weights: {folder / RIFE_BAKED} from sha256 {digest}", flush=True)
    return facts


def write_rife(folder: Path, state: dict, facts: dict) -> None:
    """The checked state dict as safetensors, loaded back as the worker loads it (strict), then its provenance;
    each file whole or not at all, the provenance last, so an interrupted run is not taken as done."""
    import torch
    from safetensors.torch import save_file

    from wan_i2v.files import written_whole
    from wan_i2v.worker.interpolation.rife import RifeWeightsError, load_rife

    folder.mkdir(parents=True, exist_ok=True)
    others = sorted(p.name for p in folder.glob("*.safetensors") if p.name != RIFE_BAKED)
    if others:  # the worker takes the folder's one *.safetensors and refuses several
        raise RifeBakeError(f"{folder} holds other weights ({', '.join(others)}); the worker would refuse several")
    target = folder / RIFE_BAKED
    tensors = {key: value.detach().contiguous().clone() for key, value in state.items()}
    with written_whole(target) as partial:
        save_file(tensors, str(partial), metadata={"format": "pt", "rife": "4.26", "source_sha256": facts["sha256"]})
    try:
        load_rife(target, torch.device("cpu"))
    except (RifeWeightsError, RuntimeError) as exc:
        target.unlink()
        raise RifeBakeError(f"{RIFE_BAKED} does not load back: {exc}") from None
    facts["safetensors_sha256"] = file_sha256(target)
    with written_whole(folder / PROVENANCE) as partial:
        partial.write_text(json.dumps(facts, indent=2) + "\n")


def write_provenance(dest: Path, repo: str | None, commit: str | None, dtype: str, source: str) -> dict:
    facts = {
        "repo": repo,
        "commit": commit,
        "dtype": dtype,
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": source,
        "written_by": "builder/fetch_weights.py",
    }
    (dest / PROVENANCE).write_text(json.dumps(facts, indent=2) + "\n")
    return facts


# ---- the command ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MODEL, help="hub id to download")
    parser.add_argument(
        "--revision", default=CHECKED_REVISION, help=f"branch, tag or commit (default: {CHECKED_REVISION}, checked)"
    )
    parser.add_argument("--dest", type=Path, required=True, help="folder to write; set WAN_MODEL to it")
    parser.add_argument("--source", type=Path, help="a local diffusers folder to convert instead of the hub")
    parser.add_argument("--dtype", choices=DTYPES, default="bf16", help="bf16 (default): the worker's copy")
    parser.add_argument("--verify-only", action="store_true", help="only check --dest, download nothing")
    parser.add_argument("--turbo-lora-repo", default=TURBO_REPO, help="hub repo of the turbo LoRA pair")
    parser.add_argument(
        "--turbo-lora-files",
        default=TURBO_FILES,
        help="the pair's file names in that repo, high-noise first, comma-separated; empty: no turbo mode",
    )
    parser.add_argument("--turbo-lora-revision", default=None, help="branch, tag or commit of the LoRA repo")
    parser.add_argument("--rife-repo", default=RIFE_REPO, help="hub repo of the RIFE v4.26 weights")
    parser.add_argument("--rife-revision", default=RIFE_REVISION, help="its commit (default: the checked one)")
    parser.add_argument(
        "--rife-file", default=RIFE_FILE, help="the zip (or flownet.pkl) in that repo; empty: no RIFE weights"
    )
    parser.add_argument("--rife-sha256", default=RIFE_SHA256, help="the file's sha256, checked; empty: not checked")
    parser.add_argument(
        "--rife-source", type=Path, help="a local RIFE zip, flownet.pkl or .safetensors to bake instead of the hub's"
    )
    args = parser.parse_args(argv)
    turbo_files = [name for name in args.turbo_lora_files.split(",") if name]
    if turbo_files and (
        len(turbo_files) != 2 or "high_noise" not in turbo_files[0] or "low_noise" not in turbo_files[1]
    ):
        parser.error("--turbo-lora-files: give two names, the *high_noise* file first, then the *low_noise* one")
    if args.source is not None and not (args.source / "model_index.json").is_file():
        parser.error(f"--source {args.source}: not a diffusers folder (no model_index.json)")
    if args.rife_source is not None and not args.rife_source.is_file():
        parser.error(f"--rife-source {args.rife_source}: no such file")

    if not args.verify_only:
        if args.dest.is_dir():
            remove_broken(args.dest)  # a copy cut short: those files come again, the rest is kept
        # RIFE first: 25 MB, so a wrong file fails the build in seconds, not after the pipeline's 69 GB.
        # Like the turbo pair, it comes from the hub only when the pipeline does.
        if args.rife_source is not None or (args.rife_file and args.source is None):
            try:
                bake_rife(
                    args.dest, args.rife_repo, args.rife_revision, args.rife_file, args.rife_sha256, args.rife_source
                )
            except RifeBakeError as exc:
                print(f"RIFE weights not baked: {exc}", file=sys.stderr)
                return 1
        if args.source is not None:
            print(f"converting {args.source} to {args.dtype} in {args.dest}", flush=True)
            copy_folder(args.source, args.dest, args.dtype)
            origin = read_revision(args.source)  # its provenance, or a hub cache snapshot's folder names
            facts = write_provenance(args.dest, origin.repo, origin.commit, args.dtype, f"local folder {args.source}")
        else:
            commit, names = resolve_commit(args.model, args.revision)
            print(f"downloading {args.model} at {commit} to {args.dest} ({args.dtype})", flush=True)
            fetch(args.model, commit, names, args.dest, args.dtype)
            facts = write_provenance(args.dest, args.model, commit, args.dtype, "hub")
        if args.dtype == "bf16":
            update_indexes(args.dest)
        print(f"provenance: {facts['repo']} at {facts['commit']}, {facts['dtype']}", flush=True)
        if turbo_files and args.source is None:
            print(f"downloading the turbo LoRA pair from {args.turbo_lora_repo}", flush=True)
            fetch_turbo_lora(args.turbo_lora_repo, turbo_files, args.dest, args.turbo_lora_revision)
    # A bake has loaded its RIFE file back already; the worker's own lookup needs most of the worker package,
    # which the image's weights layer does not hold, so only --verify-only runs it.
    return verify(args.dest, turbo_files, rife=args.verify_only)


def verify(dest: Path, turbo_files: list[str], rife: bool = False) -> int:
    if turbo_files:
        pair = pair_files(dest / FOLDER_IN_MODEL)
        if isinstance(pair, str):
            print(f"turbo LoRA pair incomplete: {pair}", file=sys.stderr)
            return 1
        print(f"turbo LoRA pair: {pair['high_noise'].name}, {pair['low_noise'].name}")
    if rife and verify_rife(dest) != 0:
        return 1
    missing = missing_parts(dest)
    if missing:
        print(f"{dest} is not a complete Wan2.2 I2V diffusers pipeline; missing: {', '.join(missing)}", file=sys.stderr)
        return 1
    try:
        check_model_configs(dest)
    except ModelConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file() and ".staging" not in f.parts)
    print(f"{dest}: complete Wan2.2 I2V diffusers pipeline, {size / 1e6:,.1f} MB")
    return 0


def verify_rife(dest: Path) -> int:
    """The RIFE file a worker on `dest` would take (the worker's find_weights), loaded as it loads it (strict)."""
    if not (dest / RIFE_FOLDER).exists():
        print(f"no RIFE weights in {dest / RIFE_FOLDER}: interpolation jobs use ffmpeg")
        return 0
    import torch

    from wan_i2v.errors import SettingsError
    from wan_i2v.worker.interpolation.rife import VERSION, RifeWeightsError, load_rife
    from wan_i2v.worker.interpolation.stage import find_weights
    from wan_i2v.worker.settings import InterpolationOptions

    try:
        path, looked = find_weights(InterpolationOptions(), dest)
        if path is None:
            print(f"no RIFE weights in {looked}: interpolation jobs use ffmpeg")
            return 0
        load_rife(path, torch.device("cpu"))
    except (SettingsError, RifeWeightsError, OSError, RuntimeError) as exc:
        print(f"RIFE weights: {exc}", file=sys.stderr)
        return 1
    print(f"RIFE {VERSION} weights: {path.relative_to(dest)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
