"""Group figures (PNG, matplotlib's Agg renderer, no pyplot state).

- per scale x ROI: dScore vs dMD, points and the fitted slope per arm with its 95% band;
- a forest plot of ``group:delta_md`` over ROIs and scales;
- a box plot of dMD per arm and ROI.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ketamine_dti.config import Config
from ketamine_dti.group.changes import delta_md_unit
from ketamine_dti.group.models import ALPHA, INTERACTION

LOGGER = logging.getLogger(__name__)

#: Resolution of saved figures (dots per inch): sharp in a browser, small files.
FIGURE_DPI = 100
#: Arm colours (colour-blind safe: Okabe-Ito orange and blue).
ARM_COLOURS = ("#E69F00", "#0072B2")
#: Marker size of scatter points; smaller for large samples so points stay distinguishable.
POINT_SIZE = 18
LARGE_SAMPLE = 300


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=FIGURE_DPI)
    return path


def slope_band(
    x: np.ndarray, y: np.ndarray, slope: float, slope_se: float, grid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The arm's fitted line through (mean dMD, mean dScore) with the arm model's slope, and
    the half-width of its 95% confidence band on ``grid``: the line's level is uncertain by
    the residual SD about it over sqrt(n), its slope by the model's standard error, so
    se(g)^2 = s^2/n + (g - mean x)^2 se_slope^2 (the simple-regression band, with the slope's
    SE taken from the covariate-adjusted arm model); t quantile on n - 2 df."""
    from scipy import stats

    n = len(x)
    line = y.mean() + slope * (grid - x.mean())
    if n < 3 or not np.isfinite(slope_se):
        return line, np.zeros_like(grid)
    residuals = y - y.mean() - slope * (x - x.mean())
    level_variance = residuals @ residuals / (n - 2) / n
    se = np.sqrt(level_variance + (grid - x.mean()) ** 2 * slope_se**2)
    return line, stats.t.ppf(0.5 + (1 - ALPHA) / 2, n - 2) * se


def scatter_figure(
    table: pd.DataFrame, stats: pd.DataFrame, config: Config, scale: str, roi: str
) -> Figure:
    """dScore vs dMD for one scale x ROI; each arm's line has its arm-model slope, with its
    95% confidence band (``slope_band``)."""
    unit = delta_md_unit(config.delta_md)
    figure = Figure(figsize=(4.2, 3.6), layout="constrained")
    axes = figure.add_subplot()
    x_name, y_name = f"delta_md_{roi}", f"delta_{scale}"
    size = POINT_SIZE if len(table) < LARGE_SAMPLE else POINT_SIZE / 3
    for arm, colour in zip((config.treatment_arm, config.control_arm), ARM_COLOURS, strict=True):
        rows = table[(table["group"] == arm)].dropna(subset=[x_name, y_name])
        if rows.empty:
            continue
        x, y = rows[x_name].to_numpy(), rows[y_name].to_numpy()
        axes.scatter(x, y, s=size, color=colour, alpha=0.7, label=f"{arm} (n={len(rows)})")
        slope = stats[
            (stats.scale == scale)
            & (stats.roi == roi)
            & (stats.model == f"arm_{arm}")
            & (stats.term == "delta_md")
        ]
        if not slope.empty and np.isfinite(slope.iloc[0].estimate):  # n/a: no line
            grid = np.linspace(x.min(), x.max(), 50)
            row = slope.iloc[0]
            line, half_width = slope_band(x, y, row.estimate, row.std_error, grid)
            axes.plot(grid, line, color=colour)
            axes.fill_between(grid, line - half_width, line + half_width, color=colour,
                              alpha=0.18, linewidth=0)  # fmt: skip
    inter = stats[
        (stats.scale == scale)
        & (stats.roi == roi)
        & (stats.model == INTERACTION)
        & (stats.term == "group:delta_md")
    ]
    title = f"{roi}, {scale}"
    if not inter.empty:
        row = inter.iloc[0]
        title += (
            "\ngroup x dMD not estimable"
            if np.isnan(row.estimate)
            else f"\ngroup x dMD {row.estimate:.3g}, p={row.p_value:.3g} (FDR {row.p_fdr:.3g})"
        )
    axes.set_title(title, fontsize=9)
    axes.axhline(0, color="0.8", lw=0.8, zorder=0)
    axes.axvline(0, color="0.8", lw=0.8, zorder=0)
    axes.set_xlabel(f"dMD ({unit})")
    axes.set_ylabel(f"d{scale} (points)")
    if axes.get_legend_handles_labels()[0]:  # none when no participant has this ROI
        axes.legend(fontsize=7, frameon=False)
    return figure


