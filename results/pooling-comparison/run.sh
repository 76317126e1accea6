#!/usr/bin/env bash
# The pooling comparison (docs/poolings.md): every slide pooling of `abmil train --pooling` and the linear probe
# through the same 5-fold patient-level study on a planted-truth cohort (abmil.data.synthetic.write_key_patch_cohort:
# 40 patients, 1-2 slides each, positive slides carry 2-4 key patches), out-of-fold AUC with 1000 case resamples,
# localisation AUC of the instance scores against the key patches, seconds per epoch; one table (table.md).
#
#     results/pooling-comparison/run.sh [OUT]        (default runs/pooling-comparison; about 10 minutes on one core)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-runs/pooling-comparison}
PY=${PYTHON:-python}
POOLINGS="attention gated mean max instance-mean instance-max clam-sb transmil linear-probe"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1   # one core

"$PY" "$HERE/compare.py" cohort "$OUT/cohort"
for pooling in $POOLINGS; do
  "$PY" -m abmil train --manifest "$OUT/cohort/manifest.csv" --features "$OUT/cohort/features" \
    --out "$OUT/$pooling" --pooling "$pooling" --folds 5 --seed 0 --epochs 10 --lr 1e-3 --hidden 32 --att-dim 16 \
    > "$OUT/$pooling.log"
  "$PY" -m abmil evaluate --predictions "$OUT/$pooling/oof.csv" --run "$OUT/$pooling" --bootstrap 1000 --seed 0 \
    --out "$OUT/$pooling-eval" > "$OUT/$pooling-eval.log"
done
"$PY" "$HERE/compare.py" table "$OUT" $POOLINGS | tee "$HERE/table.md"
