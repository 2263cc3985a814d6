#!/usr/bin/env bash
# Install everything, simulate a small 2:1 ketamine trial (the embedded default), then run the
# App's participant and group levels on it. Results: demo/derivatives/ketamine-dti.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
bin=.venv/bin
out=demo
"$bin/ketamine-dti-simulate" "$out/bids" --preset tiny --scenario paper --seed 1 --overwrite \
    --n-procs "$(nproc)"
"$bin/ketamine-dti" "$out/bids" "$out/derivatives/ketamine-dti" participant -w "$out/work" "$@"
"$bin/ketamine-dti" "$out/bids" "$out/derivatives/ketamine-dti" group "$@"
echo "Done: open $out/derivatives/ketamine-dti/group/group_report.html"
