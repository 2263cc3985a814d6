"""End to end on a simulated `tiny` participant: the atlas in DWI space against the truth."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ketamine_dti.anat.participant import bring_to_dwi, run_anat_participant
from ketamine_dti.rois import ROI_NAMES, regional_statistics

SESSIONS = ("baseline", "24h")
#: Deep ROIs whose pure-GM truth voxels must fall inside the transferred atlas ROI.
DEEP_ROIS = ("amygdala_left", "amygdala_right", "hippocampus_left", "hippocampus_right", "vacc")
#: b-values below this count as b0 (s/mm^2).
B0_MAX = 50.0


def _mean_b0_and_mask(dwi_file, bval_file, out_dir):
    from dipy.segment.mask import median_otsu

    image = nib.load(dwi_file)
    bvals = np.loadtxt(bval_file)
    data = image.get_fdata(dtype=np.float32)
    b0 = data[..., bvals < B0_MAX].mean(axis=-1)
    _, mask = median_otsu(b0, median_radius=2, numpass=1)
    nib.save(nib.Nifti1Image(b0, image.affine), out_dir / "b0.nii.gz")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), image.affine), out_dir / "mask.nii.gz")
    return out_dir / "b0.nii.gz", out_dir / "mask.nii.gz", data, bvals


@pytest.mark.slow
def test_atlas_reaches_the_true_rois_in_each_session(tiny_trial, tmp_path):
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    sub = "sub-001"
    t1w = {
        s: tiny_trial / sub / f"ses-{s}" / "anat" / f"{sub}_ses-{s}_T1w.nii.gz" for s in SESSIONS
    }
    anat = run_anat_participant(t1w, tmp_path / "anat", n_threads=1)
    assert anat.qc["template_ncc_halfway"] > 0.95
    assert anat.qc["mni_dice_mask"] > 0.95
    assert set(anat.sessions) == set(SESSIONS)
    assert all(k.endswith(("_wall_s", "_cpu_s")) for k in anat.timings)

    truth_md = pd.read_csv(tiny_trial / "sourcedata/ground_truth/roi_md.tsv", sep="\t")
    for session in SESSIONS:
        stem = tiny_trial / sub / f"ses-{session}" / "dwi" / f"{sub}_ses-{session}_dwi"
        out = tmp_path / session
        out.mkdir()
        b0, mask, data, bvals = _mean_b0_and_mask(f"{stem}.nii.gz", f"{stem}.bval", out)
        space = bring_to_dwi(anat.sessions[session], b0, out, dwi_mask_file=mask, n_threads=1)
        assert space.qc["dwi_t1w_dice_mask"] > 0.9
        labels = np.asarray(nib.load(space.dseg_file).dataobj)
        truth_file = (
            tiny_trial
            / "sourcedata/ground_truth"
            / sub
            / f"ses-{session}"
            / f"{sub}_ses-{session}_space-dwi_desc-truth_dseg.nii.gz"
        )
        truth = np.asarray(nib.load(truth_file).dataobj)
        assert labels.shape == truth.shape
        for roi in DEEP_ROIS:
            index = ROI_NAMES.index(roi) + 1
            recall = ((labels == index) & (truth == index)).sum() / (truth == index).sum()
            assert recall >= 0.8, f"{session} {roi}: only {recall:.2f} of the true voxels"

        # coarse accuracy of the regional MD after the gray-matter rule (raw DWI, tiny 4 mm)
        bvecs = np.loadtxt(f"{stem}.bvec")
        fit = TensorModel(gradient_table(bvals, bvecs=bvecs.T)).fit(
            data, mask=np.asarray(nib.load(mask).dataobj) > 0
        )
        table = regional_statistics(
            fit.md,
            labels,
            fa=fit.fa,
            gm_prob=nib.load(space.gm_file).get_fdata(),
            csf_prob=nib.load(space.csf_file).get_fdata(),
        )
        true = (
            truth_md[(truth_md.participant_id == sub) & (truth_md.session_id == f"ses-{session}")]
            .set_index("roi")
            .md_true
        )
        error = (table.set_index("roi").md_mean - true) / true
        assert (table.n_voxels > 0).all()
        assert np.nanmedian(np.abs(error)) < 0.10
