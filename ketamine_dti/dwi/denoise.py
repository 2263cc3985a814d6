"""MP-PCA denoising of a 4-D DWI array (Veraart et al. 2016, NeuroImage 142:394-406).

In every local patch (``(2 * patch_radius + 1)^3`` voxels x all volumes) the noise-only
principal components have eigenvalues that follow the Marchenko-Pastur law. The number of signal
components ``p`` is the smallest one for which the mean of the remaining eigenvalues (the noise
variance) is at least the variance implied by their spread (the MP bulk width,
``4 sigma^2 sqrt(gamma)``); the patch is then rebuilt from its ``p`` leading components and
``sigma`` is the square root of that mean. The patch mean is removed first (as in DIPY), so the
sample count in ``gamma`` is the number of voxels minus one.

Speed comes from three choices, none of which changes the per-patch estimator:

- patches start on a grid with stride ``PATCH_STRIDE`` instead of at every voxel, and each voxel
  averages the reconstructions of all patches that cover it, weighted by ``1 / (1 + kept
  components)`` (patches that needed fewer components keep less noise; Manjon et al. 2013, as
  in DIPY);
- the eigen-decomposition is of the small Gram matrix (``min(volumes, voxels)`` square), in
  float32, with BLAS/LAPACK called from a numba kernel that runs patches in parallel;
- patch rows that could overlap are never run at the same time (rows are coloured along z), so
  the overlap sums need no locks and the result is bit-identical for any thread count.
"""

from __future__ import annotations

import logging

import numpy as np
from numba import njit, prange

from ketamine_dti.dwi.layout import c_ordered
from ketamine_dti.threads import limit_threads

LOGGER = logging.getLogger(__name__)

#: Voxels between neighbouring patch origins along each axis. 1 is DIPY's dense scheme. 3 (with
#: the default 5-wide patches) still covers every voxel by 1-8 overlapping patches and cuts the
#: patch count 27x vs dense (3.4x vs stride 2): on the standard simulated session the RMSE against
#: the noise-free signal rose only from 0.84x to 0.90x dwidenoise's, sigma unchanged (-2.2%).
PATCH_STRIDE = 3


def _patch_starts(size: int, width: int, stride: int) -> np.ndarray:
    """Origins of ``width``-wide patches along an axis of ``size``; the last one ends flush."""
    last = size - width
    starts = np.arange(0, last + 1, stride)
    if starts[-1] != last:
        starts = np.append(starts, last)
    return starts.astype(np.int64)


def _rows_by_colour(starts: np.ndarray, width: int) -> np.ndarray:
    """Group patch rows so rows in one group never overlap; (colours, rows) padded with -1."""
    n_rows = starts.size
    n_colours = 1
    while (
        any(starts[k + n_colours] - starts[k] < width for k in range(n_rows - n_colours))
        and n_colours < n_rows
    ):
        n_colours += 1
    groups = [np.arange(colour, n_rows, n_colours) for colour in range(n_colours)]
    table = np.full((n_colours, max(g.size for g in groups)), -1, dtype=np.int64)
    for colour, group in enumerate(groups):
        table[colour, : group.size] = group
    return table


def _active_patches(mask: np.ndarray, starts: list[np.ndarray], widths: np.ndarray) -> np.ndarray:
    """True for the patches that hold at least one mask voxel (box sums of a summed-area table)."""
    table = np.zeros(tuple(s + 1 for s in mask.shape), dtype=np.int64)
    table[1:, 1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1).cumsum(2)
    lo = np.ix_(*starts)
    hi = np.ix_(*(s + w for s, w in zip(starts, widths, strict=True)))
    x0, y0, z0 = lo
    x1, y1, z1 = hi
    box = (
        table[x1, y1, z1]
        - table[x0, y1, z1]
        - table[x1, y0, z1]
        - table[x1, y1, z0]
        + table[x0, y0, z1]
        + table[x0, y1, z0]
        + table[x1, y0, z0]
        - table[x0, y0, z0]
    )
    return box > 0


