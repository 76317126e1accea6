#!/usr/bin/env bash
# The planted-truth survival cohort of docs/survival.md at a study's size: 240 slides of 8-15 patches (8 features), a
# grade carried by a few key patches per slide, hazard 0.05 exp(1.5 grade), ~40 % censored
# (abmil.data.synthetic.write_outcome_cohort, seed 0); 5-fold patient-level CV, 30 epochs, each loss; then evaluate.
set -euo pipefail
dir="${1:?usage: run.sh DIR}"
python -c "from abmil.data.synthetic import write_outcome_cohort as w; w('$dir/data', 'survival', 240, dim=8, sizes=(8, 16))"
common=(--task survival --manifest "$dir/data/manifest.csv" --features "$dir/data/features" --folds 5 --seed 0
        --hidden 16 --att-dim 8 --dropout 0 --epochs 30 --lr 3e-3)
abmil train "${common[@]}" --loss nll --batch-size 8 --out "$dir/nll" > "$dir/nll.log"
abmil train "${common[@]}" --loss cox --batch-size 16 --out "$dir/cox" > "$dir/cox.log"
for loss in nll cox; do
  abmil evaluate --predictions "$dir/$loss/oof.csv" --bootstrap 200 --seed 0 --out "$dir/$loss-eval" > /dev/null
done
