"""Compile the JIT kernels once (e.g. while building the container image).

Singularity/Apptainer run images read-only, so numba's cache must be filled at build time.
"""

from __future__ import annotations

import numpy as np


def main() -> None:
    from ketamine_dti.dwi.denoise import mppca
    from ketamine_dti.dwi.tensor import fit_tensor

    rng = np.random.default_rng(0)
    bvals = np.r_[0.0, np.full(12, 1000.0)]
    bvecs = rng.normal(size=(13, 3))
    bvecs /= np.linalg.norm(bvecs, axis=1, keepdims=True)
    bvecs[0] = 0
    for dtype in (np.float32, np.float64):
        data = (100 + rng.normal(size=(6, 6, 6, 13))).astype(dtype)
        for method in ("ols", "wls", "nlls"):
            fit_tensor(data, bvals, bvecs, method=method, n_threads=1)
        mppca(data, patch_radius=1, n_threads=1)
    print("ketamine-dti kernels compiled")


if __name__ == "__main__":
    main()
