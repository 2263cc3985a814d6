"""Benchmark the tensor fit and MP-PCA kernels against DIPY and MRtrix3, side by side.

One ``standard`` simulated session (ketamine_dti.simulate.simulate_benchmark_session) is written
to a temporary directory. Every contender then runs in its own subprocess with 2 threads
(OMP/OpenBLAS/numba env, ``-nthreads 2`` for MRtrix3), contenders interleaved in each repeat;
per process we record the wall time and the peak resident memory (``ru_maxrss`` from
``os.wait4``). Python contenders are all timed the same way: ``load_s`` (imports plus one
call on a tiny block, which makes DIPY do its lazy set-up and numba load its cache), then
``kernel_s`` (the call on the whole volume), and ``first_use_s`` = both; speed-up ratios are
given for kernels, first use and whole processes.

Contenders:

- tensor (brain mask, and whole volume): ours WLS (numba), the same estimator in plain
  vectorised NumPy (to show numba's gain), DIPY ``TensorModel(fit_method="WLS")``,
  MRtrix3 ``dwi2tensor`` (iterated WLS, ``-iter 2`` by default);
- MP-PCA (whole volume, no mask, as run before masking): ours, MRtrix3 ``dwidenoise``, DIPY
  ``mppca`` (run on a slab of slices and scaled per processed voxel unless ``--dipy-mppca-full``,
  because the full volume takes over 13 minutes; with one BLAS thread, its fastest setting).

Accuracy: MD against DIPY WLS and ``dwi2tensor``; MP-PCA RMSE against the noise-free signal and
median sigma against the simulator's true noise level, both in the brain mask.

Nothing is installed. Without MRtrix3 its contenders are skipped with a message saying how to
get it (``apt-get install mrtrix3``). Usage::

    python benchmarks/bench_kernels.py              # 3 repeats, writes benchmarks/results/
    python benchmarks/bench_kernels.py --repeats 5 --dipy-mppca-slices 12
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

THREADS = 2
RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent
#: MD range (mm^2/s) of the DIPY comparison: tissue, not noise or free water at the extremes.
MD_RANGE = (1e-4, 4e-3)
PATCH_RADIUS = 2
#: Edge (voxels) of the block of the untimed warm-up call (see ``_library_load``): the smallest
#: block every contender accepts (MP-PCA needs a whole 5-voxel patch per axis).
WARMUP_EDGE = 2
MPPCA_WARMUP_EDGE = 2 * PATCH_RADIUS + 1
#: DIPY mppca eigen-decomposes one 70x70 matrix at a time: OpenBLAS threads only spin on such
#: small matrices (on a loaded machine 2 threads made it >10x slower), so it gets its fastest
#: setting, one BLAS thread; this makes the comparison conservative for us.
DIPY_MPPCA_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
THREAD_ENV = {
    "OMP_NUM_THREADS": str(THREADS),
    "OPENBLAS_NUM_THREADS": str(THREADS),
    "MKL_NUM_THREADS": str(THREADS),
    "NUMBA_NUM_THREADS": str(THREADS),
}


# --------------------------------------------------------------------------------------------
# workers: each runs in a fresh subprocess, loads the inputs, times its kernel, saves outputs


def _load_inputs(work: Path):
    data = np.load(work / "dwi.npy")
    bvals = np.load(work / "bvals.npy")
    bvecs = np.load(work / "bvecs.npy")
    mask = np.load(work / "mask.npy")
    return data, bvals, bvecs, mask


def _timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def _library_load(import_s: float, warm_call) -> float:
    """Seconds to make a contender ready: its imports plus one call on a tiny block.

    Every Python contender is timed the same way: ``load_s`` = imports + a first call on a
    ``WARMUP_EDGE``^3 block (DIPY: its lazy imports and model set-up; ours: numba loading its
    on-disk cache, which also imports numba's typing registries and SciPy's LAPACK), then
    ``kernel_s`` = the call on the whole volume. ``first_use_s`` = both, as a one-shot run pays.
    """
    start = time.perf_counter()
    warm_call()
    return import_s + time.perf_counter() - start


def _block(data: np.ndarray, edge: int) -> np.ndarray:
    """A small contiguous corner block of ``data`` for the warm-up call."""
    return np.ascontiguousarray(data[:edge, :edge, :edge])


def worker_ours_tensor(work: Path, use_mask: bool) -> dict:
    start = time.perf_counter()
    from ketamine_dti.dwi.tensor import fit_tensor

    import_s = time.perf_counter() - start
    data, bvals, bvecs, mask = _load_inputs(work)
    load_s = _library_load(
        import_s,
        lambda: fit_tensor(_block(data, WARMUP_EDGE), bvals, bvecs, n_threads=THREADS),
    )
    mask = mask if use_mask else None
    fit, seconds = _timed(
        fit_tensor, data, bvals, bvecs, mask=mask, method="wls", n_threads=THREADS
    )
    np.save(work / f"md_ours_{'mask' if use_mask else 'full'}.npy", fit.md)
    return {"load_s": load_s, "kernel_s": seconds, "first_use_s": load_s + seconds}


def worker_ours_in_process(work: Path, with_mppca: bool = False) -> dict:
    """First vs second call within one process (MP-PCA only on request: its load cost is
    negligible next to its run time, and each call takes a while)."""
    from ketamine_dti.dwi.denoise import mppca
    from ketamine_dti.dwi.tensor import fit_tensor

    data, bvals, bvecs, mask = _load_inputs(work)
    out = {}
    for call in ("first", "second"):
        _, out[f"tensor_mask_{call}_call_s"] = _timed(
            fit_tensor, data, bvals, bvecs, mask=mask, n_threads=THREADS
        )
    if with_mppca:
        for call in ("first", "second"):
            _, out[f"mppca_{call}_call_s"] = _timed(mppca, data, n_threads=THREADS)
    return out


def _numpy_wls_md(data, bvals, bvecs, mask, chunk=40000):
    """The same two-pass WLS in vectorised NumPy (no numba): 28 design products + batched solve."""
    from ketamine_dti.dwi.tensor import MIN_EIGENVALUE_B_PRODUCT, MIN_SIGNAL, design_matrix

    b_scale = bvals.max()
    design = design_matrix(bvals, bvecs, b_scale)
    pinv = np.linalg.pinv(design)
    rows, cols = np.tril_indices(7)
    products = design[:, rows] * design[:, cols]
    voxels = data[mask] if mask is not None else data.reshape(-1, data.shape[-1])
    md = np.empty(voxels.shape[0])
    for start in range(0, voxels.shape[0], chunk):
        log_s = np.log(np.maximum(voxels[start : start + chunk].astype(np.float64), MIN_SIGNAL))
        weights = np.exp(2.0 * (log_s @ pinv.T) @ design.T)
        normal = np.empty((log_s.shape[0], 7, 7))
        normal[:, rows, cols] = weights @ products
        normal[:, cols, rows] = normal[:, rows, cols]
        rhs = (weights * log_s) @ design
        beta = np.linalg.solve(normal, rhs[..., None])[..., 0]
        tensor = beta[:, [0, 1, 3, 1, 2, 4, 3, 4, 5]].reshape(-1, 3, 3)
        evals = np.maximum(np.linalg.eigvalsh(tensor), MIN_EIGENVALUE_B_PRODUCT)
        md[start : start + chunk] = evals.mean(axis=1) / b_scale
    return md


def worker_numpy_tensor(work: Path, use_mask: bool) -> dict:
    data, bvals, bvecs, mask = _load_inputs(work)
    start = time.perf_counter()
    from ketamine_dti.dwi.tensor import design_matrix  # noqa: F401  (what _numpy_wls_md imports)

    load_s = _library_load(
        time.perf_counter() - start,
        lambda: _numpy_wls_md(_block(data, WARMUP_EDGE), bvals, bvecs, None),
    )
    mask = mask if use_mask else None
    md, seconds = _timed(_numpy_wls_md, data, bvals, bvecs, mask)
    full = np.full(data.shape[:3], np.nan)
    if mask is None:
        full = md.reshape(data.shape[:3])
    else:
        full[mask] = md
    np.save(work / f"md_numpy_{'mask' if use_mask else 'full'}.npy", full)
    return {"load_s": load_s, "kernel_s": seconds, "first_use_s": load_s + seconds}


def worker_dipy_tensor(work: Path, use_mask: bool) -> dict:
    start = time.perf_counter()
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    import_s = time.perf_counter() - start
    data, bvals, bvecs, mask = _load_inputs(work)
    model = None

    def warm():
        nonlocal model
        model = TensorModel(gradient_table(bvals, bvecs=bvecs), fit_method="WLS")
        model.fit(_block(data, WARMUP_EDGE)).md  # noqa: B018  (fit attributes are lazy)

    load_s = _library_load(import_s, warm)
    md, seconds = _timed(lambda: model.fit(data, mask=mask if use_mask else None).md)
    np.save(work / f"md_dipy_{'mask' if use_mask else 'full'}.npy", md)
    return {"load_s": load_s, "kernel_s": seconds, "first_use_s": load_s + seconds}


def worker_ours_mppca(work: Path) -> dict:
    start = time.perf_counter()
    from ketamine_dti.dwi.denoise import mppca

    import_s = time.perf_counter() - start
    data, *_ = _load_inputs(work)
    load_s = _library_load(
        import_s,
        lambda: mppca(
            _block(data, MPPCA_WARMUP_EDGE), patch_radius=PATCH_RADIUS, n_threads=THREADS
        ),
    )
    (denoised, sigma), seconds = _timed(mppca, data, patch_radius=PATCH_RADIUS, n_threads=THREADS)
    np.save(work / "denoised_ours.npy", denoised)
    np.save(work / "sigma_ours.npy", sigma)
    return {"load_s": load_s, "kernel_s": seconds, "first_use_s": load_s + seconds}


def worker_dipy_mppca(work: Path, n_slices: int | None) -> dict:
    start = time.perf_counter()
    from dipy.denoise.localpca import mppca

    import_s = time.perf_counter() - start
    data, *_ = _load_inputs(work)
    load_s = _library_load(
        import_s,
        lambda: mppca(
            _block(data, MPPCA_WARMUP_EDGE), patch_radius=PATCH_RADIUS, return_sigma=True
        ),
    )
    n_z = data.shape[2]
    if n_slices is None or n_slices >= n_z:
        slab, scale = data, 1.0
    else:  # a centred slab; DIPY's cost is proportional to the patch centres it visits
        start = (n_z - n_slices) // 2
        slab = np.ascontiguousarray(data[:, :, start : start + n_slices])
        scale = (n_z - 2 * PATCH_RADIUS) / (n_slices - 2 * PATCH_RADIUS)
    _, seconds = _timed(mppca, slab, patch_radius=PATCH_RADIUS, return_sigma=True)
    return {
        "load_s": load_s,
        "kernel_s": seconds * scale,
        "first_use_s": load_s + seconds * scale,
        "measured_s": seconds,
        "scale": scale,
    }


WORKERS = {
    "ours_tensor_mask": lambda work: worker_ours_tensor(work, True),
    "numpy_tensor_mask": lambda work: worker_numpy_tensor(work, True),
    "dipy_tensor_mask": lambda work: worker_dipy_tensor(work, True),
    "ours_tensor_full": lambda work: worker_ours_tensor(work, False),
    "numpy_tensor_full": lambda work: worker_numpy_tensor(work, False),
    "dipy_tensor_full": lambda work: worker_dipy_tensor(work, False),
    "ours_mppca": worker_ours_mppca,
    "ours_in_process": worker_ours_in_process,
}


# --------------------------------------------------------------------------------------------
# the parent: runs processes, collects time and memory


def run_process(command: list[str], env: dict | None = None) -> dict:
    """Run ``command``; wall time (s), peak RSS (MB) of that process, stdout's last line."""
    full_env = {**os.environ, **THREAD_ENV, **(env or {})}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, env=full_env, stdout=out, stderr=err, cwd=REPO_ROOT)
        _, status, usage = os.wait4(process.pid, 0)  # reaps it: per-process rusage
        wall = time.perf_counter() - start
        process.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({code}):\n{stderr[-2000:]}")
    lines = stdout.strip().splitlines()
    return {
        "process_s": wall,
        "peak_rss_mb": usage.ru_maxrss / 1024.0,
        "stdout": lines[-1] if lines else "",
    }


