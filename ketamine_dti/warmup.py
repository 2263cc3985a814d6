"""Compile the JIT kernels once (e.g. while building the container image).

Singularity/Apptainer run images read-only, so numba's cache must be filled at build time.
The simulator's kernels too: uncompiled, they cost every simulating process ~15 s of CPU
(a standard participant's 58 s instead of 43 s), the demo's workers each.
"""

from __future__ import annotations

import tempfile

import numpy as np


def main() -> None:
    compile_kernels()
    _simulator()
    print("ketamine-dti kernels compiled")


def compile_kernels() -> None:
    """Run each of the App's kernels once on tiny data, with the argument types a participant
    gives them: compiled, or loaded from numba's cache, into this process."""
    from ketamine_dti.dwi import layout, mutual_information, series_registration, susceptibility
    from ketamine_dti.dwi.denoise import mppca
    from ketamine_dti.dwi.free_water import fit_free_water
    from ketamine_dti.dwi.gibbs import remove_gibbs
    from ketamine_dti.dwi.gre_fieldmap import unwrap_phase
    from ketamine_dti.dwi.tensor import fit_tensor

    rng = np.random.default_rng(0)
    bvals = np.r_[0.0, np.full(12, 1000.0)]
    bvecs = rng.normal(size=(13, 3))
    bvecs /= np.linalg.norm(bvecs, axis=1, keepdims=True)
    bvecs[0] = 0
    for dtype in (np.float32, np.float64):
        data = (100 + rng.normal(size=(6, 6, 6, 13))).astype(dtype)
        for method in ("ols", "wls", "nlls", "restore"):
            fit_tensor(data, bvals, bvecs, method=method, n_threads=1, noise=1.0)
        layout.f_ordered(layout.c_ordered(np.asfortranarray(data)))  # a file's order and back
        mppca(data, patch_radius=1, n_threads=1)
        # one shell: the b0-prior fit (references given: the noise data has no CSF)
        fit_free_water(data, bvals, bvecs, n_threads=1, s0_tissue=90.0, s0_water=200.0)
    # two shells: the multi-shell (Hoy 2014) path of the same kernel
    two_shell_bvals = np.r_[0.0, np.full(6, 1000.0), np.full(6, 2000.0)]
    fit_free_water(data, two_shell_bvals, np.r_[bvecs[:7], bvecs[1:7]], n_threads=1)
    volume = rng.normal(size=(12, 12, 12)).astype(np.float32)
    mask = np.ones(volume.shape, dtype=bool)
    target = series_registration.prepare(volume, np.eye(4), mask)
    series_registration.register(
        target, series_registration.resample(volume, np.eye(4), np.eye(4))
    )
    series_registration.resample(volume, np.eye(4), np.eye(4), shift=np.zeros_like(volume))
    sampled = mutual_information.prepare(volume, np.eye(4), mask, 0.5)
    mutual_information.register(sampled, volume, 2)
    up = 100 + rng.normal(size=(16, 16, 16)).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    field = susceptibility.estimate_field(up, up.copy(), affine, "j", "j-", 0.05, 0.05).field_hz
    susceptibility.unwarp(up, field, affine, 0.05, "j")
    unwrap_phase(rng.uniform(-np.pi, np.pi, size=(8, 8, 8)), np.ones((8, 8, 8), bool))
    remove_gibbs(rng.normal(size=(8, 8, 3, 2)).astype(np.float32))  # lines along both axes


def _simulator() -> None:
    """One tiny participant with every distortion and realism item on: each simulator kernel
    runs once with the argument types a trial gives it."""
    from ketamine_dti.simulate import bids_writer
    from ketamine_dti.simulate.clinical import simulate_clinical

    with tempfile.TemporaryDirectory() as out:
        options = bids_writer.make_options(
            out, n_participants=3, preset="tiny", distortion="typical", realism_level="typical"
        )
        trial = simulate_clinical(3, seed=options.seed, sessions=options.sessions)
        bids_writer.write_top_level(options, trial)
        bids_writer.simulate_participant(options, trial, 0)


if __name__ == "__main__":
    main()
