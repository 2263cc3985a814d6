"""The one way this package limits threads: a context manager that restores every pool on exit.

Environment variables such as ``OPENBLAS_NUM_THREADS`` are read when a library loads, so setting
them inside a running Nipype worker does nothing, and they leak into the next node the reused
worker runs. Here each pool is limited through its runtime control and put back afterwards:

- numba's pool (the DWI kernels) through ``numba.set_num_threads``;
- BLAS/LAPACK and OpenMP through threadpoolctl;
- ITK (antspyx) through ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``, the only control antspyx
  offers. ITK reads it when it creates its global thread pool, at a process's first ANTs call,
  so a process keeps the count of its first ANTs node (the App gives every node the same
  count), and a forked process keeps its parent's pool if the parent made an ANTs call first.
  MultiProc's step processes fork from a server that makes none
  (``workflows.scheduling.step_process_pool``); the Linear plugin runs the steps in the main
  process, where the participant level pins the count (``pin_itk_threads``) before anything.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import wraps

import numba

from ketamine_dti.allocator import release_freed_memory

LOGGER = logging.getLogger(__name__)

#: The variable ITK reads for its default thread count.
ITK_THREADS_VARIABLE = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"

try:  # threadpoolctl ships with scikit-learn (a nilearn dependency), so it is normally present.
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - exercised only on installs without scikit-learn
    threadpool_limits = None


def pin_itk_threads(n_threads: int) -> None:
    """Give ITK ``n_threads`` in this process before its first ANTs call, so that the steps it
    runs itself (the Linear plugin) and every process it forks get that count.

    A forked worker inherits its parent's ITK pool once the parent has made any ANTs call
    (reading an image is enough), and then ``limit_threads`` in the worker changes nothing:
    measured, a child's 1-thread SyN ran on 2 threads (cpu 27.8 s, wall 16.1 s) after its
    parent had read one image, on 1 (26.3 s, 26.6 s) otherwise. Two threads per worker
    oversubscribe ``--nprocs`` and make the registrations differ from run to run.
    """
    os.environ[ITK_THREADS_VARIABLE] = str(int(n_threads))


def resolve_n_threads(n_threads: int | None) -> int:
    """Number of worker threads to use: ``None`` means numba's current count."""
    available = numba.config.NUMBA_NUM_THREADS
    if n_threads is None:
        return numba.get_num_threads()
    if int(n_threads) != n_threads or n_threads < 1:
        raise ValueError(f"n_threads must be a positive integer or None, got {n_threads!r}")
    if n_threads > available:
        LOGGER.debug("n_threads=%d capped at numba's pool size %d", n_threads, available)
    return min(int(n_threads), available)


@contextmanager
def _itk_threads(n_threads: int) -> Iterator[None]:
    previous = os.environ.get(ITK_THREADS_VARIABLE)
    os.environ[ITK_THREADS_VARIABLE] = str(n_threads)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ITK_THREADS_VARIABLE, None)
        else:
            os.environ[ITK_THREADS_VARIABLE] = previous


@contextmanager
def limit_threads(
    n_threads: int | None,
    *,
    blas_threads: int | None = None,
    blas: bool = True,
    numba_pool: bool = True,
) -> Iterator[int]:
    """Run the enclosed code on at most ``n_threads`` threads; yields the count used.

    ``n_threads`` caps numba, ITK and BLAS/OpenMP; ``None`` keeps numba at its current count and
    leaves ITK and BLAS alone. ``blas_threads`` caps BLAS alone instead, OpenMP untouched (1 in
    numba kernels that call BLAS from every worker, so the two pools never multiply; numba's own
    pool may run on OpenMP); ``blas=False`` leaves BLAS alone (kernels that never call it:
    spares threadpoolctl's scan of the loaded libraries). ``numba_pool=False`` leaves numba's
    pool alone: touching it launches numba's threading layer, which may be GNU OpenMP, and a
    process that has started OpenMP threads must not fork afterwards. The Nipype main process
    calls ANTs (reports) and then forks MultiProc workers for the next participant, so ANTs
    calls, which never use numba, must not start that pool.
    """
    if not numba_pool and n_threads is None:
        raise ValueError("limit_threads without numba's pool needs an explicit n_threads")
    n_workers = resolve_n_threads(n_threads)
    blas_limit = n_threads if blas_threads is None else blas_threads
    previous = numba.get_num_threads() if numba_pool else None
    if numba_pool:
        numba.set_num_threads(n_workers)
    try:
        with ExitStack() as stack:
            if n_threads is not None:
                stack.enter_context(_itk_threads(n_workers))
            if blas and blas_limit is not None and threadpool_limits is not None:
                # numba's np.linalg calls LAPACK through SciPy's bundled OpenBLAS: load it first
                # so that threadpoolctl sees (and limits) that library too, not only NumPy's.
                import scipy.linalg.cython_lapack  # noqa: F401

                user_api = None if blas_threads is None else "blas"
                stack.enter_context(threadpool_limits(limits=int(blas_limit), user_api=user_api))
            yield n_workers
    finally:
        if numba_pool:
            numba.set_num_threads(previous)


def limited_by_n_threads(run: Callable) -> Callable:
    """Decorate a Nipype ``_run_interface`` to run under ``limit_threads(inputs.n_threads)``;
    afterwards the process gives back the memory the step freed (``allocator``), for steps run
    in a long-lived process, as under the Linear plugin (MultiProc gives each step a process of
    its own)."""

    @wraps(run)
    def wrapper(self, runtime):
        try:
            with limit_threads(self.inputs.n_threads):
                return run(self, runtime)
        finally:
            release_freed_memory()

    return wrapper
