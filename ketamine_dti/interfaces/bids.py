"""The derivatives sink (names from ketamine_dti.bids) and the per-session QC table."""

from __future__ import annotations

import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)
from zlib_ng import gzip_ng

from ketamine_dti import bids, storage
from ketamine_dti.dwi.motion import FD_OUTLIER_MM

#: gzip level of NIfTI outputs: 6 is within a few % of 9's size at a fraction of its time.
#: zlib-ng (not the standard library's zlib) writes the same gzip format: a standard
#: preprocessed DWI series (88 MB) in 1.7 s and 45.3 MB, where zlib took 5.3 s for 45.8 MB.
GZIP_LEVEL = 6
_KNOWN_EXTENSIONS = (".nii.gz", ".nii", ".tsv", ".bval", ".bvec", ".mat", ".h5", ".json", ".txt")


def _extension(path: str) -> str:
    """The output extension for a work file (NIfTI outputs are always compressed)."""
    for extension in _KNOWN_EXTENSIONS:
        if path.endswith(extension):
            return ".nii.gz" if extension == ".nii" else extension
    return Path(path).suffix


class _SinkInputSpec(BaseInterfaceInputSpec):
    output_dir = traits.Str(mandatory=True, desc="OUTPUT_DIR (the derivatives dataset root)")
    in_file = File(exists=True, mandatory=True)
    entities = traits.Dict(mandatory=True, desc="sub, ses, space, model, param, desc, ...")
    datatype = traits.Str("", usedefault=True, desc="'dwi', 'anat' or '' (participant root)")
    suffix = traits.Str(mandatory=True)
    extension = traits.Str(desc="default: that of in_file")
    metadata = traits.Dict(desc="JSON sidecar content (Sources, Units, ...)")
    metadata_file = File(
        exists=True, desc="JSON of sidecar content known only at run time, merged into metadata"
    )
    bval_file = File(exists=True, desc="written next to the main file as .bval")
    bvec_file = File(exists=True, desc="written next to the main file as .bvec")
    storage = traits.Enum(
        "", *storage.RULES, usedefault=True, desc="'': as given; else a rule of storage.py"
    )
    quantum_from = traits.List(
        File(exists=True), desc="raw images whose step 'noise' storage keeps (storage.raw_step)"
    )


class _SinkOutputSpec(TraitedSpec):
    # No exists=True: the staged file is moved into OUTPUT_DIR when the participant succeeds,
    # and Nipype re-validates this path whenever it reads the result back (timing, resume).
    out_file = File(desc="the written file, under the participant's staging folder")


class DerivativesSink(SimpleInterface):
    """Copy a result to its BIDS-Derivatives name and write its JSON sidecar.

    Writes under the participant's staging folder (``bids.staging_root``); the participant
    level moves the whole folder into OUTPUT_DIR once every step succeeded, so a failed
    participant leaves no derivatives. Each file appears under a temporary name first, then
    is renamed. Always runs (never served from the cache), so a resumed run still fills a new
    OUTPUT_DIR.
    """

    input_spec = _SinkInputSpec
    output_spec = _SinkOutputSpec
    always_run = True

    def _run_interface(self, runtime):
        extension = (
            self.inputs.extension
            if isdefined(self.inputs.extension)
            else _extension(self.inputs.in_file)
        )
        target = bids.derivative_path(
            bids.staging_root(self.inputs.output_dir),
            self.inputs.datatype or None,
            self.inputs.suffix,
            extension,
            **self.inputs.entities,
        )
        if self.inputs.storage:
            sources = self.inputs.quantum_from if isdefined(self.inputs.quantum_from) else []
            content = storage.stored(self.inputs.in_file, self.inputs.storage, sources).to_bytes()
        else:
            content = Path(self.inputs.in_file).read_bytes()
        if str(target).endswith(".nii.gz") and not content.startswith(b"\x1f\x8b"):
            # work files are uncompressed for speed; mtime=0 keeps reruns byte-identical, and no
            # file name goes into the gzip header (the validator warns about one)
            buffer = io.BytesIO()
            with gzip_ng.GzipFile(
                filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=GZIP_LEVEL
            ) as sink:
                sink.write(content)
            content = buffer.getvalue()
        bids.atomic_write_bytes(target, content)
        stem = str(target)[: -len(extension)]
        for extra in ("bval", "bvec"):
            path = getattr(self.inputs, f"{extra}_file")
            if isdefined(path):
                bids.atomic_write_bytes(f"{stem}.{extra}", Path(path).read_bytes())
        metadata = dict(self.inputs.metadata) if isdefined(self.inputs.metadata) else {}
        if isdefined(self.inputs.metadata_file):
            metadata = merge_metadata(
                metadata, json.loads(Path(self.inputs.metadata_file).read_text())
            )
        if metadata:
            bids.atomic_write_text(
                stem + ".json", json.dumps(metadata, indent=2, sort_keys=True) + "\n"
            )
        self._results["out_file"] = str(target)
        return runtime


