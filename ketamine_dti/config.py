"""Run settings: one frozen dataclass, built by the CLI and passed to every stage.

Thresholds live here with their reason, not as magic numbers in the code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Config:
    """Everything a run needs; immutable so workflows cannot drift from what the user asked."""

    bids_dir: Path
    output_dir: Path
    analysis_level: str  # "participant" or "group"
    participant_labels: tuple[str, ...] = ()  # without "sub-"; empty means all
    session_labels: tuple[str, ...] = ()  # without "ses-"; empty means all
    baseline_session: str = "baseline"
    followup_session: str = "24h"
    bids_filters: dict = field(default_factory=dict)  # pybids filters per data type
    work_dir: Path = Path("work")
    skip_bids_validation: bool = False
    # execution
    nprocs: int = 2
    omp_nthreads: int = 1
    mem_gb: float = 8.0
    plugin: str = "MultiProc"
    plugin_args: dict = field(default_factory=dict)
    stop_on_first_crash: bool = False
    write_graph: bool = False
    verbosity: int = 0
    # methods
    denoise: str = "mppca"  # "mppca" or "none"
    gibbs: bool = False  # Gibbs unringing costs minutes per session; QSIPrep's default is off too
    tensor_fit: str = "wls"  # "wls", "ols" or "nlls"
    roi_atlas: Path | None = None  # None: the bundled ketamine7 atlas; else a dseg NIfTI (+ .tsv)
    # group level
    group_column: str = "group"
    treatment_arm: str = "ketamine"
    control_arm: str = "saline"
    covariates: tuple[str, ...] = ()
    scales: tuple[str, ...] = ("madrs", "qids_sr")
    delta_md: str = "absolute"  # "absolute" (mm^2/s) or "percent"
    robust_se: bool = False  # HC3 standard errors
    mixed_model: bool = False  # MixedLM sensitivity analysis
    max_mean_fd: float | None = None  # mm; sessions above are dropped at the group level
