"""Training throughput on whole-slide bags: abmil vs a reference-style loop vs torchmil's ABMIL.

Bags of N instances with D=1024 features, the CLAM-sized gated attention net (Linear D→512 + ReLU;
attention V, U: 512→256, w: 256→1; classifier 512→1), one bag per optimizer step unless said:

- ``abmil``: :func:`abmil.nn.zoo.slide_model` (bags above ``--chunk`` instances pooled in chunks
  with recompute), the package's Adam (``make_optimizer``), the package's loss.
- ``reference``: the AttentionDeepMIL ``GatedAttention`` loop: the whole bag in memory as
  (1, N, D), ``A = softmax(w(tanh(V h) * sigm(U h)))ᵀ``, ``Z = A @ H``, sigmoid, clamped
  Bernoulli NLL, ``torch.optim.Adam`` with its defaults.
- ``abmil-packed``: as ``abmil train --batch-instances`` runs: ``--budget // N`` bags of N instances
  per step, consecutive bags packed end to end with a ``bag_index`` (no padding) into passes of at most
  ``abmil.slides.train.pack_limit`` instances, fused Adam.
- ``torchmil``: ``torchmil.models.ABMIL(gated=True, att_dim=256)`` with the same Linear+ReLU as
  ``feat_ext``, its ``compute_loss`` (BCE with logits), default Adam. Only if ``import torchmil``
  works (``--torchmil-path DIR`` adds a folder where it was installed with ``pip install --target``).

The size ``mixed`` is a set of 24 bags of 100 to 50,000 instances (log-uniform, seed 0), timed over
one epoch: ``abmil-packed`` fills each step up to ``--budget`` instances (the package's
``InstanceBudgetSampler``), ``torchmil`` takes ``--padded-batch`` bags per step padded to the
largest with its mask (its collate's way), ``abmil`` and ``reference`` one bag per step.

Each (implementation, N) runs in its own process: instances per second over timed steps after
one warm-up step, the process's peak RSS, and the achieved model FLOP/s (forward + backward of
the net, without the chunked recompute) as a fraction of a float32 matmul peak measured by this
script with the same thread count.

    python benchmarks/wsi_speed.py [--sizes 100,1000,10000,100000,1000000,mixed]
                                   [--impls abmil,abmil-packed,reference,torchmil] [--threads 1] [--min-seconds 3]
                                   [--budget 16384] [--padded-batch 8] [--torchmil-path DIR] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

IMPLS = ("abmil", "abmil-packed", "reference", "torchmil")
D, HIDDEN, ATT = 1024, 512, 256
N_MIXED, MIXED_RANGE = 24, (100, 50_000)


def mixed_sizes() -> list[int]:
    """The mixed-size set: 24 bag sizes, log-uniform in [100, 50000], seed 0."""
    import numpy as np

    lo, hi = np.log(MIXED_RANGE[0]), np.log(MIXED_RANGE[1])
    return [int(round(float(v))) for v in np.exp(np.random.default_rng(0).uniform(lo, hi, N_MIXED))]


def train_flops(n: int, d: int = D, h: int = HIDDEN, a: int = ATT) -> float:
    """Model FLOPs of one training step on a bag of n instances (multiply-add = 2).

    Encoder: forward 2ndh + weight gradient 2ndh (x needs no gradient); V and U: forward,
    weight and input gradients, 6nha each; pooling z = aᵀH and w: 6nh + 6na."""
    return 4.0 * n * d * h + 12.0 * n * h * a + 6.0 * n * h + 6.0 * n * a


def matmul_peak(threads: int, seconds: float = 2.0) -> float:
    """Best float32 GFLOP/s of torch.mm on shapes like the encoder's (and a square one)."""
    import torch

    torch.set_num_threads(threads)
    best = 0.0
    for m, k, n in ((8192, D, HIDDEN), (2048, 2048, 2048)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b  # warm-up
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 2:
            a @ b
            reps += 1
        best = max(best, 2.0 * m * k * n * reps / (time.perf_counter() - t0) / 1e9)
    return best


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _bags(sizes: list[int]):
    import torch

    return [torch.randn(n, D) for n in sizes]


def _abmil_step(sizes: list[int], args):
    """One bag per step: the package's slide model (chunked above ``--chunk``), fused Adam, its loss."""
    import torch

    from abmil.nn.zoo import slide_model
    from abmil.slides.train import slide_loss
    from abmil.train.config import TrainConfig
    from abmil.train.optim import make_optimizer

    model = slide_model("gated", D, 2, hidden=HIDDEN, att_dim=ATT, dropout=0.0, chunk_size=args.chunk)
    opt = make_optimizer(model, TrainConfig(optimizer="adam", lr=1e-4))

    def step(x: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        slide_loss(model(x), 1).backward()
        opt.step()
    return _one_bag_per_step(step, sizes)


def _abmil_packed_step(sizes: list[int], args):
    """Several bags per step as ``abmil train --batch-instances`` takes them: ``budget // N`` bags of one size (or
    the mixed set filled up to the budget by the package's sampler), consecutive bags packed end to end into passes
    of at most ``pack_limit`` instances (a larger bag alone), gradients accumulating over the step's passes."""
    import torch

    from abmil.data.bags import pack
    from abmil.data.samplers import InstanceBudgetSampler
    from abmil.nn.zoo import slide_model
    from abmil.slides.train import WSIConfig, pack_limit
    from abmil.train.config import TrainConfig
    from abmil.train.loop import pack_groups
    from abmil.train.loss import bag_losses
    from abmil.train.optim import make_optimizer

    model = slide_model("gated", D, 2, hidden=HIDDEN, att_dim=ATT, dropout=0.0)
    opt = make_optimizer(model, TrainConfig(optimizer="adam", lr=1e-4))
    if len(sizes) == 1:  # one size: a fixed batch of budget // N bags
        sizes = sizes * max(1, args.budget // sizes[0])
    bags = _bags(sizes)
    limit = pack_limit(WSIConfig(chunk_size=args.chunk), torch.device("cpu"))
    steps = []
    for batch in InstanceBudgetSampler(sizes, args.budget, seed=0):
        passes = []
        for group in pack_groups([sizes[i] for i in batch], limit):
            x, bag_index = pack([bags[batch[k]] for k in group])
            passes.append((x, bag_index if len(group) > 1 else None, len(group)))
        steps.append((passes, len(batch)))

    def epoch() -> None:
        for passes, n_step in steps:
            opt.zero_grad(set_to_none=True)
            for x, bag_index, n_bags in passes:
                out = model(x, bag_index, n_bags)
                (bag_losses(out, torch.ones(n_bags, dtype=torch.long)).sum() / n_step).backward()
            opt.step()
    return epoch, sum(sizes), sum(train_flops(n) for n in sizes), len(steps)


def _reference_step(sizes: list[int], args):
    import torch
    import torch.nn.functional as F
    from torch import nn

    class GatedAttention(nn.Module):  # AttentionDeepMIL model.py, with CLAM's sizes
        def __init__(self):
            super().__init__()
            self.feature_extractor = nn.Sequential(nn.Linear(D, HIDDEN), nn.ReLU())
            self.attention_V = nn.Sequential(nn.Linear(HIDDEN, ATT), nn.Tanh())
            self.attention_U = nn.Sequential(nn.Linear(HIDDEN, ATT), nn.Sigmoid())
            self.attention_weights = nn.Linear(ATT, 1)
            self.classifier = nn.Sequential(nn.Linear(HIDDEN, 1), nn.Sigmoid())

        def forward(self, x):
            h = self.feature_extractor(x.squeeze(0))
            a = self.attention_weights(self.attention_V(h) * self.attention_U(h))
            a = F.softmax(torch.transpose(a, 1, 0), dim=1)
            return self.classifier(torch.mm(a, h))

    model = GatedAttention()
    opt = torch.optim.Adam(model.parameters())
    y = torch.tensor(1.0)

    def step(x: torch.Tensor) -> None:
        opt.zero_grad()
        p = torch.clamp(model(x.unsqueeze(0)), min=1e-5, max=1.0 - 1e-5)
        loss = -1.0 * (y * torch.log(p) + (1.0 - y) * torch.log(1.0 - p))
        loss.sum().backward()
        opt.step()
    return _one_bag_per_step(step, sizes)


def _torchmil_step(sizes: list[int], args):
    """torchmil's ABMIL; the mixed set in batches of ``--padded-batch`` bags padded to the largest, with a mask."""
    import torch
    from torch import nn
    from torchmil.models import ABMIL

    model = ABMIL(in_shape=(D,), att_dim=ATT, gated=True,
                  feat_ext=nn.Sequential(nn.Linear(D, HIDDEN), nn.ReLU()))
    opt = torch.optim.Adam(model.parameters())
    bags = _bags(sizes)
    per = 1 if len(sizes) == 1 else args.padded_batch
    batches = []
    for i in range(0, len(bags), per):
        group = bags[i:i + per]
        x = torch.zeros(len(group), max(b.shape[0] for b in group), D)
        mask = torch.zeros(x.shape[:2])
        for j, b in enumerate(group):
            x[j, :b.shape[0]], mask[j, :b.shape[0]] = b, 1.0
        batches.append((x, mask, torch.ones(len(group))))

    def epoch() -> None:
        for x, mask, y in batches:
            opt.zero_grad()
            _, losses = model.compute_loss(y, x, mask)
            sum(losses.values()).backward()
            opt.step()
    return epoch, sum(sizes), sum(train_flops(n) for n in sizes), len(batches)


def _one_bag_per_step(step, sizes: list[int]):
    bags = _bags(sizes)

    def epoch() -> None:
        for x in bags:
            step(x)
    return epoch, sum(sizes), sum(train_flops(n) for n in sizes), len(bags)


STEPS = {"abmil": _abmil_step, "abmil-packed": _abmil_packed_step, "reference": _reference_step,
         "torchmil": _torchmil_step}


def child(impl: str, size: str, args: argparse.Namespace) -> dict:
    """Time ``impl`` on bags of ``size`` (an int, or ``mixed``) in this process: epochs over the set until
    ``--min-seconds`` (at least 2), after one warm-up epoch; FLOPs count the model's useful work (no padding)."""
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = _peak_mib()
    sizes = mixed_sizes() if size == "mixed" else [int(size)]
    epoch, instances, flops, steps_per_epoch = STEPS[impl](sizes, args)
    epoch()  # warm-up: allocator, thread pools, lazy layers
    epochs, t0 = 0, time.perf_counter()
    while epochs * steps_per_epoch < args.max_steps and (epochs < 2 or time.perf_counter() - t0 < args.min_seconds):
        epoch()
        epochs += 1
    seconds = time.perf_counter() - t0
    return {"impl": impl, "n": size, "steps": epochs * steps_per_epoch, "seconds": seconds,
            "instances_per_s": instances * epochs / seconds, "gflops": flops * epochs / seconds / 1e9,
            "peak_rss_mib": _peak_mib(), "rss_after_import_mib": base, "bag_mib": instances * D * 4 / 2**20}


def run_one(impl: str, size: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, "--sizes", size, "--threads", str(args.threads),
           "--min-seconds", str(args.min_seconds), "--max-steps", str(args.max_steps), "--chunk", str(args.chunk),
           "--budget", str(args.budget), "--padded-batch", str(args.padded_batch)]
    if args.torchmil_path:
        cmd += ["--torchmil-path", args.torchmil_path]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"impl": impl, "n": size, "error": tail}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100,1000,10000,100000,1000000,mixed")
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--min-seconds", type=float, default=3.0, help="time at least this long per config")
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--chunk", type=int, default=131072, help="abmil: chunk size of giant bags")
    p.add_argument("--budget", type=int, default=16384, help="abmil-packed: instances per step")
    p.add_argument("--padded-batch", type=int, default=8, help="torchmil, mixed set: bags per padded batch")
    p.add_argument("--torchmil-path", default=None, help="folder to put on sys.path for torchmil")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.torchmil_path:
        sys.path.insert(0, args.torchmil_path)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if args.child:
        print(json.dumps(child(args.child, sizes[0], args)))
        return
    peak = matmul_peak(args.threads)
    print(f"float32 matmul peak, {args.threads} thread(s): {peak:.1f} GFLOP/s")
    print(f"{'impl':<12} {'N':>8} {'steps':>5} {'inst/s':>10} {'GFLOP/s':>8} {'of peak':>7} {'peak RSS MiB':>12} "
          f"{'bag MiB':>8}")
    rows = []
    for n in sizes:
        for impl in args.impls.split(","):
            if impl == "abmil-packed" and n != "mixed" and int(n) > args.budget // 2:
                continue  # fewer than two bags per step: the same as abmil's one bag per step
            r = run_one(impl, n, args)
            r["matmul_peak_gflops"] = peak
            rows.append(r)
            if "error" in r:
                print(f"{impl:<12} {n:>8} skipped: {r['error']}")
                continue
            print(f"{impl:<12} {n:>8} {r['steps']:>5} {r['instances_per_s']:>10.0f} {r['gflops']:>8.1f} "
                  f"{r['gflops'] / peak:>7.0%} {r['peak_rss_mib']:>12.0f} {r['bag_mib']:>8.0f}", flush=True)
        done = {r["impl"]: r for r in rows if r["n"] == n and "error" not in r}
        if "abmil-packed" in done and "torchmil" in done:
            print(f"  N={n}: abmil-packed / torchmil = "
                  f"{done['abmil-packed']['instances_per_s'] / done['torchmil']['instances_per_s']:.1f}x")
    # the machine's peak moves with what else runs on it: measured again at the end, the fractions against the
    # higher of the two (a low first measurement would flatter every row)
    end_peak = matmul_peak(args.threads)
    best = max(peak, end_peak)
    print(f"float32 matmul peak re-measured at the end: {end_peak:.1f} GFLOP/s; of the higher, {best:.1f}:")
    print("  " + ", ".join(f"{r['impl']} {r['n']} {r['gflops'] / best:.0%}" for r in rows if "error" not in r))
    for r in rows:
        r["matmul_peak_end_gflops"] = end_peak
    if args.json:
        from pathlib import Path

        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
