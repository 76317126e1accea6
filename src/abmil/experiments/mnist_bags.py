"""Reproduce the paper's MNIST-bags experiment: test AUC vs number of training bags (Figures 1-3, appendix tables).

One *point* = (mean bag size, number of training bags, model, repetition): a model trained on that many training bags
(drawn from MNIST train) and scored by the AUC of its bag probabilities on the test bags (drawn from MNIST test).
Protocol (the paper's MNIST-bags section and its reference code, AMLab-Amsterdam/AttentionDeepMIL): the reference
balanced bag loader (:mod:`abmil.data.mnist_bags`), mean/spread (10, 2), (50, 10), (100, 20), 50-500 training bags,
1000 test bags, 5 repetitions, LeNet-5 models (:func:`abmil.nn.zoo.mnist_bags_model`) trained as the reference code
does (:func:`abmil.train.presets.mnist_bags_config`).

Repetition r of a mean bag size draws its training bags once and uses the first n of them for n training bags (the
loader draws bags one by one, so the sets are nested as in the reference), and its own test bags.

Output directory (every file written atomically; a killed run resumes from the finished points)::

    out_dir/results.json, results.csv, results.md, results.png   rewritten after each finished point
    out_dir/points/{model}__mean{m}__train{n}__rep{r}.json        one point: its settings, AUC, test probabilities
    out_dir/models/{model}__mean{m}__train{n}.safetensors         repetition 0's weights, for ``abmil explain``
"""
from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from abmil.data.mnist import read_mnist
from abmil.data.mnist_bags import PAPER_BAG_SIZES, PAPER_TEST_BAGS, PAPER_TRAIN_BAGS, MNISTBags, make_mnist_bags
from abmil.errors import DataError
from abmil.experiments.runner import (
    UnitCache,
    check_int,
    check_ints,
    check_out_dir,
    check_out_file,
    command_line,
    is_number,
    load_model,
    numbers,
    progress_bar,
    run_pending,
    save_model,
)
from abmil.nn.zoo import ATTENTION_KEYS, MNIST_BAGS_KEYS, create_model
from abmil.report import paper
from abmil.report.results import ResultRow, summarise, write_results
from abmil.train.fit import fit, predict
from abmil.train.presets import mnist_bags_config

__all__ = ["DEFAULT_MODELS", "Point", "bag_spread", "instance_auc", "load_point_model", "point_bags",
           "reproduce_mnist_bags"]

DEFAULT_MODELS: tuple[str, ...] = ("attention", "gated")
POINT_FORMAT = 1  # bump when a point file's content changes meaning
_SPREADS = dict(PAPER_BAG_SIZES)


def bag_spread(bag_mean: int) -> float:
    """The paper's bag-size spread (the loader's normal sd) for a mean bag size; 20% of the mean otherwise."""
    return float(_SPREADS.get(bag_mean, 0.2 * bag_mean))


@dataclass(frozen=True)
class Point:
    """One trained model of the grid and everything that determines its numbers."""

    model: str
    bag_mean: int
    bag_std: float
    train_bags: int
    repeat: int
    seed: int
    test_bags: int
    epochs: int
    max_train_bags: int  # the size of the repetition's nested training set (its first train_bags are used)

    @property
    def key(self) -> str:
        return f"{self.model}__mean{self.bag_mean}__train{self.train_bags}__rep{self.repeat}"

    @property
    def run_seed(self) -> int:
        """torch seed of the model's initial weights and of its bag order."""
        return self.seed * 100_000 + self.repeat * 1000 + self.bag_mean


