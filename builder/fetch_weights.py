"""Bake the model weights into the image at build time (the only step that downloads).

    python builder/fetch_weights.py --model Wan-AI/Wan2.2-I2V-A14B-Diffusers --dest /models/wan
    python builder/fetch_weights.py --verify-only --dest DIR     # check a folder, no network

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
    from wan_i2v.worker.weights import REQUIRED_COMPONENTS, missing_parts
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from wan_i2v.worker.weights import REQUIRED_COMPONENTS, missing_parts

ALLOW_PATTERNS = ["model_index.json"] + [f"{component}/*" for component in REQUIRED_COMPONENTS]


def fetch(model: str, dest: Path, revision: str | None) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(repo_id=model, revision=revision, local_dir=dest, allow_patterns=ALLOW_PATTERNS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Wan-AI/Wan2.2-I2V-A14B-Diffusers", help="hub id to download")
    parser.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    parser.add_argument("--dest", type=Path, required=True, help="folder to write; set WAN_MODEL to it")
    parser.add_argument("--verify-only", action="store_true", help="only check --dest, download nothing")
    args = parser.parse_args(argv)

    if not args.verify_only:
        print(f"downloading {args.model} ({args.revision or 'main'}) to {args.dest}", flush=True)
        fetch(args.model, args.dest, args.revision)
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
