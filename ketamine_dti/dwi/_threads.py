"""Thread control shared by the numba kernels (private to ``ketamine_dti.dwi``).

The kernels parallelise over voxels with numba's thread pool and call BLAS/LAPACK (OpenBLAS)
for small matrices inside that pool. Both pools must obey the caller's ``n_threads``: numba's
through ``numba.set_num_threads`` and BLAS's through threadpoolctl (pinned to one thread so the
two pools never multiply: ``n_threads=1`` means exactly one busy core).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import numba

LOGGER = logging.getLogger(__name__)

try:  # threadpoolctl ships with scikit-learn (a nilearn dependency), so it is normally present.
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - exercised only on installs without scikit-learn
    threadpool_limits = None


def resolve_n_threads(n_threads: int | None) -> int:
    """Number of worker threads to use: ``None`` means numba's default (all cores it was given)."""
    available = numba.config.NUMBA_NUM_THREADS
    if n_threads is None:
        return numba.get_num_threads()
    if int(n_threads) != n_threads or n_threads < 1:
        raise ValueError(f"n_threads must be a positive integer or None, got {n_threads!r}")
    if n_threads > available:
        LOGGER.debug("n_threads=%d capped at numba's pool size %d", n_threads, available)
    return min(int(n_threads), available)


@contextmanager
def thread_limits(n_threads: int | None, blas: bool = True) -> Iterator[int]:
    """Run the enclosed kernels on ``n_threads`` numba threads, BLAS pinned to one thread.

    ``blas=False`` skips the BLAS part for kernels that never call BLAS/LAPACK (it saves
    threadpoolctl's scan of the loaded libraries on every call).
    """
    n_workers = resolve_n_threads(n_threads)
    previous = numba.get_num_threads()
    numba.set_num_threads(n_workers)
    try:
        if threadpool_limits is None or not blas:
            yield n_workers
        else:
            # numba's np.linalg calls LAPACK through SciPy's bundled OpenBLAS: load it first so
            # that threadpoolctl sees (and pins) that library too, not only NumPy's.
            import scipy.linalg.cython_lapack  # noqa: F401

            with threadpool_limits(limits=1, user_api="blas"):
                yield n_workers
    finally:
        numba.set_num_threads(previous)
