"""A worker's follower rank: `python -m wan_i2v.worker.follower`, started by rank 0 (ranks.Ranks.start).

It loads the engine from the same settings (the environment) as rank 0's, then runs its part of each job
rank 0 hands over (ranks.serve_as_follower). Its own module because it builds an Engine, which ranks.py,
below the engine, does not import.
"""

from __future__ import annotations

from .engine import Engine
from .ranks import Ranks, serve_as_follower
from .settings import Settings


def load(ranks: Ranks) -> Engine:
    settings = Settings.from_env()
    return Engine.load(settings.model, ranks.engine_options(settings.engine), ranks)


if __name__ == "__main__":
    serve_as_follower(load)