@njit(cache=True, nogil=True)
def _marchenko_pastur(eigenvalues, n_used, n_samples):  # pragma: no cover - compiled
    """(noise variance, signal components) from ascending Gram eigenvalues (Veraart 2016).

    Only the top ``n_used`` eigenvalues can be non-zero; ``n_samples`` is the larger matrix
    dimension (after removing the patch mean), so ``eigenvalue / n_samples`` is a variance.
    """
    offset = eigenvalues.shape[0] - n_used
    smallest = max(eigenvalues[offset], 0.0) / n_samples
    total = 0.0
    for i in range(n_used):
        total += max(eigenvalues[offset + i], 0.0)
    total /= n_samples
    for n_signal in range(n_used):
        n_noise = n_used - n_signal
        mean_noise = total / n_noise
        largest_noise = max(eigenvalues[offset + n_noise - 1], 0.0) / n_samples
        spread_variance = (largest_noise - smallest) / (4.0 * np.sqrt(n_noise / n_samples))
        if mean_noise >= spread_variance:
            return mean_noise, n_signal
        total -= largest_noise
    return 0.0, n_used  # unreachable: one noise eigenvalue has zero spread


@njit(cache=True, parallel=True)
def _mppca_kernel(
    data, starts_x, starts_y, starts_z, widths, active, rows_by_colour, acc, weight_acc, sigma_acc
):  # pragma: no cover - compiled
    """Denoise every active patch and add its weighted reconstruction and sigma to the sums."""
    n_vol = data.shape[3]
    wx, wy, wz = widths[0], widths[1], widths[2]
    n_vox = wx * wy * wz
    n_used = min(n_vol, n_vox - 1)  # the patch mean is removed: rank <= voxels - 1
    n_samples = max(n_vol, n_vox - 1)
    for colour in range(rows_by_colour.shape[0]):
        row_list = rows_by_colour[colour]
        n_rows = 0
        for r in range(row_list.shape[0]):
            if row_list[r] >= 0:
                n_rows += 1
        for r in prange(n_rows):
            kz = row_list[r]
            z0 = starts_z[kz]
            patch = np.empty((n_vox, n_vol), dtype=np.float32)
            mean = np.empty(n_vol, dtype=np.float64)
            for ix in range(starts_x.shape[0]):
                x0 = starts_x[ix]
                for iy in range(starts_y.shape[0]):
                    if not active[ix, iy, kz]:
                        continue
                    y0 = starts_y[iy]
                    mean[:] = 0.0
                    n = 0
                    for a in range(wx):
                        for b in range(wy):
                            for c in range(wz):
                                for m in range(n_vol):
                                    value = data[x0 + a, y0 + b, z0 + c, m]
                                    patch[n, m] = value
                                    mean[m] += value
                                n += 1
                    for m in range(n_vol):
                        mean[m] /= n_vox
                    for n in range(n_vox):
                        for m in range(n_vol):
                            patch[n, m] -= mean[m]
                    if n_vol <= n_vox:
                        eigenvalues, eigenvectors = np.linalg.eigh(np.dot(patch.T, patch))
                    else:
                        eigenvalues, eigenvectors = np.linalg.eigh(np.dot(patch, patch.T))
                    variance, n_signal = _marchenko_pastur(eigenvalues, n_used, n_samples)
                    size = eigenvectors.shape[0]
                    basis = np.ascontiguousarray(eigenvectors[:, size - n_signal :])
                    if n_vol <= n_vox:  # project voxels onto the leading volume-space components
                        recon = np.dot(np.dot(patch, basis), basis.T)
                    else:  # project volumes onto the leading voxel-space components
                        recon = np.dot(basis, np.dot(basis.T, patch))
                    weight = 1.0 / (1.0 + n_signal)  # fewer kept components: less noise left
                    sigma = np.sqrt(variance)
                    n = 0
                    for a in range(wx):
                        for b in range(wy):
                            for c in range(wz):
                                x = x0 + a
                                y = y0 + b
                                z = z0 + c
                                for m in range(n_vol):
                                    acc[x, y, z, m] += weight * (recon[n, m] + mean[m])
                                weight_acc[x, y, z] += weight
                                sigma_acc[x, y, z] += weight * sigma
                                n += 1


