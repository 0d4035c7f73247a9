#!/usr/bin/env bash
# The wheels bench/gpu-check.sh installs on a GPU machine that has no network, downloaded here into .whl/
# (git-ignored; carry it to the GPU machine beside the checkout).
#
#   bash bench/fetch-wheels.sh                 # about 13 MB: fits a 64 MiB carry
#   bash bench/fetch-wheels.sh --with-ffmpeg   # imageio-ffmpeg with its own ffmpeg binary: a 68 MB wheel more
#
# Without --with-ffmpeg, imageio-ffmpeg is built here from its source (its Python only, 17 kB), so the worker's
# video module imports; the MP4 encode then uses the GPU machine's ffmpeg (PATH or IMAGEIO_FFMPEG_EXE), and where
# there is none the quick run reports the encode as not measured and says so in every whole-job estimate.
# Versions are builder/requirements.txt's pins; the targets are CPython 3.12 on manylinux x86_64.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-python3}

# What the GPU machine's python3 3.12 has (torch 2.11 cu130, transformers 5.17, ...), with their dependencies.
PRESENT=(torch transformers accelerate safetensors numpy pillow requests tokenizers sentencepiece)
# What it lacks among the worker's packages (the quick run needs neither boto3 nor runpod).
ABSENT=(diffusers torchao pydantic imageio-ffmpeg boto3 runpod)
# What bench/run.py --quick imports beyond PRESENT, and their dependencies (tests/test_bench.py checks this list
# against the bench's imports and the wheels' own requirements). typing-extensions: pydantic needs a newer one
# than torch does; bench/gpu-check.sh installs a wheel only where the machine's copy is missing or older.
WHEELS=(diffusers torchao pydantic pydantic-core annotated-types typing-inspection typing-extensions imageio-ffmpeg)
# Required in a wheel's metadata but never imported on Python 3.12: diffusers takes the standard library's
# importlib.metadata from Python 3.8 on (and the backport would bring its own dependencies).
UNUSED=(importlib-metadata)

with_ffmpeg=false
case "${1:-}" in
  --with-ffmpeg) with_ffmpeg=true ;;
  "") ;;
  *) echo "usage: bash bench/fetch-wheels.sh [--with-ffmpeg]" >&2; exit 2 ;;
esac

binary=()
source_only=()
for name in "${WHEELS[@]}"; do
  pin=$(grep -i "^${name}==" builder/requirements.txt) || { echo "$name is not pinned in builder/requirements.txt" >&2; exit 1; }
  if [[ $name == imageio-ffmpeg && $with_ffmpeg == false ]]; then
    source_only+=("$pin")
  else
    binary+=("$pin")
  fi
done

rm -rf .whl
mkdir .whl
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${binary[@]}"
if ((${#source_only[@]})); then
  "$python" -m pip wheel -q --no-deps --no-binary=imageio-ffmpeg -w .whl "${source_only[@]}"
fi
ls -l .whl
echo "$(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/ (for: ${PRESENT[*]} present; ${ABSENT[*]} absent)"
