"""Gibbs unringing: a k-space-truncated phantom loses its ringing, as with DIPY's method."""

from __future__ import annotations

import numpy as np
import pytest

from ketamine_dti.dwi.gibbs import remove_gibbs

N = 48


def _ringing_phantom():
    """Two ellipses, then k-space truncated to half the matrix (what an acquisition does)."""
    grid = np.mgrid[:N, :N].astype(float) - N / 2 + 0.3
    truth = ((grid[0] ** 2 / 250 + grid[1] ** 2 / 150) < 1) * 100.0
    truth += ((grid[0] - 4) ** 2 + (grid[1] + 3) ** 2 < 20) * 50.0
    spectrum = np.fft.fftshift(np.fft.fft2(truth))
    keep = np.zeros_like(spectrum)
    keep[N // 4 : 3 * N // 4, N // 4 : 3 * N // 4] = 1
    ringing = np.abs(np.fft.ifft2(np.fft.ifftshift(spectrum * keep)))
    flat = np.hypot(*np.gradient(truth)) == 0
    return np.repeat(ringing[:, :, None], 3, axis=2).astype(np.float32), flat


def _flat_oscillation(image, flat):
    return np.abs(np.diff(image[..., 0], axis=0))[flat[:-1]].mean()


def test_removes_ringing_like_dipy():
    from dipy.denoise.gibbs import gibbs_removal

    ringing, flat = _ringing_phantom()
    ours = remove_gibbs(ringing)
    dipy = gibbs_removal(ringing.copy(), slice_axis=2, inplace=False)
    assert ours.shape == ringing.shape and ours.dtype == np.float32
    assert _flat_oscillation(ours, flat) < 0.8 * _flat_oscillation(ringing, flat)
    assert abs(_flat_oscillation(ours, flat) / _flat_oscillation(dipy, flat) - 1) < 0.02
    assert np.corrcoef(ours.ravel(), dipy.ravel())[0, 1] > 0.9999


def test_four_d_and_bad_shape():
    ringing, _ = _ringing_phantom()
    series = np.stack([ringing, 2 * ringing], axis=-1)
    out = remove_gibbs(series)
    assert out.shape == series.shape
    assert np.allclose(out[..., 1], 2 * out[..., 0], rtol=1e-4, atol=1e-3)  # linear in scale
    with pytest.raises(ValueError, match="3-D or 4-D"):
        remove_gibbs(np.ones((4, 4)))


def test_oscillation_kernel_matches_its_definition():
    """The compiled oscillation (Kellner's total variation: the smaller of the summed absolute
    differences over N_POINTS neighbours to the right and to the left, circular) equals its
    definition written out in numpy, along either in-plane axis."""
    from ketamine_dti.dwi.gibbs import N_POINTS, _keep_smoother

    volume = np.random.default_rng(4).normal(size=(11, 9, 3)).astype(np.float32)
    for axis in (0, 1):
        lines = np.moveaxis(volume, axis, 0).astype(float)
        steps = np.abs(np.roll(lines, -1, axis=0) - lines)  # steps[i] = |x[i+1] - x[i]|
        right = sum(np.roll(steps, -k, axis=0) for k in range(N_POINTS))
        left = sum(np.roll(steps, k, axis=0) for k in range(1, N_POINTS + 1))
        out = np.full(volume.shape, np.inf, np.float32)  # +inf: every value is taken
        chosen, shift = np.zeros_like(volume), np.zeros_like(volume)
        _keep_smoother(np.moveaxis(volume, axis, 0), np.float32(0.5),
                       *(np.moveaxis(a, axis, 0) for a in (chosen, shift, out)))  # fmt: skip
        np.testing.assert_allclose(np.moveaxis(out, axis, 0), np.minimum(right, left), rtol=1e-5)
        np.testing.assert_array_equal(chosen, volume)
        assert np.all(shift == 0.5)
