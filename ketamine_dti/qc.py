"""Session QC verdicts: pass, warn or fail, from documented thresholds on the QC metrics.

A session whose registration, brain mask, motion or ROI retention is off by more than we have
seen in working data must not reach the group models silently. Each threshold below carries
the values it was set from (simulated tiny participants and the real Siemens Prisma scan before
and after the issue-10 fixes); ``docs/qc.md`` tabulates them. Pure functions: a QC row (dict of
metric -> value) in, a verdict and its reasons out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ketamine_dti.rois import ROI_MISSING

PASS, WARN, FAIL = "pass", "warn", "fail"
#: Verdicts from best to worst; a session gets the worst verdict of its rules.
VERDICTS: tuple[str, ...] = (PASS, WARN, FAIL)
#: Separator of ``qc_reasons`` (a TSV cell).
REASON_SEPARATOR = "; "


@dataclass(frozen=True)
class Threshold:
    """One rule: a metric is bad when it lies ``below`` (or ``above``) ``warn``/``fail``;
    ``fail`` None: the rule only warns (what it checks does not make the session unusable)."""

    metric: str
    warn: float
    fail: float | None
    bad_when: str  # "below" or "above"
    what: str  # what a breach means, for the reason text
    why: str  # where the numbers come from (docs/qc.md)

    def _beyond(self, value: float, limit: float) -> bool:
        return value < limit if self.bad_when == "below" else value > limit

    def verdict(self, value: float) -> str:
        """PASS, WARN or FAIL for one value (NaN is handled by the caller)."""
        if self.fail is not None and self._beyond(value, self.fail):
            return FAIL
        return WARN if self._beyond(value, self.warn) else PASS

    @property
    def sign(self) -> str:
        return "<" if self.bad_when == "below" else ">"

    def reason(self, value: float, verdict: str) -> str:
        """Human-readable: metric, value, the threshold crossed and what it means."""
        limit = self.fail if verdict == FAIL else self.warn
        return f"{self.metric} {value:.3g} {self.sign} {limit:g} ({verdict}: {self.what})"

    def describe(self) -> str:
        """The rule in one line (sidecars, docs)."""
        fails = "never fails" if self.fail is None else f"{self.sign} {self.fail:g} fails"
        return f"{self.metric} {self.sign} {self.warn:g} warns, {fails}"


THRESHOLDS: tuple[Threshold, ...] = (
    Threshold(
        "reg_dwi_t1w_dice",
        0.85,
        0.80,
        "below",
        "b0 and T1w brains do not overlap",
        "simulated 0.958-0.960; real scan with the visibly wrong b0->T1w registration "
        "0.76-0.79 (0.64 in the issue); issue 10 asks >= 0.85",
    ),
    Threshold(
        "reg_dwi_t1w_bbr_cost",
        0.5,
        0.8,
        "above",
        "the b0 shows no gray/white contrast across the T1w's white surface: a misregistration, "
        "another person's T1w, or a b0 without tissue contrast",
        "simulated tiny sessions 0.28, standard 0.27-0.28 (0.46-0.47 for a participant "
        "moving 0.8 mm per volume); the real Prisma pair 0.33; that pair's b0 moved 3 mm "
        "off the optimum 0.52-0.58, and its mutual-information result (7 mm off) 0.91; "
        "a T1w of another person 0.64",
    ),
    Threshold(
        "reg_ventricle_coverage",
        0.65,
        0.55,
        "below",
        "the DWI's ventricles miss the T1w's CSF: another person's T1w or a misregistration",
        "good sessions 0.75-0.85 (simulated 2 and 4 mm, real 3 mm with and without SDC); a T1w "
        "of another person 0.14-0.39; 2-3 mm or 6 degrees of misregistration 0.5-0.7",
    ),
    Threshold(
        "reg_session_halfway_ncc",
        0.90,
        0.80,
        "below",
        "the sessions' T1w do not match",
        "simulated 0.985; real (same T1w at both sessions) 1.000; a T1w of another "
        "person cannot be aligned rigidly to the participant's",
    ),
    Threshold(
        "reg_t1w_mni_ncc",
        0.70,
        0.50,
        "below",
        "T1w to MNI registration failed",
        "simulated 0.93; real with the failed brain extraction 0.20 (0.006 in the issue)",
    ),
    Threshold(
        "reg_t1w_mni_dice",
        0.90,
        0.80,
        "below",
        "brain masks disagree after SyN",
        "simulated 0.990; real 0.974 even when extraction failed (SyN matches the mask "
        "whatever is in it), so only a gross failure trips it",
    ),
    Threshold(
        "t1w_brain_volume_ml",
        1000.0,
        800.0,
        "below",
        "T1w brain mask too small",
        "adult brains (with sulcal CSF) are 1,100-1,800 ml; simulated ~1,500 +- 11% (1,921 at the "
        "ICBM template's size, the simulator's mean until session 44), real 1,690",
    ),
    Threshold(
        "t1w_brain_volume_ml",
        2000.0,
        2400.0,
        "above",
        "T1w brain mask includes non-brain",
        "the whole-head failure of issue 10 gave 2,737 ml",
    ),
    Threshold(
        "brain_volume_ml",
        1000.0,
        800.0,
        "below",
        "DWI brain mask too small",
        "simulated 1,872-1,885 (4 mm voxels), real 1,298-1,326",
    ),
    Threshold(
        "brain_volume_ml",
        2100.0,
        2600.0,
        "above",
        "DWI brain mask includes non-brain",
        "20% above the largest simulated mask (4 mm partial volume) warns",
    ),
    Threshold(
        "mean_fd",
        0.5,
        1.0,
        "above",
        "head motion",
        "simulated 0.39-0.45 mm (planted motion between volumes); the simulator's typical "
        "motion, jerks within volumes included, 0.62-0.91 mm (a moving patient); real still "
        "volunteer 0.36-0.45 mm, before the fix 0.91-1.05 mm; issue 10 asks <= 0.5 mm",
    ),
    Threshold(
        "outlier_fraction",
        0.3,
        0.5,
        "above",
        "volumes with FD above the outlier cut",
        "simulated 3/14-5/14 (0.21-0.36); the simulator's typical motion, jerks within "
        "volumes included, truly 0.25-0.50; real before the fix 17/21-19/21 (0.81-0.90); "
        "issue 10 asks <= 3 of 21 (0.14)",
    ),
    Threshold(
        "tensor_residual",
        0.02,
        0.05,
        "above",
        "tensor fit misfit: remaining misalignment",
        "simulated 0.0047-0.0054, real 0.0081-0.0086 (b=2500); a sanity bound at 2.5x "
        "and 6x the largest seen",
    ),
    Threshold(
        "fw_fraction_roi_max",
        0.3,
        None,
        "above",
        "an ROI's free-water fraction contradicts its anatomy: md_fwcorr is not usable",
        "the ROI points hold <= 5% CSF by the T1w (rois.CSF_PROB_MAX, most ROIs 0-1%), "
        "~0.1 of signal at most; "
        "simulated sessions 0.02-0.07 (session 40, 24 sessions); real PA (b = 2500, no b0 "
        "prior) 0.21; real AP (b0 prior from implausible references) 0.75, with BA10's "
        "tissue MD 0.14e-3 mm^2/s. Plain MD is unaffected, so it never fails",
    ),
    Threshold(
        "fw_fraction_roi_min",
        -0.15,
        None,
        "below",
        "an ROI's b0 lies far below the gray-matter reference: md_fwcorr is not usable",
        "single-shell f is free down to -0.5 (a linear extrapolation of the b0); simulated "
        "sessions -0.033 to -0.002 (session 40, 24 sessions); real AP -0.23 (hippocampus, "
        "tissue MD above plain MD). Plain MD is unaffected, so it never fails",
    ),
    Threshold(
        "roi_missing_fraction",
        0.0,
        0.5,
        "above",
        "ROIs reported missing",
        "any missing ROI warns; when most are missing the atlas did not land on the "
        "brain (real before the fix: 7 of 7)",
    ),
)


#: The free-water rules, which also judge one ROI's fraction (free_water_implausible).
FREE_WATER_RULES: tuple[Threshold, ...] = tuple(
    rule for rule in THRESHOLDS if rule.metric.startswith("fw_fraction_roi_")
)


def free_water_implausible(fraction: float) -> str | None:
    """Why an ROI's mean free-water fraction makes its free-water-corrected MD unusable (the
    FREE_WATER_RULES' warning limits), or None; NaN is not judged here."""
    for rule in FREE_WATER_RULES:
        if not math.isnan(fraction) and rule.verdict(fraction) != PASS:
            return f"fw_fraction_mean {fraction:.3g} {rule.sign} {rule.warn:g} ({rule.what})"
    return None


