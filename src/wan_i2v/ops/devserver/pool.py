"""The dev endpoint's worker processes: each is `python handler.py` in RunPod's worker mode.

A worker whose endpoint has gone keeps polling it, and the RunPod SDK retries a refused connection
without pausing: one core per orphan. So the endpoint stops its workers whenever it closes, and each
worker dies with the endpoint's process where it could not close: it was SIGKILLed or crashed
(`wan_i2v.parent_death`, on Linux). That signal follows the thread that started the worker, so `start`
must only be called from one thread that outlives every worker: the endpoint's scale loop, which stops
the workers before it returns.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from ...parent_death import dying_with_parent

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0  # an idle worker given SIGTERM exits in about a second; then SIGKILL


def scale(live: int, demand: int, min_workers: int, max_workers: int) -> tuple[int, int]:
    """(workers to start, idle workers that may stop) for `live` workers and `demand` (running plus
    queued jobs): enough for the demand, never below the minimum or above the maximum."""
    wanted = min(max_workers, max(min_workers, demand))
    return max(0, wanted - live), max(0, live - max(min_workers, demand))


class WorkerPool:
    """Starts, reaps and stops worker processes. Not thread-safe: the endpoint holds its lock."""

    def __init__(self, handler: Path, take_url: str, done_url: str, log_dir: Path | None = None):
        self.handler = Path(handler).resolve()
        self.take_url, self.done_url = take_url, done_url
        self.log_dir = Path(log_dir) if log_dir else None
        self.processes: dict[str, subprocess.Popen] = {}
        self.started = 0  # in total, so ids are never reused
        self._spawner: int | None = None
        # Each worker writes its cold-start report here (WAN_COLD_START_REPORT); /health shows them.
        self._reports = tempfile.TemporaryDirectory(prefix="wan-i2v-cold-starts-")

    def start(self) -> str:
        """Starts one worker and returns its id (also its RUNPOD_POD_ID)."""
        spawner = threading.get_ident()
        if self._spawner not in (None, spawner):
            raise RuntimeError("workers must be started from one thread (their parent-death signal follows it)")
        self._spawner = spawner
        self.started += 1
        worker_id = f"worker-{self.started}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
        env.update(
            RUNPOD_POD_ID=worker_id,
            RUNPOD_WEBHOOK_GET_JOB=self.take_url,
            RUNPOD_WEBHOOK_POST_OUTPUT=self.done_url,
            PYTHONUNBUFFERED="1",
            # The SDK's start-up checks would open a connection to 8.8.8.8: a local endpoint stays on loopback.
            RUNPOD_SKIP_AUTO_SYSTEM_CHECKS="true",
            WAN_COLD_START_REPORT=str(self._report_path(worker_id)),
        )
        command = dying_with_parent([sys.executable, str(self.handler)])
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        with ExitStack() as stack:  # the child keeps its own copy of the log file's descriptor
            output = stack.enter_context(open(self.log_dir / f"{worker_id}.log", "ab")) if self.log_dir else None
            process = subprocess.Popen(
                command, cwd=self.handler.parent, env=env, stdout=output or subprocess.DEVNULL, stderr=subprocess.STDOUT
            )
        self.processes[worker_id] = process
        log.info("started %s (pid %d)", worker_id, process.pid)
        return worker_id

    def reap(self) -> list[tuple[str, int]]:
        """(worker id, exit code) of each worker that exited on its own since the last call."""
        exited = [(wid, p.returncode) for wid, p in self.processes.items() if p.poll() is not None]
        for worker_id, code in exited:
            del self.processes[worker_id]
            log.warning("%s exited with code %s", worker_id, code)
        return exited

    def detach(self, worker_ids) -> list[subprocess.Popen]:
        """Takes workers out of the pool for `stop` (which may run outside the lock)."""
        return [self.processes.pop(wid) for wid in list(worker_ids) if wid in self.processes]

    def _report_path(self, worker_id: str) -> Path:
        return Path(self._reports.name) / f"{worker_id}.json"

    def cold_starts(self) -> dict[str, dict]:
        """The cold-start reports of the live workers that finished starting."""
        reports = {}
        for worker_id in self.processes:
            try:
                reports[worker_id] = json.loads(self._report_path(worker_id).read_text())
            except (OSError, ValueError):
                continue  # still starting
        return reports

    def cleanup(self) -> None:
        self._reports.cleanup()

    def pids(self) -> dict[str, int]:
        return {worker_id: process.pid for worker_id, process in self.processes.items()}

    def __len__(self) -> int:
        return len(self.processes)


def stop(processes: list[subprocess.Popen], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to all at once (the SDK's clean exit), then SIGKILL to any still there after `grace_s`."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
