"""Send a batch job from a helper process of its own, so that killing the batch cannot make it send a job twice.

RunPod's /run takes no idempotency key, and a job cannot be found except by its id. A batch that sent
a job itself and was killed after RunPod accepted it, but before the ledger recorded the id, could
only send it again when resumed. So the batch hands each /run request to a short-lived helper
(`python -m wan_i2v.ops.handoff`) in a session of its own, which a SIGKILL of the batch, Ctrl-C or a
closed terminal does not reach. The helper reads the whole request from its stdin, sends it, records
the id in the ledger and exits.

From before the job is marked `submitting` until the helper exits, the ledger's send lock (an flock
on `LEDGER.send-lock`) is held: by the batch, and by the helper through the descriptor it inherits.
A batch takes the lock and reads the job again before it sends, so a resumed batch waits for a
helper still at work and finds the id it recorded. A job is sent again only if its helper died before
recording the id: killed on its own, or the machine lost.

POSIX only (flock, sessions): Linux and macOS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .api import ApiError, ApiSession, job_id_of
from .ledger import Ledger


@contextmanager
def send_lock(ledger_path: Path) -> Iterator[int]:
    """Hold the ledger's send lock (waiting for a helper of a killed run); yields the locked descriptor."""
    import fcntl  # POSIX only; imported here so that the rest of the operator side loads anywhere

    fd = os.open(f"{ledger_path}.send-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # a helper still at work keeps the lock through its own descriptor


def send(lock_fd: int, ledger_path: Path, key: str, api: ApiSession, url: str, body: dict) -> str:
    """POST `body` to `url` from a helper that records the id in the ledger row `key`; returns the id.

    The API key travels on the helper's stdin, never on its command line."""
    request = {
        "ledger": str(ledger_path),
        "key": key,
        "url": url,
        "body": body,
        "api": {
            "api_key": api.api_key,
            "timeout_s": api.timeout_s,
            "retries": api.retries,
            "backoff_s": api.backoff_s,
            "max_backoff_s": api.max_backoff_s,
        },
    }
    helper = subprocess.Popen(
        [sys.executable, "-m", __name__],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        pass_fds=(lock_fd,),
        start_new_session=True,
    )
    out, _ = helper.communicate(json.dumps(request).encode())
    try:
        answer = json.loads(out)
    except ValueError:
        raise ApiError(f"the helper sending the job exited with code {helper.returncode} and no answer") from None
    if "error" in answer:
        raise ApiError(answer["error"], answer["status"])
    return answer["id"]


def main() -> int:
    request = json.loads(sys.stdin.buffer.read())  # a batch killed mid-write leaves bad JSON: nothing is sent
    api = ApiSession(**request["api"])
    try:
        job_id = job_id_of(api.request("POST", request["url"], request["body"]))
    except ApiError as exc:
        answer, code = {"error": str(exc), "status": exc.status}, 1
    else:
        with Ledger(Path(request["ledger"])) as ledger:
            ledger.update(request["key"], state="submitted", job_id=job_id)
        answer, code = {"id": job_id}, 0
    try:
        os.write(sys.stdout.fileno(), json.dumps(answer).encode())
    except OSError:
        pass  # the batch is gone; the ledger holds the id for the resumed run
    return code


if __name__ == "__main__":
    sys.exit(main())
