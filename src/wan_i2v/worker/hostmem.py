"""Hand the host memory a finished job freed back to the operating system.

glibc keeps freed heap memory for reuse instead of returning it. A job frees hundreds of MB of
short-lived buffers (decoded frames, VAE output copied to the CPU, pictures, encoder pipes), and the
holes they leave are rarely all reusable, so without a trim a worker's resident memory climbs from
job to job although nothing leaks (measured on the tiny model: about 350 MB held after 15 jobs,
all of it returned by one `malloc_trim`). A worker that grows looks like a leak to the operator and
can meet the container's memory limit, so the worker trims after every job.

It also measures the cold start's peak resident set (`reset_peak`, `peak_resident_bytes`), which the
cold-start report carries: loading must not hold the pipeline in host memory on its way to the GPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform


def _load_trim():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None  # musl and other allocators give memory back on their own terms
    name = ctypes.util.find_library("c") or "libc.so.6"
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None)
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_MALLOC_TRIM = _load_trim()


def trim_heap() -> bool:
    """Return freed heap pages to the OS; True if the C library did so. Takes a few milliseconds."""
    return bool(_MALLOC_TRIM and _MALLOC_TRIM(0))


def resident_bytes() -> int | None:
    """This process's resident set size (Linux), or None where /proc is not there."""
    return _status_bytes("VmRSS:")


def reset_peak() -> bool:
    """Start measuring this process's peak resident set afresh (Linux: VmHWM, reset through clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def peak_resident_bytes() -> int | None:
    """The largest resident set since the last `reset_peak` (or since the process started), or None."""
    return _status_bytes("VmHWM:")


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
