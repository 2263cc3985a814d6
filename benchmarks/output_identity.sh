#!/usr/bin/env bash
# Byte-identity of a participant's outputs between two revisions (for refactors).
#   bash benchmarks/output_identity.sh OLD_REV NEW_REV [WORK_DIR]
# Simulates a 3-participant tiny trial (seed 7) once, runs sub-001 through the participant level
# with each revision's code (git archive + PYTHONPATH, the repo's .venv for the packages), and
# prints the files of sub-001 (logs excluded) whose sha256 differ; "IDENTICAL" when none does.
set -euo pipefail
old=$1 new=$2
root=$(cd "$(dirname "$0")/.." && pwd)
work=${3:-$(mktemp -d)}
py="$root/.venv/bin/python"
export OMP_NUM_THREADS=1 ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1
mkdir -p "$work"
for rev in "$old" "$new"; do
  rm -rf "$work/code_$rev" && mkdir -p "$work/code_$rev"
  git -C "$root" archive "$rev" | tar -x -C "$work/code_$rev"
done
if [ ! -d "$work/bids" ]; then
  PYTHONPATH="$work/code_$old" "$py" -m ketamine_dti.simulate.cli "$work/bids" --preset tiny \
    --n-participants 3 --seed 7 >/dev/null
fi
for rev in "$old" "$new"; do
  rm -rf "$work/out_$rev" "$work/work_$rev"
  PYTHONPATH="$work/code_$rev" "$py" -c \
    "import sys; from bids_app.run import main; sys.exit(main())" "$work/bids" "$work/out_$rev" \
    participant --participant-label 001 -w "$work/work_$rev" --nprocs 2 --omp-nthreads 1 \
    --skip-bids-validation >"$work/log_$rev.txt" 2>&1
done
digest() { (cd "$1" && find sub-001 -type f -not -path '*/log/*' | sort | xargs sha256sum); }
if diff <(digest "$work/out_$old") <(digest "$work/out_$new"); then echo IDENTICAL; fi