def run_python_worker(name: str, work: Path, extra: list[str] = (), env: dict | None = None):
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        name,
        "--work",
        str(work),
    ]
    result = run_process(command + list(extra), env)
    result.update(json.loads(result.pop("stdout")))
    return result


def mrtrix_commands(work: Path) -> dict[str, list[str]]:
    common = ["-nthreads", str(THREADS), "-force", "-quiet"]
    grad = ["-fslgrad", str(work / "dwi.bvec"), str(work / "dwi.bval")]
    return {
        "dwi2tensor_mask": [
            "dwi2tensor",
            str(work / "dwi.nii"),
            str(work / "tensor_mask.nii"),
            *grad,
            "-mask",
            str(work / "mask.nii"),
            *common,
        ],
        "dwi2tensor_full": [
            "dwi2tensor",
            str(work / "dwi.nii"),
            str(work / "tensor_full.nii"),
            *grad,
            *common,
        ],
        "dwidenoise": [
            "dwidenoise",
            str(work / "dwi.nii"),
            str(work / "denoised_mrtrix.nii"),
            "-noise",
            str(work / "sigma_mrtrix.nii"),
            *common,
        ],
    }


def worker_prepare(work: Path, preset: str, seed: int) -> dict:
    """Simulate the session and write every contender's inputs (in a child: keeps the parent,
    whose memory every child inherits in ``ru_maxrss`` at fork, small)."""
    import nibabel as nib

    from ketamine_dti.simulate import simulate_benchmark_session

    session = simulate_benchmark_session(preset=preset, seed=seed)
    data = np.ascontiguousarray(session.data, dtype=np.float32)
    brain = np.asarray(session.brain_mask, dtype=bool)
    np.save(work / "dwi.npy", data)
    np.save(work / "clean.npy", np.asarray(session.clean, dtype=np.float32))
    np.save(work / "bvals.npy", np.asarray(session.bvals, dtype=float))
    np.save(work / "bvecs.npy", np.asarray(session.bvecs, dtype=float))
    np.save(work / "mask.npy", brain)
    nib.save(nib.Nifti1Image(data, session.affine), work / "dwi.nii")
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), session.affine), work / "mask.nii")
    np.savetxt(work / "dwi.bval", np.asarray(session.bvals)[None], fmt="%g")
    np.savetxt(work / "dwi.bvec", np.asarray(session.bvecs).T, fmt="%.8f")
    return {
        "shape": list(data.shape),
        "brain_voxels": int(brain.sum()),
        "sigma": float(session.sigma),
    }


