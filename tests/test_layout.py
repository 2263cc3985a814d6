"""Memory-order copies of 4-D series (ketamine_dti.dwi.layout): same values as numpy's."""

import numpy as np
import pytest

from ketamine_dti.dwi.layout import c_ordered, f_ordered, masked_rows


@pytest.fixture
def series():
    rng = np.random.default_rng(3)
    return np.asfortranarray(rng.normal(size=(7, 5, 4, 6)).astype(np.float32))  # a file's order


def test_orders_hold_the_same_values(series):
    c = c_ordered(series)
    assert c.flags["C_CONTIGUOUS"] and np.array_equal(c, series)
    f = f_ordered(c)
    assert f.flags["F_CONTIGUOUS"] and np.array_equal(f, series)
    view = series[1:, ::2, :, 1:]  # neither order: a strided view
    assert np.array_equal(c_ordered(view), view) and c_ordered(view).flags["C_CONTIGUOUS"]
    assert np.array_equal(f_ordered(view), view) and f_ordered(view).flags["F_CONTIGUOUS"]


def test_an_array_already_in_order_is_returned_as_it_is(series):
    assert f_ordered(series) is series
    c = np.ascontiguousarray(series)
    assert c_ordered(c) is c
    volume = series[..., 0]  # not 4-D: numpy's own copy
    assert c_ordered(volume).flags["C_CONTIGUOUS"] and np.array_equal(c_ordered(volume), volume)


def test_masked_rows_are_numpys_boolean_selection(series):
    mask = np.zeros(series.shape[:3], bool)
    mask[1:5, 2:, 1:3] = True
    mask[0, 0, 0] = True
    rows, voxels = masked_rows(series, mask)
    assert rows.flags["C_CONTIGUOUS"]
    assert np.array_equal(rows, series[mask])
    assert np.array_equal(voxels, np.flatnonzero(mask.ravel()))
