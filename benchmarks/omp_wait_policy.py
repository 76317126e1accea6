"""What OMP_WAIT_POLICY=PASSIVE gives the Python API on a busy machine.

Loads the machine on purpose (``--burners`` background processes spinning on the CPU, each stopping by itself after
``--burn-seconds``), then times the same small estimator fit (``AttentionMILClassifier`` on Musk1, ``--epochs``
epochs, torch's default threads) in fresh interpreters, alternating two ways of starting it:

- ``abmil first``: ``import abmil`` before torch, as the ``abmil`` command and any script that imports abmil first:
  abmil sets ``OMP_WAIT_POLICY=PASSIVE`` before torch loads its OpenMP runtime;
- ``torch first``: ``import torch`` before abmil with ``OMP_WAIT_POLICY`` unset: the runtime's default policy (idle
  threads spin), which abmil can no longer change (it warns).

Both fits give the same weights (the policy only changes how idle threads wait); the script checks the predicted
probabilities are equal bitwise and prints the times side by side with their ratio.

    python benchmarks/omp_wait_policy.py [--epochs 2] [--repeats 2] [--burners NCPU] [--burn-seconds 600]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time

FIT = """
import json, sys, time, warnings
warnings.simplefilter("ignore")
if sys.argv[1] == "torch-first":
    import torch
    import abmil
else:
    import abmil
    import torch
from abmil.data.benchmarks import load_benchmark
import numpy as np
ds = load_benchmark("musk1")
clf = abmil.AttentionMILClassifier(epochs=int(sys.argv[2]), random_state=0)
start = time.perf_counter()
clf.fit(ds.bags, ds.labels)
seconds = time.perf_counter() - start
import os
probs = clf.predict_proba(ds.bags)[:, 1]
print(json.dumps({"seconds": seconds, "policy": os.environ.get("OMP_WAIT_POLICY"), "threads": torch.get_num_threads(),
                  "probs": np.asarray(probs, dtype=np.float64).tobytes().hex()}))
"""


def burn(deadline: float) -> None:
    """Spin on one core until ``deadline`` (time.time()): the load that shares the cores with the fit."""
    x = 0
    while time.time() < deadline:
        for _ in range(100_000):
            x += 1


def timed_fit(mode: str, epochs: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    proc = subprocess.run([sys.executable, "-c", FIT, mode, str(epochs)], capture_output=True, text=True, env=env,
                          check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="fits of each kind, alternating")
    parser.add_argument("--burners", type=int, default=os.cpu_count() or 1, help="background spinning processes")
    parser.add_argument("--burn-seconds", type=float, default=600.0, help="each burner stops after this long")
    args = parser.parse_args()

    deadline = time.time() + args.burn_seconds
    burners = [mp.get_context("spawn").Process(target=burn, args=(deadline,), daemon=True)
               for _ in range(args.burners)]
    for p in burners:
        p.start()
    times: dict[str, list[float]] = {"abmil first": [], "torch first": []}
    probs: dict[str, set[str]] = {"abmil first": set(), "torch first": set()}
    try:
        for _ in range(args.repeats):
            for name, mode in (("abmil first", "abmil-first"), ("torch first", "torch-first")):
                result = timed_fit(mode, args.epochs)
                times[name].append(result["seconds"])
                probs[name].add(result["probs"])
                print(f"{name:>12}: {result['seconds']:7.2f} s (OMP_WAIT_POLICY={result['policy']}, "
                      f"{result['threads']} torch threads)", flush=True)
    finally:
        for p in burners:
            p.terminate()
            p.join()
    passive, spinning = (statistics.median(times[k]) for k in ("abmil first", "torch first"))
    same = len(probs["abmil first"] | probs["torch first"]) == 1
    print(f"\nMusk1, {args.epochs} epochs, {args.burners} burner processes on {os.cpu_count()} CPUs, median of "
          f"{args.repeats}: abmil first (PASSIVE) {passive:.2f} s, torch first (unset) {spinning:.2f} s, "
          f"ratio {spinning / passive:.1f}x; predictions bitwise equal: {same}")


if __name__ == "__main__":
    main()