def mrtrix_md(path: Path) -> np.ndarray:
    """MD (mm^2/s) from a dwi2tensor image: the trace is frame-independent."""
    import nibabel as nib

    tensor = np.asarray(nib.load(path).dataobj, dtype=np.float64)
    md = tensor[..., :3].mean(axis=-1)
    return np.where(md != 0, md, np.nan)  # dwi2tensor writes 0 outside its mask


def median_or_none(values):
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None


def relative_difference(a, b, where):
    return np.abs(a[where] - b[where]) / np.abs(b[where])


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="standard")
    parser.add_argument(
        "--dipy-mppca-slices",
        type=int,
        default=6,
        help="slices of the slab DIPY mppca is timed on (scaled per voxel)",
    )
    parser.add_argument(
        "--dipy-mppca-full",
        action="store_true",
        help="time DIPY mppca on the whole volume (over 13 minutes per repeat)",
    )
    parser.add_argument("--skip-dipy-mppca", action="store_true")
    parser.add_argument(
        "--full-volume-python",
        action="store_true",
        help="also time DIPY and the NumPy reference on the whole volume (not only the mask)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--slices", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-mrtrix", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:  # child process
        if args.worker == "dipy_mppca":
            result = worker_dipy_mppca(args.work, args.slices)
        elif args.worker == "prepare":
            result = worker_prepare(args.work, args.preset, args.seed)
            (args.work / "prepared.json").write_text(json.dumps(result))
        elif args.worker == "accuracy":
            result = worker_accuracy(args.work, not args.no_mrtrix)
        else:
            result = WORKERS[args.worker](args.work)
        print(json.dumps(result))
        return 0

    have_mrtrix = all(shutil.which(tool) for tool in ("dwi2tensor", "dwidenoise"))
    if not have_mrtrix:
        print(
            "MRtrix3 not found (dwi2tensor/dwidenoise): skipping its contenders; "
            "install it with `apt-get install mrtrix3`"
        )
    dipy_slices = None if args.dipy_mppca_full else args.dipy_mppca_slices
    runs: dict[str, list[dict]] = {}
    loads = []
    with tempfile.TemporaryDirectory(prefix="bench_kernels_") as tmp:
        work = Path(tmp)
        print(f"simulating one '{args.preset}' session (seed {args.seed}) ...", flush=True)
        prepared = run_python_worker(
            "prepare", work, ["--preset", args.preset, "--seed", str(args.seed)]
        )
        shape = tuple(prepared["shape"])
        print(
            f"volume {shape}, {prepared['brain_voxels']} brain voxels, "
            f"true sigma {prepared['sigma']:.3f}"
        )

        # numba compile cost: a first call with an empty cache, once, outside the repeats
        cold_cache = work / "numba_cold_cache"
        cold = {
            name: run_python_worker(name, work, env={"NUMBA_CACHE_DIR": str(cold_cache)})
            for name in ("ours_tensor_mask", "ours_mppca")
        }
        print(
            f"cold (JIT compile) tensor {cold['ours_tensor_mask']['first_use_s']:.2f} s, "
            f"mppca {cold['ours_mppca']['first_use_s']:.2f} s"
        )
        # warm the default cache the timed repeats use; time first vs second call in-process
        in_process = run_python_worker("ours_in_process", work)
        in_process = {k: v for k, v in in_process.items() if k.endswith("call_s")}
        print("in one process: " + ", ".join(f"{k} {v:.2f}" for k, v in in_process.items()))

        order = [
            "ours_tensor_mask",
            "numpy_tensor_mask",
            "dipy_tensor_mask",
            "dwi2tensor_mask",
            "ours_tensor_full",
            *(["numpy_tensor_full", "dipy_tensor_full"] if args.full_volume_python else []),
            "dwi2tensor_full",
            "ours_mppca",
            "dwidenoise",
            "dipy_mppca",
        ]
        commands = mrtrix_commands(work)
        for repeat in range(args.repeats):
            load_before = os.getloadavg()[0]
            for name in order:
                if name in commands:
                    if not have_mrtrix:
                        continue
                    result = run_process(commands[name])
                    result.pop("stdout")
                elif name == "dipy_mppca":
                    if args.skip_dipy_mppca:
                        continue
                    extra = [] if dipy_slices is None else ["--slices", str(dipy_slices)]
                    result = run_python_worker(name, work, extra, env=DIPY_MPPCA_ENV)
                else:
                    result = run_python_worker(name, work)
                runs.setdefault(name, []).append(result)
                print(
                    f"  repeat {repeat + 1} {name:18s} "
                    + ", ".join(f"{k} {v:.2f}" for k, v in result.items() if isinstance(v, float)),
                    flush=True,
                )
            loads.append((load_before, os.getloadavg()[0]))
            partial = summarise(runs, cold, {}, loads, args, shape, dipy_slices, have_mrtrix)
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "kernels.partial.json").write_text(json.dumps(partial, indent=2) + "\n")

        # dwi2tensor with a single reweighting as well, for the MD comparison only
        if have_mrtrix:
            iter1 = commands["dwi2tensor_mask"][:]
            iter1[2] = str(work / "tensor_iter1.nii")
            run_process(iter1 + ["-iter", "1"])
        accuracy = run_python_worker("accuracy", work, [] if have_mrtrix else ["--no-mrtrix"])
        for key in ("process_s", "peak_rss_mb"):
            accuracy.pop(key)

    report = summarise(runs, cold, accuracy, loads, args, shape, dipy_slices, have_mrtrix)
    report["ours_first_vs_second_call_in_one_process_s"] = in_process
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernels.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = to_markdown(report)
    (args.out / "kernels.md").write_text(markdown)
    (args.out / "kernels.partial.json").unlink(missing_ok=True)
    print(markdown)
    return 0


