"""One MNIST-bags grid point trained the reference code's way and abmil's way, side by side in one run.

Reference way (as AMLab-Amsterdam/AttentionDeepMIL's main.py trains): one repetition after another, a DataLoader with
batch_size=1 and shuffle, the bag's leading batch dimension squeezed away, a softmax over the bag, a second forward
pass per bag for the training error, torch.optim.Adam (default implementation), torch's default thread count.
abmil way, same protocol (one bag per step, Adam 5e-4, weight decay 1e-4, 20 epochs, same bags): ``abmil.train.fit``
(channels-last LeNet, fused Adam, no second forward) with the repetitions split over worker processes, one core each.
Reported separately: abmil's mini-batch mode (B packed bags per step), a documented departure from the paper.

    python benchmarks/mnist_bags_speed.py --mnist-dir DIR [--bag-mean 10] [--train-bags 100] [--repeats 4]
                                          [--test-bags 500] [--jobs 2] [--batch-sizes 4]

Prints each way's test AUC (mean over repetitions) and time, and the speed-up ratios.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

# Both ways get passive OpenMP waiting (as the abmil CLI sets it): spinning threads on shared cores would slow the
# reference's 2-thread default far more than its own code deserves.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader

from abmil.data.mnist import read_mnist
from abmil.experiments.mnist_bags import Point, bag_spread, point_bags
from abmil.nn.zoo import mnist_bags_model
from abmil.train.fit import fit, predict
from abmil.train.presets import mnist_bags_config
from reference_data import BagList  # benchmarks/, beside this script


class ReferenceAttention(nn.Module):
    """The reference code's attention MIL network, written its way (one bag, no packing)."""

    def __init__(self):
        super().__init__()
        self.part1 = nn.Sequential(nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Conv2d(20, 50, 5), nn.ReLU(),
                                   nn.MaxPool2d(2, 2))
        self.part2 = nn.Sequential(nn.Linear(800, 500), nn.ReLU())
        self.attention = nn.Sequential(nn.Linear(500, 128), nn.Tanh(), nn.Linear(128, 1))
        self.classifier = nn.Sequential(nn.Linear(500, 1), nn.Sigmoid())

    def forward(self, x):
        h = self.part2(self.part1(x.squeeze(0)).view(-1, 800))
        a = F.softmax(self.attention(h).t(), dim=1)
        prob = self.classifier(a @ h)
        return prob, (prob >= 0.5).float(), a


def reference_run(point: Point, images) -> float:
    train, test = point_bags(point, images)
    torch.manual_seed(point.run_seed)
    model = ReferenceAttention()
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, betas=(0.9, 0.999), weight_decay=1e-4)
    loader = DataLoader(BagList([torch.from_numpy(b) for b in train.bags], torch.as_tensor(train.labels).float()),
                        batch_size=1, shuffle=True)
    for _ in range(point.epochs):
        model.train()
        for x, y in loader:
            opt.zero_grad()
            prob, _, _ = model(x)
            prob = prob.clamp(1e-5, 1 - 1e-5)
            loss = -(y * prob.log() + (1 - y) * (1 - prob).log())
            _, y_hat, _ = model(x)  # the reference's calculate_classification_error
            _ = 1.0 - y_hat.eq(y).float().mean().item()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        probs = [model(torch.from_numpy(b).unsqueeze(0))[0].item() for b in test.bags]
    return float(roc_auc_score(test.labels, probs))


def abmil_run(point: Point, images, batch_size: int = 1) -> float:
    train, test = point_bags(point, images)
    torch.manual_seed(point.run_seed)
    model = mnist_bags_model(point.model)
    fit(model, [torch.from_numpy(b) for b in train.bags], torch.as_tensor(train.labels),
        mnist_bags_config(epochs=point.epochs, batch_size=batch_size), seed=point.run_seed)
    probs, _ = predict(model, [torch.from_numpy(b) for b in test.bags], batch_size=64)
    return float(roc_auc_score(test.labels, probs.numpy()))


_IMAGES: dict = {}


def _abmil_worker(args):
    point, batch_size = args
    torch.set_num_threads(1)
    return abmil_run(point, _IMAGES, batch_size)


def abmil_runs(points, jobs: int, batch_size: int) -> list[float]:
    if jobs == 1:  # one core, as each worker uses
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return [abmil_run(p, _IMAGES, batch_size) for p in points]
        finally:
            torch.set_num_threads(threads)
    with mp.get_context("fork").Pool(jobs) as pool:
        return pool.map(_abmil_worker, [(p, batch_size) for p in points], chunksize=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mnist-dir", required=True)
    ap.add_argument("--bag-mean", type=int, default=10)
    ap.add_argument("--train-bags", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--test-bags", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--batch-sizes", default="4")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="the reference's torch threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    _IMAGES.update({s: read_mnist(args.mnist_dir, s) for s in ("train", "test")})
    points = [Point("attention", args.bag_mean, bag_spread(args.bag_mean), args.train_bags, r, 0, args.test_bags,
                    args.epochs, args.train_bags) for r in range(args.repeats)]
    print(f"MNIST-bags, attention, mean bag size {args.bag_mean}, {args.train_bags} training bags, {args.epochs} "
          f"epochs, {args.repeats} repetitions, {args.test_bags} test bags; reference threads: "
          f"{torch.get_num_threads()}")

    t = time.perf_counter()
    ref = [reference_run(p, _IMAGES) for p in points]
    t_ref = time.perf_counter() - t
    print(f"reference loop             : AUC {np.mean(ref):.3f} ± {np.std(ref):.3f}  {t_ref:7.1f} s")

    for jobs in sorted({1, args.jobs}):
        t = time.perf_counter()
        auc = abmil_runs(points, jobs, 1)
        dt = time.perf_counter() - t
        print(f"abmil, batch 1, {jobs} process(es): AUC {np.mean(auc):.3f} ± {np.std(auc):.3f}  {dt:7.1f} s  "
              f"speed-up x{t_ref / dt:.1f}  (same protocol)")
    for bs in [int(b) for b in args.batch_sizes.split(",") if b]:
        t = time.perf_counter()
        auc = abmil_runs(points, args.jobs, bs)
        dt = time.perf_counter() - t
        print(f"abmil, {bs} bags/step, {args.jobs} proc : AUC {np.mean(auc):.3f} ± {np.std(auc):.3f}  {dt:7.1f} s  "
              f"speed-up x{t_ref / dt:.1f}  (departure: {bs} packed bags per step, same lr and epochs)")


if __name__ == "__main__":
    main()
