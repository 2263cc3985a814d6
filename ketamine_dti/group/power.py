"""Power of the group x dMD interaction, by Monte Carlo over the simulator's clinical model.

The question a trial planner asks: with n participants at this allocation, how often does the
App's interaction test (``delta_score ~ group * delta_md + baseline_score``, OLS t, absolute
dMD) find a coupling of this size after Benjamini-Hochberg FDR over the 7 ROIs of a scale; and
which n reaches a target power?

One replicate is one trial drawn as the simulator draws it (:mod:`ketamine_dti.simulate.clinical`:
arms by permuted blocks, age, baseline scores, symptom-change latents, true ROI MD with the
``paper`` pattern of couplings at the strength that gives the requested partial r or slope),
each session's ROI MD measured with the independent noise that gives the requested dMD
reliability (:mod:`ketamine_dti.simulate.validation`). Power is the share of replicates in which
a planted interaction is rejected with its planted sign; the ROIs and scales without a planted
interaction are the null tests of the same families.

Speed: replicates are drawn and fitted together as arrays (chunks of :data:`REPLICATE_CHUNK`):
every fit is a batch of 5 x 5 normal equations. Common random numbers: a trial's participants
are the first ones of per-arm pools drawn in blocks of :data:`PARTICIPANT_BLOCK`, each block
seeded by (seed, chunk, arm, block) alone, and participants are independent given their arm, so
trials of every n share their draws. Power is then a smooth, near-monotone function of n, and
the search for n (:func:`solve_n`) does not chase Monte-Carlo noise. The number of treated
participants of each replicate comes from the simulator's own block allocation.

This is the one module of ``group/`` that imports ``simulate/``: a plan is drawn from the
simulator's model by design. The App's analysis never imports it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats as scipy_stats

from ketamine_dti.group.changes import delta_md
from ketamine_dti.group.figures import ARM_COLOURS, FIGURE_DPI
from ketamine_dti.group.inputs import MIN_ARM_SIZE
from ketamine_dti.group.models import ALPHA
from ketamine_dti.group.multiple_comparisons import benjamini_hochberg
from ketamine_dti.group.tables import write_tsv
from ketamine_dti.rois import ROI_NAMES
from ketamine_dti.simulate.clinical import (
    ALLOCATION,
    SCALES,
    coupling_correlations,
    coupling_for_partial_r,
    coupling_for_slope,
    draw_age,
    draw_outcomes,
    interaction_partial_r,
    planted_interactions,
    slope_per_percent_md,
    treated_counts,
)
from ketamine_dti.simulate.validation import (
    INTERACTION_TERMS,
    interaction_design,
    measure_md,
    session_noise_for_reliability,
)

LOGGER = logging.getLogger(__name__)

#: The clinical model's pattern of couplings that the planner scales to the requested effect.
SCENARIO = "paper"
#: Column of group:delta_md in :func:`interaction_design` (after the intercept).
INTERACTION_COLUMN = 1 + INTERACTION_TERMS.index("group:delta_md")
#: Parameters of the interaction model (intercept + terms): its residual df is n minus this.
N_PARAMETERS = 1 + len(INTERACTION_TERMS)
#: Replicates drawn and fitted at once, and the unit of seeding (~10 MB of arrays at n = 300).
REPLICATE_CHUNK = 250
#: Participants drawn at once per arm, and the unit of seeding of the participant pools.
PARTICIPANT_BLOCK = 32
#: Default Monte-Carlo replicates: the SE of one test's power of 0.5 is 0.005.
DEFAULT_N_SIMS = 10_000
#: Largest n the search for a target power tries before giving up.
DEFAULT_MAX_N = 5000
#: Seed streams besides the two arms' participant pools (0 treatment, 1 control).
ALLOCATION_STREAM = 2


class TargetNotReached(Exception):
    """The target power is not reached by the largest n allowed."""


@dataclass(frozen=True)
class PowerDesign:
    """Everything but n: allocation (treatment:control), coupling strength of the clinical
    model's ``paper`` pattern (see :func:`design_for_effect`), dMD retest reliability, alpha,
    BH-FDR over the 7 ROIs of a scale or not, replicates and seed."""

    allocation: tuple[int, int] = ALLOCATION
    coupling_strength: float = 0.0
    reliability: float = 1.0
    alpha: float = ALPHA
    fdr: bool = True
    n_sims: int = DEFAULT_N_SIMS
    seed: int = 0
    noise: float = field(init=False)  # per-session ROI MD noise (fraction of MD, SD)

    def __post_init__(self) -> None:
        if len(self.allocation) != 2 or min(self.allocation) < 1:
            raise ValueError(
                f"allocation {':'.join(map(str, self.allocation))}; give two positive whole "
                "numbers, treatment:control, e.g. 2:1"
            )
        if not abs(self.coupling_strength) <= 1.0:
            raise ValueError(f"coupling strength {self.coupling_strength:g}; use [-1, 1]")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha {self.alpha:g}; use a value in (0, 1)")
        if self.n_sims < 1:
            raise ValueError(f"{self.n_sims} simulations; use at least 1")
        if self.seed < 0:
            raise ValueError(f"seed {self.seed}; use a non-negative whole number")
        object.__setattr__(self, "noise", session_noise_for_reliability(self.reliability))


def design_for_effect(
    partial_r: float | None = None,
    slope: float | None = None,
    slope_scale: str = "madrs",
    **settings,
) -> PowerDesign:
    """A :class:`PowerDesign` whose strongest planted interaction has population partial r
    ``partial_r``, or an interaction slope of ``slope`` points of ``slope_scale`` per 1% true MD
    change (one of the two), with error-free dMD; ``reliability`` then attenuates it."""
    if (partial_r is None) == (slope is None):
        raise ValueError("give the effect as a partial r or as a slope (one of the two)")
    allocation = tuple(settings.get("allocation", ALLOCATION))
    if partial_r is not None:
        if not -1.0 < partial_r < 1.0:
            raise ValueError(f"partial r {partial_r:g}; use a value in (-1, 1)")
        strength = coupling_for_partial_r(partial_r, allocation, SCENARIO)
    else:
        if slope_scale not in SCALES:
            raise ValueError(f"scale {slope_scale!r}; use one of {', '.join(SCALES)}")
        strength = coupling_for_slope(slope, slope_scale, SCENARIO)
    return PowerDesign(coupling_strength=strength, **settings)


def minimum_n(allocation: tuple[int, int] = ALLOCATION) -> int:
    """Smallest trial whose block allocation always gives each arm MIN_ARM_SIZE participants
    (the App's group level refuses fewer) and leaves the interaction model residual df."""
    cycle = sum(allocation)
    return max(cycle * math.ceil(MIN_ARM_SIZE / min(allocation)), N_PARAMETERS + 1)


def planted_tests(design: PowerDesign) -> pd.DataFrame:
    """One row per scale x ROI: whether the pattern plants an interaction there, its planted
    sign (0 at zero coupling: then any sign counts), population partial r with error-free and
    with measured dMD, and the slope (points per 1% true MD change, treatment minus control)."""
    planted = planted_interactions(SCENARIO)
    correlation = coupling_correlations(SCENARIO, design.coupling_strength)
    treated, control = correlation.values()
    rows = []
    for scale in SCALES:
        for roi in ROI_NAMES:
            rhos = (treated[scale][roi], control[scale][roi])
            difference = rhos[0] - rhos[1]
            rows.append(
                {
                    "scale": scale,
                    "roi": roi,
                    "planted": (scale, roi) in planted,
                    "sign": int(np.sign(round(difference, 12))),
                    "partial_r": interaction_partial_r(rhos, design.allocation),
                    "partial_r_measured": interaction_partial_r(
                        rhos, design.allocation, design.reliability
                    ),
                    "slope_per_percent_md": slope_per_percent_md(scale, difference),
                }
            )
    return pd.DataFrame(rows)


def _arm_pool(
    treated: bool, n_participants: int, chunk: int, n_replicates: int, design: PowerDesign
) -> dict[str, np.ndarray]:
    """The first ``n_participants`` of one arm's pool for a chunk of replicates, as the App's
    model sees them: delta_score and baseline_score (scale, replicate, participant) in points,
    delta_md (ROI, replicate, participant) in MD_REPORT_UNIT (absolute dMD)."""
    blocks = []
    for block in range(math.ceil(n_participants / PARTICIPANT_BLOCK)):
        rng = np.random.default_rng([design.seed, chunk, int(not treated), block])
        age = draw_age((n_replicates, PARTICIPANT_BLOCK), rng)
        is_treated = np.full(PARTICIPANT_BLOCK, treated)
        drawn = draw_outcomes(age, is_treated, rng, SCENARIO, design.coupling_strength)
        measured = [
            delta_md(*(measure_md(md, design.noise, rng) for md in drawn.md[roi]), "absolute")
            for roi in ROI_NAMES
        ]
        blocks.append(
            {
                "delta_score": np.stack([drawn.followup[s] - drawn.baseline[s] for s in SCALES]),
                "baseline_score": np.stack([drawn.baseline[s] for s in SCALES]),
                "delta_md": np.stack(measured),
            }
        )
    return {
        name: np.concatenate([block[name] for block in blocks], axis=-1)[..., :n_participants]
        for name in ("delta_score", "baseline_score", "delta_md")
    }


def _treated_counts(n: int, chunk: int, n_replicates: int, design: PowerDesign) -> np.ndarray:
    """Treated participants of each replicate of a chunk, by the simulator's block allocation."""
    rng = np.random.default_rng([design.seed, chunk, ALLOCATION_STREAM, n])
    return treated_counts(n, n_replicates, rng, design.allocation)


def interaction_t(design_matrix: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """OLS t of group:delta_md for a batch of fits.

    ``design_matrix`` (..., n, p) from :func:`interaction_design`, ``y`` (..., n), ``weights``
    (..., n) of 0 and 1: the participants each fit uses (residual df = their number - p).
    """
    weighted = design_matrix * weights[..., None]
    inverse = np.linalg.inv(np.swapaxes(weighted, -1, -2) @ design_matrix)
    xty = np.einsum("...np,...n->...p", weighted, y)
    beta = np.einsum("...pq,...q->...p", inverse, xty)
    rss = np.einsum("...n,...n->...", weights * y, y) - np.einsum("...p,...p->...", beta, xty)
    df = weights.sum(axis=-1) - design_matrix.shape[-1]
    column = INTERACTION_COLUMN
    return beta[..., column] / np.sqrt(np.maximum(rss, 0.0) / df * inverse[..., column, column])


@dataclass
class _Tally:
    """Counts over the replicates of one n."""

    replicates: int = 0
    treated: int = 0
    rejected: np.ndarray = field(default_factory=lambda: np.zeros((len(SCALES), len(ROI_NAMES))))
    found: np.ndarray = field(default_factory=lambda: np.zeros((len(SCALES), len(ROI_NAMES))))
    any_rejected: np.ndarray = field(default_factory=lambda: np.zeros(len(SCALES)))
    found_share: list = field(default_factory=list)  # per replicate: share of planted found


def _fit_chunk(
    n: int, treated: np.ndarray, pools: tuple[dict, dict], design: PowerDesign
) -> np.ndarray:
    """t of every scale x ROI interaction, (scale, ROI, replicate), for trials of n whose
    replicates have ``treated`` treated participants, taken from the front of the arm pools."""
    n_treated, n_control = int(treated.max()), int((n - treated).max())
    group = np.r_[np.ones(n_treated), np.zeros(n_control)]
    weights = np.concatenate(
        [np.arange(n_treated) < treated[:, None], np.arange(n_control) < (n - treated)[:, None]],
        axis=1,
    ).astype(float)
    data = {
        name: np.concatenate(
            [pools[0][name][..., :n_treated], pools[1][name][..., :n_control]], -1
        )
        for name in pools[0]
    }
    t = np.empty((len(SCALES), len(ROI_NAMES), len(treated)))
    for s in range(len(SCALES)):
        for k in range(len(ROI_NAMES)):
            columns = {
                "group": group,
                "delta_md": data["delta_md"][k],
                "baseline_score": data["baseline_score"][s],
            }
            t[s, k] = interaction_t(interaction_design(columns), data["delta_score"][s], weights)
    return t


def _tally(tally: _Tally, n: int, t: np.ndarray, treated: np.ndarray, tests: pd.DataFrame, design):
    """Add one chunk's tests (t: scale, ROI, replicate) to ``tally``."""
    p = 2.0 * scipy_stats.t.sf(np.abs(t), n - N_PARAMETERS)
    if design.fdr:  # BH over the ROIs of each scale, per replicate
        p = np.apply_along_axis(benjamini_hochberg, 1, p)
    rejected = p < design.alpha
    sign = tests["sign"].to_numpy().reshape(len(SCALES), len(ROI_NAMES))[..., None]
    found = rejected & ((sign == 0) | (np.sign(t) == sign))
    planted = tests["planted"].to_numpy().reshape(len(SCALES), len(ROI_NAMES))
    tally.replicates += len(treated)
    tally.treated += int(treated.sum())
    tally.rejected += rejected.sum(axis=-1)
    tally.found += found.sum(axis=-1)
    tally.any_rejected += rejected.any(axis=1).sum(axis=-1)
    tally.found_share.append(found[planted].mean(axis=0))


def _evaluate(ns: list[int], design: PowerDesign) -> dict[int, _Tally]:
    """Monte-Carlo tallies of trials of each n in ``ns``, on common random numbers."""
    tests = planted_tests(design)
    tallies = {n: _Tally() for n in ns}
    for chunk, start in enumerate(range(0, design.n_sims, REPLICATE_CHUNK)):
        size = min(REPLICATE_CHUNK, design.n_sims - start)
        treated = {n: _treated_counts(n, chunk, size, design) for n in ns}
        pools = (
            _arm_pool(True, max(int(c.max()) for c in treated.values()), chunk, size, design),
            _arm_pool(False, max(int((n - treated[n]).max()) for n in ns), chunk, size, design),
        )
        for n in ns:
            t = _fit_chunk(n, treated[n], pools, design)
            _tally(tallies[n], n, t, treated[n], tests, design)
    return tallies


@dataclass(frozen=True)
class PowerTable:
    """Power per n (``summary``) and per n x scale x ROI (``tests``), with what made them."""

    summary: pd.DataFrame
    tests: pd.DataFrame
    design: PowerDesign
    seconds: float
    target_power: float | None = None
    solution: int | None = None


def _tables(tallies: dict[int, _Tally], design: PowerDesign) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tidy frames from the tallies."""
    tests = planted_tests(design)
    summaries, per_test = [], []
    for n, tally in sorted(tallies.items()):
        replicates = tally.replicates
        rows = tests.copy()
        rows.insert(0, "n", n)
        rows["rejection_rate"] = tally.rejected.ravel() / replicates
        power = tally.found.ravel() / replicates
        rows["power"] = np.where(rows["planted"], power, np.nan)
        rows["power_se"] = np.where(
            rows["planted"], np.sqrt(power * (1.0 - power) / replicates), np.nan
        )
        per_test.append(rows)
        share = np.concatenate(tally.found_share)
        summary = {
            "n": n,
            "n_treatment": tally.treated / replicates,
            "n_control": n - tally.treated / replicates,
            "power": share.mean(),
            "power_se": share.std(ddof=1) / np.sqrt(replicates) if replicates > 1 else np.nan,
        }
        for s, scale in enumerate(SCALES):
            on_scale = rows[(rows["scale"] == scale) & rows["planted"]]
            summary[f"power_{scale}"] = on_scale["power"].mean()
            summary[f"any_{scale}"] = tally.any_rejected[s] / replicates
        summary["false_positive_rate"] = rows.loc[~rows["planted"], "rejection_rate"].mean()
        summaries.append(summary)
    return pd.DataFrame(summaries), pd.concat(per_test, ignore_index=True)


def _check_ns(ns: list[int], design: PowerDesign) -> None:
    smallest = minimum_n(design.allocation)
    too_small = [n for n in ns if n < smallest]
    if too_small:
        raise ValueError(
            f"n = {', '.join(map(str, too_small))} is too small for the model: at "
            f"{design.allocation[0]}:{design.allocation[1]} allocation n >= {smallest} gives "
            f"every arm at least {MIN_ARM_SIZE} participants"
        )


def power_table(ns: list[int], design: PowerDesign) -> PowerTable:
    """Power at each n in ``ns`` (common random numbers across them)."""
    ns = sorted(set(int(n) for n in ns))
    _check_ns(ns, design)
    start = time.perf_counter()
    summary, tests = _tables(_evaluate(ns, design), design)
    seconds = time.perf_counter() - start
    LOGGER.info("power at n = %s in %.1f s", ns, seconds)
    return PowerTable(summary, tests, design, seconds)


def _starting_n(target: float, design: PowerDesign) -> int:
    """Normal-approximation n for the target at the strongest measured partial r, with
    Bonferroni over the ROIs standing in for BH (a first bracket for the search)."""
    measured = planted_tests(design)["partial_r_measured"].abs().max()
    alpha = design.alpha / len(ROI_NAMES) if design.fdr else design.alpha
    z = scipy_stats.norm.ppf(1.0 - alpha / 2.0) + scipy_stats.norm.ppf(target)
    return int(math.ceil(z**2 * (1.0 - measured**2) / measured**2)) + N_PARAMETERS


def solve_n(target: float, design: PowerDesign, max_n: int = DEFAULT_MAX_N) -> PowerTable:
    """Smallest n whose power reaches ``target``: doubling from a normal-approximation start,
    then bisection on n. Common random numbers make the Monte-Carlo power curve near-monotone
    in n, so bisection finds where it crosses the target. The table lists every n evaluated;
    ``solution`` is the answer. TargetNotReached if even ``max_n`` falls short."""
    if not 0.0 < target < 1.0:
        raise ValueError(f"target power {target:g}; use a value in (0, 1)")
    smallest = minimum_n(design.allocation)
    if max_n < smallest:
        raise ValueError(f"largest n {max_n} is below the smallest the model allows ({smallest})")
    start = time.perf_counter()
    tallies: dict[int, _Tally] = {}

    def reaches(n: int) -> bool:
        if n not in tallies:
            tallies.update(_evaluate([n], design))
        share = np.concatenate(tallies[n].found_share)
        LOGGER.info("n = %d: power %.3f", n, share.mean())
        return share.mean() >= target

    low, high = smallest, None
    if reaches(smallest):
        high = smallest
    else:
        guess = min(max(_starting_n(target, design), smallest + 1), max_n)
        while not reaches(guess):
            if guess >= max_n:
                summary, _ = _tables({max_n: tallies[max_n]}, design)
                raise TargetNotReached(
                    f"power at n = {max_n} is {summary['power'].iloc[0]:.3f}, below the target "
                    f"{target:g}; raise --max-n or plan for a larger effect"
                )
            low, guess = guess, min(2 * guess, max_n)
        high = guess
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if reaches(middle) else (middle, high)
    summary, tests = _tables(tallies, design)
    seconds = time.perf_counter() - start
    LOGGER.info(
        "n = %d reaches power %g (%d evaluations, %.1f s)", high, target, len(tallies), seconds
    )
    return PowerTable(summary, tests, design, seconds, target, high)


#: Column descriptions of the planner's TSVs (their JSON sidecars).
SUMMARY_COLUMNS = {
    "n": "participants in the trial",
    "n_treatment": "mean treated participants over replicates (block allocation)",
    "n_control": "mean control participants over replicates",
    "power": "mean over the planted interactions of the share of replicates in which it is "
    "rejected with its planted sign (any sign at zero effect)",
    "power_se": "Monte-Carlo standard error of power",
    **{f"power_{s}": f"power over the planted interactions of {s}" for s in SCALES},
    **{
        f"any_{s}": f"share of replicates with at least one rejected interaction among the "
        f"ROIs of {s} (under no effect: the family-wise error rate)"
        for s in SCALES
    },
    "false_positive_rate": "mean rejection rate of the interactions not planted",
}
TEST_COLUMNS = {
    "n": SUMMARY_COLUMNS["n"],
    "scale": "rating scale of delta_score",
    "roi": "region of delta_md",
    "planted": "the clinical model's paper pattern plants a group x dMD interaction here",
    "sign": "planted sign of group:delta_md (0: none planted or zero effect)",
    "partial_r": "population partial r of group:delta_md with error-free dMD",
    "partial_r_measured": "population partial r with dMD measured at the given reliability",
    "slope_per_percent_md": "planted interaction slope, score points per 1% true MD change "
    "(treatment minus control)",
    "rejection_rate": "share of replicates rejecting group:delta_md (any sign)",
    "power": "share of replicates rejecting it with the planted sign (planted tests only)",
    "power_se": "Monte-Carlo standard error of power",
}


def power_figure(table: PowerTable) -> Figure:
    """Power against n: all planted interactions, each scale, the target and alpha."""
    summary, design = table.summary, table.design
    figure = Figure(figsize=(5.2, 3.8), layout="constrained")
    axes = figure.add_subplot()
    axes.plot(summary["n"], summary["power"], "o-", color="black", label="all planted")
    for scale, colour in zip(SCALES, ARM_COLOURS, strict=True):
        axes.plot(
            summary["n"], summary[f"power_{scale}"], "--", color=colour, label=f"{scale} planted"
        )
    if table.target_power is not None:
        axes.axhline(table.target_power, color="grey", linewidth=0.8, label="target")
    if table.solution is not None:
        row = summary[summary["n"] == table.solution].iloc[0]
        axes.plot([row["n"]], [row["power"]], "s", color="#D55E00", label=f"n = {table.solution}")
    axes.axhline(design.alpha, color="grey", linestyle=":", linewidth=0.8, label="alpha")
    tests = planted_tests(design)
    measured = tests.loc[tests["planted"], "partial_r_measured"].abs().max()
    axes.set(
        xlabel="participants (n)",
        ylabel="power",
        ylim=(0, 1),
        title=f"partial r {_effect_text(design)} (measured {measured:.3f}, reliability "
        f"{design.reliability:.3f}), {design.allocation[0]}:{design.allocation[1]}, "
        f"{'BH-FDR over 7 ROIs' if design.fdr else 'no FDR'}",
    )
    axes.title.set_fontsize(9)
    axes.legend(fontsize=7, loc="lower right")
    return figure


def _effect_text(design: PowerDesign) -> str:
    tests = planted_tests(design)
    return f"{tests.loc[tests['planted'], 'partial_r'].abs().max():.3f}"


def settings_record(table: PowerTable) -> dict:
    """What produced a table, JSON-serialisable: the design, the coupling it plants, seeds."""
    design = asdict(table.design)
    design["allocation"] = list(design["allocation"])
    return {
        "design": design,
        "scenario": SCENARIO,
        "model": "delta_score ~ group * delta_md + baseline_score (OLS t, absolute dMD)",
        "multiple_comparisons": "Benjamini-Hochberg over the 7 ROIs of each scale"
        if table.design.fdr
        else "none",
        "target_power": table.target_power,
        "solution_n": table.solution,
        "seeds": f"numpy default_rng([{table.design.seed}, chunk, stream, block])",
        "seconds": round(table.seconds, 2),
    }


def write_power_outputs(table: PowerTable, out_dir: Path) -> list[Path]:
    """power.tsv (per n), power_tests.tsv (per n x scale x ROI), their sidecars and power.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    record = settings_record(table)
    summary = table.summary.copy()
    if table.solution is not None:
        summary["solution"] = summary["n"] == table.solution
    columns = dict(SUMMARY_COLUMNS, solution="the smallest n found to reach the target power")
    paths = [
        write_tsv(
            summary,
            out_dir / "power.tsv",
            {**{c: {"Description": columns[c]} for c in summary.columns}, "Settings": record},
        ),
        write_tsv(
            table.tests,
            out_dir / "power_tests.tsv",
            {
                **{c: {"Description": TEST_COLUMNS[c]} for c in table.tests.columns},
                "Settings": record,
            },
        ),
    ]
    figure = power_figure(table)
    FigureCanvasAgg(figure)
    figure.savefig(out_dir / "power.png", dpi=FIGURE_DPI)
    paths.append(out_dir / "power.png")
    return paths