def merge_metadata(static: dict, runtime: dict) -> dict:
    """Sidecar content: `runtime` on top of `static`; objects present in both (e.g. "Model")
    are merged key by key, so a fit's run-time facts join its static description."""
    merged = dict(static)
    for key, value in runtime.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merged[key] | value
        else:
            merged[key] = value
    return merged


class _QCInputSpec(BaseInterfaceInputSpec):
    participant_id = traits.Str(mandatory=True)
    session_id = traits.Str(mandatory=True)
    n_sessions = traits.Int(mandatory=True, desc="sessions of this participant (1: flagged)")
    dwi_file = File(exists=True, mandatory=True, desc="preprocessed DWI")
    bval_file = File(exists=True, mandatory=True)
    bvec_file = File(exists=True, desc="b-vectors of dwi_file (for neighbor_correlation)")
    mask_file = File(exists=True, mandatory=True)
    t1w_mask_file = File(exists=True, desc="brain mask of the subject template (T1w)")
    confounds_file = File(exists=True, mandatory=True)
    outlier_volumes = traits.Int(mandatory=True)
    residual_median = traits.Float(mandatory=True)
    roi_file = File(exists=True, mandatory=True)
    dwi_t1w_qc = traits.Dict()
    ventricle_qc = traits.Dict(desc="VentricleCoverage QC")
    template_qc = traits.Dict(desc="subject-template (halfway) QC")
    mni_qc = traits.Dict(desc="template -> MNI registration QC")
    n_nonfinite_voxels = traits.Int(0, usedefault=True, desc="raw voxels with NaN/Inf (zeroed)")
    n_zero_volumes = traits.Int(0, usedefault=True, desc="all-zero raw volumes (excluded)")
    sdc_method = traits.Str("none", usedefault=True, desc="distortion correction that ran")


class _QCOutputSpec(TraitedSpec):
    out_file = File(exists=True)
    qc_verdict = traits.Enum("pass", "warn", "fail")


