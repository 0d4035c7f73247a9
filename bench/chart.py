"""A bar chart of a results file's whole-job times against the targets, as a PNG for the README; and a table.

    python bench/chart.py bench/results/nvidia-h100-80gb-hbm3.json docs/bench.png
    python bench/chart.py bench/results/nvidia-h100-80gb-hbm3.json --table    # the figures as text

Drawn with Pillow (already a worker dependency): one bar per job, the target as a line across it. A figure
that `targets_basis` calls estimated (the quick run's extrapolation to 40 blocks) has a lighter, hatched bar
and a "~" before its value.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw

# target key -> (label, target seconds), from the issues' tables (BENCHMARKS.md)
JOBS = {
    "turbo_480p_s": ("turbo 480p", 10),
    "turbo_720p_s": ("turbo 720p", 40),
    "quality_480p_s": ("quality 480p", 150),
    "quality_720p_s": ("quality 720p", 500),
    "cold_start_prepared_s": ("cold, prepared", 45),
    "cold_start_bf16_s": ("cold, bf16 copy", 150),
}
# The other targets, for the table: key -> (label, target, unit)
OTHER_TARGETS = {
    "cold_start_peak_host_gib": ("peak host memory, cold start", 29, "GiB"),
    "peak_vram_fp8_720p_gib": ("peak VRAM, fp8 720p", 44, "GiB"),
    "err_compile": ("rel. L2, compiled", 0.02, ""),
    "err_fp8": ("rel. L2, fp8", 0.08, ""),
    "err_int8": ("rel. L2, int8", 0.08, ""),
}
WIDTH, ROW, LEFT, RIGHT = 760, 46, 130, 110
PASS, FAIL = (46, 139, 87), (200, 60, 60)


def is_estimate(results: dict, key: str) -> bool:
    return str(results.get("targets_basis", {}).get(key, "")).startswith("estimated")


def _lighter(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(c + (255 - c) * 5 // 10 for c in colour)


def _bar(pen: ImageDraw.ImageDraw, box: list[int], colour, hatched: bool) -> None:
    """A filled bar; an estimate's is lighter, crossed by diagonal lines in the solid colour."""
    left, top, right, bottom = box
    pen.rectangle(box, fill=_lighter(colour) if hatched else colour)
    if hatched:
        for x in range(left - (bottom - top), right, 8):
            start, end = max(x, left), min(x + (bottom - top), right)
            pen.line([start, bottom - (start - x), end, bottom - (end - x)], fill=colour, width=2)


def draw(results: dict) -> Image.Image:
    targets = results.get("targets", {})
    rows = [(key, label, targets.get(key), target) for key, (label, target) in JOBS.items()]
    height = 60 + ROW * len(rows)
    image = Image.new("RGB", (WIDTH, height), "white")
    pen = ImageDraw.Draw(image)
    title = f"wan-i2v on {results.get('gpu', '?')}: whole job, seconds (bar) vs target (line); ~ = estimated"
    pen.text((10, 10), title, fill="black")
    span = WIDTH - LEFT - RIGHT
    for index, (key, label, value, target) in enumerate(rows):
        top = 40 + index * ROW
        scale = span / max(target * 1.5, value or 0)
        pen.text((10, top + 12), label, fill="black")
        if value is None:
            pen.text((LEFT, top + 12), "not measured yet", fill="gray")
        else:
            estimate = is_estimate(results, key)
            box = [LEFT, top + 6, LEFT + max(2, int(value * scale)), top + 34]
            _bar(pen, box, PASS if value <= target else FAIL, estimate)
            pen.text((LEFT + span + 8, top + 12), f"{'~' if estimate else ''}{value:.1f} s", fill="black")
        x = LEFT + int(target * scale)
        pen.line([x, top + 2, x, top + 38], fill="black", width=2)
        pen.text((x + 3, top + 26), f"{target} s", fill="black")
    return image


def _number(figure) -> str:
    """A quick figure as text: "~" before an estimate, "-" when absent."""
    if not isinstance(figure, dict) or figure.get("value") is None:
        return "-"
    return f"{'~' if figure.get('basis') == 'estimated' else ''}{figure['value']:g}"


