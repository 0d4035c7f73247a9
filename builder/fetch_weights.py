"""Put the model weights in a folder: baked into the image at build time, or onto a network volume.

    python builder/fetch_weights.py --model Wan-AI/Wan2.2-I2V-A14B-Diffusers --dest /models/wan
    python builder/fetch_weights.py --dest /runpod-volume/models/Wan2.2-I2V-A14B-Diffusers   # a volume
    python builder/fetch_weights.py --verify-only --dest DIR     # check a folder, no network

Run again on a folder, it downloads only what is missing (an interrupted copy resumes) and repairs what
is broken: a weight file whose safetensors layout does not check (cut short) is removed and fetched again.

The turbo LoRA pair goes into DEST/turbo-lora/, where the worker looks for it by default
(`--turbo-lora-files ''` skips it; the worker then serves quality jobs only).

Downloads only the files the worker loads (model_index.json and the six component folders), then
checks the folder with the same rules the worker applies at cold start (wan_i2v.worker.weights), so a
broken download fails the build instead of the first cold start. A gated or private repository
reads its token from HF_TOKEN.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    from wan_i2v.worker.weights import FOLDER_IN_MODEL, REQUIRED_COMPONENTS, broken_files, missing_parts, pair_files
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from wan_i2v.worker.weights import FOLDER_IN_MODEL, REQUIRED_COMPONENTS, broken_files, missing_parts, pair_files

ALLOW_PATTERNS = ["model_index.json"] + [f"{component}/*" for component in REQUIRED_COMPONENTS]
# The current recommended 4-step pair for Wan2.2 I2V-A14B (README, "Turbo mode"): high-noise, low-noise.
TURBO_REPO = "lightx2v/Wan2.2-Distill-Loras"
TURBO_FILES = (
    "wan2.2_i2v_A14b_high_noise_lora_rank64_lightx2v_4step_1022.safetensors,"
    "wan2.2_i2v_A14b_low_noise_lora_rank64_lightx2v_4step_1022.safetensors"
)


def fetch(model: str, dest: Path, revision: str | None) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(repo_id=model, revision=revision, local_dir=dest, allow_patterns=ALLOW_PATTERNS)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Wan-AI/Wan2.2-I2V-A14B-Diffusers", help="hub id to download")
    parser.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    parser.add_argument("--dest", type=Path, required=True, help="folder to write; set WAN_MODEL to it")
    parser.add_argument("--verify-only", action="store_true", help="only check --dest, download nothing")
    parser.add_argument("--turbo-lora-repo", default=TURBO_REPO, help="hub repo of the turbo LoRA pair")
    parser.add_argument(
        "--turbo-lora-files",
        default=TURBO_FILES,
        help="the pair's file names in that repo, high-noise first, comma-separated; empty: no turbo mode",
    )
    parser.add_argument("--turbo-lora-revision", default=None, help="branch, tag or commit of the LoRA repo")
    args = parser.parse_args(argv)
    turbo_files = [name for name in args.turbo_lora_files.split(",") if name]
    if turbo_files and (
        len(turbo_files) != 2 or "high_noise" not in turbo_files[0] or "low_noise" not in turbo_files[1]
    ):
        parser.error("--turbo-lora-files: give two names, the *high_noise* file first, then the *low_noise* one")

    if not args.verify_only:
        print(f"downloading {args.model} ({args.revision or 'main'}) to {args.dest}", flush=True)
        if args.dest.is_dir():
            remove_broken(args.dest)  # a copy cut short: those files come again, the rest is kept
        fetch(args.model, args.dest, args.revision)
        if turbo_files:
            print(f"downloading the turbo LoRA pair from {args.turbo_lora_repo}", flush=True)
            fetch_turbo_lora(args.turbo_lora_repo, turbo_files, args.dest, args.turbo_lora_revision)
    if turbo_files:
        pair = pair_files(args.dest / FOLDER_IN_MODEL)
        if isinstance(pair, str):
            print(f"turbo LoRA pair incomplete: {pair}", file=sys.stderr)
            return 1
        print(f"turbo LoRA pair: {pair['high_noise'].name}, {pair['low_noise'].name}")
    missing = missing_parts(args.dest)
    if missing:
        print(
            f"{args.dest} is not a complete Wan2.2 I2V diffusers pipeline; missing: {', '.join(missing)}",
            file=sys.stderr,
        )
        return 1
    size = sum(f.stat().st_size for f in args.dest.rglob("*") if f.is_file())
    print(f"{args.dest}: complete Wan2.2 I2V diffusers pipeline, {size / 1e6:,.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