def worker_accuracy(work: Path, have_mrtrix: bool) -> dict:
    """MD agreement and MP-PCA accuracy from the saved outputs (in a child, like the rest)."""
    out: dict = {}
    brain = np.load(work / "mask.npy")
    ours = np.load(work / "md_ours_mask.npy").astype(np.float64)
    dipy = np.load(work / "md_dipy_mask.npy")
    numpy_ref = np.load(work / "md_numpy_mask.npy")
    in_range = brain & (dipy > MD_RANGE[0]) & (dipy < MD_RANGE[1]) & np.isfinite(ours)
    rel = relative_difference(ours, dipy, in_range)
    out["tensor_vs_dipy_wls"] = {
        "voxels": int(in_range.sum()),
        "max_rel_md_diff": float(rel.max()),
        "median_rel_md_diff": float(np.median(rel)),
        "voxels_over_1e-4": int((rel > 1e-4).sum()),
    }
    out["numpy_reference_vs_ours_max_rel_md_diff"] = float(
        relative_difference(numpy_ref, ours, in_range).max()
    )
    mrtrix = {}
    if have_mrtrix:
        mrtrix["iter2"] = mrtrix_md(work / "tensor_mask.nii")
        mrtrix["iter1"] = mrtrix_md(work / "tensor_iter1.nii")
    for label, md in mrtrix.items():
        both = brain & np.isfinite(ours) & np.isfinite(md) & (md > 0)
        out[f"tensor_vs_dwi2tensor_{label}"] = {
            "voxels": int(both.sum()),
            "median_abs_rel_md_diff": float(np.median(relative_difference(ours, md, both))),
        }

    clean = np.load(work / "clean.npy")
    noisy = np.load(work / "dwi.npy")

    def rmse(denoised):
        return float(np.sqrt(np.mean((denoised[brain] - clean[brain]) ** 2)))

    true_sigma = float(json.loads((work / "prepared.json").read_text())["sigma"])
    ours_dn = np.load(work / "denoised_ours.npy")
    ours_sigma = np.load(work / "sigma_ours.npy")
    out["mppca"] = {
        "true_sigma": true_sigma,
        "rmse_noisy": rmse(noisy),
        "rmse_ours": rmse(ours_dn),
        "median_sigma_ours": float(np.median(ours_sigma[brain])),
    }
    out["mppca"]["sigma_rel_error_ours"] = out["mppca"]["median_sigma_ours"] / true_sigma - 1
    if have_mrtrix:
        import nibabel as nib

        mr_dn = np.asarray(nib.load(work / "denoised_mrtrix.nii").dataobj, dtype=np.float32)
        mr_sigma = np.asarray(nib.load(work / "sigma_mrtrix.nii").dataobj, dtype=np.float32)
        out["mppca"]["rmse_dwidenoise"] = rmse(mr_dn)
        out["mppca"]["rmse_ratio_ours_to_dwidenoise"] = out["mppca"]["rmse_ours"] / rmse(mr_dn)
        out["mppca"]["median_sigma_dwidenoise"] = float(np.median(mr_sigma[brain]))
        out["mppca"]["sigma_rel_error_dwidenoise"] = (
            float(np.median(mr_sigma[brain])) / true_sigma - 1
        )
    return out


