"""Permutation p-values for every OLS term of stats.tsv: Freedman-Lane, vectorised.

Freedman & Lane (1983, J Bus Econ Stat 1:292-8); Winkler et al. (2014, NeuroImage 92:381-97).
To test coefficient j of ``y = X b + e``, the reduced model Z is X without column j. Its
residuals ``e_Z = R_Z y`` are permuted (within exchangeability blocks) and added back to its
fitted values, ``y* = H_Z y + P e_Z``, and the t statistic of column j is recomputed for ``y*``.
``H_Z y`` lies in the span of X, so it changes neither that coefficient nor the full model's
residuals. With ``r = R_Z x_j`` (Frisch-Waugh-Lovell) and ``Q`` the thin QR factor of X:

    b_j* = r' P e_Z / r'r            residuals* = P e_Z - Q Q' P e_Z

so the statistics of all permutations come from one batched product of the permuted residuals
(B x n per term) with ``[Q, r]``; nothing is refitted. The t is the one stats.tsv reports:
OLS, or HC3 with ``--robust-se``.

One permutation of all analysed participants is drawn per replicate and shared by every fit,
so the tests of the seven ROIs are permuted jointly, as max-T needs. A fit that uses only some
participants (missing data, one arm) gets that permutation restricted to them by following
each cycle past the absent ones: deleting elements from the cycles of a uniformly random
permutation leaves a uniformly random permutation of the rest, and a cycle never leaves its
block.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

import numpy as np
import pandas as pd

from ketamine_dti.config import Config
from ketamine_dti.group.models import INTERCEPT, OlsDesign, ols_designs
from ketamine_dti.group.multiple_comparisons import FDR_FAMILY, add_fdr, max_t_adjusted

LOGGER = logging.getLogger(__name__)

#: Relative slack when comparing a permuted |t| with the observed one, so a permutation that
#: reproduces the observed data (e.g. the identity) counts as a tie despite rounding.
TIE_TOLERANCE = 1e-10
#: Permuted residuals gathered at once (elements, float64): ~32 MB, whatever n and B.
CHUNK_ELEMENTS = 4_000_000
#: Columns this module adds to stats.tsv (p_perm_fwer only with ``--fwer maxt``).
P_PERM, P_PERM_FDR, P_PERM_FWER = "p_perm", "p_perm_fdr", "p_perm_fwer"
KEYS = ["scale", "roi", "model", "term"]


def permutation_indices(
    n_permutations: int, blocks: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """(B, n) indices; row b is a random permutation of 0..n-1 that maps every index to one of
    the same block (``blocks``: a label per index). Applied as ``residuals[row]``."""
    blocks = np.asarray(blocks)
    out = np.empty((n_permutations, blocks.size), dtype=np.intp)
    for label in np.unique(blocks):  # sorted: the same seed gives the same permutations
        members = np.flatnonzero(blocks == label)
        out[:, members] = rng.permuted(np.tile(members, (n_permutations, 1)), axis=1)
    return out


def restrict_permutations(permutations: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Permutations of all n participants -> permutations of the subset ``members`` (indices
    into 0..n-1), as indices into ``members``: each member maps to the first member along its
    cycle. Uniform (within blocks) when the input is."""
    n_permutations, n = permutations.shape
    members = np.asarray(members, dtype=np.intp)
    local = np.full(n, -1, dtype=np.intp)
    local[members] = np.arange(members.size)
    if members.size == n and np.array_equal(members, np.arange(n)):
        return permutations
    image = permutations[:, members]
    rows, columns = np.nonzero(local[image] < 0)
    while rows.size:  # follow the cycles past the absent participants
        image[rows, columns] = permutations[rows, image[rows, columns]]
        still = local[image[rows, columns]] < 0
        rows, columns = rows[still], columns[still]
    return local[image]


def _t_statistics(
    residuals: np.ndarray,
    basis: np.ndarray,
    regressors: np.ndarray,
    leverage: np.ndarray,
    df: int,
    robust: bool,
) -> np.ndarray:
    """t of each tested column for permuted reduced-model residuals.

    ``residuals``: (T, b, n), the permuted e_Z of each of T terms; ``basis``: Q of X (n, p);
    ``regressors``: r = R_Z x_j per term (T, n); ``leverage``: diag of the hat matrix of X.
    Returns (T, b).
    """
    n_terms = regressors.shape[0]
    rr = np.einsum("tn,tn->t", regressors, regressors)[:, None]
    factors = np.concatenate(
        [np.broadcast_to(basis, (n_terms, *basis.shape)), regressors[:, :, None]], axis=2
    )
    products = residuals @ factors  # (T, b, p + 1)
    beta = products[..., -1] / rr
    projection = products[..., :-1]
    if robust:  # HC3: sum_i c_i^2 e_i^2 / (1 - h_i)^2, with c = r / r'r the row of X^+
        full = residuals - projection @ basis.T
        weights = (regressors / rr) ** 2 / (1.0 - leverage) ** 2
        variance = np.einsum("tbn,tn->tb", full * full, weights)
    else:  # residual sum of squares = ||e||^2 - ||Q'e||^2
        rss = np.einsum("tbn,tbn->tb", residuals, residuals) - np.einsum(
            "tbp,tbp->tb", projection, projection
        )
        variance = np.maximum(rss, 0.0) / df / rr
    return beta / np.sqrt(variance)