#: Sidecar description of every column SessionQC writes, in its order.
QC_COLUMN_DESCRIPTIONS: dict[str, dict[str, str]] = {
    "participant_id": {"Description": "Participant"},
    "session_id": {"Description": "Session"},
    "n_sessions": {"Description": "Sessions of this participant (1: flagged for group stage)"},
    "n_volumes": {"Description": "Volumes of the DWI series"},
    "mean_fd": {"Description": "Mean framewise displacement (volumes 2..N)", "Units": "mm"},
    "max_fd": {"Description": "Maximum framewise displacement", "Units": "mm"},
    "n_outlier_volumes": {
        "Description": f"Volumes with framewise displacement > {FD_OUTLIER_MM} mm"
    },
    "outlier_fraction": {"Description": "n_outlier_volumes / n_volumes"},
    "n_outlier_slices": {
        "Description": "Slice dropouts found in the diffusion-weighted volumes (outlier_slices "
        "of the confounds table); n/a when not run"
    },
    "outlier_slice_fraction": {
        "Description": "n_outlier_slices / slices tested (tested_slices of the confounds table)"
    },
    "n_replaced_slices": {
        "Description": "Outlier slices replaced by the tensor prediction before the fits (0 "
        "with --slice-outliers none)"
    },
    "tsnr": {
        "Description": "Median over the brain of mean/SD across b0 volumes; n/a when the "
        "series has fewer than 2 b0 volumes (an SD across one volume is undefined)"
    },
    "tensor_residual": {"Description": "Median RMS tensor-fit residual / S0 in the brain"},
    "neighbor_correlation": {
        "Description": "Mean over diffusion-weighted volumes of the correlation in the brain "
        "with the nearest volume in q-space (QSIPrep's NDC, Yeh et al. 2019); artefacts, "
        "dropouts and residual misalignment lower it; n/a without b-vectors"
    },
    "brain_volume_ml": {"Description": "Volume of the DWI brain mask", "Units": "ml"},
    "t1w_brain_volume_ml": {
        "Description": "Volume of the subject template's (T1w) brain mask",
        "Units": "ml",
    },
    "reg_dwi_t1w_mi": {"Description": "Mattes mutual information b0 vs T1w (lower = better)"},
    "reg_dwi_t1w_bbr_cost": {
        "Description": "Boundary-based registration cost of the b0 on the T1w's white surface "
        "(Greve & Fischl 2009; 0 = every surface point has its usual gray-over-white b0 "
        "contrast, 1 = no contrast, 2 = inverted; n/a when the coregistration ran without "
        "BBR)"
    },
    "reg_dwi_t1w_bbr_shift_mm": {
        "Description": "RMS distance over the white surface by which BBR moved the mutual-"
        "information coregistration it started from",
        "Units": "mm",
    },
    "reg_dwi_t1w_dice": {
        "Description": "Dice of the DWI and T1w brain masks after coregistration, inside the "
        "DWI's field of view"
    },
    "dwi_fov_fraction": {
        "Description": "Fraction of the T1w brain mask inside the DWI's field of view (a slab "
        "that misses the cerebellum or the vertex covers less than 1)"
    },
    "reg_ventricle_coverage": {
        "Description": "Share of the DWI's ventricles (deep voxels with MD above twice the "
        "brain median, clusters of 1 ml or more) that fall on the T1w's deep CSF after "
        "coregistration: low when the T1w is not this person's or the registration is off; "
        "n/a when the DWI shows less than 2 ml of ventricles"
    },
    "dwi_ventricle_volume_ml": {
        "Description": "Volume of the DWI's ventricles used by reg_ventricle_coverage",
        "Units": "ml",
    },
    "reg_session_halfway_ncc": {"Description": "NCC of the sessions' T1w in halfway space"},
    "reg_t1w_mni_ncc": {"Description": "NCC of the subject template and MNI brain"},
    "reg_t1w_mni_dice": {"Description": "Dice of subject and MNI brain masks after SyN"},
    "roi_min_voxels": {"Description": "Fewest voxels kept in any ROI (see the ROI table)"},
    "roi_min_fraction": {"Description": "Smallest fraction_kept of any ROI (see the ROI table)"},
    "n_rois_missing": {"Description": "ROIs reported missing (status 'missing' in the ROI table)"},
    "roi_missing_fraction": {"Description": "n_rois_missing / number of ROIs"},
    "fw_fraction_roi_max": {
        "Description": "Largest fw_fraction_mean of any ROI (see the ROI table): how much "
        "free water the free-water fit finds in gray matter the T1w calls CSF-free"
    },
    "fw_fraction_roi_min": {"Description": "Smallest fw_fraction_mean of any ROI"},
    "n_nonfinite_voxels": {"Description": "Raw voxels holding NaN/Inf, zeroed before processing"},
    "n_zero_volumes": {"Description": "All-zero raw volumes, left out of every step"},
    "sdc_method": {
        "Description": "Susceptibility distortion correction applied to the DWI",
        "Levels": {
            "pepolar": "field estimated from reverse phase-encoded b0 images",
            "fieldmap": "field from a GRE fieldmap (phasediff or fieldmap), registered to the b0",
            "syn": "fieldmap-less: field from SyN of the b0 to the T1w along phase encoding "
            "(--use-syn-sdc)",
            "none": "not corrected (no usable fieldmap, or --sdc none)",
        },
    },
    "sdc_max_roi_displacement_mm": {
        "Description": "Largest per-ROI median |displacement| corrected (sdc_displacement_mm "
        "of the ROI table); n/a without correction",
        "Units": "mm",
    },
    "sdc_max_roi_severe_fraction": {
        "Description": "Largest per-ROI fraction of voxels severely compressed or stretched "
        "(sdc_severe_fraction of the ROI table); n/a without correction"
    },
    "qc_verdict": {
        "Description": "Session verdict from the thresholds of ketamine_dti.qc (docs/qc.md); "
        "by default the group level excludes a participant with a failed session",
        "Levels": {
            "pass": "every metric within its documented range",
            "warn": "a metric outside its warning range, or unknown (see qc_reasons)",
            "fail": "a metric beyond its failure threshold (see qc_reasons)",
        },
    },
    "qc_reasons": {
        "Description": "Each breached threshold: metric, value, threshold, verdict and meaning; "
        "separated by '; ' (n/a when the session passes)"
    },
}