def _check_inputs(data, mask, patch_radius):
    """Validate; return the data array, a boolean mask and the patch widths (voxels)."""
    data = np.asarray(data)
    if data.ndim != 4:
        raise ValueError(f"data must be 4-D (x, y, z, volumes), got shape {data.shape}")
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise ValueError(f"data must be real numbers, got dtype {data.dtype}")
    if int(patch_radius) != patch_radius or patch_radius < 1:
        raise ValueError(f"patch_radius must be a positive integer, got {patch_radius!r}")
    spatial_shape = data.shape[:3]
    if mask is None:
        mask = np.ones(spatial_shape, dtype=bool)
    else:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != spatial_shape:
            raise ValueError(f"mask shape {mask.shape} does not match data {spatial_shape}")
    widths = np.array([min(2 * int(patch_radius) + 1, size) for size in spatial_shape])
    if data.shape[3] < 2 or np.prod(widths) < 2:
        raise ValueError(
            f"MP-PCA needs >= 2 volumes and >= 2 voxels per patch; got data shape {data.shape}"
        )
    return data, mask, widths


def mppca(
    data: np.ndarray,
    mask: np.ndarray | None = None,
    patch_radius: int = 2,
    n_threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Denoise a 4-D DWI array (x, y, z, volumes) by local MP-PCA.

    Returns ``(denoised, sigma)``: the denoised array (input dtype; voxels outside ``mask`` are
    returned unchanged, non-finite samples stay as they were) and the voxelwise noise standard
    deviation in the data's units (NaN outside ``mask``). ``patch_radius`` sets the cubic patch
    (radius 2: 5x5x5 = 125 voxels, enough for ~70 volumes); ``n_threads`` caps the cores used.
    Computation is in float32, whose precision is far below any DWI noise level.
    """
    data, mask, widths = _check_inputs(data, mask, patch_radius)
    spatial_shape = data.shape[:3]
    n_vol = data.shape[3]
    out_dtype = data.dtype if data.dtype in (np.float32, np.float64) else np.float32
    sigma = np.full(spatial_shape, np.nan, dtype=out_dtype)
    if not mask.any():
        LOGGER.warning("mppca: the mask excludes every voxel; data returned unchanged")
        return data.astype(out_dtype, copy=True), sigma

    work = c_ordered(np.asarray(data, dtype=np.float32))
    finite = np.isfinite(work)
    all_finite = bool(finite.all())
    if not all_finite:  # a NaN would poison every patch it falls in; treat it as zero signal
        work = np.where(finite, work, np.float32(0.0))
    stride = min(PATCH_STRIDE, int(widths.min()))  # never wider than a patch: no voxel skipped
    starts = [
        _patch_starts(size, w, stride) for size, w in zip(spatial_shape, widths, strict=True)
    ]
    active = _active_patches(mask, starts, widths)
    rows_by_colour = _rows_by_colour(starts[2], int(widths[2]))
    acc = np.zeros(work.shape, dtype=np.float32)
    weight_acc = np.zeros(spatial_shape, dtype=np.float32)
    sigma_acc = np.zeros(spatial_shape, dtype=np.float32)
    LOGGER.debug(
        "mppca: %d of %d patches of %s voxels x %d volumes",
        int(active.sum()),
        active.size,
        "x".join(map(str, widths)),
        n_vol,
    )
    with limit_threads(n_threads, blas_threads=1):
        _mppca_kernel(
            work,
            *starts,
            widths.astype(np.int64),
            active,
            rows_by_colour,
            acc,
            weight_acc,
            sigma_acc,
        )
    del work
    covered = weight_acc > 0  # every mask voxel lies in an active patch
    np.divide(acc, weight_acc[..., None], out=acc, where=covered[..., None])
    sigma[mask] = (sigma_acc[mask] / weight_acc[mask]).astype(out_dtype)
    denoised = acc if out_dtype == np.float32 else acc.astype(out_dtype)
    del acc
    outside = ~mask
    if outside.any():
        denoised[outside] = data[outside]
    if not all_finite:
        denoised[~finite] = data[~finite]
    return denoised, sigma
