"""The uniform cubic B-spline, written once.

Every cubic B-spline in the App evaluates these: the susceptibility field's sampling along the
phase-encode axis (``dwi.susceptibility``), cubic resampling (``dwi.series_registration``),
the Parzen window of mutual information (``dwi.mutual_information``) and the N4 field's basis
(``anat.bias_field``). Sample ``floor(x) - 1 + k`` (k = 0..3) has weight
``cubic_weights(t)[k]`` at ``t = x - floor(x)``.
"""

from __future__ import annotations

from numba import njit


@njit(cache=True, nogil=True, inline="always")
def cubic_weights(t):  # pragma: no cover - JIT
    """The four weights at fraction ``t`` in [0, 1] (a float, or a numpy array elementwise
    through ``cubic_weights.py_func``); they sum to 1."""
    one = 1.0 - t
    t2 = t * t
    t3 = t2 * t
    return (
        one * one * one / 6.0,
        (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0,
        (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0,
        t3 / 6.0,
    )


@njit(cache=True, nogil=True, inline="always")
def cubic_slopes(t):  # pragma: no cover - JIT
    """The derivatives of :func:`cubic_weights` with respect to the position ``x``."""
    one = 1.0 - t
    t2 = t * t
    return (
        -one * one / 2.0,
        (3.0 * t2 - 4.0 * t) / 2.0,
        (-3.0 * t2 + 2.0 * t + 1.0) / 2.0,
        t2 / 2.0,
    )


@njit(cache=True, nogil=True, inline="always")
def mirror(index, size):  # pragma: no cover - JIT
    """Index ``index`` of a line of ``size`` samples mirrored about its end samples (scipy's
    "mirror", which the spline prefilters assume), clamped to the line further out."""
    index = abs(index)
    if index > size - 1:
        index = max(2 * (size - 1) - index, 0)
    return index
