"""End to end on the simulated real-Prisma protocol (``slab``), against its ground truth.

The ``slab`` preset images what the real pair in ``shared/realdata`` does: one b0 and 20
directions at b = 2500, 3 mm voxels, a slab that leaves the lower brain out, a 64-channel coil's
shading, unaccelerated EPI distortion with a reverse phase-encoded b0, and ``typical`` realism.
``tests/test_realscan.py`` runs the real pair, which has no truth; the benchmarks score slab trials
but run no test. This runs one simulated slab participant (training seed 3) through the CLI and
holds the result to what the truth says, with margin over what it measured here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ketamine_dti.derivatives import spec_path
from ketamine_dti.simulate.clinical import SESSIONS

pytestmark = pytest.mark.slow

#: a training seed; three participants is the clinical model's least
SEED, N_SIMULATED = 3, 3
#: share of the T1w brain in the slab: 0.94 / 0.91 on this participant (session 44), the real
#: pair's 0.93
FOV_FRACTION = (0.88, 0.98)
#: median |md_mean / md_true - 1| over the ROIs and both sessions, against the simulator's true
#: region: 1.9% here (session 44); held-out slab trials 2.4% (seed 13, sessions 41-42)
MAX_MEDIAN_ROI_ERROR = 0.04
#: the App's mean FD against the simulator's true one (jerks within volumes included). On this
#: calm participant (true 0.39 / 0.42 mm) the App reads 0.72 / 0.64, while on bench_motion's
#: slab seeds, which move 0.63-0.83 mm, it agrees within 0.09 (motion_session44.md). A still
#: slab head reads 0.25-0.34 mm (still_head_fd_session44.md): the estimate's own floor at
#: b = 2500 and 3 mm. The bound catches worse.
MAX_FD_ERROR_MM = 0.4
#: the App's susceptibility field against the true one over the DWI brain mask: median |error|
#: as a share of the true field's 99th percentile (0.05 / 0.04 here: 2.5 / 2.0 of 49 / 48 Hz)
#: and the correlation (0.989 / 0.991)
MAX_FIELD_ERROR_SHARE = 0.1
MIN_FIELD_R = 0.97


@pytest.fixture(scope="module")
def slab_run(tmp_path_factory):
    from ketamine_dti.simulate.cli import main as simulate

    root = tmp_path_factory.mktemp("slab")
    bids = root / "bids"
    args = ["--preset", "slab", "--realism", "typical", "--seed", str(SEED)]
    assert simulate([str(bids), *args, "--n-participants", str(N_SIMULATED)]) == 0
    planted = json.loads((bids / "sourcedata/ground_truth/planted_effects.json").read_text())
    fd = planted["imaging"]["mean_fd_mm"]
    subject = min(fd, key=lambda s: max(fd[s].values())).removeprefix("sub-")
    out = root / "out"
    command = [sys.executable, "-m", "bids_app.run", str(bids), str(out), "participant",
               "--participant-label", subject, "-w", str(root / "work"), "--nprocs", "2",
               "--omp-nthreads", "1", "--skip-bids-validation"]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True)
    return bids, out, subject, fd[f"sub-{subject}"], proc


def test_slab_participant_runs_with_distortion_correction(slab_run):
    _, out, subject, _, proc = slab_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    for session in SESSIONS:
        qc = pd.read_csv(spec_path(out, "qc_table", subject, session), sep="\t").iloc[0]
        assert qc.sdc_method == "pepolar"
        assert FOV_FRACTION[0] <= qc.dwi_fov_fraction <= FOV_FRACTION[1], qc.dwi_fov_fraction
        assert qc.reg_dwi_t1w_dice >= 0.9, qc.reg_dwi_t1w_dice


def test_slab_participant_matches_the_truth(slab_run):
    bids, out, subject, true_fd, _ = slab_run
    truth = pd.read_csv(bids / "sourcedata/ground_truth/roi_md.tsv", sep="\t")
    errors = []
    for session in SESSIONS:
        qc = pd.read_csv(spec_path(out, "qc_table", subject, session), sep="\t").iloc[0]
        fd_error = qc.mean_fd - true_fd[f"ses-{session}"]
        assert abs(fd_error) <= MAX_FD_ERROR_MM, (session, qc.mean_fd, true_fd)
        table = pd.read_csv(spec_path(out, "roi_table", subject, session), sep="\t")
        rows = (truth.participant_id == f"sub-{subject}") & (truth.session_id == f"ses-{session}")
        measured = table[table.status == "ok"].merge(truth[rows], on="roi")
        assert len(measured) >= 6, table[["roi", "status"]]  # 7 of 7 here
        errors += list((measured.md_mean / measured.md_true - 1).abs())

        folder = bids / "sourcedata/ground_truth" / f"sub-{subject}" / f"ses-{session}"
        true_field = nib.load(next(folder.glob("*_space-dwi_desc-truth_fieldmap.nii.gz")))
        field = nib.load(spec_path(out, "sdc_field", subject, session))
        np.testing.assert_allclose(field.affine, true_field.affine, atol=1e-3)
        mask = nib.load(spec_path(out, "dwi_mask", subject, session)).get_fdata() > 0
        expected, estimated = true_field.get_fdata()[mask], field.get_fdata()[mask]
        error = np.median(np.abs(estimated - expected))
        scale = np.percentile(np.abs(expected), 99)
        assert error <= MAX_FIELD_ERROR_SHARE * scale, (session, error, scale)
        assert np.corrcoef(estimated, expected)[0, 1] >= MIN_FIELD_R, session
    assert np.median(errors) <= MAX_MEDIAN_ROI_ERROR, np.median(errors)
