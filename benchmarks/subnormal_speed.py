"""What subnormal weights cost a CPU training step, and what flushing them (abmil.train.subnormal) gives back.

The breast patch CNN under gated attention, after ~100 epochs of the paper's protocol, had a quarter of its first fc
layer's weights (and a sixth of the second's) below float32's smallest normal number. This times one training
step's forward and backward pass on one bag of patches with such weights and with the same weights flushed to
zero, alternating the two, and checks the two give the same bag probability bitwise.

    python benchmarks/subnormal_speed.py [--patches 600] [--repeats 5] [--threads 1] [--weights RUN.safetensors]

Without ``--weights`` the subnormal weights are planted in a fresh model at the shares seen in the real run (25% of
fc-1, 17% of fc-2, 7% of the attention V and U); with it, a saved histology model is loaded as it is (e.g.
``results/histology-breast/models/gated__rep2__fold7.safetensors`` from ``abmil reproduce histology
--keep-models``).
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
from safetensors.torch import load_file

from abmil.nn.zoo import histology_model
from abmil.train.subnormal import flush_subnormal_

SHARES = {"encoder.fc.0.weight": 0.25, "encoder.fc.3.weight": 0.17, "pool.V.weight": 0.07, "pool.U.weight": 0.07}


def subnormal_count(model: torch.nn.Module) -> tuple[int, int]:
    tiny = torch.finfo(torch.float32).tiny
    ps = list(model.parameters())
    return sum(int(((p != 0) & (p.abs() < tiny)).sum()) for p in ps), sum(p.numel() for p in ps)


def plant(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in SHARES:
                pick = torch.rand(p.shape, generator=g) < SHARES[name]
                p[pick] = torch.where(p[pick] < 0, -1e-40, 1e-40)


def step_seconds(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    index = torch.zeros(x.shape[0], dtype=torch.long)
    model.zero_grad(set_to_none=True)
    t = time.perf_counter()
    out = model(x, index, 1)
    out.prob.sum().backward()
    return time.perf_counter() - t, out.prob.detach()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patches", type=int, default=600, help="instances in the bag (a breast image has ~300-900)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--weights", help="a saved gated histology model (safetensors); default: planted subnormals")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    slow = histology_model("gated", 32)
    if args.weights:
        slow.load_state_dict(load_file(args.weights))
    else:
        plant(slow, args.seed)
    slow.eval()  # dropout off: both models see the same computation
    fast = copy.deepcopy(slow)
    flushed = flush_subnormal_(fast.parameters())
    n_sub, n_all = subnormal_count(slow)
    print(f"subnormal weights: {n_sub} of {n_all} ({n_sub / n_all:.1%}); flushed {flushed}")
    x = torch.rand(args.patches, 3, 32, 32, generator=torch.Generator().manual_seed(args.seed))
    step_seconds(slow, x), step_seconds(fast, x)  # warm-up
    times = {"subnormal": [], "flushed": []}
    for _ in range(args.repeats):
        t_slow, p_slow = step_seconds(slow, x)
        t_fast, p_fast = step_seconds(fast, x)
        times["subnormal"].append(t_slow)
        times["flushed"].append(t_fast)
        assert torch.equal(p_slow, p_fast), "flushing changed the bag probability"
    best = {k: min(v) for k, v in times.items()}
    print(f"forward+backward, {args.patches} patches, {args.threads} thread(s), best of {args.repeats}: "
          f"subnormal {best['subnormal'] * 1e3:.0f} ms, flushed {best['flushed'] * 1e3:.0f} ms, "
          f"ratio {best['subnormal'] / best['flushed']:.2f}x (bag probabilities bitwise equal)")


if __name__ == "__main__":
    main()
