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

import numba

from ketamine_dti.workflows.scheduling import worker_modules

LOGGER = logging.getLogger(__name__)

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
