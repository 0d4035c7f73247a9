#!/usr/bin/env bash
# Every benchmark figure in one call of under 5 minutes on one H100 or H200 (BENCHMARKS.md, "Status").
#
#   bash bench/fetch-wheels.sh           # once, where there is network: .whl/ with what the GPU machine lacks
#   bash bench/gpu-check.sh              # on the GPU machine, from the checkout with .whl/ beside it
#   OUT=DIR bash bench/gpu-check.sh      # also copies the results file, the log and the chart into DIR
#   bash bench/gpu-check.sh --smoke      # on a CPU: the tiny model, checks this script and the quick run
#
# 1. Installs each wheel of .whl/ whose package this python lacks, or has in an older version, into /tmp/site
#    (nothing else is shadowed). 2. Checks that the bench's imports are there (no GPU time spent on a missing
#    one). 3. Runs `bench/run.py --quick` with what is left of BUDGET_S (default 270 s for this whole script):
#    results merged into bench/results/<gpu>.json (or RESULTS=FILE), a line per path as it finishes, leaving
#    GPUS_S (default 75 s) of the budget to 3b. `--quick --gpus G` (G: every GPU here, so 1 on a single GPU:
#    the multi-rank code path at N = 1; --smoke: 1) within what is then left: turbo-fp8 and quality-fp8 on
#    G ranks and on 1, into `quick_gpusG` (BENCHMARKS.md, "Several GPUs"); GPUS_S=0 leaves it out.
#    4. Prints the table of figures (~ marks an estimate) and draws the chart.
# PYTHON picks the interpreter (default python3). The exit status is the quick run's, else 3b's (1: a path failed).
set -euo pipefail
started=$SECONDS
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-python3}
budget=${BUDGET_S:-270}
gpus_s=${GPUS_S:-75}
out=${OUT:-}
quick=(bench/run.py --quick)
case "${1:-}" in
  --smoke) quick+=(--smoke) ;;
  "") ;;
  *) echo "usage: [OUT=DIR] [BUDGET_S=270] [RESULTS=FILE] bash bench/gpu-check.sh [--smoke]" >&2; exit 2 ;;
esac
[[ -n ${RESULTS:-} ]] && quick+=(--out "$RESULTS")

# 1. What this machine lacks, from .whl/
shopt -s nullglob
wheels=(.whl/*.whl)
if ((${#wheels[@]})); then
  mapfile -t install < <("$python" - "${wheels[@]}" <<'PY'
"""Print the wheels to install: those whose distribution is missing here, or older than the wheel."""
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    from packaging.version import Version
except ImportError:  # no packaging: install only what is missing
    Version = None

for wheel in sys.argv[1:]:
    name, wanted = Path(wheel).name.split("-")[:2]
    try:
        have = version(name)
    except PackageNotFoundError:
        have = None
    if have is None or (Version is not None and Version(have) < Version(wanted)):
        print(wheel)
    print(f"  {name} {wanted}: {'installing' if have is None else f'have {have}'}", file=sys.stderr)
PY
  )
  if ((${#install[@]})); then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${install[@]}"
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    echo "installed ${#install[@]} wheels into /tmp/site"
  fi
else
  echo "no .whl/ here (bench/fetch-wheels.sh fills it): using the installed packages"
fi

# 2. The bench's imports, found without importing them (seconds), and the machine
"$python" - <<'PY'
import importlib.util
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version

needed = {"torch": "torch", "diffusers": "diffusers", "transformers": "transformers", "torchao": "torchao",
          "accelerate": "accelerate", "safetensors": "safetensors", "pydantic": "pydantic",
          "imageio_ffmpeg": "imageio-ffmpeg", "PIL": "pillow", "numpy": "numpy", "tokenizers": "tokenizers"}
lacking = [name for name in needed if importlib.util.find_spec(name) is None]
for module, distribution in needed.items():
    try:
        print(f"  {distribution:<14} {version(distribution)}")
    except PackageNotFoundError:
        print(f"  {distribution:<14} MISSING")
try:
    import imageio_ffmpeg

    print(f"  ffmpeg         {imageio_ffmpeg.get_ffmpeg_exe()}")
except Exception as exc:  # the quick run then reports the MP4 encode as not measured
    print(f"  ffmpeg         none ({exc}): MP4 encode not measured")
if shutil.which("nvidia-smi"):
    query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
    print("  gpu            " + subprocess.run(query, capture_output=True, text=True, check=False).stdout.strip())
if lacking:
    sys.exit(f"missing: {', '.join(lacking)} (bench/fetch-wheels.sh, then carry .whl/ here)")
PY

# 3. The quick run, within what is left of the budget (less 3b's share)
left=$((budget - gpus_s - (SECONDS - started)))
log=$(mktemp /tmp/gpu-check-log.XXXXXX)
echo "running ${quick[*]} --budget-s $left"
set +e
if command -v timeout >/dev/null; then
  timeout --kill-after=10 $((left + 40)) "$python" "${quick[@]}" --budget-s "$left" 2>&1 | tee "$log"
else
  "$python" "${quick[@]}" --budget-s "$left" 2>&1 | tee "$log"
fi
status=${PIPESTATUS[0]}

# 3b. The same engine paths on every GPU here (1 GPU: the multi-rank code path at N = 1), and on one
left=$((budget - (SECONDS - started)))
if ((gpus_s > 0 && left > 10)); then
  count=1
  [[ ${quick[*]} != *--smoke* ]] && command -v nvidia-smi >/dev/null && count=$(nvidia-smi -L | wc -l)
  several=(bench/run.py --quick --gpus "$((count > 1 ? count : 1))" "${quick[@]:2}" --budget-s "$left")
  echo "running ${several[*]}"
  if command -v timeout >/dev/null; then
    timeout --kill-after=10 $((left + 40)) "$python" "${several[@]}" 2>&1 | tee -a "$log"
  else
    "$python" "${several[@]}" 2>&1 | tee -a "$log"
  fi
  second=${PIPESTATUS[0]}
  ((status == 0)) && status=$second
else
  echo "3b (--gpus) left out: GPUS_S=$gpus_s, $left s of the budget left"
fi
set -e

# 4. The table (printed again if the run was cut short), the chart, and the copies
results=$(sed -n 's/^results: //p' "$log" | tail -1)
if [[ -n $results && -f $results ]]; then
  grep -q '^targets on ' "$log" || "$python" bench/chart.py "$results" --table
  chart=${results%.json}.png
  "$python" bench/chart.py "$results" "$chart"
  if [[ -n $out ]]; then
    mkdir -p "$out"
    cp "$results" "$chart" "$out"/
    cp "$log" "$out"/gpu-check.log
    echo "copied the results, chart and log into $out"
  fi
fi
rm -f "$log"
echo "gpu-check: $((SECONDS - started)) s, exit status $status"
exit "$status"
