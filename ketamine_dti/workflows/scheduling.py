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
import multiprocessing
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import scipy.sparse as ssp
from nipype.pipeline.engine import MapNode
from nipype.pipeline.plugins.multiproc import MultiProcPlugin, process_initializer

from ketamine_dti.allocator import keep_freed_memory, kept_freed_bytes

#: Expected seconds of the long steps (node names) of a standard participant: the mean over the
#: 4 participants of the session-12 benchmark (seed 11; session nodes per session, template_rois
#: after its crop); only their ratios matter. Every other node counts DEFAULT_STEP_SECONDS.
#: slice_outliers scaled by its own drop when its prediction became linear (session 38: 91 ->
#: 14 s summed over the 8 sessions of the paper benchmark).
STEP_SECONDS: dict[str, float] = {
    "prepare_dwi": 5,
    "denoise": 18,
    "motion_correct": 39,
    "estimate_susceptibility": 14,
    "resample_dwi": 6,
    "brain_mask": 6,
    "slice_outliers": 4,
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


def start_step_process(cwd: str, kept_bytes: int | None) -> None:
    """Set up the process of one step: Nipype's worker set-up and the main process's
    allocator setting (``allocator.keep_freed_memory``), which a forked server does not pass
    on by itself."""
    process_initializer(cwd)
    if kept_bytes is not None:
        keep_freed_memory(kept_bytes)


def step_process_pool(n_workers: int, cwd: str) -> ProcessPoolExecutor:
    """A pool that runs each step in a new process, forked from a server that imported the
    App's modules and kernels once (``ketamine_dti.step_server``).

    Why: a long-lived worker carries into every step what its earlier steps left: modules
    loaded one worker at a time and the heap they fragmented. Four standard participants
    together peaked at 2.86-3.28 GB PSS, always at two tissue segmentations in workers of
    1.39-1.57 GB each, against ~1.0 GB for the same step in a fresh process (session 28). In a
    new process per step both segmentations held 1.09 GB (session 29). The server's modules are
    shared by its children page for page, so PSS counts them once; a step's process costs a
    fork, not an import.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["ketamine_dti.step_server"])
    return ProcessPoolExecutor(
        max_workers=n_workers,
        mp_context=context,
        max_tasks_per_child=1,  # 1, not more: Python 3.11-3.13 can hang above (gh-115634)
        initializer=start_step_process,
        initargs=(cwd, kept_freed_bytes()),
    )


class CriticalPathPlugin(MultiProcPlugin):
    """MultiProc whose ready jobs start in decreasing order of ``chain_seconds`` (ties: graph
    order). ``plugin_args["step_seconds"]`` overrides STEP_SECONDS (node name -> seconds).

    The objects that exist when the run starts (the graph, the BIDS index) are frozen out of
    the garbage collector for the run: MultiProc collects before every pass and after every
    step it runs itself (the sinks), and each full collection walked them (0.12 s each, 22 s
    of a tiny participant's main process).

    Each step runs in a process of its own (``step_process_pool``).
    """

    def __init__(self, plugin_args=None):
        super().__init__(plugin_args=plugin_args)
        self.pool.shutdown()  # MultiProc's forking pool, which has not started a process yet
        self.pool = step_process_pool(self.processors, self._cwd)

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