def freedman_lane_t(
    y: np.ndarray,
    x: np.ndarray,
    columns: list[int],
    permutations: np.ndarray,
    robust: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Observed t (T,) and Freedman-Lane permutation t (B, T) of the ``columns`` of ``x``.

    ``permutations``: (B, n) indices into the rows; the statistic is OLS t, or HC3 t with
    ``robust``. ``x`` must have full column rank.
    """
    n, p = x.shape
    basis, _ = np.linalg.qr(x)
    leverage = np.einsum("np,np->n", basis, basis)
    reduced_residuals = np.empty((len(columns), n))
    regressors = np.empty((len(columns), n))
    for k, column in enumerate(columns):
        reduced, _ = np.linalg.qr(np.delete(x, column, axis=1))
        reduced_residuals[k] = y - reduced @ (reduced.T @ y)
        regressors[k] = x[:, column] - reduced @ (reduced.T @ x[:, column])
    args = (basis, regressors, leverage, n - p, robust)
    observed = _t_statistics(reduced_residuals[:, None, :], *args)[:, 0]
    n_permutations = permutations.shape[0]
    null = np.empty((n_permutations, len(columns)))
    chunk = max(1, CHUNK_ELEMENTS // (len(columns) * n))
    for start in range(0, n_permutations, chunk):
        rows = permutations[start : start + chunk]
        null[start : start + chunk] = _t_statistics(reduced_residuals[:, rows], *args).T
    return observed, null


def permutation_p(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Two-sided p of each test: (1 + #{|t*| >= |t|}) / (B + 1), the observed data counting as
    one permutation (so p is never 0). ``observed`` (T,), ``null`` (B, T)."""
    threshold = np.abs(observed) * (1.0 - TIE_TOLERANCE)
    exceed = (np.abs(null) >= threshold).sum(axis=0)
    return (1.0 + exceed) / (null.shape[0] + 1.0)


def permutation_tests(
    designs: list[OlsDesign],
    participant_ids: np.ndarray,
    blocks: np.ndarray | None,
    n_permutations: int,
    seed: int,
    robust: bool,
    fwer: str,
) -> pd.DataFrame:
    """p_perm (and p_perm_fwer with ``fwer='maxt'``) of every non-intercept term of every fit.

    ``participant_ids``/``blocks``: every analysed participant and its exchangeability block
    (None: one block). Returns rows keyed by scale, roi, model, term.
    """
    rng = np.random.default_rng(seed)
    if blocks is None:
        blocks = np.zeros(len(participant_ids))
    permutations = permutation_indices(n_permutations, blocks, rng)
    position = {pid: i for i, pid in enumerate(participant_ids)}
    by_members: dict[bytes, list[int]] = defaultdict(list)
    members_of = []
    for index, design in enumerate(designs):
        members = np.array([position[pid] for pid in design.participant_ids], dtype=np.intp)
        members_of.append(members)
        by_members[members.tobytes()].append(index)
    results: list[tuple] = [()] * len(designs)
    for indices in by_members.values():  # one restriction per distinct set of participants
        local = restrict_permutations(permutations, members_of[indices[0]])
        for index in indices:
            design = designs[index]
            columns = [j for j, term in enumerate(design.terms) if term != INTERCEPT]
            observed, null = freedman_lane_t(design.y, design.x, columns, local, robust)
            results[index] = (design, columns, observed, null)
    rows, observed_all, null_all = [], [], []
    for design, columns, observed, null in results:
        rows += [(design.scale, design.roi, design.model, design.terms[j]) for j in columns]
        observed_all.append(observed)
        null_all.append(null)
    observed = np.concatenate(observed_all)
    null = np.concatenate(null_all, axis=1)
    table = pd.DataFrame(rows, columns=KEYS)
    table[P_PERM] = permutation_p(observed, null)
    if fwer == "maxt":
        p_fwer = np.empty(len(table))
        for family in table.groupby(list(FDR_FAMILY), sort=False).indices.values():
            p_fwer[family] = max_t_adjusted(
                np.abs(observed[family]), np.abs(null[:, family]), TIE_TOLERANCE
            )
        table[P_PERM_FWER] = p_fwer
    return table


def add_permutation_p(
    stats: pd.DataFrame,
    table: pd.DataFrame,
    config: Config,
    rois: tuple[str, ...],
    blocks: pd.Series | None,
) -> pd.DataFrame:
    """``stats`` with p_perm, p_perm_fdr (BH over the FDR family) and, with ``--fwer maxt``,
    p_perm_fwer; n/a on the mixed-model rows. Unchanged with ``--permutations 0``.

    ``table``: the analysis table; ``blocks``: exchangeability block per participant_id.
    """
    if config.permutations == 0:
        return stats
    start = time.perf_counter()
    participant_ids = table["participant_id"].to_numpy()
    block_labels = None if blocks is None else blocks.loc[participant_ids].to_numpy()
    tests = permutation_tests(
        ols_designs(table, config, rois),
        participant_ids,
        block_labels,
        config.permutations,
        config.permutation_seed,
        config.robust_se,
        config.fwer,
    )
    out = stats.merge(tests, on=KEYS, how="left", validate="one_to_one")
    out = add_fdr(out, P_PERM, P_PERM_FDR)
    LOGGER.info(
        "permutation inference: %d tests x %d Freedman-Lane permutations%s, seed %d, %.1f s",
        len(tests),
        config.permutations,
        f" within {config.exchangeability_column} blocks" if blocks is not None else "",
        config.permutation_seed,
        time.perf_counter() - start,
    )
    return out