def table(results: dict) -> str:
    """The targets (with how each was obtained) and, after a quick run, one line per path and resolution."""
    targets, basis = results.get("targets", {}), results.get("targets_basis", {})
    lines = [f"targets on {results.get('gpu', '?')} (~ estimated):"]
    labels = {key: (label, target, "s") for key, (label, target) in JOBS.items()} | OTHER_TARGETS
    for key, (label, target, unit) in labels.items():
        value = targets.get(key)
        shown = "-" if value is None else f"{'~' if is_estimate(results, key) else ''}{value:g}"
        how = str(basis.get(key, "")).split(":")[0]
        lines.append(f"  {label:<30} {shown:>10} {unit:<3} target <= {target:<6} {how}")
    paths = results.get("quick", {}).get("paths", {})
    if paths:
        quick = results["quick"]
        lines.append(
            f"quick: {quick.get('blocks')} of {quick.get('blocks_full')} blocks per expert, {quick.get('frames')} frames"
            f", {quick.get('elapsed_s')} s; extrapolation check: relative error "
            f"{quick.get('extrapolation_check', {}).get('relative_error', '-')}"
        )
        header = f"  {'path':<30} {'ok':<5} {'res':<5} {'fwd@N s':>8} {'fwd@40 s':>9} {'job s':>8} {'rel L2':>7}"
        lines.append(header + f" {'peak@40 GiB':>11} {'path s':>7}")
        for name, entry in paths.items():
            ok = {True: "ok", False: "FAIL", None: "skip"}[entry.get("ok")]
            per_resolution = entry.get("resolutions") or {"": {}}
            for resolution, figures in per_resolution.items():
                lines.append(
                    f"  {name:<30} {ok:<5} {resolution:<5} {_number(figures.get('per_forward_s')):>8} "
                    f"{_number(figures.get('per_forward_s_at_40')):>9} {_number(figures.get('job_s')):>8} "
                    f"{_number(figures.get('rel_l2_vs_baseline')):>7} {_number(figures.get('peak_gib_at_40')):>11} "
                    f"{entry.get('seconds', '-'):>7}"
                )
            if entry.get("error"):
                lines.append(f"    {entry['error'][:200]}")
    for source, entry in (
        ("quick", paths.get("interpolation")),
        ("rows", results.get("rows", {}).get("interpolation")),
    ):
        if isinstance(entry, dict) and entry.get("cases"):
            lines += interpolation_lines(entry, source)
    return "\n".join(lines)


def interpolation_lines(entry: dict, source: str) -> list[str]:
    """bench/interpolation.py's row: a line per resolution and factor, the targets and the quality margins."""
    lines = [
        f"interpolation ({source}): RIFE {entry.get('weights')} weights, {entry.get('dtype')}, {entry.get('device')}",
        f"  {'case':<10} {'size':<10} {'frames':>11} {'s':>8} {'s/new':>8} {'peak+ GiB':>10} {'pairs/batch':>11} ok",
    ]
    for name, case in entry["cases"].items():
        frames = f"{case.get('frames_in')}->{case.get('frames_out')}"
        lines.append(
            f"  {name:<10} {case.get('size', ''):<10} {frames:>11} {_number(case.get('seconds')):>8} "
            f"{_number(case.get('per_new_frame_s')):>8} {_number(case.get('peak_extra_gib')):>10} "
            f"{_number(case.get('pairs_per_batch')):>11} {case.get('ok')}"
        )
    for name, check in entry.get("targets", {}).items():
        shown = "-" if check.get("value") is None else f"{check['value']:g}"
        lines.append(f"  target {name:<24} {shown:>8} <= {check.get('target'):<5} met: {check.get('met')}")
    quality = entry.get("quality", {})
    for method in ("rife", "ffmpeg"):
        if method in quality:
            figure = quality[method]
            how = (
                f"dB over repetition ({quality.get('size')})" if figure.get("value") is not None else figure.get("why")
            )
            lines.append(f"  margin {method:<8} {_number(figure):>8} {how}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 2:
        print("\n".join(line.strip() for line in __doc__.strip().splitlines()[2:4]), file=sys.stderr)
        return 2
    results = json.loads(Path(args[0]).read_text())
    if args[1] == "--table":
        print(table(results))
        return 0
    draw(results).save(args[1])
    print(f"wrote {args[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
