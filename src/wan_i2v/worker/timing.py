"""Timing the phases of a job: one context manager for the engine and the job boundary alike."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def timed(timings: dict[str, float], name: str, sync: Callable[[], None] | None = None) -> Iterator[None]:
    """Record the seconds the block took under `timings[name]`.

    `sync` waits for queued device work first (CUDA runs asynchronously: without it a GPU phase
    would look instant and the next one would pay for it).
    """
    start = time.perf_counter()
    yield
    if sync is not None:
        sync()
    timings[name] = round(time.perf_counter() - start, 3)
