"""The allocator setting keeps a freed large array's pages in the process (glibc only)."""

import platform
import subprocess
import sys

import pytest

PROBE = """
import os, sys
import numpy as np
from ketamine_dti.allocator import keep_freed_memory, release_freed_memory
taken = keep_freed_memory() if sys.argv[1] != "default" else None
page = os.sysconf("SC_PAGE_SIZE")
def resident_mb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * page / 1e6
before = resident_mb()
block = np.ones(50_000_000)  # 400 MB, above glibc's largest default mmap threshold
del block
if sys.argv[1] == "release":  # what a worker does between two steps
    taken = release_freed_memory(keep_bytes=int(sys.argv[2]) << 20)
print(taken, resident_mb() - before)
"""

#: A step under glibc's policy inside a process that keeps freed memory, between two steps that
#: keep it.
RETURNED_PROBE = """
import os
import numpy as np
from ketamine_dti.allocator import freed_memory_returned, keep_freed_memory
keep_freed_memory()
page = os.sysconf("SC_PAGE_SIZE")
def resident_mb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * page / 1e6
before = resident_mb()
block = np.ones(25_000_000)
del block
kept = resident_mb() - before
with freed_memory_returned():
    entered = resident_mb() - before
    block = np.ones(50_000_000)
    del block
    inside = resident_mb() - before
block = np.ones(50_000_000)
del block
print(kept, entered, inside, resident_mb() - before)
"""

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)


def _held_mb(mode: str, keep_mb: int = 0) -> tuple[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode, str(keep_mb)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[0], float(out[1])


def test_freed_memory_is_kept_for_the_next_step_only_when_asked():
    taken, kept = _held_mb("keep")
    assert taken == "True"
    assert kept > 350  # the 400 MB stay resident, ready for reuse
    default, released = _held_mb("default")
    assert default == "None"
    assert released < 50  # glibc's default returns them to the kernel


@pytest.mark.parametrize("keep_mb", [0, 100])
def test_between_steps_a_worker_gives_back_what_it_keeps_beyond_the_limit(keep_mb):
    released, held = _held_mb("release", keep_mb)
    assert released == "True"
    assert keep_mb - 10 < held < keep_mb + 50  # of the 400 MB the step freed


def test_a_step_under_glibcs_policy_holds_no_kept_memory_and_the_process_keeps_its_own():
    out = subprocess.run(
        [sys.executable, "-c", RETURNED_PROBE], capture_output=True, text=True, check=True
    ).stdout.split()
    kept, entered, inside, after = map(float, out)
    assert kept > 150  # an earlier step's 200 MB, kept by the worker
    assert entered < 50  # given back as the step starts
    assert inside < 50  # the 400 MB went back to the kernel when freed
    assert after > 350  # the setting is restored: the next step's 400 MB stay for reuse