def forest_figure(stats: pd.DataFrame, config: Config, rois: tuple[str, ...]) -> Figure:
    """group:delta_md estimate and 95% CI per ROI (rows) and scale (colours)."""
    rows = stats[(stats.model == INTERACTION) & (stats.term == "group:delta_md")]
    figure = Figure(figsize=(5.5, 0.5 + 0.45 * len(rois)), layout="constrained")
    axes = figure.add_subplot()
    offsets = np.linspace(-0.15, 0.15, max(len(config.scales), 1))
    colours = ("#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
    for k, scale in enumerate(config.scales):
        sub = rows[rows.scale == scale].set_index("roi").reindex(list(rois))
        y = np.arange(len(rois)) + offsets[k]
        colour = colours[k % len(colours)]
        axes.errorbar(
            sub.estimate,
            y,
            xerr=[sub.estimate - sub.ci_low, sub.ci_high - sub.estimate],
            fmt="none",
            ecolor=colour,
            elinewidth=1.2,
        )
        significant = (sub.p_fdr < ALPHA).to_numpy()
        axes.scatter(
            sub.estimate[significant],
            y[significant],
            color=colour,
            marker="o",
            label=f"{scale} (FDR p<.05)",
        )
        axes.scatter(
            sub.estimate[~significant],
            y[~significant],
            facecolor="white",
            edgecolor=colour,
            marker="o",
            label=f"{scale}",
        )
    axes.axvline(0, color="0.5", lw=0.8)
    axes.set_yticks(np.arange(len(rois)), list(rois))
    axes.invert_yaxis()
    axes.set_xlabel(
        f"group x dMD: {config.treatment_arm} - {config.control_arm} slope\n"
        f"(points per {delta_md_unit(config.delta_md)})"
    )
    axes.legend(fontsize=7, frameon=False, loc="best")
    return figure


def box_figure(table: pd.DataFrame, config: Config, rois: tuple[str, ...]) -> Figure:
    """dMD per arm (colours) and ROI (positions)."""
    figure = Figure(figsize=(1.0 + 0.9 * len(rois), 3.6), layout="constrained")
    axes = figure.add_subplot()
    arms = (config.treatment_arm, config.control_arm)
    width = 0.35
    for k, (arm, colour) in enumerate(zip(arms, ARM_COLOURS, strict=True)):
        data = [
            table.loc[table.group == arm, f"delta_md_{roi}"].dropna().to_numpy() for roi in rois
        ]
        positions = np.arange(len(rois)) + (k - 0.5) * width
        parts = axes.boxplot(
            data,
            positions=positions,
            widths=width * 0.9,
            patch_artist=True,
            showfliers=True,
            medianprops={"color": "black"},
        )
        for box in parts["boxes"]:
            box.set_facecolor(colour)
            box.set_alpha(0.6)
        axes.plot([], [], color=colour, lw=6, alpha=0.6, label=arm)
    axes.axhline(0, color="0.5", lw=0.8)
    axes.set_xticks(np.arange(len(rois)), list(rois), rotation=30, ha="right")
    axes.set_ylabel(f"dMD ({delta_md_unit(config.delta_md)})")
    axes.legend(fontsize=8, frameon=False)
    return figure


def write_figures(
    table: pd.DataFrame,
    stats: pd.DataFrame,
    config: Config,
    rois: tuple[str, ...],
    folder: Path,
) -> list[tuple[Path, str]]:
    """All group figures into ``folder``; returns (path, caption) in report order."""
    folder.mkdir(parents=True, exist_ok=True)
    figures = [
        (
            _save(forest_figure(stats, config, rois), folder / "forest_group-x-delta-md.png"),
            "group x dMD per ROI and scale, 95% CI (filled: FDR p < .05)",
        ),
        (
            _save(box_figure(table, config, rois), folder / "box_delta-md.png"),
            "dMD per arm and ROI",
        ),
    ]
    for scale in config.scales:
        for roi in rois:
            figure = scatter_figure(table, stats, config, scale, roi)
            path = _save(figure, folder / f"scatter_scale-{scale}_roi-{roi}.png")
            figures.append(
                (path, f"d{scale} vs dMD in {roi} (lines: arm-model slopes, bands: 95% CI)")
            )
    LOGGER.info("wrote %d figures to %s", len(figures), folder)
    return figures
