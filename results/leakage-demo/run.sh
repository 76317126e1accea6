#!/usr/bin/env bash
# The leakage demonstration of docs/slides.md: one synthetic cohort (40 patients, 2-4 slides each, the label drawn per
# patient and carried by nothing but the patient's own feature signature), studied twice with the same settings:
# splitting slides (slides.csv: no case_id) and splitting patients (cases.csv: case_id). Writes into DIR.
set -euo pipefail
dir="${1:?usage: run.sh DIR}"
python -c "from abmil.data.synthetic import write_patient_cohort as w; w('$dir/cohort', n_patients=40, seed=0)"
for split in slides cases; do
  abmil train --manifest "$dir/cohort/$split.csv" --features "$dir/cohort/features" --out "$dir/$split-split" \
    --folds 5 --seed 0 --epochs 20 --hidden 64 --att-dim 32 > "$dir/$split-split.log"
  abmil evaluate --predictions "$dir/$split-split/oof.csv" --bootstrap 1000 --seed 0 --out "$dir/$split-split-eval" \
    > /dev/null
done