def point_bags(point: Point, images: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[MNISTBags, MNISTBags]:
    """The point's training bags (the first ``train_bags`` of its repetition's set) and its test bags."""
    def rng(which: int) -> np.random.Generator:
        return np.random.default_rng([point.seed, point.repeat, point.bag_mean, which])

    train = make_mnist_bags(*images["train"], point.max_train_bags, mean_bag_length=point.bag_mean,
                            std_bag_length=point.bag_std, seed=rng(0), split="train")
    n = point.train_bags
    train = MNISTBags(train.bags[:n], train.labels[:n], train.instance_labels[:n], train.digits[:n],
                      train.indices[:n], train.split, train.target)
    test = make_mnist_bags(*images["test"], point.test_bags, mean_bag_length=point.bag_mean,
                           std_bag_length=point.bag_std, seed=rng(1), split="test")
    return train, test


def instance_auc(scores: Sequence[torch.Tensor | None], instance_labels: Sequence[np.ndarray],
                 attention: bool) -> float | None:
    """AUC of the per-instance evidence against the instance labels ("is a 9") over all instances of all bags.

    Attention weights sum to one per bag, so they are scaled by the bag size (1 = a uniform share) to be comparable
    across bags; instance probabilities are used as they are. ``None`` for models without instance scores.
    """
    if not scores or scores[0] is None:
        return None
    s = np.concatenate([sc.numpy() * (len(sc) if attention else 1.0) for sc in scores])
    y = np.concatenate(instance_labels)
    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else None


def _points_cache(out_dir: Path) -> UnitCache:
    """A point file holds its :class:`Point` (as a dict) under "point"."""
    return UnitCache(out_dir / "points", settings_key="point")


def _point_ok(record: dict[str, Any]) -> bool:
    """Does a point file hold every field the results read? (Else it is recomputed.)"""
    return (record.get("format") == POINT_FORMAT and is_number(record.get("auc"))
            and "instance_auc" in record and (record["instance_auc"] is None or is_number(record["instance_auc"]))
            and numbers(record.get("test_probs")))


def _model_path(out_dir: str | Path, model: str, bag_mean: int, train_bags: int) -> Path:
    return Path(out_dir) / "models" / f"{model}__mean{bag_mean}__train{train_bags}.safetensors"


def _train_point(point: Point, images, out_dir: Path) -> dict[str, Any]:
    train, test = point_bags(point, images)
    torch.manual_seed(point.run_seed)
    model = create_model(point.model, family="mnist-bags")
    config = mnist_bags_config(epochs=point.epochs)
    t = time.perf_counter()
    fit(model, [torch.from_numpy(b) for b in train.bags], torch.as_tensor(train.labels), config,
        seed=point.run_seed)
    seconds = time.perf_counter() - t
    probs, scores = predict(model, [torch.from_numpy(b) for b in test.bags], batch_size=64)
    inst = instance_auc(scores, test.instance_labels, attention=point.model in ATTENTION_KEYS)
    record = {"format": POINT_FORMAT, "point": asdict(point), "config": config.to_dict(),
              "auc": float(roc_auc_score(test.labels, probs.numpy())), "instance_auc": inst,
              "test_probs": probs.numpy().round(6).tolist(), "train_seconds": seconds}
    if point.repeat == 0:
        save_model(_model_path(out_dir, point.model, point.bag_mean, point.train_bags), model,
                   {"point": asdict(point)})
    _points_cache(out_dir).write(point.key, record)
    return record


def load_point_model(run_dir: str | Path, model: str, bag_mean: int, train_bags: int):
    """The saved repetition-0 model of a grid point and its :class:`Point` (weights via safetensors only)."""
    path = _model_path(run_dir, model, bag_mean, train_bags)
    if not path.is_file():
        raise FileNotFoundError(f"no saved model {path} (points of repetition 0 save one)")
    net, meta = load_model(path, lambda meta: create_model(model, family="mnist-bags"))
    try:
        point = Point(**meta["point"])
    except KeyError:
        raise DataError("the saved model's metadata lacks 'point' (not a model saved by reproduce mnist-bags?)",
                        path=str(path)) from None
    except TypeError as e:
        raise DataError(f"the saved model's metadata 'point' is malformed ({e})", path=str(path)) from None
    if (point.model, point.bag_mean, point.train_bags) != (model, bag_mean, train_bags):
        raise DataError(f"the saved model's metadata describes {point.model}, mean bag size {point.bag_mean}, "
                        f"{point.train_bags} training bags, not what its file name says", path=str(path))
    return net, point


def _summary_rows(points: Sequence[Point], records: dict[str, dict[str, Any]]) -> list[ResultRow]:
    rows = []
    cells: dict[tuple, list[Point]] = {}
    for p in points:
        if p.key in records:
            cells.setdefault((p.model, p.bag_mean, p.bag_std, p.train_bags), []).append(p)
    for (model, bag_mean, bag_std, n), pts in cells.items():
        extra = {"bag_mean": bag_mean, "bag_std": bag_std, "train_bags": n, "n_repeats": len(pts)}
        aucs = [records[p.key]["auc"] for p in pts]
        row = summarise(aucs, dataset="mnist-bags", model=model, metric="auc", std_over="folds", extra=extra)
        row.paper_mean, row.paper_std = paper.paper_mnist_bags_value(bag_mean, n, model)
        row.paper_mean_confirmed, row.paper_std_confirmed = paper.paper_mnist_bags_confirmation(bag_mean, n, model)
        rows.append(row)
        inst = [records[p.key]["instance_auc"] for p in pts if records[p.key]["instance_auc"] is not None]
        if inst:
            rows.append(summarise(inst, dataset="mnist-bags", model=model, metric="instance_auc", std_over="folds",
                                  extra=extra))
    return rows


def _command(bag_means, train_bags, models, repeats, seed, test_bags, epochs, mnist_dir, out) -> str:
    """The CLI command that reproduces these settings (for results.md)."""
    return command_line(["abmil", "reproduce", "mnist-bags"], [
        ("--bag-means", bag_means), ("--train-bags", train_bags), ("--models", models), ("--repeats", repeats),
        ("--seed", seed), ("--test-bags", test_bags), ("--epochs", epochs), ("--mnist-dir", mnist_dir),
        ("--out", out)])


def reproduce_mnist_bags(mnist_dir: str | Path, *, bag_means: Sequence[int] = (10, 50, 100),
                         train_bags: Sequence[int] = PAPER_TRAIN_BAGS, models: Sequence[str] = DEFAULT_MODELS,
                         repeats: int = 5, seed: int = 0, test_bags: int = PAPER_TEST_BAGS, epochs: int = 20,
                         out_dir: str | Path = "runs/mnist-bags", progress: bool = True,
                         jobs: int = 1) -> list[ResultRow]:
    """Train and test every grid point not already in ``out_dir``; write results.{json,csv,md,png}.

    Everything is validated and MNIST is read (checksums verified) before anything is written.
    """
    bag_means = check_ints(bag_means, "bag_means", 1)
    train_bags = check_ints(train_bags, "train_bags", 2)
    models = list(dict.fromkeys(models))
    bad = [m for m in models if m not in MNIST_BAGS_KEYS]
    if not models or bad:
        raise ValueError(f"unknown MNIST-bags model(s) {bad}: expected some of {', '.join(MNIST_BAGS_KEYS)}")
    repeats, seed = check_int(repeats, "repeats", 1), check_int(seed, "seed", 0)
    test_bags, epochs, jobs = check_int(test_bags, "test_bags", 2), check_int(epochs, "epochs", 1), check_int(
        jobs, "jobs", 1)
    out = check_out_dir(out_dir)
    images = {split: read_mnist(mnist_dir, split) for split in ("train", "test")}
    points = [Point(m, bm, bag_spread(bm), n, r, seed, test_bags, epochs, max(train_bags))
              for bm in bag_means for n in train_bags for m in models for r in range(repeats)]
    cache = _points_cache(out)
    records: dict[str, dict[str, Any]] = {}
    for p in points:
        rec = cache.read(p.key, asdict(p), valid=_point_ok)
        if rec is not None:
            records[p.key] = rec
    todo = [p for p in points if p.key not in records]
    command = _command(bag_means, train_bags, models, repeats, seed, test_bags, epochs, mnist_dir, out)

    def publish() -> list[ResultRow]:
        rows = _summary_rows(points, records)
        if rows:
            write_results(out, rows, title="MNIST-bags: test AUC vs number of training bags", command=command,
                          seed=seed, table_layout="mnist-bags")
            from abmil.report.plots import plot_mnist_bags

            plot_mnist_bags(rows, out / "results.png")
        return rows

    cache.create()
    bar = progress_bar(len(todo), enabled=progress and bool(todo), desc="MNIST-bags points", unit="point")
    try:
        run_pending(todo, lambda p: _train_point(p, images, out), records=records, publish=publish, jobs=jobs,
                    threads=1, cost=lambda p: p.bag_mean * p.train_bags,
                    on_done=None if bar is None else lambda p, r: bar.update(1))
    finally:
        if bar is not None:
            bar.close()
    return publish()


def explain_mnist_bags(run_dir: str | Path, mnist_dir: str | Path, *, model: str = "attention",
                       bag_mean: int | None = None, train_bags: int | None = None, bag: int | None = None,
                       out: str | Path | None = None, max_shown: int = 12) -> str:
    """Draw one test bag of a grid point (repetition 0) with each digit's attention, and measure over all its test
    bags how well attention finds the 9s. Returns a short report; the PNG goes to ``out``.

    Defaults: the run's smallest mean bag size, its largest number of training bags, and the first positive test
    bag of at most ``max_shown`` instances.
    """
    run_dir = Path(run_dir)
    if model not in MNIST_BAGS_KEYS:
        raise ValueError(f"unknown MNIST-bags model {model!r}: expected one of {', '.join(MNIST_BAGS_KEYS)}")
    for name, value in (("bag_mean", bag_mean), ("train_bags", train_bags), ("bag", bag)):
        if value is not None:
            check_int(value, name, 0)
    if out is not None:
        out = check_out_file(out)
    pattern = re.compile(rf"{re.escape(model)}__mean(\d+)__train(\d+)")
    grid = sorted((int(m[1]), int(m[2])) for p in (run_dir / "models").glob(f"{model}__mean*__train*.safetensors")
                  if (m := pattern.fullmatch(p.stem)))
    if not grid:
        raise FileNotFoundError(f"{run_dir}/models holds no saved {model!r} model: run `abmil reproduce mnist-bags "
                                f"--models {model} --out {run_dir}` first")
    bag_mean = min(m for m, _ in grid) if bag_mean is None else bag_mean
    if train_bags is None:
        sizes = [n for m, n in grid if m == bag_mean]
        if not sizes:
            raise FileNotFoundError(f"{run_dir}/models holds no saved {model!r} model of mean bag size {bag_mean} "
                                    f"(saved: {', '.join(sorted({str(m) for m, _ in grid}))})")
        train_bags = max(sizes)
    net, point = load_point_model(run_dir, model, bag_mean, train_bags)
    images = {split: read_mnist(mnist_dir, split) for split in ("train", "test")}
    _, test = point_bags(point, images)
    probs, scores = predict(net, [torch.from_numpy(b) for b in test.bags], batch_size=64)
    if scores[0] is None:
        raise ValueError(f"model {model!r} has no instance scores to draw")
    attention = model in ATTENTION_KEYS
    if bag is None:
        bag = next((i for i in range(len(test)) if test.labels[i] == 1 and len(test.bags[i]) <= max_shown), 0)
    if not 0 <= bag < len(test):
        raise ValueError(f"--bag must be in 0..{len(test) - 1}, got {bag}")
    from abmil.report.plots import plot_bag_attention

    raw = images["test"][0][test.indices[bag]]
    name = "attention weight" if attention else "instance probability"
    default = run_dir / f"explain_{model}__mean{bag_mean}__train{train_bags}__bag{bag}.png"
    out = out if out is not None else check_out_file(default)
    plot_bag_attention(raw, scores[bag].numpy(), test.instance_labels[bag] == 1, out, score_name=name,
                       title=f"{model}, mean bag size {bag_mean}, {train_bags} training bags: test bag {bag} "
                             f"(label {int(test.labels[bag])}, predicted P(positive) = {float(probs[bag]):.3f})")
    inst = instance_auc(scores, test.instance_labels, attention=attention)
    pos = [i for i in range(len(test)) if test.labels[i] == 1]
    top_is_nine = np.mean([test.instance_labels[i][int(torch.argmax(scores[i]))] == 1 for i in pos])
    return "\n".join([
        f"test bag {bag}: " + ", ".join(f"{d}:{s:.3f}" for d, s in zip(test.digits[bag], scores[bag].tolist())),
        f"over the {len(test)} test bags: bag AUC {roc_auc_score(test.labels, probs.numpy()):.3f}; "
        f"{name} vs 'is a 9' instance AUC {inst:.3f} (weights scaled by bag size)" if attention else
        f"over the {len(test)} test bags: bag AUC {roc_auc_score(test.labels, probs.numpy()):.3f}; "
        f"{name} vs 'is a 9' instance AUC {inst:.3f}",
        f"in {100 * top_is_nine:.1f}% of the {len(pos)} positive test bags the top-scored instance is a 9",
        f"wrote {out}",
    ])
