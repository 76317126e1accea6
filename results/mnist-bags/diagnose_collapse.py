"""Why some MNIST-bags runs end with a low test AUC: retrain grid points and log every epoch.

The committed mean-10 grid has runs that end far below their neighbours (gated, 400 training bags: 0.883 ± 0.193
over 5 repetitions; attention, 500 bags: 0.852 ± 0.140). This retrains points exactly as ``abmil reproduce
mnist-bags`` does (the same Point: seed 0, max_train_bags 500 as in the full grid, 1000 test bags, 20 epochs) and
after each epoch records the training loss (clamped as the loss clamps), the fraction of training bags whose
probability is at the clamp (1e-5 or 1 - 1e-5), and on the wrong side of it, the extreme training probabilities and
the test AUC on the first 300 test bags. One JSON line per repetition (collapse_gated400.jsonl is its output for
``gated 400 0,1,2,3,4``).

    python results/mnist-bags/diagnose_collapse.py gated 400 0,1,2,3,4 --mnist-dir ../shared/data/mnist
"""
import argparse
import json
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from abmil.data.mnist import read_mnist
from abmil.experiments.mnist_bags import Point, point_bags
from abmil.nn.zoo import mnist_bags_model
from abmil.train.fit import fit, predict
from abmil.train.presets import mnist_bags_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("train_bags", type=int)
    ap.add_argument("repeats", help="comma-separated repetition indices")
    ap.add_argument("--mnist-dir", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    images = {s: read_mnist(args.mnist_dir, s) for s in ("train", "test")}
    for r in (int(v) for v in args.repeats.split(",")):
        p = Point(args.model, 10, 2.0, args.train_bags, r, 0, 1000, 20, 500)
        train, test = point_bags(p, images)
        tb = [torch.from_numpy(b) for b in train.bags]
        sb = [torch.from_numpy(b) for b in test.bags]
        torch.manual_seed(p.run_seed)
        model = mnist_bags_model(args.model)
        log = []

        def cb(epoch, _history, m=model):  # fit passes the run's history; the model is this one
            pr = predict(m, tb, batch_size=64)[0].numpy()
            y = train.labels
            loss = float(-np.mean(y * np.log(np.clip(pr, 1e-5, 1 - 1e-5))
                                  + (1 - y) * np.log(np.clip(1 - pr, 1e-5, 1 - 1e-5))))
            clamped = float(np.mean((pr < 1e-5) | (pr > 1 - 1e-5)))
            wrong_clamped = float(np.mean(((pr < 1e-5) & (y == 1)) | ((pr > 1 - 1e-5) & (y == 0))))
            auc = float(roc_auc_score(test.labels[:300], predict(m, sb[:300], batch_size=64)[0].numpy()))
            log.append(dict(epoch=epoch, train_loss=round(loss, 4), clamped=clamped, wrong_clamped=wrong_clamped,
                            test_auc300=round(auc, 4), p_min=float(pr.min()), p_max=float(pr.max())))
            m.train()

        t = time.perf_counter()
        fit(model, tb, torch.as_tensor(train.labels), mnist_bags_config(), seed=p.run_seed, on_epoch_end=cb)
        probs = predict(model, sb, batch_size=64)[0].numpy()
        print(json.dumps(dict(model=args.model, train=args.train_bags, repeat=r,
                              auc=float(roc_auc_score(test.labels, probs)), seconds=time.perf_counter() - t,
                              log=log)), flush=True)


if __name__ == "__main__":
    main()