def summarise(runs, cold, accuracy, loads, args, shape, dipy_slices, have_mrtrix) -> dict:
    import dipy
    import numba

    def times(name, key):
        return [r.get(key) for r in runs.get(name, [])]

    contenders = {}
    for name, results in runs.items():
        contenders[name] = {
            "process_s": times(name, "process_s"),
            "load_s": times(name, "load_s"),
            "kernel_s": times(name, "kernel_s"),
            "first_use_s": times(name, "first_use_s"),
            "median_process_s": median_or_none(times(name, "process_s")),
            "median_load_s": median_or_none(times(name, "load_s")),
            "median_kernel_s": median_or_none(times(name, "kernel_s")),
            "median_first_use_s": median_or_none(times(name, "first_use_s")),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
        }

    def paired(a, key_a, b, key_b):
        """Median over repeats of time(a) / time(b) measured in the same repeat."""
        pairs = [x / y for x, y in zip(times(a, key_a), times(b, key_b), strict=False) if x and y]
        return float(np.median(pairs)) if pairs else None

    ratios = {}
    for scope in ("mask", "full"):
        ours, dipy_name, np_name = (
            f"ours_tensor_{scope}",
            f"dipy_tensor_{scope}",
            f"numpy_tensor_{scope}",
        )
        ratios[f"tensor_{scope}: dipy/ours speed-up (kernels)"] = paired(
            dipy_name, "kernel_s", ours, "kernel_s"
        )
        ratios[f"tensor_{scope}: dipy/ours speed-up (first use: load + kernel)"] = paired(
            dipy_name, "first_use_s", ours, "first_use_s"
        )
        ratios[f"tensor_{scope}: dipy/ours speed-up (process vs process)"] = paired(
            dipy_name, "process_s", ours, "process_s"
        )
        ratios[f"tensor_{scope}: numpy/ours speed-up (kernels, numba gain)"] = paired(
            np_name, "kernel_s", ours, "kernel_s"
        )
        if have_mrtrix:
            mr = f"dwi2tensor_{scope}"
            ratios[f"tensor_{scope}: ours/dwi2tensor (ours kernel vs its process)"] = paired(
                ours, "kernel_s", mr, "process_s"
            )
            ratios[f"tensor_{scope}: ours/dwi2tensor (ours first use vs its process)"] = paired(
                ours, "first_use_s", mr, "process_s"
            )
            ratios[f"tensor_{scope}: ours/dwi2tensor (process vs process)"] = paired(
                ours, "process_s", mr, "process_s"
            )
    if "dipy_mppca" in runs:
        ratios["mppca: dipy/ours speed-up (kernels)"] = paired(
            "dipy_mppca", "kernel_s", "ours_mppca", "kernel_s"
        )
        ratios["mppca: dipy/ours speed-up (first use: load + kernel)"] = paired(
            "dipy_mppca", "first_use_s", "ours_mppca", "first_use_s"
        )
    if have_mrtrix:
        ratios["mppca: ours/dwidenoise (ours kernel vs its process)"] = paired(
            "ours_mppca", "kernel_s", "dwidenoise", "process_s"
        )
        ratios["mppca: ours/dwidenoise (ours first use vs its process)"] = paired(
            "ours_mppca", "first_use_s", "dwidenoise", "process_s"
        )
        ratios["mppca: ours/dwidenoise (process vs process)"] = paired(
            "ours_mppca", "process_s", "dwidenoise", "process_s"
        )

    mrtrix_version = None
    if have_mrtrix:
        mrtrix_version = subprocess.run(
            ["dwi2tensor", "-version"], capture_output=True, text=True
        ).stdout.splitlines()[0]
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "volume_shape": list(shape),
        "preset": args.preset,
        "seed": args.seed,
        "threads_per_contender": THREADS,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "load_average_before_after_each_repeat": loads,
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "numba": numba.__version__,
            "dipy": dipy.__version__,
            "mrtrix3": mrtrix_version,
        },
        "dipy_mppca_timing": (
            "full volume"
            if dipy_slices is None
            else f"measured on a centred slab of {dipy_slices} slices and scaled per processed "
            f"voxel (x{(shape[2] - 2 * PATCH_RADIUS) / (dipy_slices - 2 * PATCH_RADIUS):.2f}), "
            "with one BLAS thread (its fastest setting)"
        ),
        "cold_jit_first_use_s": {k: v["first_use_s"] for k, v in cold.items()},
        "contenders": contenders,
        "ratios": ratios,
        "accuracy": accuracy,
    }


