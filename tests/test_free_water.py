"""Free-water fit: analytic two-compartment signals come back; DIPY agreement; CSF; bad inputs.

The signal generator is written here from the model's formula (not ketamine_dti.simulate):
S = S0 [(1 - f) exp(-b g^T D g) + f exp(-b D_water)], with S0 mixing a tissue and a brighter
water b0 (longer T2), and Rician noise.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from ketamine_dti.dwi import free_water
from ketamine_dti.dwi.free_water import (
    RECEIVE_FIELD_MAX_MD,
    b0_free_water_fraction,
    b0_receive_field,
    count_shells,
    estimate_b0_references,
    fit_free_water,
)

WATER_DIFFUSIVITY = 3.0e-3  # mm^2/s at 37 C
S0_TISSUE = 1000.0
S0_WATER = 2500.0  # CSF/tissue b0 ratio of a TE ~ 80 ms acquisition
SNR = 25.0  # at the tissue b0
N_B0 = 6


def directions(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, 3))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def gradient_table(shells=(1000.0,), n_directions: int = 64):
    """N_B0 b0 volumes then ``n_directions`` random directions per shell (s/mm^2)."""
    bvals = [np.zeros(N_B0)] + [np.full(n_directions, b) for b in shells]
    bvecs = [np.zeros((N_B0, 3))] + [directions(n_directions, 10 + k) for k in range(len(shells))]
    return np.concatenate(bvals), np.vstack(bvecs)


def two_compartment_signal(f, md, bvals, bvecs, *, anisotropy=0.2, snr=SNR, seed=0,
                           s0_tissue=S0_TISSUE, s0_water=S0_WATER):  # fmt: skip
    """(n, volumes) signals of free-water signal fraction ``f`` and tissue MD ``md`` (mm^2/s).

    Tissue eigenvalues md * (1 + a, 1, 1 - a) (FA ~0.16 for a = 0.2: GM-like), random
    orientations; Rician noise of SD s0_tissue / snr (none if snr is None).
    """
    rng = np.random.default_rng(seed)
    f = np.asarray(f, dtype=float)
    md = np.asarray(md, dtype=float)
    n = f.size
    evals = md[:, None] * np.array([1 + anisotropy, 1.0, 1 - anisotropy])
    rotations = Rotation.random(n, random_state=seed).as_matrix()
    tensors = np.einsum("nij,nj,nkj->nik", rotations, evals, rotations)
    adc = np.einsum("gi,nij,gj->ng", bvecs, tensors, bvecs)
    # water volume fraction whose b0 signal fraction is f, and the b0 it gives
    volume = f * s0_tissue / ((1 - f) * s0_water + f * s0_tissue)
    s0 = (1 - volume) * s0_tissue + volume * s0_water
    signal = s0[:, None] * (
        (1 - f[:, None]) * np.exp(-bvals * adc) + f[:, None] * np.exp(-bvals * WATER_DIFFUSIVITY)
    )
    if snr is None:
        return signal
    sigma = s0_tissue / snr
    noise = rng.normal(0, sigma, signal.shape) + 1j * rng.normal(0, sigma, signal.shape)
    return np.abs(signal + noise)


def as_volume(rows: np.ndarray) -> np.ndarray:
    return rows.reshape(rows.shape[0], 1, 1, -1)


FRACTIONS = (0.0, 0.1, 0.3, 0.5)
TISSUE_MDS = (0.6e-3, 0.75e-3, 0.9e-3)
VOXELS_PER_CASE = 300


@pytest.mark.slow  # 11-17 s of the fast tier (session 9)
def test_single_shell_recovers_fraction_and_tissue_md():
    bvals, bvecs = gradient_table()
    cases = [(f, md) for f in FRACTIONS for md in TISSUE_MDS]
    f_true = np.repeat([c[0] for c in cases], VOXELS_PER_CASE)
    md_true = np.repeat([c[1] for c in cases], VOXELS_PER_CASE)
    data = as_volume(two_compartment_signal(f_true, md_true, bvals, bvecs, seed=7))

    fit = fit_free_water(data, bvals, bvecs, n_threads=1, s0_tissue=S0_TISSUE, s0_water=S0_WATER)

    assert fit.single_shell
    assert not fit.failed.any()
    for index, (f, md) in enumerate(cases):
        rows = slice(index * VOXELS_PER_CASE, (index + 1) * VOXELS_PER_CASE)
        md_fit = np.median(fit.md[rows])
        f_fit = np.median(fit.f_water[rows])
        assert abs(md_fit / md - 1) <= 0.05, (f, md, md_fit)
        assert abs(f_fit - f) <= 0.03, (f, md, f_fit)
    assert np.all((fit.f_water >= free_water.SINGLE_SHELL_MIN_F) & (fit.f_water <= 1))
    assert np.nanmedian(fit.fa) < 0.3  # GM-like tissue stays GM-like


def test_single_shell_estimates_b0_references_from_the_mask():
    bvals, bvecs = gradient_table()
    rng = np.random.default_rng(3)
    n = 3000
    f_true = np.where(rng.random(n) < 0.3, 0.0, rng.uniform(0.0, 0.5, n))
    md_true = rng.uniform(0.6e-3, 0.9e-3, n)
    f_true[:150] = 1.0  # a ventricle
    data = as_volume(two_compartment_signal(f_true, md_true, bvals, bvecs, seed=4))

    fit = fit_free_water(data, bvals, bvecs, n_threads=1)

    tissue = f_true < 1
    assert np.median(np.abs(fit.f_water[tissue, 0, 0] - f_true[tissue])) < 0.05
    assert np.median(np.abs(fit.md[tissue, 0, 0] / md_true[tissue] - 1)) < 0.08
    assert np.all(fit.f_water[~tissue] > 0.95)


def test_single_shell_regional_means_are_unbiased_when_gray_matter_b0_scatters():
    """Gray matter's own b0 spreads (T2, proton density) about the tissue reference (its
    median): with f free to go below 0, the darker half does not pile up at a bound, so a
    region's mean f and tissue MD stay unbiased, and a loss of 2 points of free water shows.
    The same data refitted with f held at 0 (``min_f=0``, DIPY's bound) show what the floor
    mends: mean f 0.057 / 0.044, tissue MD 2.7% / 3.6% low, the loss read as 0.012."""
    bvals, bvecs = gradient_table()
    n = 2000
    rng = np.random.default_rng(5)
    tissue_b0 = S0_TISSUE * rng.normal(1.0, 0.05, n)
    md_true = np.full(n, 0.75e-3)
    fitted, bounded = {}, {}
    for f_true in (0.04, 0.02):
        clean = two_compartment_signal(np.full(n, f_true), md_true, bvals, bvecs, snr=None,
                                       seed=6, s0_tissue=tissue_b0)  # fmt: skip
        sigma = S0_TISSUE / SNR
        noisy = np.abs(clean + rng.normal(0, sigma, clean.shape)
                       + 1j * rng.normal(0, sigma, clean.shape))  # fmt: skip
        fit = fit_free_water(as_volume(noisy), bvals, bvecs, n_threads=1, s0_tissue=S0_TISSUE,
                             s0_water=S0_WATER)  # fmt: skip
        assert np.mean(fit.f_water < 0) > 0.2  # the darker voxels went below 0
        fitted[f_true] = (np.mean(fit.f_water), np.mean(fit.md))
        assert fitted[f_true][0] == pytest.approx(f_true, abs=0.01)
        assert fitted[f_true][1] == pytest.approx(0.75e-3, rel=0.015)
        at_0 = fit_free_water(as_volume(noisy), bvals, bvecs, n_threads=1,
                              s0_tissue=S0_TISSUE, s0_water=S0_WATER, min_f=0.0)  # fmt: skip
        assert at_0.f_water.min() >= 0.0
        bounded[f_true] = np.mean(at_0.f_water)
        assert bounded[f_true] > f_true + 0.01  # the bound pushes the region's f up
        assert np.mean(at_0.md) < 0.98 * 0.75e-3  # and its tissue MD down
    assert fitted[0.02][0] - fitted[0.04][0] == pytest.approx(-0.02, abs=0.005)
    assert fitted[0.02][1] / fitted[0.04][1] - 1 == pytest.approx(0.0, abs=0.003)
    assert bounded[0.02] - bounded[0.04] > -0.015  # the loss of water half hidden at the bound


def test_single_shell_without_b0_references_keeps_f_at_or_above_0():
    """No CSF in the mask, so no water reference and no b0 prior (the real PA series): nothing
    to read a negative fraction from, so f stays >= 0 and tissue MD near its prior."""
    bvals, bvecs = gradient_table()
    rng = np.random.default_rng(8)
    n = 600
    f_true = rng.uniform(0.0, 0.2, n)
    md_true = rng.uniform(0.6e-3, 0.9e-3, n)
    data = as_volume(two_compartment_signal(f_true, md_true, bvals, bvecs, seed=9))

    fit = fit_free_water(data, bvals, bvecs, n_threads=1)

    assert np.isnan(fit.prior.s0_water)  # no water voxels: the b0 prior is off
    assert fit.f_water.min() >= 0.0
    assert np.mean(fit.f_water < 1e-6) < 0.9  # not simply pinned at the bound either


def test_single_shell_noiseless_signal_with_a_given_noise_sd_is_recovered():
    """An analysis of the model alone fits noiseless mixtures: its own noise estimate is ~0, so
    the caller gives the SD that weighs the priors; with exact references f and tissue MD come
    back, and a change of water shows in f, not in tissue MD."""
    bvals, bvecs = gradient_table()
    f_true = np.repeat([0.05, 0.06, 0.2], 50)
    md_true = np.full(f_true.size, 0.8e-3)
    data = as_volume(two_compartment_signal(f_true, md_true, bvals, bvecs, snr=None, seed=2))
    references = {"s0_tissue": S0_TISSUE, "s0_water": S0_WATER}

    fit = fit_free_water(data, bvals, bvecs, n_threads=1, noise_sd=S0_TISSUE / SNR, **references)

    assert fit.prior.noise_sd == S0_TISSUE / SNR
    np.testing.assert_allclose(fit.f_water[:, 0, 0], f_true, atol=2e-3)
    np.testing.assert_allclose(fit.md[:, 0, 0], md_true, rtol=3e-3)
    one_point = fit.md[50:100].mean() / fit.md[:50].mean() - 1  # f 0.05 -> 0.06
    assert abs(one_point) < 1e-3  # plain DTI MD moves 1.1% for this change
    with pytest.raises(ValueError, match="noise_sd must be positive"):
        fit_free_water(data, bvals, bvecs, n_threads=1, noise_sd=0.0, **references)


def test_b0_references_and_fraction():
    s0 = np.r_[np.full(100, 1000.0), np.full(50, 2500.0), np.full(100, 1500.0)]
    md = np.r_[np.full(100, 0.7e-3), np.full(50, 3.0e-3), np.full(100, 1.2e-3)]
    assert estimate_b0_references(s0, md) == (1000.0, 2500.0, free_water.TISSUE_FROM_LOWEST_MD)
    np.testing.assert_allclose(b0_free_water_fraction([1000.0, 2500.0, 5000.0], 1000.0, 2500.0),
                               [0.0, 1.0, 1.0])  # fmt: skip
    # half the volume water: S0 = 1750, water signal 1250 of it
    np.testing.assert_allclose(b0_free_water_fraction(1750.0, 1000.0, 2500.0), 1250 / 1750)
    # darker than the tissue reference: negative (a linear extrapolation), down to the floor
    below = b0_free_water_fraction([800.0, 100.0], 1000.0, 2500.0)
    np.testing.assert_allclose(below, [-2500 * 200 / (800 * 1500), free_water.SINGLE_SHELL_MIN_F])
    assert np.isnan(estimate_b0_references(s0[:100], md[:100])[0])  # no CSF: no reference
    # with FA: the reference is gray-matter-like tissue, not the darker white matter
    s0_gm = np.r_[s0, np.full(100, 1400.0)]
    md_gm = np.r_[md, np.full(100, 0.75e-3)]
    fa = np.r_[np.full(100, 0.6), np.full(50, 0.05), np.full(100, 0.1), np.full(100, 0.1)]
    assert estimate_b0_references(s0_gm, md_gm, fa)[:2] == (1400.0, 2500.0)


def test_the_tissue_b0_reference_is_gray_matter_by_anatomy_when_given(caplog):
    """Gray matter with a little CSF in every voxel (b0 1450) beside darker low-MD white matter
    (b0 1000, FA 0.1: crossing fibres pass the FA rule): the DTI rule picks the white matter;
    the anatomical gray matter gives its own b0. Too few gray-matter voxels: the DTI rule, and a
    warning."""
    s0 = np.r_[np.full(100, 1000.0), np.full(50, 2500.0), np.full(200, 1450.0)]
    md = np.r_[np.full(100, 0.65e-3), np.full(50, 3.0e-3), np.full(200, 0.85e-3)]
    fa = np.r_[np.full(100, 0.1), np.full(50, 0.05), np.full(200, 0.1)]
    gray = np.r_[np.zeros(150, bool), np.ones(200, bool)]
    gray[100:110] = True  # water voxels in the mask never count as tissue
    assert estimate_b0_references(s0, md, fa)[0] == 1000.0
    assert estimate_b0_references(s0, md, fa, gray) == (
        1450.0, 2500.0, free_water.TISSUE_FROM_GRAY_MATTER,
    )  # fmt: skip
    few = np.zeros(350, bool)
    few[150:155] = True
    with caplog.at_level("WARNING"):
        assert estimate_b0_references(s0, md, fa, few) == (
            1000.0, 2500.0, free_water.TISSUE_FROM_LOWEST_MD,
        )  # fmt: skip
    assert "gray-matter voxels" in caplog.text


def test_multi_shell_noiseless_signal_is_recovered():
    bvals, bvecs = gradient_table(shells=(1000.0, 2000.0), n_directions=32)
    f_true = np.array([0.0, 0.05, 0.2, 0.35, 0.6])
    md_true = np.array([0.6e-3, 0.9e-3, 0.7e-3, 0.8e-3, 0.75e-3])
    data = as_volume(two_compartment_signal(f_true, md_true, bvals, bvecs, snr=None, seed=2))

    fit = fit_free_water(data, bvals, bvecs, n_threads=1)

    assert not fit.single_shell
    np.testing.assert_allclose(fit.f_water[:, 0, 0], f_true, atol=1e-6)
    np.testing.assert_allclose(fit.md[:, 0, 0], md_true, rtol=1e-5)


def test_multi_shell_agrees_with_dipy_fwdti():
    fwdti = pytest.importorskip("dipy.reconst.fwdti")
    from dipy.core.gradients import gradient_table as dipy_gradient_table

    bvals, bvecs = gradient_table(shells=(1000.0, 2000.0), n_directions=32)
    rng = np.random.default_rng(11)
    n = 150
    f_true = rng.uniform(0.0, 0.6, n)
    md_true = rng.uniform(0.6e-3, 0.9e-3, n)
    data = as_volume(two_compartment_signal(f_true, md_true, bvals, bvecs, anisotropy=0.4,
                                            seed=12, s0_water=S0_TISSUE))  # fmt: skip

    ours = fit_free_water(data, bvals, bvecs, n_threads=1)
    dipy = fwdti.FreeWaterTensorModel(dipy_gradient_table(bvals, bvecs=bvecs)).fit(data)

    difference = np.abs(ours.md[:, 0, 0] / dipy.md[:, 0, 0] - 1)
    assert np.median(difference) <= 0.01
    assert np.median(np.abs(ours.f_water[:, 0, 0] - dipy.f[:, 0, 0])) <= 0.01


@pytest.mark.parametrize("shells", [(1000.0,), (1000.0, 2000.0)])
def test_csf_voxel_is_free_water(shells):
    bvals, bvecs = gradient_table(shells=shells, n_directions=32)
    f_true = np.r_[np.ones(20), np.full(20, 0.2)]
    md_true = np.full(40, 0.75e-3)
    data = as_volume(two_compartment_signal(f_true, md_true, bvals, bvecs, seed=5))

    fit = fit_free_water(data, bvals, bvecs, n_threads=1, s0_tissue=S0_TISSUE,
                         s0_water=S0_WATER)  # fmt: skip

    assert np.all(fit.f_water[:20] > 0.95)
    assert np.all(np.isnan(fit.md[:20]) | (fit.f_water[:20] > 0.95))
    assert not fit.failed.any()


def test_mask_and_unfittable_voxels():
    bvals, bvecs = gradient_table()
    data = as_volume(two_compartment_signal(np.full(4, 0.1), np.full(4, 0.7e-3), bvals, bvecs))
    data[1, 0, 0, 3] = np.nan
    mask = np.array([True, True, True, False]).reshape(4, 1, 1)

    fit = fit_free_water(data, bvals, bvecs, mask=mask, n_threads=1, s0_tissue=S0_TISSUE,
                         s0_water=S0_WATER)  # fmt: skip

    assert fit.failed[:, 0, 0].tolist() == [False, True, False, False]
    assert np.isnan(fit.md[1, 0, 0]) and np.isnan(fit.f_water[3, 0, 0])
    assert np.isfinite(fit.md[[0, 2], 0, 0]).all()


def test_count_shells():
    assert count_shells(gradient_table()[0]) == 1
    assert count_shells(np.r_[0, 5, 995, 1000, 1005]) == 1
    assert count_shells(gradient_table(shells=(1000.0, 2000.0))[0]) == 2


def test_bad_inputs_raise():
    bvals, bvecs = gradient_table()
    data = as_volume(two_compartment_signal(np.full(2, 0.1), np.full(2, 0.7e-3), bvals, bvecs))
    with pytest.raises(ValueError, match="gradient table does not match"):
        fit_free_water(data, bvals[:-1], bvecs[:-1])
    with pytest.raises(ValueError, match="no b0"):
        fit_free_water(data[..., N_B0:], bvals[N_B0:], bvecs[N_B0:])
    with pytest.raises(ValueError, match="mask shape"):
        fit_free_water(data, bvals, bvecs, mask=np.ones((3, 1, 1), bool))
    collinear = bvecs.copy()
    collinear[N_B0:] = [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="non-collinear"):
        fit_free_water(data, bvals, collinear)
    with pytest.raises(ValueError, match="both"):
        fit_free_water(data, bvals, bvecs, s0_tissue=1000.0)
    with pytest.raises(ValueError, match="brighter"):
        fit_free_water(data, bvals, bvecs, s0_tissue=2000.0, s0_water=1000.0)
    with pytest.raises(ValueError, match="4-D"):
        fit_free_water(data[:, 0], bvals, bvecs)
    for floor in (0.1, -0.6):
        with pytest.raises(ValueError, match="min_f"):
            fit_free_water(data, bvals, bvecs, min_f=floor)


def test_single_shell_prior_divides_out_the_receive_coils_shading():
    """A brain of GM-like tissue with sulcal pockets of water and a ventricle, under a coil's
    smooth shading (40% across the brain; a Gaussian lobe, not N4's B-splines): with the voxel
    size given, the fit divides the b0's receive field out and the free water comes back, in
    the tissue and in each pocket; read from the shaded b0 it is off by several points."""
    bvals, bvecs = gradient_table(n_directions=30)
    voxel_mm = 2.0
    shape = (36, 44, 36)
    centre = (np.array(shape) - 1) / 2
    grid = np.moveaxis(np.indices(shape, dtype=float), 0, -1)
    radius = np.linalg.norm((grid - centre) / (centre - 1), axis=-1)
    brain = radius < 1.0
    rng = np.random.default_rng(5)
    f_true = np.where(brain, rng.uniform(0.0, 0.1, shape), 0.0)
    pockets = []
    for offset in ((-10, 8, 4), (9, -12, -5), (6, 14, 8)):  # 1.6 cm across, 0.3 water
        where = brain & (np.linalg.norm(grid - (centre + offset), axis=-1) < 4)
        f_true[where] = 0.3
        pockets.append(where)
    f_true[np.linalg.norm(grid - centre, axis=-1) < 4] = 1.0  # the ventricle
    md_true = rng.uniform(0.65e-3, 0.85e-3, shape)
    rows = two_compartment_signal(f_true[brain], md_true[brain], bvals, bvecs, snr=50, seed=6)
    coil = centre + np.array([0.0, -30.0, 0.0])  # a lobe peaking behind the head
    shading = 1.0 + 0.8 * np.exp(
        -((np.linalg.norm(grid - coil, axis=-1) * voxel_mm) ** 2) / 80.0**2
    )
    data = np.zeros((*shape, bvals.size))
    data[brain] = rows * shading[brain][:, None]
    tissue = brain & (f_true < 1)
    spread = np.percentile(shading[brain], [2, 98])
    assert spread[1] / spread[0] > 1.35

    corrected = fit_free_water(data, bvals, bvecs, brain, n_threads=1, voxel_mm=(voxel_mm,) * 3)
    shaded = fit_free_water(data, bvals, bvecs, brain, n_threads=1)

    assert corrected.prior.receive_field_range is not None
    assert shaded.prior.receive_field_range is None
    assert np.median(np.abs(corrected.f_water[tissue] - f_true[tissue])) < 0.03  # 0.019
    assert np.median(np.abs(shaded.f_water[tissue] - f_true[tissue])) > 0.05
    corrected_errors, shaded_errors = (
        [abs(np.mean(fit.f_water[pocket]) - 0.3) for pocket in pockets]
        for fit in (corrected, shaded)
    )
    assert max(corrected_errors) < 0.05  # 0.01-0.03 (0.27-0.29 against 0.16, 0.44, 0.08 shaded)
    assert max(shaded_errors) > 0.1


def test_receive_field_is_fitted_on_tissue_not_on_free_water():
    """One side of an unshaded brain holds up to 30% CSF by volume, rising over 2.5 cm: b0
    brighter by up to 45% for a reason that is not the coil. Fitted on the whole mask, N4
    takes most of that for shading (and the prior would lose the water); fitted on the voxels
    whose DTI MD says tissue, the field stays near 1 there. Without tissue voxels enough, the
    whole mask is used."""
    shape = (44, 52, 44)
    centre = (np.array(shape) - 1) / 2
    grid = np.moveaxis(np.indices(shape, dtype=float), 0, -1)
    brain = np.linalg.norm((grid - centre) / (centre - 1), axis=-1) < 1
    x_mm = (grid[..., 0] - centre[0]) * 2.0
    water = np.where(brain, 0.3 * np.clip((x_mm - 10.0) / 25.0, 0.0, 1.0), 0.0)
    brightness = 1.0 + (S0_WATER / S0_TISSUE - 1.0) * water
    noise = 1.0 + np.random.default_rng(3).normal(0.0, 0.03, shape)
    b0 = np.where(brain, S0_TISSUE * brightness * noise, 0.0)
    water_signal = water * S0_WATER / (S0_TISSUE * brightness)
    md = 0.8e-3 * (1.0 - water_signal) + WATER_DIFFUSIVITY * water_signal
    rich = brain & (water > 0.2)

    whole = b0_receive_field(b0, brain, (2.0, 2.0, 2.0))
    tissue = b0_receive_field(b0, brain, (2.0, 2.0, 2.0), dti_md=md)
    assert np.median(whole[rich]) > 1.25  # 1.32 of the 1.38 brightness
    assert np.median(tissue[rich]) < 1.12  # 1.08
    assert abs(np.median(tissue[brain & (water == 0)]) - 1.0) < 0.02
    no_tissue = np.full(shape, 2.0 * RECEIVE_FIELD_MAX_MD)
    np.testing.assert_array_equal(b0_receive_field(b0, brain, (2.0,) * 3, no_tissue), whole)
    # an analysis leaving the watery side out of the whole-mask fit: evaluated there, not bent
    without = b0_receive_field(b0, brain, (2.0,) * 3, exclude=water > 0)
    assert without.shape == shape and np.all(without[~brain] == 1.0)
    assert np.median(without[rich]) < 1.05  # 1.01 (1.32 fitted on the whole mask)
