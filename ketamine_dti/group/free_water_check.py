"""What free-water correction did to each ROI's dMD in this trial (``--md-measure md_fwcorr``).

Plain tensor MD moves with the CSF in a voxel; the free-water-corrected MD should not, so where
CSF moved between sessions it has *less* spread of dMD/MD over participants than plain MD. But
single-shell free water reads the CSF from the b0's brightness against a gray-matter reference
(``dwi.free_water``), and the b0's receive-coil shading moves with the head between sessions.
On the App's single-shell retest benchmarks (nothing changes, so every change is error) the
corrected MD's between-session SD per ROI was 0.52-1.15% against plain MD's 0.15-1.12%
(``benchmarks/results/free_water_noise_sources_session39_tuning_seed7.md``), and in BA10 of
another trial 1.6-1.8% against 0.6%. Which of the two dominates depends on the data, so the
group level shows it for the trial analysed: per ROI, the spread of dMD/MD under each measure
over the same participants, their ratio, and their correlation. Descriptive only: nothing is
excluded or corrected by it (ROIs whose free-water fraction contradicts their anatomy are left
out before, by ``inputs.read_roi_table``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ketamine_dti.config import Config
from ketamine_dti.group.inputs import find_roi_tables, read_roi_table

#: The comparison's columns, per ROI.
COLUMNS = ("roi", "n", "sd_corrected_pct", "sd_plain_pct", "sd_ratio", "r")


def plain_column(config: Config) -> str:
    """The plain tensor MD column of the statistic analysed (``md_mean`` or ``md_median``)."""
    return f"md_{config.roi_statistic}"


def load_plain_md(config: Config, corrected: pd.DataFrame) -> pd.DataFrame:
    """Plain MD (mm^2/s) from the same ROI tables, at the participant-sessions and ROIs where
    the analysed ``corrected`` MD (``GroupInputs.md``'s layout) has a value; NaN elsewhere."""
    tables = find_roi_tables(Path(config.output_dir))
    sessions = {"baseline": config.baseline_session, "followup": config.followup_session}
    plain = pd.DataFrame(np.nan, index=corrected.index, columns=corrected.columns)
    for pid in corrected.index:
        for key, session in sessions.items():
            present = corrected.loc[pid].xs(key, level="session").notna()
            if present.any():
                values, _ = read_roi_table(tables[(pid, session)], plain_column(config))
                for roi in present.index[present]:
                    plain.loc[pid, (roi, key)] = values.get(roi, np.nan)
    return plain


def relative_change_pct(md: pd.DataFrame, roi: str) -> pd.Series:
    """100 * (follow-up / baseline - 1) of one ROI, per participant."""
    return 100.0 * (md[(roi, "followup")] / md[(roi, "baseline")] - 1.0)


def compare_spreads(
    corrected: pd.DataFrame, plain: pd.DataFrame, rois: tuple[str, ...]
) -> pd.DataFrame:
    """Per ROI (COLUMNS), over the participants with both sessions under both measures: n,
    the SD (ddof 1) of dMD/MD (%) under each, corrected / plain, and Pearson r between them
    (NaN with fewer than 3 participants)."""
    rows = []
    for roi in rois:
        both = pd.DataFrame(
            {
                "corrected": relative_change_pct(corrected, roi),
                "plain": relative_change_pct(plain, roi),
            }
        ).dropna()
        n = len(both)
        if n < 3:
            rows.append({"roi": roi, "n": n} | dict.fromkeys(COLUMNS[2:], np.nan))
            continue
        sd_corrected, sd_plain = both.corrected.std(ddof=1), both.plain.std(ddof=1)
        rows.append(
            {
                "roi": roi,
                "n": n,
                "sd_corrected_pct": sd_corrected,
                "sd_plain_pct": sd_plain,
                "sd_ratio": sd_corrected / sd_plain if sd_plain > 0 else np.nan,
                "r": both.corrected.corr(both.plain),
            }
        )
    return pd.DataFrame(rows, columns=list(COLUMNS))
