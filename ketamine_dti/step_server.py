"""What the server of MultiProc's step processes loads before it forks one process per step
(``workflows.scheduling.step_process_pool`` names this module as multiprocessing's forkserver
preload): the App's step modules and its compiled kernels, loaded once here and shared by every
step's process.

Why the kernels: a new process loads each numba kernel from the on-disk cache at its first call.
Three tiny participants run one process per step spent 21 s more in their DWI steps than in
long-lived workers (about 0.4 s per step: denoise, motion correction, resampling, tensor and
free-water fits, slice outliers). Here they run once under numba's workqueue threading layer:
GNU OpenMP (numba's choice on this platform) terminates any process that forks after it ran
("fork() called from a process already using GNU OpenMP"); workqueue starts its threads again
in each child, with identical results.
"""

from __future__ import annotations

import gc
import importlib
import logging
import pkgutil

import numba

LOGGER = logging.getLogger(__name__)

#: What the worker server imports once, before it forks a process for each step: the
#: interfaces (whose classes the steps' pickles name), the numeric modules they call, and ANTs.
WORKER_PACKAGES: tuple[str, ...] = (
    "ketamine_dti.interfaces",
    "ketamine_dti.anat",
    "ketamine_dti.dwi",
)
WORKER_MODULES: tuple[str, ...] = ("ants", "nipype.pipeline.engine", "ketamine_dti.rois")


def worker_modules() -> list[str]:
    """Module names for the worker server to import: ``WORKER_MODULES`` and every module of
    ``WORKER_PACKAGES``."""
    names = list(WORKER_MODULES)
    for package in WORKER_PACKAGES:
        path = importlib.import_module(package).__path__
        names += [package] + [f"{package}.{m.name}" for m in pkgutil.iter_modules(path)]
    return names


numba.config.THREADING_LAYER = "workqueue"
for _name in worker_modules():
    importlib.import_module(_name)
try:
    from ketamine_dti.warmup import compile_kernels

    compile_kernels()
except Exception as error:  # each step's process then loads its kernels itself
    LOGGER.warning("step server: kernels not loaded in advance (%s)", error)
# out of the collector's reach: a step's collections would otherwise walk (and so copy, page by
# page) every object loaded here
gc.collect()
gc.freeze()
