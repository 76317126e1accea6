"""Training throughput on whole-slide bags: abmil vs a reference-style loop vs torchmil's ABMIL.

One bag per optimizer step, bags of N instances with D=1024 features, the CLAM-sized gated
attention net (Linear D→512 + ReLU; attention V, U: 512→256, w: 256→1; classifier 512→1):

- ``abmil``: :class:`abmil.nn.slide.SlideMIL` (bags above ``--chunk`` instances pooled in chunks
  with recompute), the package's Adam (``make_optimizer``), the package's loss.
- ``reference``: the AttentionDeepMIL ``GatedAttention`` loop: the whole bag in memory as
  (1, N, D), ``A = softmax(w(tanh(V h) * sigm(U h)))ᵀ``, ``Z = A @ H``, sigmoid, clamped
  Bernoulli NLL, ``torch.optim.Adam`` with its defaults.
- ``torchmil``: ``torchmil.models.ABMIL(gated=True, att_dim=256)`` with the same Linear+ReLU as
  ``feat_ext``, its ``compute_loss`` (BCE with logits), default Adam. Only if ``import torchmil``
  works (``--torchmil-path DIR`` adds a folder where it was installed with ``pip install --target``).

Each (implementation, N) runs in its own process: instances per second over timed steps after
one warm-up step, the process's peak RSS, and the achieved model FLOP/s (forward + backward of
the net, without the chunked recompute) as a fraction of a float32 matmul peak measured by this
script with the same thread count.

    python benchmarks/wsi_speed.py [--sizes 100,1000,10000,100000,1000000] [--impls abmil,reference,torchmil]
                                   [--threads 1] [--min-seconds 3] [--torchmil-path DIR] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

IMPLS = ("abmil", "reference", "torchmil")
D, HIDDEN, ATT = 1024, 512, 256


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


def _abmil_step(n: int, chunk: int):
    import torch

    from abmil.nn.slide import SlideMIL
    from abmil.train.config import TrainConfig
    from abmil.train.fit import make_optimizer
    from abmil.train.wsi import slide_loss

    model = SlideMIL(D, 2, hidden=HIDDEN, att_dim=ATT, dropout=0.0, chunk_size=chunk)
    opt = make_optimizer(model, TrainConfig(optimizer="adam", lr=1e-4))
    x = torch.randn(n, D)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        slide_loss(model(x).logits, 1).backward()
        opt.step()
    return step


def _reference_step(n: int, chunk: int):
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
    x, y = torch.randn(1, n, D), torch.tensor(1.0)

    def step() -> None:
        opt.zero_grad()
        p = torch.clamp(model(x), min=1e-5, max=1.0 - 1e-5)
        loss = -1.0 * (y * torch.log(p) + (1.0 - y) * torch.log(1.0 - p))
        loss.sum().backward()
        opt.step()
    return step


def _torchmil_step(n: int, chunk: int):
    import torch
    from torch import nn
    from torchmil.models import ABMIL

    model = ABMIL(in_shape=(D,), att_dim=ATT, gated=True,
                  feat_ext=nn.Sequential(nn.Linear(D, HIDDEN), nn.ReLU()))
    opt = torch.optim.Adam(model.parameters())
    x, y = torch.randn(1, n, D), torch.ones(1)

    def step() -> None:
        opt.zero_grad()
        _, losses = model.compute_loss(y, x)
        sum(losses.values()).backward()
        opt.step()
    return step


STEPS = {"abmil": _abmil_step, "reference": _reference_step, "torchmil": _torchmil_step}


def child(impl: str, n: int, threads: int, min_seconds: float, max_steps: int, chunk: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    base = _peak_mib()
    step = STEPS[impl](n, chunk)
    step()  # warm-up: allocator, thread pools, lazy layers
    steps, t0 = 0, time.perf_counter()
    while steps < max_steps and (steps < 2 or time.perf_counter() - t0 < min_seconds):
        step()
        steps += 1
    seconds = time.perf_counter() - t0
    return {"impl": impl, "n": n, "steps": steps, "seconds": seconds, "instances_per_s": n * steps / seconds,
            "gflops": train_flops(n) * steps / seconds / 1e9, "peak_rss_mib": _peak_mib(),
            "rss_after_import_mib": base, "bag_mib": n * D * 4 / 2**20}


def run_one(impl: str, n: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, "--sizes", str(n), "--threads", str(args.threads),
           "--min-seconds", str(args.min_seconds), "--max-steps", str(args.max_steps), "--chunk", str(args.chunk)]
    if args.torchmil_path:
        cmd += ["--torchmil-path", args.torchmil_path]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"impl": impl, "n": n, "error": tail}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100,1000,10000,100000,1000000")
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--min-seconds", type=float, default=3.0, help="time at least this long per config")
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--chunk", type=int, default=16384, help="abmil: chunk size of giant bags")
    p.add_argument("--torchmil-path", default=None, help="folder to put on sys.path for torchmil")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.torchmil_path:
        sys.path.insert(0, args.torchmil_path)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.child:
        print(json.dumps(child(args.child, sizes[0], args.threads, args.min_seconds, args.max_steps, args.chunk)))
        return
    peak = matmul_peak(args.threads)
    print(f"float32 matmul peak, {args.threads} thread(s): {peak:.1f} GFLOP/s")
    print(f"{'impl':<10} {'N':>8} {'steps':>5} {'inst/s':>10} {'GFLOP/s':>8} {'of peak':>7} {'peak RSS MiB':>12}")
    rows = []
    for n in sizes:
        for impl in args.impls.split(","):
            r = run_one(impl, n, args)
            r["matmul_peak_gflops"] = peak
            rows.append(r)
            if "error" in r:
                print(f"{impl:<10} {n:>8} skipped: {r['error']}")
                continue
            print(f"{impl:<10} {n:>8} {r['steps']:>5} {r['instances_per_s']:>10.0f} {r['gflops']:>8.1f} "
                  f"{r['gflops'] / peak:>7.0%} {r['peak_rss_mib']:>12.0f}", flush=True)
    if args.json:
        from pathlib import Path

        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
