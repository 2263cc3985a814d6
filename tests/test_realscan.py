"""The real Prisma scan (shared/realdata), arranged as BIDS by the committed script, through the
whole App with susceptibility distortion correction: the end-to-end check issue 11 asks for.

The PA series is ses-baseline and the AP series ses-24h, each with the other's b0 as its
reverse-PE fieldmap, so both sessions are corrected and their regional MD must agree (the
volunteer's true MD is the same in both). ``benchmarks/bench_realscan.py`` gives the full
figures; this test holds the App to what it measured there, with margin.
"""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import REAL_SCAN_ARRANGEMENT, REALDATA, arrange_real_scan

from ketamine_dti.derivatives import spec_path

SUBJECT = REAL_SCAN_ARRANGEMENT.SUBJECT
SESSIONS = tuple(REAL_SCAN_ARRANGEMENT.SESSIONS)  # baseline (PA), then 24h (AP)
#: ROIs measured per session: 6 (PA) and 7 (AP) with SDC, 4 and 6 without
#: (benchmarks/results/realscan_session7.md).
MIN_ROIS_MEASURED = 6
#: Median PA vs AP disagreement over the ROIs measured in both. Issue 11 asks for <= 2%, which is
#: not met: 5.3% when this test was written (session 7), 2.3% since BBR (sessions 41-43:
#: benchmarks/results/realscan_session42.md); mutual information alone gave 2.5-3.1%. The bound
#: (7% until session 43) allows for another CPU; it catches a fall back towards session 7's.
MAX_MEDIAN_DISAGREEMENT = 0.035


@pytest.mark.slow
@pytest.mark.skipif(not REALDATA.exists(), reason="the shared real scan is not here")
def test_the_real_scan_runs_end_to_end_with_distortion_correction(tmp_path):
    bids_dir = arrange_real_scan(tmp_path / "bids")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "bids_app.run", str(bids_dir), str(out), "participant",
               "-w", str(tmp_path / "work"), "--nprocs", "2"]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pepolar with" in proc.stderr and "; applied" in proc.stderr

    tables = {}
    for session in SESSIONS:
        qc = pd.read_csv(spec_path(out, "qc_table", SUBJECT, session), sep="\t").iloc[0]
        assert qc.sdc_method == "pepolar"
        assert qc.qc_verdict != "fail", qc.qc_reasons
        assert 1100 < qc.t1w_brain_volume_ml < 1800  # the whole-head MPRAGE gives a brain
        assert qc.reg_dwi_t1w_dice >= 0.87  # 0.880 / 0.909 with SDC, 0.864 / 0.900 without
        field = nib.load(spec_path(out, "sdc_field", SUBJECT, session)).get_fdata()
        mask = nib.load(spec_path(out, "dwi_mask", SUBJECT, session)).get_fdata() > 0
        p99 = np.percentile(np.abs(field[mask]), 99)
        assert 20.0 < p99 < 200.0, f"ses-{session}: |field| p99 {p99:.1f} Hz"  # 3 T head
        tables[session] = pd.read_csv(
            spec_path(out, "roi_table", SUBJECT, session), sep="\t"
        ).set_index("roi")
        assert (tables[session].status == "ok").sum() >= MIN_ROIS_MEASURED
    pa, ap = (tables[session]["md_mean"] for session in SESSIONS)
    disagreement = ((ap - pa).abs() / ((ap + pa) / 2)).dropna()
    assert disagreement.median() <= MAX_MEDIAN_DISAGREEMENT, disagreement.to_dict()
