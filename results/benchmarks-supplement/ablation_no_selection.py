"""Ablation of the supplement preset: its optimiser, initialisation and 40 epochs, but trained on all of each run's
training folds and the last epoch kept (no validation split, no selection), under the same 10-fold x 5 splits and
seeds. Separates what the settings do from what the validation-based selection does.

    python results/benchmarks-supplement/ablation_no_selection.py OUT.json   # ~30 min on one core
"""
from __future__ import annotations

import json
import sys
import time

from abmil.data.benchmarks import load_benchmark
from abmil.nn.init import keras_init_
from abmil.nn.zoo import benchmark_model
from abmil.train.cv import run_cv
from abmil.train.presets import benchmark_config

out = {}
for dataset in ("musk1", "musk2", "fox", "tiger", "elephant"):
    data = load_benchmark(dataset)
    for model in ("attention", "gated"):
        start = time.perf_counter()
        result = run_cv(data.bags, data.labels, lambda m=model, d=data.n_features: keras_init_(benchmark_model(m, d)),
                        benchmark_config(dataset, model, preset="supplement"), folds=10, repeats=5, seed=0)
        accs = result.accuracies(data.labels)
        per_repeat = accs.reshape(5, 10).mean(1)
        out[f"{dataset}__{model}"] = {"mean": float(accs.mean()), "sd_repeats": float(per_repeat.std()),
                                      "accuracies": accs.tolist(), "seconds": time.perf_counter() - start}
        print(f"{dataset}/{model}: {accs.mean():.3f} (SD {per_repeat.std():.3f})", flush=True)
        with open(sys.argv[1], "w") as f:
            json.dump(out, f, indent=1)
