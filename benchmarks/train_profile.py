"""Where the time of one ``abmil train`` run goes, per phase and per epoch, on a generated CLAM-style cohort.

The cohort: ``--slides`` CLAM-style HDF5 files (``features`` (n, 1024) float32, ``coords``), n log-uniform in
``--sizes`` (seed 0), labels a fair coin with a few shifted key patches in positive slides; the CLAM-sized model
(``--pooling gated``: Linear 1024→512 + ReLU, gated attention 256, dropout 0.25), Adam lr 2e-4 / wd 1e-5, one slide
per step (or ``--batch-instances``), validation on 20 % of the slides every epoch, a checkpoint every epoch: what
``abmil train`` does. The run is the library's own (:func:`abmil.slides.train.train_feature_model` after the
dataset is read, as the CLI does); the phases are timed by wrapping the library's functions from outside:

- start-up: from before the manifest is read to the first training pass (reading the manifest, checking every
  slide file from its metadata, building the model and optimizer), less the first bag's reading;
- reading: :meth:`abmil.slides.train.SlideBags.load` (a slide's features from its file);
- step: the forward and backward passes (``abmil.train.loop._pass``) and the optimizer's step;
- validation: the run's validation (scoring the validation slides, reading included, and their metrics);
- checkpoint: ``abmil.train.loop.save_checkpoint``;
- rest: the epoch's wall time less all of the above (the schedule, the loop's own work).

It prints each phase's seconds and share per epoch, and the achieved model FLOP/s of the training passes as a share
of a float32 matmul peak measured here with the same threads, over the step alone and over the whole epoch.

    python benchmarks/train_profile.py [--slides 40] [--sizes 500,30000] [--epochs 3] [--threads 2]
                                       [--batch-instances N] [--out DIR] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wsi_speed import ATT, HIDDEN, D, matmul_peak, train_flops  # noqa: E402

PHASES = ("start-up", "reading", "step", "validation", "checkpoint", "rest")


def write_cohort(root: Path, n_slides: int, sizes: tuple[int, int], dim: int = D, seed: int = 0) -> Path:
    """``root/features/*.h5`` and ``root/manifest.csv``; returns the manifest."""
    import h5py
    import numpy as np

    rng = np.random.default_rng(seed)
    (root / "features").mkdir(parents=True, exist_ok=True)
    lines = ["slide_id,label"]
    lo, hi = np.log(sizes[0]), np.log(sizes[1])
    for i in range(n_slides):
        n = int(round(float(np.exp(rng.uniform(lo, hi)))))
        y = i % 2
        x = rng.standard_normal((n, dim), dtype=np.float32)
        if y:
            x[rng.choice(n, max(2, n // 50), replace=False), :8] += 2.0
        k = np.arange(n)
        with h5py.File(root / "features" / f"s{i:03d}.h5", "w") as f:
            f.create_dataset("features", data=x)
            f.create_dataset("coords", data=np.stack([(k % 200) * 256, (k // 200) * 256], 1).astype(np.int64))
        lines.append(f"s{i:03d},{'tumor' if y else 'normal'}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


class Timers:
    """Seconds per (epoch, phase), from wrapped functions; nested calls count once (the outermost)."""

    def __init__(self):
        self.seconds: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.epoch = 0
        self.first_pass: float | None = None
        self.first_read: float = 0.0
        self.instances: dict[int, int] = defaultdict(int)
        self._depth = 0

    def wrap(self, owner, name: str, phase: str, on_call=None):
        original = getattr(owner, name)
        timers = self

        def timed(*args, **kwargs):
            if timers._depth:
                return original(*args, **kwargs)
            if on_call is not None:
                on_call(args)
            timers._depth += 1
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                timers._depth -= 1
                timers.seconds[timers.epoch][phase] += elapsed
                if phase == "reading" and timers.first_pass is None:
                    timers.first_read += elapsed

        setattr(owner, name, timed)


def child(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    import abmil.slides.train as slide_train
    import abmil.train.loop as loop
    from abmil.slides.features import FeatureBagDataset

    timers = Timers()

    def first(call_args):
        if timers.first_pass is None:
            timers.first_pass = time.perf_counter()
        bags = call_args[2]
        timers.instances[timers.epoch] += sum(int(b[0].shape[0]) for b in bags)

    timers.wrap(slide_train.SlideBags, "load", "reading")
    timers.wrap(loop, "_pass", "step", first)
    timers.wrap(torch.optim.Adam, "step", "step")
    original_loop = slide_train.train_loop

    def train_loop(*a, validate=None, **k):  # the run's validation closure, timed whole (scoring and metrics)
        holder = type("Holder", (), {"validate": staticmethod(validate)})
        timers.wrap(holder, "validate", "validation")
        return original_loop(*a, validate=holder.validate, **k)

    slide_train.train_loop = train_loop
    timers.wrap(loop, "save_checkpoint", "checkpoint")
    epoch_end: list[float] = []

    def on_epoch(record: dict) -> None:
        epoch_end.append(time.perf_counter())
        timers.epoch += 1

    config = slide_train.WSIConfig(pooling="gated", epochs=args.epochs, lr=2e-4, weight_decay=1e-5,
                                   val_split=0.2, seed=0, batch_instances=args.batch_instances,
                                   dropout=0.25, hidden=HIDDEN, att_dim=ATT)
    started = time.perf_counter()
    dataset = FeatureBagDataset(args.manifest, Path(args.manifest).parent / "features")
    slide_train.train_feature_model(dataset, args.run, config, on_epoch=on_epoch)
    ended = time.perf_counter()
    startup = timers.first_pass - started - timers.first_read
    rows, bounds = [], [timers.first_pass, *epoch_end]
    for e in range(args.epochs):
        phases = dict(timers.seconds[e])
        wall = bounds[e + 1] - bounds[e] + (timers.first_read if e == 0 else 0.0)
        phases["rest"] = wall - sum(phases.values())
        rows.append({"epoch": e + 1, "wall": wall, "instances": timers.instances[e], **phases})
    return {"startup": startup, "epochs": rows, "total": ended - started}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slides", type=int, default=40)
    p.add_argument("--sizes", default="500,30000", help="smallest,largest bag (log-uniform)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-instances", type=int, default=None)
    p.add_argument("--out", default=None, help="folder for the cohort and the run (default: a temporary one)")
    p.add_argument("--json", default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--manifest", help=argparse.SUPPRESS)
    p.add_argument("--run", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return
    import subprocess

    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="abmil-profile-"))
    lo, hi = (int(v) for v in args.sizes.split(","))
    manifest = root / "cohort" / "manifest.csv"
    if not manifest.exists():
        write_cohort(root / "cohort", args.slides, (lo, hi))
    run = root / f"run-{time.strftime('%H%M%S')}"
    cmd = [sys.executable, __file__, "--child", "--manifest", str(manifest), "--run", str(run), "--epochs",
           str(args.epochs), "--threads", str(args.threads)]
    if args.batch_instances:
        cmd += ["--batch-instances", str(args.batch_instances)]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}  # as the CLI sets it
    peak = matmul_peak(args.threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(proc.stderr)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{args.slides} slides of {lo}-{hi} patches, {D}-d, gated attention {HIDDEN}/{ATT}, "
          f"{'one slide per step' if not args.batch_instances else f'--batch-instances {args.batch_instances}'}, "
          f"{args.threads} thread(s); float32 matmul peak {peak:.1f} GFLOP/s")
    print(f"start-up before the first pass: {result['startup']:.2f} s; whole run {result['total']:.1f} s")
    print("epoch | wall s | " + " | ".join(f"{ph} s (%)" for ph in PHASES[1:]) + " | step/peak | epoch/peak")
    for r in result["epochs"]:
        flops = train_flops(1) * r["instances"]  # the model's FLOPs are linear in the instances
        cells = [f"{r.get(ph, 0.0):.2f} ({100 * r.get(ph, 0.0) / r['wall']:.0f})" for ph in PHASES[1:]]
        print(f"{r['epoch']} | {r['wall']:.2f} | " + " | ".join(cells)
              + f" | {flops / max(r.get('step', 1e-9), 1e-9) / 1e9 / peak:.0%} | {flops / r['wall'] / 1e9 / peak:.0%}")
    if args.json:
        Path(args.json).write_text(json.dumps({"peak_gflops": peak, **result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
