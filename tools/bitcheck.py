"""Bitwise digests of what the trainers produce: run before and after a refactor, the two outputs must be equal.

    python tools/bitcheck.py > before.txt      # on the old commit
    python tools/bitcheck.py > after.txt       # on the new one
    diff before.txt after.txt

Benchmark trainers: every model key of the registry through every engine that trains it (direct, stacked,
sequential) on Musk1 for a few epochs, and the estimator. Slide trainers: ``python -m abmil train`` on the synthetic
cohorts (classification, batch sizes and packing, validation and early stopping, class weights, balanced sampler,
case-level bags, survival nll/cox, regression mse/huber, a --folds study), then ``predict`` and ``evaluate``; the
digest covers every weight file and every CSV the commands write (paths and run.json/config.json are left out: they
hold the temporary folder and software versions). Numbers only: a digest changes iff a bit of a weight or a written
number changes.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
torch.set_num_threads(1)


def digest_state(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def digest_files(folder: Path, suffixes=(".safetensors", ".csv")) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in suffixes:
            h.update(str(path.relative_to(folder)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def benchmark_digests() -> None:
    from abmil.data.benchmarks import load_benchmark
    from abmil.nn.zoo import MODEL_KEYS, create_model
    from abmil.train.config import TrainConfig
    from abmil.train.engines import train_run

    ds = load_benchmark("musk1")
    y = np.asarray(ds.labels)
    pick = [*np.flatnonzero(y == 1)[:20], *np.flatnonzero(y == 0)[:20]]  # the file lists positives first
    rest = [i for i in range(len(y)) if i not in pick][:20]
    bags = [torch.as_tensor(np.asarray(ds.bags[i]), dtype=torch.float32) for i in pick]
    labels = torch.as_tensor(y[pick], dtype=torch.float32)
    config = TrainConfig(epochs=3)
    for key in MODEL_KEYS:
        for engine in ("direct", "sequential"):
            torch.manual_seed(0)
            model = create_model(key, family="benchmark", in_dim=166)
            try:
                train_run(engine, model, bags, labels, config, seed=0)
            except (ValueError, TypeError) as e:
                print(f"benchmark {key} {engine}: n/a ({type(e).__name__})")
                continue
            print(f"benchmark {key} {engine}: {digest_state(model)}")
    # the stacked engine and the CV protocol, through the runner's own entry point
    from abmil.train.cv import run_cv

    for key in ("attention", "gated", "embedding-max", "mi-net-ds", "mi-net-rc"):
        for engine in ("stacked", "direct", "sequential"):
            try:
                result = run_cv([np.asarray(b) for b in ds.bags], np.asarray(ds.labels),
                                lambda key=key: create_model(key, family="benchmark", in_dim=166),
                                TrainConfig(epochs=2), folds=3, repeats=1, seed=0, engine=engine)
            except (ValueError, TypeError) as e:
                print(f"cv {key} {engine}: n/a ({type(e).__name__}: {e})")
                continue
            probs = b"".join(np.ascontiguousarray(p, dtype=np.float64).tobytes() for p in result.probs)
            print(f"cv {key} {engine}: {hashlib.sha256(probs).hexdigest()[:16]}")
    from abmil.estimator import AttentionMILClassifier

    clf = AttentionMILClassifier(pooling="gated", epochs=3, random_state=0).fit([ds.bags[i] for i in pick], y[pick])
    p = clf.predict_proba([ds.bags[i] for i in rest])
    print(f"estimator gated: {hashlib.sha256(np.ascontiguousarray(p).tobytes()).hexdigest()[:16]}")
    for family, kwargs, keys in (("mnist-bags", {}, ("attention", "gated", "instance-max", "embedding-mean")),
                                 ("histology", {"patch_size": 27}, ("attention", "gated", "instance-mean")),
                                 ("slide", {"in_dim": 32}, ("attention", "gated"))):
        for key in keys:
            torch.manual_seed(0)
            print(f"init {family} {key}: {digest_state(create_model(key, family=family, **kwargs))}")


def abmil(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "abmil", *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def slide_digests() -> None:
    from abmil.data.synthetic import write_outcome_cohort, write_patient_cohort

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cases, _ = write_patient_cohort(tmp / "cls", n_patients=16, seed=0)
        feats = str(tmp / "cls" / "features")
        runs = {
            "plain": [],
            "attention": ["--pooling", "attention"],
            "batch4": ["--batch-size", "4"],
            "packed": ["--batch-instances", "200"],
            "val-patience": ["--val-split", "0.25", "--patience", "2", "--monitor", "val_auc"],
            "weights-sampler": ["--class-weights", "balanced", "--sampler", "balanced", "--val-split", "0.25"],
            "case-level": ["--bag-level", "case"],
        }
        for name, flags in runs.items():
            out = tmp / "runs" / name
            abmil("train", "--manifest", str(cases), "--features", feats, "--out", str(out), "--epochs", "3",
                  "--hidden", "32", "--att-dim", "16", *flags)
            print(f"slide train {name}: {digest_files(out)}")
        study = tmp / "runs" / "study"
        abmil("train", "--manifest", str(cases), "--features", feats, "--out", str(study), "--epochs", "3",
              "--hidden", "32", "--att-dim", "16", "--folds", "3")
        print(f"slide study: {digest_files(study)}")
        abmil("predict", "--run", str(study), "--manifest", str(cases), "--features", feats,
              "--out", str(tmp / "preds.csv"))
        print(f"slide predict: {hashlib.sha256((tmp / 'preds.csv').read_bytes()).hexdigest()[:16]}")
        abmil("evaluate", "--predictions", str(study / "oof.csv"), "--run", str(study), "--bootstrap", "50",
              "--seed", "0", "--out", str(tmp / "eval"))
        metrics = json.loads((tmp / "eval" / "metrics.json").read_text())["metrics"]  # "meta" names tmp paths
        text = (tmp / "eval" / "metrics.csv").read_bytes() + json.dumps(metrics).encode()
        print(f"slide evaluate: {hashlib.sha256(text).hexdigest()[:16]}")
        for task, losses in (("survival", ("nll", "cox")), ("regression", ("mse", "huber"))):
            manifest, features, _ = write_outcome_cohort(tmp / task, task, 40, seed=0)
            for loss in losses:
                out = tmp / "runs" / f"{task}-{loss}"
                abmil("train", "--manifest", str(manifest), "--features", str(features), "--out", str(out),
                      "--epochs", "3", "--hidden", "32", "--att-dim", "16", "--task", task, "--loss", loss,
                      "--batch-size", "4", "--folds", "3")
                print(f"slide {task} {loss} study: {digest_files(out)}")


if __name__ == "__main__":
    which = sys.argv[1:] or ["benchmark", "slide"]
    if "benchmark" in which:
        benchmark_digests()
    if "slide" in which:
        slide_digests()
