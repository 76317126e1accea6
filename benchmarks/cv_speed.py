"""Full Musk1 CV protocol (10 folds x 5 repeats = 50 runs), gated attention: the reference
code's way versus abmil's, side by side in one run.

Reference way (as AMLab-Amsterdam/AttentionDeepMIL's main.py trains): one run after another, a
DataLoader with batch_size=1 and shuffle, the bag's leading batch dimension squeezed away, a
softmax over the bag, a second forward pass per bag for the training error, torch.optim.SGD.
abmil way: the same runs (same folds, seeds, optimizer settings, epochs) with the direct engine
(one run after another, backward passes written out, torch's fused SGD kernel) and with the stacked
engine (all runs at once as batched matmuls), on 1 and 2 worker processes; both keep each run's
semantics (its bags, its order, its dropout masks, its optimizer steps: tests/test_direct.py,
tests/test_stacked.py). Reported separately: the mini-batch mode (B packed bags per step — a
departure from the paper's batch size 1).

    python benchmarks/cv_speed.py [--epochs 50] [--repeats 5] [--batch-sizes 10,100] [--engines direct,stacked]

Prints both mean accuracies and the speed-up ratios. Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from abmil.data.benchmarks import load_benchmark
from abmil.nn.zoo import benchmark_model
from abmil.train.cv import cv_splits, fold_standardiser, run_cv
from abmil.train.presets import benchmark_config
from reference_data import BagList  # benchmarks/, beside this script


class ReferenceGatedMLP(nn.Module):
    """Gated attention MIL written the way the reference code writes it (one bag, no packing)."""

    def __init__(self, d: int, dropout: float = 0.2):
        super().__init__()
        self.feature_extractor = nn.Sequential(
            nn.Linear(d, 256), nn.ReLU(), nn.Dropout(dropout), nn.Linear(256, 128), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(128, 64), nn.ReLU(), nn.Dropout(dropout))
        self.attention_V = nn.Sequential(nn.Linear(64, 64), nn.Tanh())
        self.attention_U = nn.Sequential(nn.Linear(64, 64), nn.Sigmoid())
        self.attention_w = nn.Linear(64, 1)
        self.classifier = nn.Sequential(nn.Linear(64, 1), nn.Sigmoid())

    def forward(self, x):
        x = x.squeeze(0)
        h = self.feature_extractor(x)
        a = self.attention_w(self.attention_V(h) * self.attention_U(h))
        a = F.softmax(torch.transpose(a, 1, 0), dim=1)
        y_prob = self.classifier(torch.mm(a, h))
        return y_prob, torch.ge(y_prob, 0.5).float(), a


def reference_cv(ds, splits, cfg) -> np.ndarray:
    accs = []
    for s in splits:
        torch.manual_seed(s.seed)
        mu, sd = fold_standardiser(ds.bags, s.train)
        bags = [(torch.as_tensor(b) - mu) / sd for b in ds.bags]
        labels = torch.as_tensor(ds.labels, dtype=torch.float32)
        model = ReferenceGatedMLP(ds.n_features)
        decay = [p for p in model.parameters() if p.dim() >= 2]
        other = [p for p in model.parameters() if p.dim() < 2]
        opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other}],
                              lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
        loader = DataLoader(BagList([bags[i] for i in s.train], labels[s.train]), batch_size=1, shuffle=True)
        step = 0
        for _ in range(cfg.epochs):
            model.train()
            for x, y in loader:
                for g in opt.param_groups:
                    g["lr"] = cfg.lr_at(step)
                opt.zero_grad()
                y_prob, _, _ = model(x)
                y_prob = torch.clamp(y_prob, min=1e-5, max=1.0 - 1e-5)
                loss = -1.0 * (y * torch.log(y_prob) + (1.0 - y) * torch.log(1.0 - y_prob))
                _, y_hat, _ = model(x)  # the reference's calculate_classification_error
                _ = 1.0 - y_hat.eq(y).cpu().float().mean().item()
                loss.backward()
                opt.step()
                step += 1
        model.eval()
        with torch.no_grad():
            pred = [model(bags[i].unsqueeze(0))[1].item() for i in s.test]
        accs.append(np.mean(np.array(pred) == ds.labels[s.test]))
    return np.array(accs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--batch-sizes", default="10,100")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--engines", default="direct,stacked", help="abmil engines to time at batch size 1")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_benchmark("musk1")
    cfg = benchmark_config("musk1", "gated", epochs=args.epochs)
    splits = cv_splits(ds.labels, folds=args.folds, repeats=args.repeats, seed=0)
    n_steps = sum(len(s.train) for s in splits) * cfg.epochs
    print(f"Musk1, gated attention, {len(splits)} runs x {cfg.epochs} epochs = {n_steps} bag-steps, "
          f"{args.threads} thread(s)")

    t = time.perf_counter()
    ref = reference_cv(ds, splits, cfg)
    t_ref = time.perf_counter() - t
    print(f"reference loop      : acc {ref.mean():.3f}  {t_ref:8.1f} s  {t_ref / n_steps * 1e6:7.0f} us/bag-step")

    def factory():
        return benchmark_model("gated", ds.n_features)

    for engine in [e for e in args.engines.split(",") if e]:
        for jobs in (1, 2):
            t = time.perf_counter()
            res = run_cv(ds.bags, ds.labels, factory, cfg, folds=args.folds, repeats=args.repeats, seed=0,
                         n_jobs=jobs, engine=engine)
            t_ab = time.perf_counter() - t
            acc = res.accuracies(ds.labels)
            print(f"abmil {engine:<7}, batch size 1, {jobs} process(es): acc {acc.mean():.3f}  {t_ab:8.1f} s  "
                  f"{t_ab / n_steps * 1e6:7.0f} us/bag-step  speed-up x{t_ref / t_ab:.1f}  (same runs, same steps)")
    for bs in [int(b) for b in args.batch_sizes.split(",") if b]:
        mcfg = benchmark_config("musk1", "gated", epochs=args.epochs, batch_size=bs)
        t = time.perf_counter()
        res = run_cv(ds.bags, ds.labels, factory, mcfg, folds=args.folds, repeats=args.repeats, seed=0, n_jobs=2,
                     engine="stacked")
        dt = time.perf_counter() - t
        acc = res.accuracies(ds.labels)
        print(f"abmil mini-batch {bs:>3}, 2 processes: acc {acc.mean():.3f}  {dt:8.1f} s  speed-up x{t_ref / dt:.1f}"
              f"  (departure: {bs} bags per step, {cfg.epochs} epochs, same lr)")


if __name__ == "__main__":
    main()
