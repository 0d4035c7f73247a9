"""One video on several GPUs: the worker's ranks, and everything that crosses between them.

Rank 0 is the RunPod worker: it validates jobs, reports progress and stores videos. Ranks 1..N-1 are its
followers: child processes (`python -m wan_i2v.worker.follower`) that load the same engine and run each job
rank 0 hands them. This module alone knows that there are ranks; the engine asks it:

- who computes what: `once` runs a step on rank 0 and gives its tensors to every rank (the text and the
  condition encoding), `on_leader` runs one on rank 0 only (the VAE decode), `guided` spreads a step's
  conditional and unconditional passes over the guidance groups, and `apply` puts both experts under
  diffusers' context parallelism (Ulysses all-to-all, ring attention, or both): each rank of a group
  holds a slice of the video's tokens;
- how a job reaches every rank: rank 0 writes the job's parameters to each follower's standard input,
  where a follower waits between jobs (no timeout: an idle worker is not a failure), and which closes
  when rank 0 ends;
- what a lost rank does: every collective has a timeout (WAN_RANK_TIMEOUT_S) and rank 0 watches its
  followers' processes. A follower that dies or hangs fails the job in flight with an error naming it;
  the worker then kills its followers and exits non-zero (after its answer has been posted) so RunPod
  replaces it. Followers die with rank 0 (`wan_i2v.parent_death`) and exit on their own first error.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..errors import JobError, SettingsError
from ..parent_death import dying_with_parent
from .levers import PROBE_SIZE
from .settings import EngineOptions, ParallelOptions

log = logging.getLogger(__name__)

# Backends whose attention returns its log-sum-exp, which ring attention needs to merge its partial results.
RING_BACKENDS = ("_native_cudnn", "flash", "sage")
COLD_START_S = 1800.0  # how long the ranks wait for each other's cold start (loads, caches) to reach the first exchange
EXIT_GRACE_S = 5.0  # after a lost rank: time for the SDK to post the failed job's answer before the worker exits
IDLE_GRACE_S = 1.0  # a rank lost between jobs: time for rank 0's own cold-start error, if any, to end it instead
_HEADER = struct.Struct("!I")
# The cold-start self-checks run one forward at this size: its tokens (16x16 patches x latent frames) split evenly.
PROBE_TOKENS = (PROBE_SIZE[0] // 16) * (PROBE_SIZE[1] // 16) * ((PROBE_SIZE[2] - 1) // 4 + 1)


class LostRankError(JobError):
    """A rank died or stopped answering during a job; the worker exits and RunPod replaces it."""

    refresh_worker = True


@dataclass(frozen=True)
class Layout:
    """How a worker's ranks share each denoising step: `cfg` guidance groups, each splitting the tokens over
    `ulysses` x `ring` ranks (ranks = cfg x ulysses x ring)."""

    ranks: int = 1
    ulysses: int = 1
    ring: int = 1
    cfg: int = 1

    @property
    def context(self) -> int:
        """How many ranks hold a slice of each frame's tokens (the count a frame's token number must divide by)."""
        return self.ulysses * self.ring

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def count_ranks(options: ParallelOptions) -> int:
    """WAN_GPUS, or every visible GPU (one rank on a machine without one)."""
    if options.gpus is not None:
        if torch.cuda.is_available() and options.gpus > torch.cuda.device_count():
            raise SettingsError(f"WAN_GPUS={options.gpus}: this machine has {torch.cuda.device_count()} GPUs")
        return options.gpus
    return max(torch.cuda.device_count(), 1) if torch.cuda.is_available() else 1


def choose_layout(ranks: int, heads: int, options: ParallelOptions, default_mode: str) -> Layout:
    """Guidance-parallel where it pays (an even count, a worker whose jobs are guided by default), the rest
    context-parallel: Ulysses over as many ranks as the attention heads divide by, ring over the rest."""
    if ranks == 1:
        return Layout()
    if options.cfg == "on" and ranks % 2:
        raise SettingsError(f"WAN_CFG_PARALLEL=on needs an even WAN_GPUS (two guidance groups); it is {ranks}")
    guided = options.cfg == "on" or (options.cfg == "auto" and default_mode == "quality")
    cfg = 2 if guided and ranks % 2 == 0 else 1
    degree = ranks // cfg
    if PROBE_TOKENS % degree:
        allowed = [n for n in range(2, 17) if PROBE_TOKENS % (n // (2 if n % 2 == 0 and guided else 1)) == 0]
        raise SettingsError(
            f"WAN_GPUS={ranks}: {degree} ranks cannot split the tokens of the cold start's 480p check evenly; "
            f"allowed WAN_GPUS: {', '.join(map(str, allowed))}"
        )
    if options.context == "ring":
        ulysses = 1
    elif options.context == "ulysses":
        if heads % degree:
            raise SettingsError(
                f"WAN_CONTEXT_PARALLEL=ulysses over {degree} ranks: the model's {heads} attention heads do not "
                f"divide by {degree}; allowed degrees: {[d for d in range(2, heads + 1) if heads % d == 0]} "
                "(or WAN_CONTEXT_PARALLEL=auto, which adds ring attention for the rest)"
            )
        ulysses = degree
    else:
        ulysses = math.gcd(heads, degree)
    return Layout(ranks=ranks, ulysses=ulysses, ring=degree // ulysses, cfg=cfg)


class Ranks:
    """This process's place among the worker's ranks. `Ranks()` is a single-rank worker: every method runs
    the step here and nothing crosses."""

    def __init__(
        self,
        rank: int = 0,
        world: int = 1,
        options: ParallelOptions | None = None,
        followers: list[subprocess.Popen] | None = None,
        inbox=None,
        leave: Callable[[int], Any] | None = None,
    ):
        self.rank, self.world = rank, world
        self.options = options or ParallelOptions()
        self.followers = followers or []  # rank 0: follower rank i + 1 is followers[i]
        self.inbox = inbox  # a follower: the stream its jobs arrive on
        self.layout = Layout(ranks=world)
        self._cfg_group = None
        self._cfg_rank = 0
        self._control = None  # a gloo group for small objects, whatever the tensors' backend
        self._lost: str | None = None  # why the worker can no longer serve
        self._in_job = False  # inside a job's exchanges (Engine.generate)
        self._busy = False  # answering a job (Worker.handle): a rank lost now ends the worker after the answer
        self._exiting = False  # the worker is ending (a lost rank) or being shut down
        self._lock = threading.Lock()
        self._shut_down = False
        self._leave = leave or _exit_process  # how rank 0 ends the worker after a lost rank (a test's stays)

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def device_type(self) -> str:
        return "cuda" if torch.cuda.is_available() else "cpu"

    def engine_options(self, options: EngineOptions) -> EngineOptions:
        """Each rank computes on its own GPU."""
        if self.world == 1:
            return options
        return replace(options, device=self.engine_device())

    # ---- starting -------------------------------------------------------------------------------------
    @classmethod
    def start(
        cls, options: ParallelOptions, command: list[str] | None = None, leave: Callable[[int], Any] | None = None
    ) -> Ranks:
        """Rank 0: start the followers and join them in one process group (a single rank starts nothing).

        `command` runs each follower (default: this module's `main`, the worker's); it must end in
        `serve_as_follower`, as bench/ does with its in-memory pipeline. `leave(1)` ends the worker after a
        lost rank (a test that is rank 0 itself passes one that does not end the test run)."""
        world = count_ranks(options)
        if world == 1:
            return cls()
        if torch.cuda.is_available():
            _check_shared_memory()
        address = f"tcp://127.0.0.1:{_free_port()}"
        env = {
            **os.environ,
            "WAN_RANK_ADDRESS": address,
            "WAN_RANK_WORLD": str(world),
            # NCCL: a timed-out or aborted exchange raises in the job (and is answered) instead of ending the process
            "TORCH_NCCL_ASYNC_ERROR_HANDLING": os.environ.get("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2"),
            # the followers' settings are rank 0's, however rank 0 got them (bench/ builds them in code)
            "WAN_CFG_PARALLEL": options.cfg,
            "WAN_CONTEXT_PARALLEL": options.context,
            "WAN_RANK_TIMEOUT_S": str(options.timeout_s),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH")])),
        }
        followers = [
            subprocess.Popen(
                dying_with_parent(command or [sys.executable, "-m", "wan_i2v.worker.follower"]),
                stdin=subprocess.PIPE,
                env={**env, "WAN_RANK": str(rank)},
            )
            for rank in range(1, world)
        ]
        ranks = cls(0, world, options, followers=followers, leave=leave)
        # watched from the start: a follower that fails to start ends the cold start, naming it, at once
        threading.Thread(target=ranks._watch, name="wan-ranks-watch", daemon=True).start()
        try:
            ranks._join_group(address)
        except Exception:
            ranks.shutdown()
            raise
        log.info("ranks: %d (followers %s)", world, ", ".join(str(p.pid) for p in followers))
        return ranks

    @classmethod
    def join(cls) -> Ranks:
        """A follower: join rank 0's process group (from the environment rank 0 started it with)."""
        rank, world = int(os.environ["WAN_RANK"]), int(os.environ["WAN_RANK_WORLD"])
        ranks = cls(rank, world, ParallelOptions.from_env(os.environ), inbox=sys.stdin.buffer)
        ranks._join_group(os.environ["WAN_RANK_ADDRESS"])
        return ranks

    def _join_group(self, address: str) -> None:
        timeout = timedelta(seconds=self.options.timeout_s)
        if self.device_type == "cuda":
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
            torch.cuda.set_device(self.rank)
        backend = "nccl" if self.device_type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=address, rank=self.rank, world_size=self.world, timeout=timeout)
        self._control = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else dist.group.WORLD

    # ---- the layout -----------------------------------------------------------------------------------
    def apply(self, experts: list[torch.nn.Module], heads: int, attention: str, default_mode: str) -> Layout:
        """Choose the layout and put each expert under context parallelism (cold start, on every rank)."""
        layout = choose_layout(self.world, heads, self.options, default_mode)
        self.layout = layout
        if self.world == 1:
            return layout
        # The ranks' cold starts differ until here (rank 0 alone reads the text encoder and writes the prepared
        # cache): they meet once, with the cold start's own bound, naming any rank that does not arrive.
        dist.monitored_barrier(self._control, timeout=timedelta(seconds=COLD_START_S), wait_all_ranks=True)
        if layout.ring > 1 and attention not in RING_BACKENDS:
            raise SettingsError(
                f"ring attention over {layout.ring} ranks needs an attention backend that returns its log-sum-exp "
                f"({', '.join(RING_BACKENDS)}); this worker's is {attention}. Set WAN_GPUS so that the context "
                f"degree divides the {heads} heads (Ulysses), or WAN_ATTENTION to one of those"
            )
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(
            self.device_type, (layout.cfg, layout.ring, layout.ulysses), mesh_dim_names=("cfg", "ring", "ulysses")
        )
        if layout.context > 1:
            for expert in experts:
                _context_parallel(expert, mesh, layout, torch.device(self.engine_device()))
        if layout.cfg > 1:
            self._cfg_group = mesh["cfg"].get_group()
            self._cfg_rank = mesh["cfg"].get_local_rank()
        return layout

    def engine_device(self) -> str:
        return f"cuda:{self.rank}" if self.device_type == "cuda" else "cpu"

    def agree(self, facts: dict) -> None:
        """Every rank must have made the same cold-start choices (a lever that fell back on one rank only
        would make them compute different things): a SettingsError naming the rank that differs."""
        if self.world == 1:
            return
        everyone: list[Any] = [None] * self.world
        dist.all_gather_object(everyone, facts, group=self._control)
        for rank, theirs in enumerate(everyone):
            if theirs != everyone[0]:
                raise SettingsError(f"rank {rank} made other cold-start choices than rank 0: {theirs} vs {everyone[0]}")

    # ---- who computes what ----------------------------------------------------------------------------
    def once(self, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """`compute()` on rank 0; every rank gets its result (tensors broadcast, on each rank's device)."""
        if self.world == 1:
            return compute()
        result = compute() if self.leader else None
        shapes = [{k: _describe(v) for k, v in result.items()}] if self.leader else [None]
        dist.broadcast_object_list(shapes, src=0, group=self._control)
        shared = {}
        device = torch.device(self.engine_device())
        for key, what in shapes[0].items():
            if what[0] == "value":
                shared[key] = what[1]
                continue
            _, shape, dtype = what
            tensor = (
                result[key].to(device).contiguous() if self.leader else torch.empty(shape, dtype=dtype, device=device)
            )
            dist.broadcast(tensor, src=0)
            shared[key] = result[key] if self.leader else tensor
        return shared

    def on_leader(self, compute: Callable[[], Any]) -> Any:
        """`compute()` on rank 0 only (None elsewhere)."""
        return compute() if self.leader else None

    def guided(
        self, cond: Callable[[], torch.Tensor], uncond: Callable[[], torch.Tensor], scale: float
    ) -> torch.Tensor:
        """One step's noise prediction with classifier-free guidance at `scale` (none at 1 or below). With two
        guidance groups each runs one pass and the two are exchanged; every rank ends with the same result."""
        if scale <= 1.0:
            return cond()
        if self.layout.cfg == 1:
            noise = cond()
            negative = uncond()
        else:
            mine = cond() if self._cfg_rank == 0 else uncond()
            both = [torch.empty_like(mine) for _ in range(2)]
            dist.all_gather(both, mine.contiguous(), group=self._cfg_group)
            noise, negative = both
        return negative + scale * (noise - negative)

    def reset_peak(self) -> None:
        """A job starts: its peak GPU memory is measured from here (on this rank; no exchange)."""
        if self.device_type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def peak_memory_gb(self) -> list[float] | None:
        """Each rank's peak GPU memory since `reset_peak` (None on a CPU); the counter is left as it is, for
        whoever reads it after the job (bench/)."""
        if self.device_type != "cuda":
            return None
        mine = torch.cuda.max_memory_allocated() / 1024**3
        if self.world == 1:
            return [round(mine, 2)]
        everyone: list[Any] = [None] * self.world
        dist.all_gather_object(everyone, round(mine, 2), group=self._control)
        return everyone

    def report(self, peak: list[float] | None = None) -> dict:
        """`engine.parallel` of a job's output, and the cold-start report's line."""
        facts: dict[str, Any] = self.layout.as_dict()
        if peak is not None:
            facts["peak_memory_gb"] = peak
        return facts

    # ---- how a job reaches every rank ------------------------------------------------------------------
    @contextmanager
    def job(self, message: Any) -> Iterator[None]:
        """Rank 0: hand `message` to every follower, then run the job's steps. Any failure inside a job on
        several ranks leaves them out of step: the answer names the lost rank when one is lost, and the
        worker exits after answering."""
        if self.world == 1 or not self.leader:
            yield
            return
        if self._lost:
            raise LostRankError(self._lost)
        self._in_job = True
        try:
            data = pickle.dumps(message)
            for rank, follower in enumerate(self.followers, start=1):
                try:
                    follower.stdin.write(_HEADER.pack(len(data)) + data)
                    follower.stdin.flush()
                except OSError:
                    self._note_lost(rank, follower)
            if self._lost:
                raise LostRankError(self._lost)
            yield
        except Exception as exc:
            self._fail(exc)
        finally:
            self._in_job = False

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Rank 0 answers a job (Worker.handle): a rank lost meanwhile ends the worker after the answer, not
        during it (a finished video is still stored and returned)."""
        self._busy = True
        try:
            yield
        finally:
            self._busy = False
            if self._lost:
                self._exit_soon()

    def follow(self, run: Callable[[Any], None]) -> None:
        """A follower's life after its cold start: each job rank 0 sends, until rank 0 closes the stream."""
        while True:
            header = self.inbox.read(_HEADER.size)
            if len(header) < _HEADER.size:
                log.info("rank %d: rank 0 is gone; exiting", self.rank)
                return
            run(pickle.loads(self.inbox.read(_HEADER.unpack(header)[0])))

    # ---- what a lost rank does -------------------------------------------------------------------------
    def _fail(self, exc: Exception) -> None:
        """Rank 0, a job failed: name a lost rank if there is one (waiting briefly for its exit to show), else
        say that a rank did not answer in time, or keep rank 0's own error; the worker ends either way."""
        own = isinstance(exc, (JobError, torch.OutOfMemoryError))  # rank 0's own failure, not an exchange's
        deadline = time.monotonic() + 3.0
        while self._lost is None and not own and time.monotonic() < deadline:
            self._check_followers()
            time.sleep(0.1)
        lost = self._lost is not None
        timed_out = not lost and not own and _is_collective_error(exc)
        if timed_out:
            how = (
                f"did not answer within WAN_RANK_TIMEOUT_S={self.options.timeout_s:g} s"
                if "timed out" in str(exc).lower()
                else "stopped answering"
            )
            self._lost = f"a rank {how} ({self._states()}; {exc}); this worker will be replaced"
        elif not lost:
            self._lost = f"rank 0 failed during a job on {self.world} ranks ({type(exc).__name__}), leaving the others"
        self._exit_soon()
        if lost or timed_out:
            raise LostRankError(self._lost) from exc
        if isinstance(exc, JobError):  # the job's own error stands; the worker goes all the same
            exc.refresh_worker = True
        raise exc

    def _states(self) -> str:
        """Each follower's process state as Linux reports it ("rank 1: T (stopped)"): a hung rank is often
        visible there (stopped, or a zombie); a rank stuck inside the GPU still shows as running."""
        states = []
        for rank, follower in enumerate(self.followers, start=1):
            try:
                state = Path(f"/proc/{follower.pid}/status").read_text().split("State:")[1].splitlines()[0].strip()
            except (OSError, IndexError):
                state = "unknown"
            states.append(f"rank {rank}: {state}")
        return ", ".join(states)

    def _note_lost(self, rank: int, follower: subprocess.Popen) -> None:
        if self._lost is None:
            code = follower.poll()
            if code is None:
                how = "stopped reading its jobs"
            elif code < 0:
                how = f"was killed by signal {-code}"
            else:
                how = f"exited with code {code}"
            self._lost = f"rank {rank} of {self.world} was lost (it {how}); this worker will be replaced"
            log.error("%s", self._lost)

    def _check_followers(self) -> None:
        for rank, follower in enumerate(self.followers, start=1):
            if follower.poll() is not None:
                self._note_lost(rank, follower)

    def _watch(self) -> None:
        """Rank 0's watch on its followers: a lost one between jobs ends the worker at once; during a job, the
        job's own collectives fail (at once on a closed connection, at the timeout on a hang)."""
        while not self._exiting:
            self._check_followers()
            if self._lost and self._in_job and self.device_type == "cuda":
                _abort_exchanges()  # NCCL does not notice a dead peer by itself: the job's exchanges fail now
            if self._lost and not self._busy and not self._in_job:
                self._exit_soon(IDLE_GRACE_S)
                return
            time.sleep(0.5)

    def _exit_soon(self, grace: float = EXIT_GRACE_S) -> None:
        with self._lock:
            if self._exiting:
                return
            self._exiting = True

        def leave() -> None:
            time.sleep(grace)
            if self._shut_down:  # rank 0 failed its own cold start meanwhile: its error, not this exit, is the end
                return
            log.error("exiting: %s", self._lost)
            self._stop_followers()
            self._leave(1)

        threading.Thread(target=leave, name="wan-ranks-exit", daemon=True).start()

    def shutdown(self) -> None:
        """Rank 0: stop every follower, on purpose (they also exit on their own when rank 0's streams close)."""
        with self._lock:
            self._exiting = True  # the watch stands down: these exits are not losses
            self._shut_down = True
        self._stop_followers()

    def _stop_followers(self) -> None:
        for follower in self.followers:
            if follower.poll() is None:
                follower.kill()
        for follower in self.followers:
            try:
                follower.wait(10)
            except subprocess.TimeoutExpired:
                pass


def _context_parallel(expert: torch.nn.Module, mesh, layout: Layout, device: torch.device) -> None:
    """diffusers' `enable_parallelism`, on our mesh: that method derives each rank's device from
    `torch.accelerator`, which counts no device on a CPU (and divides by it), so the gloo ranks of the tests
    could not use it. The steps are its own: the config set up on the mesh, handed to every attention
    processor, and the model's `_cp_plan` hooks that split the tokens at the first block and gather them at
    the output."""
    from diffusers.hooks.context_parallel import apply_context_parallel
    from diffusers.models._modeling_parallel import ContextParallelConfig, ParallelConfig
    from diffusers.models.attention import AttentionModuleMixin
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    processors = [
        module.processor
        for module in expert.modules()
        if isinstance(module, AttentionModuleMixin) and hasattr(module.processor, "_parallel_config")
    ]
    for processor in processors:  # as enable_parallelism checks: a backend without it would skip the exchange
        backend = processor._attention_backend or _AttentionBackendRegistry.get_active_backend()[0]
        if not _AttentionBackendRegistry._is_context_parallel_available(AttentionBackendName(backend)):
            raise SettingsError(
                f"attention backend {AttentionBackendName(backend).value} cannot split tokens over ranks; allowed: "
                f"{', '.join(sorted(b.value for b in _AttentionBackendRegistry._supports_context_parallel))} "
                "(WAN_ATTENTION)"
            )
    context = ContextParallelConfig(ring_degree=layout.ring, ulysses_degree=layout.ulysses, mesh=mesh)
    config = ParallelConfig(context_parallel_config=context)
    config.setup(dist.get_rank(), dist.get_world_size(), device, mesh=mesh)
    expert._parallel_config = config
    for processor in processors:
        processor._parallel_config = config
    apply_context_parallel(expert, context, expert._cp_plan)


def _abort_exchanges() -> None:
    """Abort every process group's pending NCCL work, so that rank 0's blocked exchange raises."""
    abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
    if abort is not None:
        try:
            abort()
        except Exception as exc:  # best effort: the collective timeout still bounds the job
            log.warning("aborting the exchanges failed: %s", exc)


def _exit_process(code: int) -> None:
    """The worker's end: at once, whatever other threads (the SDK's) are doing."""
    logging.shutdown()
    os._exit(code)


def _describe(value: Any) -> tuple:
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype)
    return ("value", value)