def _volume_ml(mask_file: str) -> float:
    """Volume (ml) of a binary mask image."""
    image = nib.load(mask_file)
    voxels = np.count_nonzero(np.asanyarray(image.dataobj))
    return float(voxels * np.prod(image.header.get_zooms()[:3]) / 1000.0)


def _column_extreme(table: pd.DataFrame, column: str, largest: bool = True) -> float:
    """Largest (``largest`` False: smallest) value of a column (NaN when absent or all n/a)."""
    values = pd.to_numeric(table.get(column, pd.Series(dtype=float)), errors="coerce")
    if not values.notna().any():
        return float("nan")
    return float(values.max() if largest else values.min())


def _column_sum(table: pd.DataFrame, column: str) -> float:
    """Sum of a column (NaN when absent)."""
    if column not in table:
        return float("nan")
    return float(pd.to_numeric(table[column], errors="coerce").sum())


def _mean_neighbor_correlation(data, bvals, bvec_file, mask) -> float:
    """The session's NDC (NaN without b-vectors or with fewer than 2 diffusion volumes)."""
    from ketamine_dti.dwi.gradients import read_bvecs
    from ketamine_dti.dwi.qc import neighbor_correlation

    if not isdefined(bvec_file):
        return float("nan")
    values = neighbor_correlation(data, bvals, read_bvecs(bvec_file), mask)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


