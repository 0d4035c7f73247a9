"""The dev endpoint's queue as a pure state machine: jobs, their states and the workers that hold them.

No threads, processes, sockets or sleeping: every method that depends on time takes `now` (seconds,
as `time.time()` gives), so a test can drive it step by step. The endpoint wraps it in a lock and
does the waiting; the process pool tells it which worker ids exist.

    IN_QUEUE --take--> IN_PROGRESS --done--> COMPLETED | FAILED
        |                  |--cancel / worker exited / executionTimeout--> CANCELLED | FAILED | TIMED_OUT
        |--cancel / purge--> CANCELLED, --ttl--> TIMED_OUT;   FAILED | TIMED_OUT --retry--> IN_QUEUE
"""

from __future__ import annotations

import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

IN_QUEUE, IN_PROGRESS = "IN_QUEUE", "IN_PROGRESS"
COMPLETED, FAILED, CANCELLED, TIMED_OUT = "COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"
TERMINAL = frozenset((COMPLETED, FAILED, CANCELLED, TIMED_OUT))
INITIALIZING, IDLE, RUNNING = "initializing", "idle", "running"  # a worker's states, as /health counts them
POLICY_LIMITS = ("executionTimeout", "ttl")  # milliseconds


def is_count(value: Any) -> bool:
    """A whole number >= 0 (and not a bool, which Python counts as an int)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def checked_policy(policy: Any) -> dict:
    """A job's `policy`, or ValueError: `expire` does arithmetic on its limits."""
    if policy is None:
        return {}
    if not isinstance(policy, dict) or not all(is_count(policy.get(name, 0)) for name in POLICY_LIMITS):
        raise ValueError('policy must be {"executionTimeout": ms, "ttl": ms} with whole numbers >= 0')
    return policy


@dataclass
class Job:
    id: str
    input: Any
    queued: float
    webhook: str | None = None
    policy: dict = field(default_factory=dict)
    s3_config: dict | None = None
    status: str = IN_QUEUE
    output: Any = None
    error: Any = None
    started: float | None = None
    finished: float | None = None
    worker_id: str | None = None
    retries: int = 0

    def view(self, now: float) -> dict:
        """The job as /status and /runsync show it."""
        body = {"id": self.id, "status": self.status, "delayTime": int(((self.started or now) - self.queued) * 1000)}
        if self.started:
            body["executionTime"] = int(((self.finished or now) - self.started) * 1000)
        if self.output is not None:
            body["output"] = self.output
        if self.error is not None:
            body["error"] = self.error
        if self.worker_id:
            body["workerId"] = self.worker_id
        return body


@dataclass
class Worker:
    """What the queue knows of a worker: not its process, only whether it holds a job."""

    id: str
    state: str = INITIALIZING  # until its first job-take request
    job_id: str | None = None
    idle_since: float = 0.0


