"""A bar chart of a results file's whole-job times against the targets, as a PNG for the README.

    python bench/chart.py bench/results/nvidia-h100-80gb-hbm3.json docs/bench.png

Drawn with Pillow (already a worker dependency): one bar per job, the target as a line across it.
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
WIDTH, ROW, LEFT, RIGHT = 760, 46, 130, 110


def draw(results: dict) -> Image.Image:
    targets = results.get("targets", {})
    rows = [(label, targets.get(key), target) for key, (label, target) in JOBS.items()]
    height = 60 + ROW * len(rows)
    image = Image.new("RGB", (WIDTH, height), "white")
    pen = ImageDraw.Draw(image)
    pen.text((10, 10), f"wan-i2v on {results.get('gpu', '?')}: whole job, seconds (bar) vs target (line)", fill="black")
    span = WIDTH - LEFT - RIGHT
    for index, (label, value, target) in enumerate(rows):
        top = 40 + index * ROW
        scale = span / max(target * 1.5, value or 0)
        pen.text((10, top + 12), label, fill="black")
        if value is None:
            pen.text((LEFT, top + 12), "not measured yet", fill="gray")
        else:
            colour = (46, 139, 87) if value <= target else (200, 60, 60)
            pen.rectangle([LEFT, top + 6, LEFT + max(2, int(value * scale)), top + 34], fill=colour)
            pen.text((LEFT + span + 8, top + 12), f"{value:.1f} s", fill="black")
        x = LEFT + int(target * scale)
        pen.line([x, top + 2, x, top + 38], fill="black", width=2)
        pen.text((x + 3, top + 26), f"{target} s", fill="black")
    return image


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    draw(json.loads(Path(args[0]).read_text())).save(args[1])
    print(f"wrote {args[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
