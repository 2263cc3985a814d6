"""N4 bias-field estimation (ketamine_dti.anat.bias_field) against its definitions and ANTs."""

from __future__ import annotations

import numpy as np
import pytest

from ketamine_dti.anat import bias_field as bf
from ketamine_dti.simulate.anatomy import nilearn_data_dir


def test_refined_lattice_is_the_same_spline():
    rng = np.random.default_rng(0)
    u = rng.uniform(0, 3, 500)
    coarse = rng.normal(size=3 + bf.SPLINE_ORDER)
    fine = bf.refinement_matrix(3) @ coarse
    np.testing.assert_allclose(
        bf.basis_matrix(2 * u, 6) @ fine, bf.basis_matrix(u, 3) @ coarse, atol=1e-12
    )
    assert np.allclose(bf.basis_matrix(u, 3).sum(axis=1), 1.0)  # partition of unity


def test_separable_fit_equals_pointwise_multilevel_approximation():
    """Lee's approximation written point by point (64 weights each) gives the same lattice."""
    rng = np.random.default_rng(1)
    shape, spans = (7, 6, 5), (2, 1, 2)
    values = rng.normal(size=shape)
    weights = (rng.random(shape) < 0.7).astype(float)
    bases = [bf.basis_matrix(np.linspace(0, s, n), s) for n, s in zip(shape, spans, strict=True)]
    numerator = np.zeros(tuple(s + 3 for s in spans))
    denominator = np.zeros_like(numerator)
    for index in np.ndindex(shape):
        w = np.einsum("i,j,k->ijk", *(basis[i] for basis, i in zip(bases, index, strict=True)))
        phi = w * values[index] / np.sum(w**2)
        numerator += weights[index] * w**2 * phi
        denominator += weights[index] * w**2
    expected = np.divide(
        numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0
    )
    np.testing.assert_allclose(bf.fit(values, weights, bases), expected, atol=1e-12)
    # and the evaluation is the spline: sum over control points of lattice x weights
    lattice = rng.normal(size=numerator.shape)
    point = (3, 2, 4)
    w = np.einsum("i,j,k->ijk", *(basis[i] for basis, i in zip(bases, point, strict=True)))
    assert bf.evaluate(lattice, bases)[point] == pytest.approx(np.sum(w * lattice))


@pytest.mark.parametrize("spline_distance_mm", [None, 60.0], ids=["mesh1", "distance60"])
def test_estimated_field_is_ants_n4(spline_distance_mm):
    """The same field as ANTs' N4 (antspyx) with the same settings, to float32 rounding, on
    a template T1w with a planted bias (test_anat_brain checks that the bias goes)."""
    import ants

    t1w = ants.resample_image(
        ants.image_read(
            str(nilearn_data_dir() / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
        ),
        (3.0, 3.0, 3.0),
        use_voxels=False,
        interp_type=0,
    )
    axes = np.meshgrid(*[np.linspace(-1, 1, n) for n in t1w.shape], indexing="ij")
    planted = 0.25 * axes[0] - 0.2 * axes[2] + 0.15 * axes[1] ** 2
    data = (t1w.numpy() + 1.0) * np.exp(planted)
    mask = t1w.numpy() > 20
    image = t1w.new_image_like(data.astype(np.float32))
    # few iterations: N4 is mildly chaotic, float32 (ANTs) and float64 drift apart over 100s
    iterations = [3, 3, 2]
    reference = ants.n4_bias_field_correction(
        image,
        mask=image.new_image_like(mask.astype(np.float32)),
        shrink_factor=2,
        convergence={"iters": iterations, "tol": 0.0},
        spline_param=spline_distance_mm,
        return_bias_field=True,
    ).numpy()
    ours = bf.estimate_log_field(
        image.numpy(), mask, image.spacing, shrink=2, iterations=iterations,
        spline_distance_mm=spline_distance_mm,
    )  # fmt: skip
    difference = np.abs(ours[mask] - np.log(reference[mask]))
    # a detail wrong (the subsampling offset, the padding) moves the field by 2e-3 to 2e-2
    assert np.median(difference) < 2e-5 and difference.max() < 5e-4


def test_empty_mask_gives_no_field():
    image = np.ones((8, 8, 8))
    field = bf.estimate_log_field(
        image, np.zeros(image.shape, bool), (1, 1, 1), shrink=2, iterations=[2]
    )
    assert not field.any()