def _is_collective_error(exc: BaseException) -> bool:
    """An exchange between ranks that failed (gloo and NCCL raise RuntimeErrors naming themselves)."""
    words = ("gloo", "nccl", "c10d", "timed out", "connection")
    return isinstance(exc, dist.DistError) or (
        isinstance(exc, RuntimeError) and any(word in str(exc).lower() for word in words)
    )


SHM_MIN_BYTES = 1 << 30


def _check_shared_memory(path: str = "/dev/shm") -> None:
    """NCCL stages transfers between GPUs of one machine in /dev/shm where they have no direct path; a
    container's default of 64 MB fails it ("failed to extend /dev/shm/nccl-... No space left on device")."""
    try:
        stats = os.statvfs(path)
    except OSError:
        return
    size = stats.f_frsize * stats.f_blocks
    if size < SHM_MIN_BYTES:
        log.warning(
            "%s is %d MiB: NCCL may fail between GPUs without NVLink; give the container more shared memory "
            "(1 GiB or more), or set NCCL_SHM_DISABLE=1 where the GPUs are linked by NVLink",
            path,
            size >> 20,
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_as_follower(load: Callable[[Ranks], Any]) -> None:
    """A follower process's whole life: join rank 0, `load(ranks)` an engine (the same cold start as rank 0's),
    then each job rank 0 hands over, until rank 0 ends. Exits 1 on its first error (rank 0 sees a lost rank)."""
    rank = os.environ["WAN_RANK"]
    logging.basicConfig(
        level=os.environ.get("WAN_LOG_LEVEL", "INFO"),
        format=f"%(asctime)s %(levelname)s rank {rank} %(name)s: %(message)s",
    )
    try:
        ranks = Ranks.join()
        engine = load(ranks)
        ranks.follow(engine.follow)
    except Exception:
        log.exception("rank %s failed; exiting", rank)
        logging.shutdown()
        os._exit(1)
    logging.shutdown()
    os._exit(0)
