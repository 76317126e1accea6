"""Where softmax's float32 sum drifts: the switch point of abmil.nn.segment.segment_softmax.

For one bag of n instances (n = 2^8 ... 2^20) and logits from a few distributions, the worst over ``--draws`` draws of
max(|Σ w - 1|, max_k |w_k - w*_k| / w*_k) against the float64 softmax w*: the float32 formula (each bag's sum taken
by ``index_add``, one term after another: the path bags up to ``FLOAT32_SOFTMAX_MAX`` keep), torch.softmax in float32,
and segment_softmax as it is (float64 above the switch point).

    python benchmarks/segment_softmax_accuracy.py [--draws 3] [--max-log2 20]
"""
from __future__ import annotations

import argparse

import abmil  # noqa: F401 - first: OMP_WAIT_POLICY

# isort: split
import torch

from abmil.nn.segment import FLOAT32_SOFTMAX_MAX, _softmax, segment_softmax

LOGITS = {"N(0,1)": 1.0, "N(0,5^2) (peaked)": 5.0, "N(0,0.1^2) (flat)": 0.1}


def error(w: torch.Tensor, ref: torch.Tensor) -> float:
    w = w.double()
    return max(abs(w.sum().item() - 1.0), ((w - ref).abs() / ref).max().item())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--max-log2", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    print(f"switch point FLOAT32_SOFTMAX_MAX = {FLOAT32_SOFTMAX_MAX}\n")
    print("| logits | n | float32 index_add sum | torch.softmax float32 | segment_softmax |")
    print("|---|---|---|---|---|")
    for name, sd in LOGITS.items():
        for k in range(8, args.max_log2 + 1, 2):
            n = 2 ** k
            index = torch.zeros(n, dtype=torch.long)
            worst = [0.0, 0.0, 0.0]
            for _ in range(args.draws):
                logits = torch.randn(n, generator=g) * sd
                ref = torch.softmax(logits.double(), 0)
                for i, w in enumerate((_softmax(logits, index, 1), torch.softmax(logits, 0),
                                       segment_softmax(logits, index, 1))):
                    worst[i] = max(worst[i], error(w, ref))
            print(f"| {name} | {n} | " + " | ".join(f"{v:.1e}" for v in worst) + " |", flush=True)


if __name__ == "__main__":
    main()
