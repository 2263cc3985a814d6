"""Run settings: one frozen dataclass, built by the CLI and passed to every stage.

It holds what the user chose (data selection, execution, methods, group models). Scientific
thresholds stay named constants beside the code that applies them, with their reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ketamine_dti.errors import InputError
from ketamine_dti.resources import ATLAS as BUNDLED_ATLAS
from ketamine_dti.rois import ROI_MIN_FRACTION, ROI_MIN_VOXELS

#: The CLI's number of permutations (``--permutations``): the Monte-Carlo SE of a p near 0.05 is
#: then sqrt(0.05 * 0.95 / 5000) = 0.003, and the smallest attainable p is 1/5001.
DEFAULT_PERMUTATIONS = 5000
#: The CLI's permutation seed (any fixed number makes reruns identical; stats.json records it).
DEFAULT_PERMUTATION_SEED = 0
#: ``--fwer`` choices: no family-wise correction, or max-T across the ROIs of a family.
FWER_METHODS = ("none", "maxt")
#: ``--md-measure`` choices: the ROI-table column ``<measure>_<statistic>`` the group level
#: analyses (tensor MD, or free-water-corrected MD, which removes CSF partial volume).
MD_MEASURES = ("md", "md_fwcorr")
#: ``--roi-statistic`` choices: how an ROI's kept voxels are summarised
#: (``<measure>_<statistic>``).
ROI_SUMMARY_STATISTICS = ("mean", "median")
#: QC-table columns whose change between sessions ``--qc-covariates`` adds when given bare: head
#: motion and b0 temporal SNR, the two QC measures that bias MD when they differ by session.
DEFAULT_QC_COVARIATES = ("mean_fd", "tsnr")
#: The contrast without ``--contrast``: one arm per side, named as its participants.tsv label.
DEFAULT_CONTRAST = (("ketamine", ("ketamine",)), ("saline", ("saline",)))
#: The ``atlas-<label>`` entity of a custom atlas's file name (BIDS labels are alphanumeric).
_ATLAS_ENTITY = re.compile(r"(?:^|_)atlas-([a-zA-Z0-9]+)(?:_|\.)")


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
    dwi_runs: str = "combine"  # several DWI runs in a session: "combine", "first" or "error"
    check_only: bool = False  # run the input checks for every participant, then stop
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
    gibbs: bool = False  # unringing costs ~40 s per standard session; QSIPrep's default is off too
    tensor_fit: str = "wls"  # "wls", "ols", "nlls" or "restore" (robust to outlier samples)
    slice_outliers: str = "replace"  # slice dropouts: "replace" (eddy --repol) or "none" (count)
    interpolation: str = "trilinear"  # the one DWI interpolation: dwi.resampling's choices
    b0_threshold: float = 50.0  # s/mm^2; scanners label b=5..50 "b0" (gradients.B0_THRESHOLD)
    roi_atlas: Path | None = None  # None: the bundled atlas; else a dseg NIfTI (+ .tsv)
    roi_atlas_label: str | None = None  # atlas-<label> of published dseg names; see atlas_label
    roi_min_fraction: float = ROI_MIN_FRACTION  # an ROI keeping less of its atlas is missing
    roi_min_voxels: int = ROI_MIN_VOXELS  # ... and one keeping fewer voxels
    # susceptibility distortion correction (fieldmaps.py): "auto", "pepolar", "fieldmap", "none"
    sdc: str = "auto"
    use_syn_sdc: bool = False  # fieldmap-less SyN-SDC where --sdc auto finds no fieldmap
    # group level
    arm_column: str = "group"  # participants.tsv column of arm labels (any number of arms)
    # (treatment side, control side) of the group contrast: (name, its arm labels) each
    contrast: tuple[tuple[str, tuple[str, ...]], ...] = DEFAULT_CONTRAST
    covariates: tuple[str, ...] = ()
    qc_covariates: tuple[str, ...] = ()  # QC-table columns: their session change is a covariate
    md_measure: str = "md"  # analyse the ROI-table column <md_measure>_<roi_statistic>
    roi_statistic: str = "mean"
    scales: tuple[str, ...] = ("madrs", "qids_sr")
    delta_md: str = "absolute"  # "absolute" (mm^2/s) or "percent"
    robust_se: bool = False  # HC3 standard errors
    mixed_model: bool = False  # MixedLM sensitivity analysis
    max_mean_fd: float | None = None  # mm; sessions above are dropped at the group level
    include_failed_qc: bool = False  # keep participants with a session whose qc_verdict is fail
    # Freedman-Lane permutations per OLS term; 0 = none. The CLI's default is
    # DEFAULT_PERMUTATIONS; library callers such as the validation harness opt in, so their
    # many simulated trials keep their speed.
    permutations: int = 0
    permutation_seed: int = DEFAULT_PERMUTATION_SEED
    exchangeability_column: str | None = None  # participants.tsv column: permute within blocks
    fwer: str = "none"  # "none" or "maxt" (max-T across the ROIs of a family)
    # --reliability: TSV of the retest reliability of dMD per ROI; adds attenuation-corrected
    # dMD slopes (group/measurement_error.py), a sensitivity analysis. None: no correction.
    reliability: Path | None = None

    @property
    def treatment_arm(self) -> str:
        """Name of the contrast's treatment side (coded 1 in the models)."""
        return self.contrast[0][0]

    @property
    def control_arm(self) -> str:
        """Name of the contrast's control side (coded 0)."""
        return self.contrast[1][0]

    @property
    def arm_sides(self) -> dict[str, str]:
        """Arm label -> the contrast side it belongs to, in ``--contrast`` order."""
        return {label: side for side, labels in self.contrast for label in labels}

    @property
    def md_column(self) -> str:
        """The ROI-table column analysed (``--md-measure``, ``--roi-statistic``)."""
        return f"{self.md_measure}_{self.roi_statistic}"

    @property
    def atlas_label(self) -> str:
        """The ``atlas-<label>`` entity of published atlas files, so a custom atlas is never
        published under the bundled atlas's name: ``roi_atlas_label`` if given, else the
        bundled atlas's name, else the ``atlas-<label>`` entity of the custom file's name."""
        if self.roi_atlas_label:
            label = self.roi_atlas_label
        elif self.roi_atlas is None:
            label = BUNDLED_ATLAS
        else:
            match = _ATLAS_ENTITY.search(Path(self.roi_atlas).name)
            if match is None:
                raise InputError(
                    f"{self.roi_atlas}: no atlas-<label> entity in the file name; name the "
                    "atlas with --roi-atlas-label"
                )
            label = match.group(1)
        if not label.isalnum():
            raise InputError(f"atlas label {label!r}: use letters and digits only")
        return label
