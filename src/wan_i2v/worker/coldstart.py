"""The cold-start report: how long each step of loading took and what was chosen.

Logged as a table when the worker is ready, written as JSON to `WAN_COLD_START_REPORT` when set (the
dev endpoint sets it for each worker it starts and shows the reports on its /health).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..files import written_whole
from .hostmem import peak_resident_bytes, reset_peak, resident_bytes

log = logging.getLogger(__name__)

# The steps in the order they run; the report lists those that ran.
STEPS = (
    "load", "prepared_cache", "lora_load", "lora_fusion", "quantise", "place", "attention_check", "parallel", "compile",
    "warmup",
    "interpolation",
)  # fmt: skip


def _start_measuring() -> int | None:
    """The resident set as the cold start begins; the peak is measured from here."""
    reset_peak()
    return resident_bytes()


@dataclass
class ColdStart:
    seconds: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    rss_before: int | None = field(default_factory=_start_measuring)
    path: Path | None = None  # where `write` put it, for `rewrite` after a change (a fallback while serving)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        if name not in STEPS:
            raise ValueError(f"unknown cold-start step {name!r}")
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - began, 3)

    def total(self) -> float:
        return round(time.perf_counter() - self.started, 3)

    def measure_host_memory(self) -> None:
        """Record the host memory the cold start took: the resident set before it and its peak since."""
        self.facts["host_rss_before_bytes"] = self.rss_before
        self.facts["peak_host_rss_bytes"] = peak_resident_bytes()

    def as_dict(self) -> dict:
        return {"seconds": {**self.seconds, "total": self.total()}, **self.facts}

    def table(self) -> str:
        rows = [f"  {name:<16} {seconds:8.2f} s" for name, seconds in self.seconds.items()]
        rows.append(f"  {'total':<16} {self.total():8.2f} s")
        facts = [f"  {name:<16} {value}" for name, value in self.facts.items()]
        return "\n".join(["cold start:", *rows, *facts])

    def rewrite(self) -> None:
        self.write(self.path)

    def write(self, path: Path | None) -> None:
        self.path = path
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with written_whole(path) as tmp:
                tmp.write_text(json.dumps(self.as_dict(), indent=2, default=str))
        except OSError as exc:  # the report is for people; it never stops the worker
            log.warning("cold-start report not written to %s: %s", path, exc)