def outlier_fraction(n_outlier_volumes: float, n_volumes: float) -> float:
    """Share of the series' volumes flagged as motion outliers (NaN without volumes)."""
    return n_outlier_volumes / n_volumes if n_volumes else math.nan


def roi_retention(statuses: Sequence[str], fractions: Sequence[float]) -> dict[str, float]:
    """QC metrics of the ROI table: smallest kept fraction, count and share of missing ROIs."""
    n_missing = sum(status == ROI_MISSING for status in statuses)
    finite = [value for value in fractions if not math.isnan(value)]
    return {
        "roi_min_fraction": min(finite) if finite else math.nan,
        "n_rois_missing": n_missing,
        "roi_missing_fraction": n_missing / len(statuses) if statuses else math.nan,
    }


def session_verdict(
    metrics: Mapping[str, float], thresholds: Sequence[Threshold] = THRESHOLDS
) -> tuple[str, list[str]]:
    """The worst verdict over `thresholds` and one reason per breached (or unknown) metric.

    A metric that is absent or NaN cannot vouch for the session: it warns, never passes.
    """
    verdict, reasons, unknown = PASS, [], set()
    for rule in thresholds:
        value = metrics.get(rule.metric, math.nan)
        value = math.nan if value is None else float(value)
        if math.isnan(value):
            if rule.metric not in unknown:
                unknown.add(rule.metric)
                reasons.append(f"{rule.metric} is n/a ({WARN}: cannot be checked)")
                verdict = worst(verdict, WARN)
            continue
        result = rule.verdict(value)
        if result != PASS:
            reasons.append(rule.reason(value, result))
            verdict = worst(verdict, result)
    return verdict, reasons


def worst(*verdicts: str) -> str:
    """The worst of some verdicts (FAIL > WARN > PASS)."""
    return max(verdicts, key=VERDICTS.index)


def format_reasons(reasons: Sequence[str]) -> str:
    """The ``qc_reasons`` cell: reasons joined, or n/a when there are none."""
    return REASON_SEPARATOR.join(reasons) if reasons else "n/a"
