"""Peak memory of attention pooling over one giant bag: plain versus chunked (abmil.nn.chunked).

A CLAM-like gated attention net (encoder Linear D→512 + ReLU, attention V, U: 512→256, w: 256→1,
classifier 512→1) takes one training step (forward + backward) or one inference pass on a bag
of N instances. Each variant runs in a fresh process, and the figure reported is the growth of
that process's peak resident memory (``ru_maxrss``) over its level once the bag and the model
are in memory — what the pooling itself costs. (``--one-process`` runs the variants one after
another in a single process, each measured from the peak the previous ones left: quicker, and
sound as long as each variant peaks above the previous ones, e.g. chunked before plain.)

    python benchmarks/chunked_memory.py [--n 200000] [--dim 256] [--chunk 16384] [--json]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

VARIANTS = ("plain-train", "chunked-train", "plain-infer", "chunked-infer")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def child(variants: list[str], n: int, dim: int, hidden: int, att: int, chunk: int) -> list[dict]:
    import torch
    from torch import nn

    from abmil.nn.models import EmbeddingMIL
    from abmil.nn.pooling import AttentionPool

    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU())
    encoder.out_dim = hidden
    model = EmbeddingMIL(encoder, AttentionPool(hidden, att, gated=True))
    chunked = EmbeddingMIL(model.encoder, model.pool, chunk_size=chunk)  # giant-bag mode, the same modules
    chunked.classifier = model.classifier
    x = torch.randn(n, dim)
    bag_index = torch.zeros(n, dtype=torch.long)
    # warm up on a few rows: thread pools and kernels are allocated before the baseline
    for run in (model, chunked):
        rows = 64 if run is model else 2 * chunk + 1  # the chunked path itself, on a bag larger than its chunk
        run(x[:rows], None if run is chunked else bag_index[:rows]).prob.sum().backward()
    model.zero_grad(set_to_none=False)
    results = []
    for variant in variants:
        run = model if variant.startswith("plain") else chunked
        base = _peak_mib()
        t0 = time.perf_counter()
        if variant.endswith("train"):
            out = run(x, None if run is chunked else bag_index)
            out.prob.sum().backward()
        else:
            with torch.no_grad():
                out = run(x, None if run is chunked else bag_index)
        seconds = time.perf_counter() - t0
        results.append({"variant": variant, "n": n, "dim": dim, "chunk": chunk,
                        "bag_mib": x.numel() * 4 / 2**20, "extra_peak_mib": _peak_mib() - base,
                        "seconds": seconds, "prob": float(out.prob)})
    return results


def measure(variants: list[str], n: int, dim: int, hidden: int = 512, att: int = 256,
            chunk: int = 16384) -> list[dict]:
    """Run the variants, in this order, in one fresh interpreter and return their figures."""
    cmd = [sys.executable, __file__, "--child", ",".join(variants), "--n", str(n), "--dim", str(dim),
           "--hidden", str(hidden), "--att", str(att), "--chunk", str(chunk)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--att", type=int, default=256)
    p.add_argument("--chunk", type=int, default=16384)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--one-process", action="store_true", help="all variants in one process, in order")
    p.add_argument("--json", action="store_true", help="print one JSON object per variant")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    variants = a.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}: expected some of {', '.join(VARIANTS)}")
    if a.child:
        print(json.dumps(child(a.child.split(","), a.n, a.dim, a.hidden, a.att, a.chunk)))
        return
    if not a.json:
        print(f"bag {a.n} x {a.dim} float32 ({a.n * a.dim * 4 / 2**20:.0f} MiB), "
              f"encoder {a.dim}->{a.hidden}, gated attention {a.hidden}->{a.att}, chunk {a.chunk}")
        print(f"{'variant':<15} {'extra peak MiB':>15} {'seconds':>8}")
    groups = [variants] if a.one_process else [[v] for v in variants]
    for group in groups:
        for r in measure(group, a.n, a.dim, a.hidden, a.att, a.chunk):
            print(json.dumps(r) if a.json else
                  f"{r['variant']:<15} {r['extra_peak_mib']:>15.1f} {r['seconds']:>8.2f}")


if __name__ == "__main__":
    main()
