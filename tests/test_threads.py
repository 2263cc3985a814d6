"""The one thread-limit mechanism: every pool is capped inside and restored on exit."""

from __future__ import annotations

import os

import numba
import pytest

from ketamine_dti.threads import ITK_THREADS_VARIABLE, limit_threads, limited_by_n_threads


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_limits_are_applied_and_restored(monkeypatch):
    import scipy.linalg.cython_lapack  # noqa: F401  (limit_threads loads SciPy's OpenBLAS too)

    monkeypatch.setenv(ITK_THREADS_VARIABLE, "7")
    numba_before, blas_before = numba.get_num_threads(), _blas_threads()
    with limit_threads(1) as n:
        assert n == 1
        assert numba.get_num_threads() == 1
        assert os.environ[ITK_THREADS_VARIABLE] == "1"
        assert set(_blas_threads()) <= {1}
    assert numba.get_num_threads() == numba_before
    assert os.environ[ITK_THREADS_VARIABLE] == "7"
    assert _blas_threads() == blas_before


def test_unset_itk_variable_stays_unset(monkeypatch):
    monkeypatch.delenv(ITK_THREADS_VARIABLE, raising=False)
    with limit_threads(1):
        assert os.environ[ITK_THREADS_VARIABLE] == "1"
    assert ITK_THREADS_VARIABLE not in os.environ


def test_none_leaves_itk_alone_and_bad_counts_raise(monkeypatch):
    monkeypatch.setenv(ITK_THREADS_VARIABLE, "3")
    with limit_threads(None) as n:
        assert n == numba.get_num_threads()
        assert os.environ[ITK_THREADS_VARIABLE] == "3"
    with pytest.raises(ValueError, match="n_threads"), limit_threads(0):
        pass


def test_interface_decorator_reads_n_threads():
    class Inputs:
        n_threads = 1

    class Interface:
        inputs = Inputs()

        @limited_by_n_threads
        def _run_interface(self, runtime):
            return runtime, numba.get_num_threads()

    before = numba.get_num_threads()
    assert Interface()._run_interface("rt") == ("rt", 1)
    assert numba.get_num_threads() == before


def test_ants_calls_leave_numba_threads_unlaunched(tmp_path):
    """The Nipype main process calls ANTs (the report's panels) and then forks MultiProc workers
    for the next participant: if that call had launched numba's threading layer (GNU OpenMP),
    every fork would abort ("fork() called from a process already using GNU OpenMP")."""
    import subprocess
    import sys

    code = (
        "import numpy as np, nibabel as nib\n"
        "from numba.np.ufunc import parallel\n"
        "from ketamine_dti import ants_backend\n"
        f"path = {str(tmp_path / 'a.nii.gz')!r}\n"
        "nib.save(nib.Nifti1Image(np.random.rand(8, 8, 8).astype('float32'), np.eye(4)), path)\n"
        "ants_backend.apply_transforms(path, path, [], path.replace('a.nii', 'b.nii'))\n"
        "print(parallel._is_initialized)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False"


_FORKED_ITK = """
import multiprocessing as mp, sys
import ants
from ketamine_dti.anat.registration import bundled_template
from ketamine_dti.threads import limit_threads, pin_itk_threads
image = str(bundled_template(2)[0])
def threads():
    return int(next(l for l in open("/proc/self/status") if l.startswith("Threads")).split()[1])
def worker(queue):  # a Nipype node: limit_threads(1) around its ANTs calls
    with limit_threads(1, blas=False, numba_pool=False):
        ants.smooth_image(ants.image_read(image), 2.0)
        queue.put(threads())
if sys.argv[1] == "pin":
    pin_itk_threads(1)
if sys.argv[1] != "clean":
    ants.image_read(image)  # the parent touches ITK before it forks
context = mp.get_context("fork")
queue = context.Queue()
process = context.Process(target=worker, args=(queue,))
process.start()
print(queue.get())
process.join()
"""


def test_pinned_parent_forks_workers_with_the_pinned_itk_pool(tmp_path):
    """A worker forked after its parent's first ANTs call keeps the parent's ITK pool; pinning
    first gives it the pool of a worker whose parent never touched ITK."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != ITK_THREADS_VARIABLE}
    counts = {}
    for mode in ("clean", "pin", "late"):
        run = subprocess.run(
            [sys.executable, "-c", _FORKED_ITK, mode],
            env=env, capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        counts[mode] = int(run.stdout.split()[-1])
    assert counts["pin"] == counts["clean"]
    if os.cpu_count() > 1:  # the default pool (one thread per core) is larger
        assert counts["late"] > counts["clean"]


_STEP_ITK = """
import sys
import ants
from nipype.interfaces.utility import Function
from nipype.pipeline import engine as pe
from ketamine_dti.anat.registration import bundled_template
from ketamine_dti.workflows.scheduling import CriticalPathPlugin
def step(image):
    import ants
    from ketamine_dti.threads import limit_threads
    with limit_threads(1, blas=False, numba_pool=False):
        ants.smooth_image(ants.image_read(image), 2.0)
    return int(next(l for l in open("/proc/self/status") if l.startswith("Threads")).split()[1])
if __name__ == "__main__":
    image = str(bundled_template(2)[0])
    ants.image_read(image)  # the main process has made an ANTs call, unpinned
    node = pe.Node(Function(input_names=["image"], output_names=["n"], function=step), "step")
    node.inputs.image = image
    workflow = pe.Workflow("itk", base_dir=sys.argv[1])
    workflow.add_nodes([node])
    graph = workflow.run(plugin=CriticalPathPlugin(plugin_args={"n_procs": 1}))
    print(next(iter(graph.nodes())).result.outputs.n)
"""


def test_a_multiproc_step_gets_the_itk_pool_it_asks_for_whatever_the_main_process_did(tmp_path):
    """The main process touched ITK unpinned (its pool: one thread per core), then MultiProc ran
    a step that asks for one ITK thread: the step's process has the threads of a worker whose
    parent never touched ITK, since each step forks from a server that made no ANTs call."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != ITK_THREADS_VARIABLE}
    script = tmp_path / "step_itk.py"
    script.write_text(_STEP_ITK)
    step = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        env=env, capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    clean = subprocess.run(
        [sys.executable, "-c", _FORKED_ITK, "clean"],
        env=env, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert int(step.stdout.split()[-1]) == int(clean.stdout.split()[-1])
