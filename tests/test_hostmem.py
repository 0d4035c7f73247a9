"""The heap trim after each job really hands freed memory back (glibc Linux, where workers run)."""

import platform

import pytest

from wan_i2v.worker.hostmem import resident_bytes, trim_heap

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")


def test_trim_returns_freed_holes_in_the_heap_to_the_os():
    # 300 MB in 4 KB blocks (below glibc's mmap threshold, so they come from the heap), then every
    # block freed but one in fifty: the survivors pin the heap, so glibc keeps the holes resident.
    blocks = [bytes(4000) + index.to_bytes(4, "little") for index in range(75_000)]
    pins = blocks[::50]
    del blocks
    held = resident_bytes()
    assert trim_heap() is True
    freed = held - resident_bytes()
    assert freed > 150 * 2**20, f"the trim gave back only {freed / 2**20:.0f} MiB of about 290 MiB of holes"
    assert len(pins) == 1500


def test_resident_bytes_reads_this_process():
    before = resident_bytes()
    ballast = bytearray(64 * 2**20)
    ballast[::4096] = b"\1" * len(ballast[::4096])  # touch every page
    assert resident_bytes() - before > 60 * 2**20