class JobQueue:
    """Jobs and workers. `on_finish(job)` is called once each time a job reaches a terminal state
    (the endpoint posts its webhook and wakes waiters there)."""

    def __init__(self, retention_s: float = 1800.0, on_finish: Callable[[Job], None] | None = None):
        self.retention_s = retention_s
        self.on_finish = on_finish or (lambda job: None)
        self.jobs: dict[str, Job] = {}
        self.waiting: deque[str] = deque()
        self.workers: dict[str, Worker] = {}
        self.stop_requests: dict[str, set[str]] = {}  # worker id -> ids of jobs it must stop
        self.submissions: list[dict] = []
        self.handed_out: Counter[str] = Counter()  # job id -> times given to a worker
        self.finished_by_worker: Counter[str] = Counter()  # job id -> final results accepted from workers
        self.retried = 0

    # ---- the client's side -------------------------------------------------------------------------
    def submit(self, body: dict, now: float) -> Job:
        """Queue a /run body; ValueError (nothing queued) for a malformed policy."""
        job = Job(
            id=f"{uuid.uuid4()}-dev",
            input=body.get("input"),
            queued=now,
            webhook=body.get("webhook"),
            policy=checked_policy(body.get("policy")),
            s3_config=body.get("s3Config"),
        )
        self.jobs[job.id] = job
        self.waiting.append(job.id)
        self.submissions.append({"id": job.id, "input": job.input})
        return job

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def cancel(self, job_id: str, now: float) -> Job | None:
        """Cancels a queued or running job (a running one's worker is asked to stop it); a finished
        job is left as it is. Returns the job, or None if there is no such job."""
        job = self.jobs.get(job_id)
        if job is None:
            return None
        if job.status == IN_QUEUE:
            self.waiting.remove(job.id)
            self._finish(job, CANCELLED, now)
        elif job.status == IN_PROGRESS:
            self._ask_to_stop(job)
            self._finish(job, CANCELLED, now)
        return job

    def retry(self, job_id: str, now: float) -> bool:
        """Queues a FAILED or TIMED_OUT job again, as RunPod's /retry does; anything else is refused."""
        job = self.jobs.get(job_id)
        if job is None or job.status not in (FAILED, TIMED_OUT):
            return False
        job.status, job.output, job.error = IN_QUEUE, None, None
        job.queued, job.started, job.finished, job.worker_id = now, None, None, None
        job.retries += 1
        self.retried += 1
        self.waiting.append(job.id)
        return True

    def purge(self, now: float) -> int:
        """Cancels every queued job (running ones carry on); returns how many."""
        removed = list(self.waiting)
        self.waiting.clear()
        for job_id in removed:
            self._finish(self.jobs[job_id], CANCELLED, now)
        return len(removed)

    def health(self) -> dict:
        statuses = Counter(job.status for job in self.jobs.values())
        states = Counter(worker.state for worker in self.workers.values())
        return {
            "jobs": {
                "completed": statuses[COMPLETED],
                "failed": statuses[FAILED] + statuses[TIMED_OUT],
                "inProgress": statuses[IN_PROGRESS],
                "inQueue": statuses[IN_QUEUE],
                "retried": self.retried,
            },
            "workers": {
                "idle": states[IDLE],
                "initializing": states[INITIALIZING],
                "ready": states[IDLE],
                "running": states[RUNNING],
                "throttled": 0,
                "unhealthy": 0,
            },
        }

    # ---- the workers' side (RunPod's job-take protocol) ---------------------------------------------
    def add_worker(self, worker_id: str) -> None:
        self.workers[worker_id] = Worker(worker_id)

    def remove_worker(self, worker_id: str, now: float, reason: str = "exited") -> None:
        """The worker is gone: a job it was running fails, as on RunPod when a worker dies."""
        worker = self.workers.pop(worker_id, None)
        self.stop_requests.pop(worker_id, None)
        job = self.jobs.get(worker.job_id or "") if worker else None
        if job is not None and job.status == IN_PROGRESS:
            self._finish(job, FAILED, now, error=f"worker {worker_id} {reason} while running the job")

    def take(self, worker_id: str, now: float) -> dict | None:
        """Hands the next queued job to a worker with none; None if there is nothing for it (or no such
        worker). A job is handed out once; only /retry queues it again."""
        worker = self.workers.get(worker_id)
        if worker is None:
            return None
        if worker.state == INITIALIZING:  # its first request: the cold start is over
            worker.state, worker.idle_since = IDLE, now
        if worker.job_id is not None or not self.waiting:
            return None
        job = self.jobs[self.waiting.popleft()]
        job.status, job.started, job.worker_id = IN_PROGRESS, now, worker_id
        worker.state, worker.job_id = RUNNING, job.id
        self.handed_out[job.id] += 1
        taken = {"id": job.id, "input": job.input}
        if job.s3_config:
            taken["s3Config"] = job.s3_config
        return taken

    def done(self, worker_id: str, job_id: str, data: dict, now: float) -> bool:
        """A worker posts progress (status IN_PROGRESS) or its result. A result for a job that is no
        longer this worker's running job (cancelled, timed out, unknown) is dropped. Returns True when
        the worker asked to be stopped (`stopPod`)."""
        job = self.jobs.get(job_id)
        if job is None or job.worker_id != worker_id or job.status != IN_PROGRESS:
            return False
        if data.get("status") == IN_PROGRESS:
            job.output = data.get("output")
            return False
        self.finished_by_worker[job_id] += 1
        if data.get("error"):
            self._finish(job, FAILED, now, output=data.get("output"), error=data["error"])
        else:
            self._finish(job, COMPLETED, now, output=data.get("output"))
        return bool(data.get("stopPod"))

    def has_stop_requests(self, worker_id: str) -> bool:
        return bool(self.stop_requests.get(worker_id))

    def pop_stop_requests(self, worker_id: str) -> list[str]:
        """The jobs this worker must stop (cancelled or timed out while it ran them), each given once."""
        return sorted(self.stop_requests.pop(worker_id, set()))

    # ---- time ---------------------------------------------------------------------------------------
    def expire(self, now: float) -> None:
        """Applies the job policies: executionTimeout (ms running), ttl (ms queued); then forgets
        finished jobs older than the retention."""
        for job in list(self.jobs.values()):
            timeout, ttl = job.policy.get("executionTimeout"), job.policy.get("ttl")
            if job.status == IN_PROGRESS and timeout and (now - job.started) * 1000 > timeout:
                self._ask_to_stop(job)
                self._finish(job, TIMED_OUT, now, error=f"execution took longer than {timeout} ms")
            elif job.status == IN_QUEUE and ttl and (now - job.queued) * 1000 > ttl:
                self.waiting.remove(job.id)
                self._finish(job, TIMED_OUT, now, error=f"waited in the queue longer than {ttl} ms")
            if job.finished is not None and now - job.finished > self.retention_s:
                del self.jobs[job.id]

    # ---- what the pool needs to scale ---------------------------------------------------------------
    def demand(self) -> int:
        """Workers the jobs could use now: the running ones plus the queued."""
        return sum(1 for w in self.workers.values() if w.state == RUNNING) + len(self.waiting)

    def idle_for(self, idle_timeout_s: float, now: float) -> list[str]:
        """Workers idle longer than the timeout, longest idle first."""
        idle = [w for w in self.workers.values() if w.state == IDLE and now - w.idle_since > idle_timeout_s]
        return [w.id for w in sorted(idle, key=lambda w: w.idle_since)]

    # ---- internals ----------------------------------------------------------------------------------
    def _ask_to_stop(self, job: Job) -> None:
        if job.worker_id is not None:
            self.stop_requests.setdefault(job.worker_id, set()).add(job.id)

    def _finish(self, job: Job, status: str, now: float, output: Any = None, error: Any = None) -> None:
        job.status, job.finished, job.output, job.error = status, now, output, error
        worker = self.workers.get(job.worker_id or "")
        if worker is not None and worker.job_id == job.id:
            worker.job_id, worker.state, worker.idle_since = None, IDLE, now
        self.on_finish(job)