class SessionQC(SimpleInterface):
    """One-row QC table of a session (motion, tSNR, fit residual, registration quality, ROI
    retention) with its verdict from ``ketamine_dti.qc``."""

    input_spec = _QCInputSpec
    output_spec = _QCOutputSpec

    def _run_interface(self, runtime):
        from ketamine_dti import qc

        row = self._metrics()
        verdict, reasons = qc.session_verdict(row)
        row["qc_verdict"], row["qc_reasons"] = verdict, qc.format_reasons(reasons)
        out = Path(runtime.cwd) / "qc_metrics.tsv"
        table = pd.DataFrame([row])[list(QC_COLUMN_DESCRIPTIONS)]
        table.to_csv(out, sep="\t", index=False, float_format="%.6g", na_rep="n/a")
        self._results["out_file"] = str(out)
        self._results["qc_verdict"] = verdict
        return runtime

    def _metrics(self) -> dict:
        from ketamine_dti import qc
        from ketamine_dti.dwi.gradients import B0_THRESHOLD, read_bvals
        from ketamine_dti.dwi.qc import b0_tsnr

        confounds = pd.read_csv(self.inputs.confounds_file, sep="\t")
        fd = confounds["framewise_displacement"].to_numpy()
        data = np.asanyarray(nib.load(self.inputs.dwi_file).dataobj)
        mask = np.asanyarray(nib.load(self.inputs.mask_file).dataobj) > 0
        bvals = read_bvals(self.inputs.bval_file)
        rois = pd.read_csv(self.inputs.roi_file, sep="\t")

        def get(source, key):
            value = source.get(key) if isdefined(source) else None
            return float(value) if value is not None else float("nan")

        t1w_mask = self.inputs.t1w_mask_file
        return {
            "participant_id": f"sub-{self.inputs.participant_id}",
            "session_id": f"ses-{self.inputs.session_id}",
            "n_sessions": self.inputs.n_sessions,
            "n_volumes": int(len(bvals)),
            "mean_fd": float(np.mean(fd[1:])) if len(fd) > 1 else 0.0,
            "max_fd": float(np.max(fd)),
            "n_outlier_volumes": self.inputs.outlier_volumes,
            "outlier_fraction": qc.outlier_fraction(self.inputs.outlier_volumes, len(bvals)),
            "n_outlier_slices": _column_sum(confounds, "outlier_slices"),
            "outlier_slice_fraction": qc.outlier_fraction(
                _column_sum(confounds, "outlier_slices"), _column_sum(confounds, "tested_slices")
            ),
            "n_replaced_slices": _column_sum(confounds, "replaced_slices"),
            "tsnr": b0_tsnr(data, bvals <= B0_THRESHOLD, mask),
            "tensor_residual": self.inputs.residual_median,
            "neighbor_correlation": _mean_neighbor_correlation(
                data, bvals, self.inputs.bvec_file, mask
            ),
            "brain_volume_ml": _volume_ml(self.inputs.mask_file),
            "t1w_brain_volume_ml": _volume_ml(t1w_mask) if isdefined(t1w_mask) else np.nan,
            "reg_dwi_t1w_mi": get(self.inputs.dwi_t1w_qc, "mutual_information"),
            "reg_dwi_t1w_bbr_cost": get(self.inputs.dwi_t1w_qc, "bbr_cost"),
            "reg_dwi_t1w_bbr_shift_mm": get(self.inputs.dwi_t1w_qc, "bbr_shift_mm"),
            "reg_dwi_t1w_dice": get(self.inputs.dwi_t1w_qc, "dice_mask"),
            "dwi_fov_fraction": get(self.inputs.dwi_t1w_qc, "dwi_fov_fraction"),
            "reg_ventricle_coverage": get(self.inputs.ventricle_qc, "ventricle_coverage"),
            "dwi_ventricle_volume_ml": get(self.inputs.ventricle_qc, "ventricle_volume_ml"),
            "reg_session_halfway_ncc": get(self.inputs.template_qc, "ncc_halfway"),
            "reg_t1w_mni_ncc": get(self.inputs.mni_qc, "ncc"),
            "reg_t1w_mni_dice": get(self.inputs.mni_qc, "dice_mask"),
            "roi_min_voxels": int(rois["n_voxels"].min()),
            "n_nonfinite_voxels": self.inputs.n_nonfinite_voxels,
            "n_zero_volumes": self.inputs.n_zero_volumes,
            "sdc_method": self.inputs.sdc_method,
            "sdc_max_roi_displacement_mm": _column_extreme(rois, "sdc_displacement_mm"),
            "sdc_max_roi_severe_fraction": _column_extreme(rois, "sdc_severe_fraction"),
            "fw_fraction_roi_max": _column_extreme(rois, "fw_fraction_mean"),
            "fw_fraction_roi_min": _column_extreme(rois, "fw_fraction_mean", largest=False),
        } | qc.roi_retention(list(rois["status"]), list(rois["fraction_kept"]))
