"""The C allocator keeps the memory a step frees, for the next step of the same process.

Why: glibc serves every allocation above its mmap threshold (at most 32 MB) from fresh pages
and returns them to the kernel on free. A standard DWI series is 175 MB as float32, and every
step makes several such arrays, so each step pays the kernel's first-touch page faults again:
on this project's 2-core virtual machine that was 103 s of system time in one standard
participant's 514 s of CPU (unused guest pages go back to the host and are slow to touch again).
With large blocks taken from the heap and freed memory kept (and three copy-free conversions),
the same run took 21 s of system time and 107 s less CPU in all, with byte-identical outputs
(benchmarks/results/speed_session20.md; the allocator changes no value).

Within a step, freed memory is kept (up to ``KEEP_FREE_BYTES``) for the step's next arrays.
Under MultiProc each step has a process of its own (``workflows.scheduling.step_process_pool``),
which takes this setting from the main process. A step run in a long-lived process (the Linear
plugin) gives back all but ``KEEP_BETWEEN_STEPS_BYTES`` when it ends (``release_freed_memory``,
``threads.limited_by_n_threads``): otherwise the process carries its largest step's memory into
every later step (one standard participant: peak PSS 3.26 GB without the release, 2.67 GB with
it, at the same CPU time). A step whose peak
matters more than its page faults runs under glibc's own policy (``freed_memory_returned``).
Other C libraries (musl, macOS) are left as they are.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import platform

LOGGER = logging.getLogger(__name__)

#: mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Allocations up to 2 GB (mallopt takes a C int) come from the heap.
HEAP_ALL_BYTES = 2**31 - 1
#: Freed memory kept at the top of a process's heap: more than one step's largest working set
#: (two float64 copies of a standard series, ~700 MB), far less than a worker's budget.
KEEP_FREE_BYTES = 1 << 30
#: Freed memory a worker keeps between two steps.
KEEP_BETWEEN_STEPS_BYTES = 1 << 28
#: glibc's defaults (mallopt(3)): blocks from 128 KiB up mapped on their own, and free memory
#: above 128 KiB at the top of the heap returned.
GLIBC_MMAP_THRESHOLD = 128 * 1024
GLIBC_TRIM_THRESHOLD = 128 * 1024

#: What ``keep_freed_memory`` set in this process (inherited by a plain fork; MultiProc's step
#: processes get it through ``workflows.scheduling.start_step_process``).
_kept_bytes: int | None = None


@functools.cache
def _glibc():
    """The C library when it is glibc (whose malloc this module tunes), else None; looked up
    once per process (``release_freed_memory`` runs after every step, and the lookup took
    1.2 ms)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:  # pragma: no cover - a Linux without a usable libc
        return None


def keep_freed_memory(keep_bytes: int = KEEP_FREE_BYTES) -> bool:
    """Tune glibc's malloc in this process (and the processes it forks from now on): large
    blocks from the heap, up to ``keep_bytes`` of freed memory kept for reuse. Returns whether
    the C library took both settings (False elsewhere than glibc)."""
    libc = _glibc()
    if libc is None:
        return False
    global _kept_bytes
    taken = _mallopt(libc, HEAP_ALL_BYTES, int(keep_bytes))
    _kept_bytes = int(keep_bytes) if taken else None
    LOGGER.debug("malloc keeps freed memory (up to %d bytes): %s", keep_bytes, taken)
    return taken


def kept_freed_bytes() -> int | None:
    """What ``keep_freed_memory`` set in this process (None: glibc's own policy)."""
    return _kept_bytes


def _mallopt(libc, mmap_threshold: int, trim_threshold: int) -> bool:
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(M_TRIM_THRESHOLD, trim_threshold)
    )


@contextlib.contextmanager
def freed_memory_returned():
    """Inside: glibc's own policy (large blocks mapped on their own, given back when freed);
    afterwards this process's ``keep_freed_memory`` setting again, if it had one.

    For a step whose peak memory matters more than its page faults. Atropos
    (``segment_tissues``, standard participant) peaked at 1.55 GB with freed memory kept and
    1.09 GB under glibc's policy, in the same 51 s.
    """
    libc = _glibc()
    kept = _kept_bytes
    if libc is None or kept is None:
        yield
        return
    _mallopt(libc, GLIBC_MMAP_THRESHOLD, GLIBC_TRIM_THRESHOLD)
    release_freed_memory(0)  # and the freed memory the worker kept from its earlier steps
    try:
        yield
    finally:
        _mallopt(libc, HEAP_ALL_BYTES, kept)


def release_freed_memory(keep_bytes: int = KEEP_BETWEEN_STEPS_BYTES) -> bool:
    """Give the kernel back the freed memory of this process's heaps but ``keep_bytes`` at
    the top (glibc's malloc_trim); returns whether any memory went back."""
    libc = _glibc()
    if libc is None:
        return False
    trim = libc.malloc_trim
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return bool(trim(int(keep_bytes)))
