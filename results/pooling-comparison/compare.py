"""The pooling comparison's two steps (run.sh): ``cohort DIR`` writes the planted-truth cohort and its key patches
(keys.json); ``table OUT POOLING...`` prints one markdown row per pooling from the finished studies and evaluations:
out-of-fold AUC [95 % case-bootstrap CI] (``abmil evaluate``), the localisation AUC of the fold models' instance
scores against the key patches (on each fold's own test slides: the mean over positive test slides of the AUC
separating their key patches from the rest), and the mean training seconds per epoch over the folds."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def cohort(out: Path) -> None:
    from abmil.data.synthetic import write_key_patch_cohort

    _, _, keys = write_key_patch_cohort(out, 40, seed=0)
    (out / "keys.json").write_text(json.dumps({k: v.tolist() for k, v in keys.items()}, indent=0))


def localisation(run: Path, keys: dict[str, list[int]], features: Path) -> float | None:
    """Mean per-slide AUC of the instance scores, key patches against the rest, over the positive test slides of
    every fold (each scored by its own fold's model); None for a pooling without instance scores."""
    from sklearn.metrics import roc_auc_score

    from abmil.slides.feature_files import FeatureFile
    from abmil.slides.predict import load_models, predict_file

    splits = json.loads((run / "splits.json").read_text())["folds"]
    aucs = []
    for s in splits:
        model = load_models(run, fold=(s["repeat"], s["fold"]))
        if model[0].spec.instance_scores is None:
            return None
        for sid in s["test"]["slides"]:
            if not keys[sid]:
                continue
            scores = predict_file(model, FeatureFile(features / f"{sid}.h5", sid)).instance_scores
            truth = np.zeros(len(scores), dtype=int)
            truth[keys[sid]] = 1
            aucs.append(roc_auc_score(truth, scores))
    return float(np.mean(aucs))


def seconds_per_epoch(run: Path) -> float:
    rates = []
    for fold in sorted((run / "folds").iterdir()):
        history = json.loads((fold / "checkpoint.json").read_text())["history"]
        rates.append(history["seconds"] / max(history["epochs_run"], 1))
    return float(np.mean(rates))


def table(out: Path, poolings: list[str]) -> None:
    from abmil.nn.zoo import model_spec

    keys = json.loads((out / "cohort" / "keys.json").read_text())
    print("| pooling | instance scores | OOF AUC [95 % CI] | localisation AUC | s / epoch |")
    print("|---|---|---|---|---|")
    for pooling in poolings:
        metrics = json.loads((out / f"{pooling}-eval" / "metrics.json").read_text())
        auc = next(r for r in metrics["metrics"] if r["level"] == "slide" and r["metric"] == "auc")
        loc = localisation(out / pooling, keys, out / "cohort" / "features")
        spec = model_spec(pooling)
        print(f"| {pooling} | {spec.instance_scores or '-'} | {auc['value']:.3f} [{auc['ci_low']:.3f}, "
              f"{auc['ci_high']:.3f}] | {'-' if loc is None else f'{loc:.3f}'} | "
              f"{seconds_per_epoch(out / pooling):.2f}{' (fit)' if spec.trained == 'fitted' else ''} |")


if __name__ == "__main__":
    if sys.argv[1] == "cohort":
        cohort(Path(sys.argv[2]))
    else:
        table(Path(sys.argv[2]), sys.argv[3:])
