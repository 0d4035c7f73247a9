"""Child processes that die with their parent: the dev endpoint's workers, a worker's follower ranks.

On Linux the child carries the parent-death signal (prctl PR_SET_PDEATHSIG, SIGKILL), so it goes even
when its parent could not stop it (SIGKILLed, crashed). SIGKILL, not SIGTERM: a RunPod worker given
SIGTERM first finishes its job, whose result could no longer go anywhere.

The signal is set by a few lines of Python that then exec the command (the setting survives exec), not in
a preexec_fn: that runs between fork and exec in a copy of a multi-threaded parent, where a lock held by
another thread (malloc's, the import lock) can deadlock it. The kernel sends the signal when the *thread*
that started the child ends, so start children from a thread that outlives them. The child compares its
parent with the pid it was given rather than assuming an orphan's parent is 1: in a container the parent
itself is often PID 1. macOS and Windows have no such signal: there the command runs unchanged.
"""

from __future__ import annotations

import os
import sys

# argv: the parent's pid, then the command
_SCRIPT = """import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1: PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):  # the parent died before the signal was set
    sys.exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""


def dying_with_parent(command: list[str]) -> list[str]:
    """`command` (an executable's path first) wrapped so that the process gets SIGKILL when this one ends."""
    if not sys.platform.startswith("linux"):
        return command
    return [sys.executable, "-c", _SCRIPT, str(os.getpid()), *command]
