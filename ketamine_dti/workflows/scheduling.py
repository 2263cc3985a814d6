"""Nipype's MultiProc, starting the ready job with the longest expected chain ahead of it.

MultiProc starts ready jobs in the flattened graph's order, and a MapNode's jobs join at the
end of that order. On a standard participant both DWI sessions then took both cores for their
first ~390 s, and the anatomy chain (N4, subject template, brain extraction, MNI SyN,
segmentation: ~480 s, one step after another) started only after them, with the second core
mostly idle: 907 s of wall for 1,391 s of steps (session-10 benchmark, sub-001). Ranking the
ready jobs by the longest chain of expected seconds from them to the end of the graph
(critical-path list scheduling) starts the anatomy first and keeps it running beside the DWI.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import scipy.sparse as ssp
from nipype.pipeline.engine import MapNode
from nipype.pipeline.plugins.multiproc import MultiProcPlugin

from ketamine_dti.allocator import release_freed_memory

#: Expected seconds of the long steps (node names) of a standard participant: the mean over the
#: 4 participants of the session-12 benchmark (seed 11; session nodes per session, template_rois
#: after its crop); only their ratios matter. Every other node counts DEFAULT_STEP_SECONDS.
STEP_SECONDS: dict[str, float] = {
    "prepare_dwi": 5,
    "denoise": 18,
    "motion_correct": 39,
    "estimate_susceptibility": 14,
    "resample_dwi": 6,
    "brain_mask": 6,
    "slice_outliers": 27,
    "tensor_fit": 7,
    "free_water": 17,
    "dwi_to_t1w": 33,
    "bias_correct": 14,
    "subject_template": 46,
    "extract_brain": 114,
    "register_to_mni": 63,
    "segment_tissues": 77,
    "template_rois": 10,
}
DEFAULT_STEP_SECONDS: float = 1.0


def chain_seconds(graph, order: Sequence, seconds: Callable[[object], float]) -> list[float]:
    """For each node of ``order`` (a topological order of the DiGraph ``graph``): its own
    expected ``seconds`` plus those of the longest chain of its successors."""
    position = {node: index for index, node in enumerate(order)}
    chain = [0.0] * len(order)
    for node in reversed(order):
        after = max((chain[position[s]] for s in graph.successors(node)), default=0.0)
        chain[position[node]] = seconds(node) + after
    return chain


#: s between two passes of the scheduler's loop (Nipype's poll_sleep_duration) under MultiProc:
#: a step can start only at the pass after its inputs finished, and a participant is a chain of
#: ~60 steps deep, many of them sub-second (sinks, QC, tables); at 0.5 s a tiny participant
#: spent ~30 of its ~100 s waiting for passes. Batch plugins (SLURM) keep Nipype's pace, as each
#: of their passes queries the queue.
POLL_SECONDS: float = 0.05


class Dependencies(ssp.lil_matrix):
    """Nipype's job dependency matrix (row: a job; column: the jobs waiting on it), whose column
    sums (each job's unfinished inputs) are kept until the plugin changes the matrix.

    MultiProc's loop sums every column three times per pass (20 passes a second at
    POLL_SECONDS), each sum converting the whole lil matrix (2.2 ms at 1,800 jobs). Kept, the
    main process's CPU on 3 tiny participants fell from 9.3 to 4.7 s; the 12-participant
    demo's wall did not move (session 26). The matrix changes only when a job finishes or a
    MapNode is expanded, and the plugin calls ``changed`` then.
    """

    _column_sums = None

    def sum(self, axis=None, dtype=None, out=None):
        if axis != 0 or dtype is not None or out is not None:
            return super().sum(axis=axis, dtype=dtype, out=out)
        if self._column_sums is None:
            self._column_sums = super().sum(axis=0)
        return self._column_sums

    def changed(self) -> None:
        self._column_sums = None


def run_then_release(run: Callable, *args, **kwargs):
    """A worker's task: ``run`` (Nipype's job), after which the worker gives back the memory
    the step freed beyond ``allocator.KEEP_BETWEEN_STEPS_BYTES``, whatever the step.

    Until session 28 only the steps that limit their threads (``threads.limited_by_n_threads``)
    gave it back. A worker that had just resampled a standard DWI series (``ResampleDWI``, no
    thread limit) held 832 MB, of which 91 MB in use, until its next threaded step (session 28).
    """
    try:
        return run(*args, **kwargs)
    finally:
        release_freed_memory()


class ReleasingPool:
    """A process pool whose every task is ``run_then_release``."""

    def __init__(self, pool):
        self._pool = pool

    def submit(self, run: Callable, /, *args, **kwargs):
        return self._pool.submit(run_then_release, run, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._pool, name)


class CriticalPathPlugin(MultiProcPlugin):
    """MultiProc whose ready jobs start in decreasing order of ``chain_seconds`` (ties: graph
    order). ``plugin_args["step_seconds"]`` overrides STEP_SECONDS (node name -> seconds).

    The objects that exist when the run starts (the graph, the BIDS index) are frozen out of
    the garbage collector for the run: MultiProc collects before every pass and after every
    step it runs itself (the sinks), and each full collection walked them (0.12 s each, 22 s
    of a tiny participant's main process).

    Its workers give back the memory each step freed (``ReleasingPool``).
    """

    def __init__(self, plugin_args=None):
        super().__init__(plugin_args=plugin_args)
        self.pool = ReleasingPool(self.pool)

    def run(self, graph, config, updatehash=False):
        gc.collect()
        gc.freeze()
        try:
            return super().run(graph, config, updatehash=updatehash)
        finally:
            gc.unfreeze()

    def _generate_dependency_list(self, graph):
        super()._generate_dependency_list(graph)
        self.depidx = Dependencies(self.depidx)  # shares its rows: no copy
        table: Mapping[str, float] = self.plugin_args.get("step_seconds", STEP_SECONDS)
        self._chain = chain_seconds(
            graph, self.procs, lambda node: table.get(node.name, DEFAULT_STEP_SECONDS)
        )

    def _submit_mapnode(self, jobid):
        submitted = super()._submit_mapnode(jobid)
        self.depidx = Dependencies(self.depidx)  # expanding stacks a new matrix
        return submitted

    def _task_finished_cb(self, jobid, cached=False):
        super()._task_finished_cb(jobid, cached=cached)
        self.depidx.changed()  # the job's row was cleared through a row view

    def _send_procs_to_workers(self, updatehash=False, graph=None):
        # MultiProc expands a ready MapNode into its jobs in the same pass that submits jobs,
        # which then go on to the next ready job: expand first, so they compete by rank now
        ready = np.flatnonzero(~self.proc_done & (self.depidx.sum(axis=0) == 0).__array__())
        for jobid in ready:
            node = self.procs[jobid]
            if isinstance(node, MapNode) and jobid not in self.mapnodes:
                try:
                    if node.num_subnodes() > 1:
                        self._submit_mapnode(jobid)
                except Exception:  # MultiProc reports the failure below
                    continue
        super()._send_procs_to_workers(updatehash=updatehash, graph=graph)

    def _sort_jobs(self, jobids, scheduler="tsort"):
        return sorted(jobids, key=lambda jobid: (-self._rank(jobid), jobid))

    def _rank(self, jobid: int) -> float:
        while jobid >= len(self._chain):  # a MapNode's job ranks as its MapNode
            jobid = self.mapnodesubids[jobid]
        return self._chain[jobid]