def _fmt(value, digits=2):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 0.01 or value == 0 else f"{value:.2e}"
    return str(value)


def to_markdown(report: dict) -> str:
    lines = [
        "# Kernel benchmark: tensor fit and MP-PCA",
        "",
        f"{report['date']}; volume {report['volume_shape']} ({report['preset']} preset, seed "
        f"{report['seed']}); {report['threads_per_contender']} threads per contender on "
        f"{report['cpu_count']} CPUs; median of {report['repeats']} interleaved repeats.",
        "1-min load average before/after each repeat: "
        + ", ".join(f"{a:.1f}/{b:.1f}" for a, b in report["load_average_before_after_each_repeat"])
        + " (other jobs share this machine: wall times are noisy).",
        f"Versions: {report['versions']}.",
        "",
        "Python contenders are all timed the same way: load = their imports plus one call on a "
        "tiny block, outside the kernel time (DIPY: lazy imports and model set-up; ours: numba "
        "loading its on-disk cache, which imports numba's typing registries and SciPy's LAPACK); "
        "kernel "
        "= the call on the whole volume after that; first use = load + kernel, what a one-shot "
        "run pays. Process = the whole subprocess (interpreter start, imports, loading the input, "
        "warm-up, writing the output); MRtrix3 has only process time. Peak RSS is the process's "
        "maximum resident memory.",
        "",
        "| contender | median load (s) | median kernel (s) | median first use (s) "
        "| median process (s) | peak RSS (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in report["contenders"].items():
        note = " (kernel scaled to the full volume; process = the slab run)" * (
            name == "dipy_mppca" and report["dipy_mppca_timing"] != "full volume"
        )
        lines.append(
            f"| {name}{note} | {_fmt(c['median_load_s'])} | {_fmt(c['median_kernel_s'])} | "
            f"{_fmt(c['median_first_use_s'])} | {_fmt(c['median_process_s'])} | "
            f"{_fmt(c['peak_rss_mb'], 0)} |"
        )
    lines += [
        "",
        f"DIPY mppca: {report['dipy_mppca_timing']}.",
        "numba JIT, first use with an empty cache (load + kernel, compile included): "
        + ", ".join(f"{k} {v:.2f} s" for k, v in report["cold_jit_first_use_s"].items())
        + "; with the on-disk cache warm (all timings above), load includes only reading it. "
        + "In one process (cache warm): "
        + ", ".join(
            f"{k} {v:.2f} s"
            for k, v in report["ours_first_vs_second_call_in_one_process_s"].items()
        )
        + ".",
        "",
        "| ratio (median of per-repeat ratios) | value |",
        "|---|---|",
    ]
    for name, value in report["ratios"].items():
        if value is None:
            continue
        lines.append(f"| {name} | {_fmt(value, 3)} |")
    acc = report["accuracy"]
    lines += ["", "| accuracy | value |", "|---|---|"]
    dipy_acc = acc["tensor_vs_dipy_wls"]
    lines += [
        f"| MD vs DIPY WLS, max relative diff ({dipy_acc['voxels']} brain voxels with "
        f"{MD_RANGE[0]:g} < MD < {MD_RANGE[1]:g}) | {_fmt(dipy_acc['max_rel_md_diff'])} |",
        f"| MD vs DIPY WLS, median relative diff | {_fmt(dipy_acc['median_rel_md_diff'])} |",
        f"| MD vs DIPY WLS, voxels over 1e-4 | {dipy_acc['voxels_over_1e-4']} |",
        f"| numpy reference vs ours, max relative MD diff | "
        f"{_fmt(acc['numpy_reference_vs_ours_max_rel_md_diff'])} |",
    ]
    for label in ("iter2", "iter1"):
        key = f"tensor_vs_dwi2tensor_{label}"
        if key in acc:
            name = "default -iter 2" if label == "iter2" else "-iter 1"
            lines.append(
                f"| MD vs dwi2tensor {name}, median abs relative diff in brain | "
                f"{100 * acc[key]['median_abs_rel_md_diff']:.3f} % |"
            )
    mp = acc["mppca"]
    lines += [
        f"| MP-PCA RMSE vs noise-free in brain: noisy input | {_fmt(mp['rmse_noisy'], 3)} |",
        f"| MP-PCA RMSE: ours | {_fmt(mp['rmse_ours'], 3)} |",
    ]
    if "rmse_dwidenoise" in mp:
        lines += [
            f"| MP-PCA RMSE: dwidenoise | {_fmt(mp['rmse_dwidenoise'], 3)} |",
            "| MP-PCA RMSE ratio ours/dwidenoise | "
            f"{_fmt(mp['rmse_ratio_ours_to_dwidenoise'], 3)} |",
            "| median sigma in brain: dwidenoise (rel. error) | "
            f"{_fmt(mp['median_sigma_dwidenoise'], 3)} "
            f"({100 * mp['sigma_rel_error_dwidenoise']:+.2f} %) |",
        ]
    lines += [
        f"| median sigma in brain: ours (rel. error) | {_fmt(mp['median_sigma_ours'], 3)} "
        f"({100 * mp['sigma_rel_error_ours']:+.2f} %) |",
        f"| true sigma | {_fmt(mp['true_sigma'], 3)} |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
