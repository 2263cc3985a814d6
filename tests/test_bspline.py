"""The one cubic B-spline every interpolator, the N4 basis and the MI window evaluate."""

from __future__ import annotations

import numpy as np
from numba import njit
from scipy import interpolate, ndimage

from ketamine_dti.bspline import cubic_slopes, cubic_weights, mirror


@njit(cache=False)
def _compiled(t):
    return cubic_weights(t), cubic_slopes(t)


def test_weights_are_the_cubic_b_spline_and_slopes_its_derivative():
    t = np.linspace(0.0, 1.0, 41)
    weights = np.stack(cubic_weights.py_func(t), axis=1)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-15)
    # scipy's cardinal cubic B-spline at the four taps' distances from x = floor(x) + t
    basis = interpolate.BSpline.basis_element(np.arange(-2.0, 3.0), extrapolate=False)
    for k in range(4):
        np.testing.assert_allclose(weights[:, k], basis(k - 1 - t), atol=1e-14)
    step = 1e-6
    inner = t[1:-1]
    numeric = (
        np.stack(cubic_weights.py_func(inner + step), 1)
        - np.stack(cubic_weights.py_func(inner - step), 1)
    ) / (2 * step)
    np.testing.assert_allclose(np.stack(cubic_slopes.py_func(inner), 1), numeric, atol=1e-8)
    for value in (0.0, 0.3, 0.999):  # the compiled kernels agree with the Python ones
        compiled = _compiled(value)
        np.testing.assert_allclose(compiled[0], cubic_weights.py_func(value), rtol=0, atol=0)
        np.testing.assert_allclose(compiled[1], cubic_slopes.py_func(value), rtol=0, atol=0)


def test_mirror_and_weights_reproduce_scipy_cubic_interpolation():
    """Prefiltered coefficients, these weights and the mirror index give scipy's
    ``map_coordinates(order=3, mode="mirror")``, the contract the resamplers rely on."""
    line = np.random.default_rng(0).normal(size=17)
    coefficients = ndimage.spline_filter1d(line, order=3, mode="mirror")
    positions = np.array([0.0, 0.25, 3.7, 8.5, 15.9, 16.0])
    ours = []
    for x in positions:
        base = int(np.floor(x))
        taps = cubic_weights.py_func(x - base)
        indices = [mirror.py_func(base - 1 + k, line.size) for k in range(4)]
        ours.append(sum(taps[k] * coefficients[indices[k]] for k in range(4)))
    expected = ndimage.map_coordinates(line, [positions], order=3, mode="mirror")
    np.testing.assert_allclose(ours, expected, atol=1e-12)
    assert [mirror.py_func(i, 5) for i in (-2, -1, 0, 4, 5, 6, 20)] == [2, 1, 0, 4, 3, 2, 0]
