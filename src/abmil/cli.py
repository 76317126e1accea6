"""Command line: argument parsing and printing only; the work is done in :mod:`abmil.experiments`.

    abmil reproduce benchmarks [--datasets musk1,...] [--models attention,gated,...] [--folds 10] [--repeats 5]
                               [--seed 0] [--epochs N] [--batch-size 1] [--engine auto|direct|stacked|sequential]
                               [--data musk1=path.mat,...] [--out DIR] [--no-progress]
    abmil reproduce mnist-bags [--bag-means 10,50,100] [--train-bags 50,...,500] [--models attention,gated]
                               [--repeats 5] [--mnist-dir DIR] [--download] [--out DIR] [--jobs N]
    abmil explain mnist-bags --run DIR [--model attention] [--bag-mean 10] [--train-bags N] [--bag K] [--out PNG]
    abmil demo [--out DIR]
    abmil train --manifest CSV [--features DIR] --out RUN [--pooling gated|attention] [--epochs N] [--val-split F]
                [--lr] [--seed] [--batch-size B | --batch-instances N] [--device cpu] [--bf16] [--resume]
                [--folds K [--repeats R] [--group-by site] [--seeds N]]
                [--bag-level slide|case] [--patience N] [--monitor val_loss|val_error|val_auc]
                [--class-weights balanced] [--sampler shuffle|balanced]
                [--task classification|survival|regression|multilabel|multitarget] [--targets A,B,...]
                [--loss nll|cox|mse|huber] [--n-bins K]
    abmil predict --run RUN --manifest CSV [--features DIR] --out preds.csv [--fold R,F]
    abmil predict --model EXPORT --manifest CSV [--features DIR] --out preds.csv
    abmil export --run RUN --format torchscript|onnx|wsinfer-mil --out DIR [--fold R,F | --ensemble]
                 [--feature-extractor NAME] [--patch-size-um UM] [--evaluation EVAL_DIR]
    abmil heatmap --run RUN --slide FILE.h5 [--wsi SLIDE | --thumbnail IMG --downsample K] --out heat.png
    abmil heatmap --run RUN --manifest CSV [--features DIR] [--slides DIR] --out DIR [--max-size PX]
                  [--layout overlay|side-by-side] [--tissue] [--top-k K] [--geojson]
    abmil compare RUN_A RUN_B [...] --out DIR [--manifest CSV --by site] [--bootstrap 1000] [--seed 0]
    abmil evaluate --predictions preds.csv [--manifest CSV] [--labels-from auto|predictions|manifest]
                   [--threshold T | --run RUN] [--bootstrap 1000] [--seed 0] [--times T1,T2] [--risk-groups 2|3]
                   [--by site] --out DIR

Bad input (unknown names, a malformed data file or saved model, a non-finite hyperparameter, an --out that is a
file, ...) prints one line ``abmil: error: ...`` on stderr naming the file, flag or bag, and exits with status 2
before anything is written; so does an output that cannot be written (no permission, a full disk), naming the file.

Every default is read from the library (:func:`default_of`: the config dataclass or the function a command calls,
and the library's constants), so the command and the API cannot disagree. The parser reads them with
:func:`abmil._light.library_names`: the modules' definitions run from their source without torch, numpy or
scikit-learn, so ``--help`` answers at once; those are imported once a command runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

# OMP_WAIT_POLICY=PASSIVE (idle OpenMP threads must not spin) is set by importing abmil, before any torch import.
PROG = "abmil"
_DEFAULT_OUT = "runs/benchmarks"


def default_of(owner: type | Callable, name: str) -> Any:
    """The library's default for ``name``: a field of the dataclass ``owner``, or a keyword of the function ``owner``.

    Flags take their defaults from here rather than restating them, so a changed default in the library is the
    CLI's too. KeyError when ``owner`` has no such field or parameter, or it has no default.
    """
    if dataclasses.is_dataclass(owner):
        field = {f.name: f for f in dataclasses.fields(owner)}[name]
        if field.default_factory is not dataclasses.MISSING:
            return field.default_factory()
        default = field.default
    else:
        default = inspect.signature(owner).parameters[name].default
    if default is dataclasses.MISSING or default is inspect.Parameter.empty:
        raise KeyError(f"{getattr(owner, '__qualname__', owner)}: {name!r} has no default")
    return default


def _joined(values: Iterable[Any]) -> str:
    """A sequence default as the flag would be written: ``10,50,100``."""
    return ",".join(map(str, values))


def _slide_training(*, light: bool = False) -> Any:
    """The library module behind ``abmil train`` (WSIConfig, train_feature_model): named here only, so that
    renaming it touches one line. ``light``: its definitions read without torch, for the parser's defaults
    (:mod:`abmil._light`)."""
    if light:
        from types import SimpleNamespace

        from abmil._light import library_names

        names = ("WSIConfig", "train_feature_model", "MONITORS", "SAMPLERS")
        return SimpleNamespace(**dict(zip(names, library_names("abmil.slides.train", *names))))
    import abmil.slides.train as module

    return module


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _data_paths(values: Sequence[str] | None) -> dict[str, str]:
    """``["musk1=a.mat,fox=b.mat", "tiger=c.mat"]`` -> {name: path}; ValueError on a malformed entry."""
    out: dict[str, str] = {}
    for value in values or ():
        for item in _csv_list(value):
            name, sep, path = item.partition("=")
            name, path = name.strip(), path.strip()
            if not sep or not name or not path:
                raise ValueError(f"--data expects NAME=PATH entries (e.g. musk1=musk1.mat), got {item!r}")
            if name in out and out[name] != path:
                raise ValueError(f"--data gives two files for {name!r}: {out[name]} and {path}")
            out[name] = path
    return out


def build_parser() -> argparse.ArgumentParser:
    # The library's names, read without importing torch (abmil._light): --help answers at once.
    from abmil import __version__
    from abmil._light import library_names as lib

    (MAX_WHITE_FRACTION,) = lib("abmil.data.patches", "MAX_WHITE_FRACTION")
    DEFAULT_DATASETS, DEFAULT_EPOCHS, DEFAULT_MODELS, demo, reproduce_benchmarks = lib(
        "abmil.experiments.benchmarks", "DEFAULT_DATASETS", "DEFAULT_EPOCHS", "DEFAULT_MODELS", "demo",
        "reproduce_benchmarks")
    DATASETS, explain_histology, reproduce_histology = lib(
        "abmil.experiments.histology", "DATASETS", "explain_histology", "reproduce_histology")
    bag_spread, explain_mnist_bags, reproduce_mnist_bags = lib(
        "abmil.experiments.mnist_bags", "bag_spread", "explain_mnist_bags", "reproduce_mnist_bags")
    (MNIST_BAGS_KEYS,) = lib("abmil.nn.zoo", "MNIST_BAGS_KEYS")
    (BAG_METRICS,) = lib("abmil.report.metrics", "BAG_METRICS")
    (ENGINES,) = lib("abmil.train.engines", "ENGINES")
    BENCHMARK_PRESETS, histology_config = lib("abmil.train.presets", "BENCHMARK_PRESETS", "histology_config")

    parser = argparse.ArgumentParser(
        prog=PROG, description="Attention-based deep multiple-instance learning (Ilse et al., ICML 2018).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # reproduce <experiment>: one sub-command per table/figure of the paper (mnist-bags, histology: later).
    reproduce = commands.add_parser("reproduce", help="reproduce one of the paper's experiments",
                                    description="Reproduce one of the paper's experiments.")
    experiments = reproduce.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    bench = experiments.add_parser(
        "benchmarks", help="Table 1: Musk1, Musk2, Fox, Tiger, Elephant under 10-fold CV x 5",
        description="Table 1 of the paper: the classic MIL benchmarks, k-fold CV repeated. Writes "
                    "OUT/results.{json,csv,md} after every finished (dataset, model) cell and OUT/cells/*.json; "
                    "rerunning with the same OUT and settings skips the finished cells.")
    bench_default = functools.partial(default_of, reproduce_benchmarks)
    bench.add_argument("--datasets", type=_csv_list, default=bench_default("datasets"), metavar="A,B,...",
                       help=f"comma-separated dataset names (default: {_joined(DEFAULT_DATASETS)}; with --data "
                            "and no --datasets: the datasets named in --data)")
    bench.add_argument("--models", type=_csv_list, default=list(bench_default("models")), metavar="A,B,...",
                       help=f"comma-separated model keys (default: {_joined(DEFAULT_MODELS)})")
    _cv_args(bench, bench_default)
    bench.add_argument("--preset", choices=BENCHMARK_PRESETS, default=bench_default("preset"),
                       help="training recipe: wang (Wang et al.'s code, 50 epochs, last epoch kept; default) or "
                            "supplement (the paper's supplement as cited by MILFormer: Xavier init, per-dataset SGD "
                            "settings, 40 epochs, epoch of lowest validation error then loss kept, 20%% of each "
                            "run's training folds held out)")
    bench.add_argument("--epochs", type=int, default=bench_default("epochs"),
                       help=f"training epochs (default: the preset's; {DEFAULT_EPOCHS} for wang)")
    bench.add_argument("--batch-size", type=int, default=bench_default("batch_size"),
                       help="bags per optimizer step (default %(default)s, the paper's)")
    bench.add_argument("--engine", choices=ENGINES, default=bench_default("engine"),
                       help="direct: runs one by one, backward passes written out (MLP models, batch size 1); "
                            "stacked: all runs of a cell at once; sequential: one by one with autograd; "
                            "auto: direct where it applies, else stacked. Same numbers (default %(default)s)")
    bench.add_argument("--jobs", type=int, default=bench_default("jobs"),
                       help="worker processes, one CPU core each (default %(default)s). Same numbers")
    bench.add_argument("--metrics", type=_csv_list, default=None, metavar="A,B,...",
                       help=f"bag metrics from each test fold, some of {', '.join(BAG_METRICS)} (default "
                            f"{_joined(bench_default('metrics'))}: Table 1's layout; more: one methods x metrics "
                            "table per dataset)")
    bench.add_argument("--data", action="append", default=None, metavar="NAME=PATH[,NAME=PATH]",
                       help="read dataset NAME from a .csv/.mat(.gz) file instead of the shipped copy "
                            "(repeatable)")
    bench.add_argument("--out", default=_DEFAULT_OUT, metavar="DIR", help="output directory (default %(default)s)")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    bench.set_defaults(handler=_reproduce_benchmarks)

    mnist = experiments.add_parser(
        "mnist-bags", help="Figures 1-3: MNIST-bags, test AUC vs number of training bags",
        description="The paper's MNIST-bags grid (bags holding a 9 are positive): test AUC per (mean bag size, "
                    "training bags, model), repeated. Writes OUT/results.{json,csv,md,png} after every finished point "
                    "and OUT/points/*.json; rerunning with the same OUT and settings skips the finished points.")
    mnist_default = functools.partial(default_of, reproduce_mnist_bags)
    bag_means = list(mnist_default("bag_means"))
    mnist.add_argument("--bag-means", type=_int_list, default=bag_means, metavar="A,B,...",
                       help=f"mean bag sizes (default {_joined(bag_means)}; spreads "
                            f"{_joined(f'{bag_spread(m):g}' for m in bag_means)} as the paper)")
    mnist.add_argument("--train-bags", type=_int_list, default=list(mnist_default("train_bags")),
                       metavar="A,B,...",
                       help=f"numbers of training bags (default {_joined(mnist_default('train_bags'))})")
    mnist.add_argument("--models", type=_csv_list, default=list(mnist_default("models")), metavar="A,B,...",
                       help=f"model keys (default {_joined(mnist_default('models'))}; also "
                            f"{', '.join(k for k in MNIST_BAGS_KEYS if k not in mnist_default('models'))})")
    mnist.add_argument("--repeats", type=int, default=mnist_default("repeats"),
                       help="repetitions (default %(default)s)")
    mnist.add_argument("--seed", type=int, default=mnist_default("seed"),
                       help="seed of the bags and the runs (default %(default)s)")
    mnist.add_argument("--test-bags", type=int, default=mnist_default("test_bags"),
                       help="test bags per repetition (default %(default)s)")
    mnist.add_argument("--epochs", type=int, default=mnist_default("epochs"),
                       help="training epochs (default %(default)s, the reference code's)")
    _mnist_dir_args(mnist)
    mnist.add_argument("--jobs", type=int, default=mnist_default("jobs"),
                       help="worker processes, one CPU core each (default %(default)s)")
    mnist.add_argument("--out", default=str(mnist_default("out_dir")), metavar="DIR",
                       help="output directory (default %(default)s)")
    mnist.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    mnist.set_defaults(handler=_reproduce_mnist_bags)

    histo = experiments.add_parser(
        "histology", help="Tables 2-3: Breast (UCSB) / Colon (Warwick) H&E images, 10-fold CV x 5",
        description="Tables 2-3 of the paper: a patch CNN with instance/embedding max/mean, attention or gated "
                    "pooling, trained per fold with H&E/flip augmentation, a 20% validation split and early "
                    "stopping; accuracy, precision, recall, F-score, AUC per fold (colon: also attention vs the "
                    "epithelial-nucleus labels). Writes OUT/results.{json,csv,md} when a model's folds are all "
                    "done, OUT/units/*.json after every fold and OUT/models/*.safetensors (fold 0 of repeat 0); "
                    "rerunning with the same OUT and settings skips the finished folds.")
    histo_default = functools.partial(default_of, reproduce_histology)
    histo.add_argument("--dataset", required=True, choices=DATASETS,
                       help="breast: UCSB Bisque images, 32x32 grid patches; colon: Warwick CRCHistoPhenotypes "
                            "Classification folders, 27x27 patches on every annotated nucleus")
    histo.add_argument("--data-dir", required=True, metavar="DIR",
                       help="the Bisque (breast) or Classification (colon) folder, or the folder holding it")
    histo.add_argument("--models", type=_csv_list, default=list(histo_default("models")), metavar="A,B,...",
                       help=f"model keys (default all six: {_joined(histo_default('models'))})")
    _cv_args(histo, histo_default)
    histo.add_argument("--epochs", type=int, default=histo_default("epochs"),
                       help="cap on training epochs; early stopping usually ends a fold sooner (default %(default)s)")
    histo.add_argument("--patience", type=int, default=histo_default("patience"),
                       help="stop after this many epochs without a better validation score (default %(default)s)")
    histo.add_argument("--lr", type=float, default=histo_default("lr"),
                       help=f"Adam's learning rate (default {default_of(histology_config, 'lr'):g})")
    histo.add_argument("--weight-decay", type=float, default=histo_default("weight_decay"),
                       help=f"L2 weight decay on every parameter (default "
                            f"{default_of(histology_config, 'weight_decay'):g}; one third-party code used 5e-3)")
    histo.add_argument("--no-augment", action="store_true", help="train without augmentation")
    histo.add_argument("--stain-normalize", action="store_true",
                       help="Reinhard-normalise each patch's Lab colours to a fixed H&E target, in training and "
                            "testing (a third-party code's step; not in the paper's known protocol)")
    histo.add_argument("--max-white-fraction", type=float, default=histo_default("max_white_fraction"), metavar="F",
                       help="breast: drop a grid tile as background when at least this share of its pixels is white "
                            f"(default {MAX_WHITE_FRACTION:g}, the paper's rule as far as it is known); heatmaps of "
                            "the run use it too")
    histo.add_argument("--jobs", type=int, default=histo_default("jobs"),
                       help="worker processes, one CPU core each (default %(default)s)")
    histo.add_argument("--keep-models", action="store_true",
                       help="save every fold's weights (OUT/models/<model>__rep<r>__fold<f>.safetensors, ~5 MB each), "
                            "not only fold 0 of repeat 0's; `abmil heatmap --repeat R --fold F` uses them")
    histo.add_argument("--out", default=None, metavar="DIR", help="output directory (default runs/histology-DATASET)")
    histo.add_argument("--status", action="store_true",
                       help="train nothing: print each model's finished folds (of these settings in --out), their "
                            "mean metrics and time per fold")
    histo.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    histo.set_defaults(handler=_reproduce_histology)

    explain = commands.add_parser("explain", help="draw what a trained model attends to",
                                  description="Draw a trained model's attention on the data it was tested on.")
    explainers = explain.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    ex_mnist = explainers.add_parser(
        "mnist-bags", help="a test bag's digits with their attention weights, and how well attention finds the 9s",
        description="Draw one test bag's digits in a row with the attention weight under each (PNG) and report, over "
                    "all test bags, the AUC of attention against 'is a 9'. Uses the repetition-0 model of a point "
                    "of an `abmil reproduce mnist-bags` run.")
    ex_mnist.add_argument("--run", required=True, metavar="DIR", help="the --out directory of reproduce mnist-bags")
    ex_mnist.add_argument("--model", default=default_of(explain_mnist_bags, "model"),
                          help="model key (default %(default)s)")
    ex_mnist.add_argument("--bag-mean", type=int, default=None, help="mean bag size (default: the run's smallest)")
    ex_mnist.add_argument("--train-bags", type=int, default=None, help="training bags (default: the run's largest)")
    ex_mnist.add_argument("--bag", type=int, default=None,
                          help="test bag index (default: the first positive bag of at most "
                               f"{default_of(explain_mnist_bags, 'max_shown')} instances)")
    _mnist_dir_args(ex_mnist)
    ex_mnist.add_argument("--out", default=None, metavar="PNG", help="output PNG (default RUN/explain_<point>.png)")
    ex_mnist.set_defaults(handler=_explain_mnist_bags)

    ex_histo = explainers.add_parser(
        "histology", help="paint a histology model's attention (or instance probabilities) over an H&E image",
        description="Cut an image into the patches the model was trained on (32x32 grid; 27x27 on each nucleus "
                    "for an annotated Warwick image), run the saved fold-0 model of an `abmil reproduce histology` "
                    "run and paint attention (attention models, min-max scaled) or instance probabilities "
                    "(Instance+ models) per patch, with a colour bar. Epithelial nuclei are circled on colon images.")
    ex_histo.add_argument("--run", required=True, metavar="DIR", help="the --out directory of reproduce histology")
    ex_histo.add_argument("--model", default=default_of(explain_histology, "model"),
                          help="model key (default %(default)s)")
    ex_histo.add_argument("--image", default=None, metavar="PATH",
                          help="image to paint (default: the first positive test image of the saved fold)")
    ex_histo.add_argument("--out", default=None, metavar="PNG",
                          help="output PNG (default RUN/heatmap_<model>__<image>.png)")
    ex_histo.add_argument("--no-markers", action="store_true", help="do not circle the epithelial nuclei")
    ex_histo.add_argument("--downsample", type=float, default=default_of(explain_histology, "downsample"),
                          help="image pixels per PNG pixel (default %(default)g)")
    _unit_args(ex_histo)
    ex_histo.set_defaults(handler=_explain_histology)

    demo_parser = commands.add_parser(
        "demo", help="a quick look: Musk1 attention vs gated (default), or histology",
        description="benchmarks (default): Musk1, attention and gated attention, one 10-fold CV repeat, beside the "
                    "paper, then the highest-attention instances of one positive bag. histology: a shipped H&E "
                    "image cut into bags, a few epochs, an attention heatmap PNG.")
    demo_parser.add_argument("--out", default=None, metavar="DIR", help="also write results.{json,csv,md} to DIR")
    demo_parser.add_argument("--folds", type=int, default=default_of(demo, "folds"), help=argparse.SUPPRESS)
    demo_parser.add_argument("--seed", type=int, default=default_of(demo, "seed"), help=argparse.SUPPRESS)
    demo_parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    demo_parser.add_argument("which", nargs="?", choices=("benchmarks", "histology"), default="benchmarks",
                             help="benchmarks (default): Musk1, attention vs gated; histology: one H&E image -> "
                                  "bags -> a few epochs -> a heatmap PNG (a demonstration, not a result)")
    demo_parser.set_defaults(handler=_demo)
    _wsi_commands(commands)
    return parser


def _wsi_commands(commands) -> None:
    """train / predict / heatmap: attention MIL on whole-slide feature bags (abmil.slides.train)."""
    from abmil._light import library_names as lib

    DEFAULT_VAL_FRACTION, cross_validate = lib("abmil.slides.study", "DEFAULT_VAL_FRACTION", "cross_validate")
    (explain_histology,) = lib("abmil.experiments.histology", "explain_histology")
    (LAYOUTS,) = lib("abmil.explain.heatmap", "LAYOUTS")
    (POOLINGS,) = lib("abmil.nn.zoo", "SLIDE_KEYS")
    HeatmapOptions, slide_heatmap = lib("abmil.slides.heatmap", "HeatmapOptions", "slide_heatmap")
    (load_run,) = lib("abmil.slides.predict", "load_run")

    heat_option = functools.partial(default_of, HeatmapOptions)
    slides = _slide_training(light=True)
    config = functools.partial(default_of, slides.WSIConfig)
    train = commands.add_parser(
        "train", help="train attention MIL on whole-slide feature bags (HDF5 / .pt + manifest)",
        description="Train a gated-attention MIL classifier on pre-extracted patch features, one slide per "
                    "step by default. Writes OUT/checkpoint.json and safetensors weights after every epoch; "
                    "--resume continues a stopped run to the weights an uninterrupted run would have. Under "
                    "`torchrun --nproc-per-node K -m abmil train ...` K processes share every step: the same "
                    "run as one process with --batch-size K*b (or --batch-instances K*N).")
    train.add_argument("--manifest", required=True, metavar="CSV",
                       help="slide_id,label[,split][,path][,case_id] per slide (case_id: the patient; empty: the "
                            "slide is its own case); --task survival: time,event instead of label; regression: "
                            "target")
    train.add_argument("--features", default=None, metavar="DIR",
                       help="folder of <slide_id>.h5/.pt files (default: the manifest's folder)")
    train.add_argument("--out", required=True, metavar="RUN", help="run folder (checkpoints)")
    # Each flag's dest is the WSIConfig field it sets (wsi_config_from_args relies on it).
    train.add_argument("--pooling", choices=POOLINGS, default=config("pooling"),
                       help="the slide model: attention MIL (attention, gated), the paper's baselines (mean, max, "
                            "instance-mean, instance-max), clam-sb, transmil, linear-probe (docs/poolings.md; "
                            "default %(default)s)")
    train.add_argument("--model", dest="pooling", choices=POOLINGS, default=argparse.SUPPRESS,
                       help=argparse.SUPPRESS)  # deprecated alias of --pooling
    train.add_argument("--epochs", type=int, default=config("epochs"), help="epochs (default %(default)s)")
    train.add_argument("--val-split", "--val-fraction", dest="val_split", type=float, default=config("val_split"),
                       metavar="FRACTION",
                       help="hold out this fraction of the training cases, per class (default: the manifest's "
                            f"split column: train / val rows; no validation without one; with --folds "
                            f"{DEFAULT_VAL_FRACTION} of each training part)")
    train.add_argument("--lr", type=float, default=config("lr"),
                       help="Adam learning rate (default %(default)g, CLAM's)")
    train.add_argument("--weight-decay", type=float, default=config("weight_decay"),
                       help="L2 (default %(default)g, CLAM's)")
    train.add_argument("--dropout", type=float, default=config("dropout"),
                       help="dropout after the first layer (default %(default)s)")
    train.add_argument("--hidden", type=int, default=config("hidden"), help="first layer width (default %(default)s)")
    train.add_argument("--att-dim", type=int, default=config("att_dim"),
                       help="attention hidden size (default %(default)s)")
    train.add_argument("--seed", type=int, default=config("seed"), help="seed (default %(default)s)")
    train.add_argument("--batch-size", type=int, default=config("batch_size"), metavar="B",
                       help="slides per step and process (default 1, the paper's)")
    train.add_argument("--batch-instances", type=int, default=config("batch_instances"), metavar="N",
                       help="group consecutive slides per step up to N instances per process (small slides "
                            "are packed into passes without padding)")
    train.add_argument("--chunk-size", type=int, default=config("chunk_size"),
                       help="slides above this many patches are pooled in chunks, recomputed in the backward "
                            "pass: memory O(chunk), up to a third slower (default %(default)s)")
    train.add_argument("--device", default=default_of(slides.train_feature_model, "device"),
                       help="cpu, cuda or mps (default %(default)s)")
    train.add_argument("--bf16", action="store_true", default=config("bf16"),
                       help="bfloat16 autocast for the forward pass")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out (a --folds study continues without it)")
    train.add_argument("--folds", type=int, default=None, metavar="K",
                       help="K-fold cross-validation over the cases (StratifiedGroupKFold): per fold a model trained "
                            "on the other folds less a validation part, its best validation epoch kept, predicting "
                            "its fold; writes OUT/oof.csv, OUT/summary.{json,csv,md}, OUT/splits.json, "
                            "OUT/folds/r<R>_f<F>/; rerun the same command to continue a stopped study")
    train.add_argument("--splits-from", default=None, metavar="DIR",
                       help="a study over CLAM's split files DIR/splits_K.csv (create_splits_seq.py: columns train, "
                            "val, test of slide ids), K = 0..--folds-1 (default: all in DIR); disjoint test parts are "
                            "one repeat's folds, overlapping ones (CLAM's Monte-Carlo splits) a repeat each")
    train.add_argument("--repeats", type=int, default=default_of(cross_validate, "repeats"), metavar="R",
                       help="with --folds: repeat the K folds R times, reshuffled (default %(default)s)")
    train.add_argument("--group-by", default=None, metavar="COLUMN",
                       help="with --folds: site-preserved folds over this manifest column (typically site): each "
                            "of its values whole in one test fold, leave-one-out when K equals their number; "
                            "per-value metrics in the summary, the column in oof.csv")
    train.add_argument("--log", choices=("tensorboard",), default=None,
                       help="also log every epoch's training loss and validation metrics as TensorBoard event files, "
                            "OUT/logs/ (one folder per fold); needs the tensorboard package (.[tracking])")
    train.add_argument("--seeds", type=int, default=default_of(cross_validate, "seeds"), metavar="N",
                       help="with --folds: a seed ensemble of N models per fold on the same split (each its own "
                            "initialisation, epoch orders, dropout), predicting with their mean; the seed spread "
                            "in the summary (default %(default)s)")
    train.add_argument("--bag-level", default=config("bag_level"), metavar="slide|case",
                       help="a bag is a slide, or a case: all its slides pooled together, one prediction per case "
                            "(default %(default)s)")
    train.add_argument("--patience", type=int, default=config("patience"), metavar="N",
                       help="early stopping: stop after N epochs without a better --monitor score on the validation "
                            "slides and keep the best epoch's weights (default: all epochs; --folds keeps the best "
                            "epoch's weights all the same)")
    train.add_argument("--monitor", default=config("monitor"), metavar="|".join(slides.MONITORS),
                       help="validation score of early stopping / model selection: loss, error (then loss) or AUC "
                            "(then loss) (default %(default)s)")
    train.add_argument("--class-weights", default=config("class_weights"), metavar="balanced",
                       help="balanced: weigh each slide's loss inversely to its class's frequency in the training "
                            "part (default: unweighted)")
    train.add_argument("--sampler", default=config("sampler"), metavar="|".join(slides.SAMPLERS),
                       help="each epoch's slide order: shuffle (every slide once) or balanced (drawn with "
                            "replacement, each class equally likely; seeded) (default %(default)s)")
    (TASKS,) = lib("abmil.tasks", "TASKS")

    train.add_argument("--task", choices=list(TASKS), default=config("task"),
                       help="what the head predicts: " + ", ".join(t.description for t in TASKS.values())
                            + " (default %(default)s)")
    train.add_argument("--loss", default=config("loss"),
                       metavar="|".join(k for t in TASKS.values() if len(t.losses) > 1 for k in t.losses),
                       help="survival: nll (discrete-time hazards, default) or cox (partial likelihood over each "
                            "step's slides: use --batch-size > 1); regression: mse (default) or huber")
    train.add_argument("--targets", default=config("targets"), metavar="A,B,...",
                       help="--task multilabel: the manifest's target columns (each 0 or 1), comma-separated; "
                            "--task multitarget: the heads NAME[:TASK[:LOSS]], e.g. label,os:survival,grade:regression "
                            "(columns label, os_time and os_event, grade)")
    train.add_argument("--n-bins", type=int, default=config("n_bins"), metavar="K",
                       help="survival nll: time bins, at the quantiles of the training part's event times "
                            "(default %(default)s)")
    train.add_argument("--positive-class", default=None, metavar="NAME",
                       help="two classes: the positive one, whose probability the AUC, the decision thresholds, "
                            "sensitivity and the figures are about (stored in the run as the second class; "
                            "default: the labels' last in sorted order)")
    shown = train.add_mutually_exclusive_group()
    shown.add_argument("--quiet", dest="verbosity", action="store_const", const="quiet", default="normal",
                       help="print the results only, no epoch or fold lines")
    shown.add_argument("--verbose", dest="verbosity", action="store_const", const="verbose",
                       help="with --folds: every epoch's line too (default: a progress bar per fold with its "
                            "current validation metric, on a terminal, and a line per finished fold)")
    train.set_defaults(handler=_train)

    predict = commands.add_parser(
        "predict", help="class probabilities per slide and attention per patch from a trained run",
        description="Write OUT (CSV: slide_id, label, prob_<class>..., predicted) and, beside it, "
                    "OUT's stem + .attention.h5 (per slide: attention, attention_logits, coords). Slides the run's "
                    "models trained or validated on are scored with a warning (how many, by which model) that is "
                    "recorded in the HDF5: `abmil evaluate` refuses them without --allow-training-slides; a study's "
                    "honest estimate is its OUT/oof.csv.")
    model = predict.add_mutually_exclusive_group(required=True)
    model.add_argument("--run", metavar="RUN", help="an `abmil train` --out folder")
    model.add_argument("--model", metavar="DIR", help="an `abmil export` folder (torchscript or onnx), without the "
                       "training run")
    inputs = predict.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--manifest", metavar="CSV", help="slides to predict")
    inputs.add_argument("--slides", metavar="DIR", help="raw slides, extracted on the fly with the encoder and "
                        "scale of the run's training features (cached in --features-cache)")
    predict.add_argument("--features", default=None, metavar="DIR", help="feature folder (default: the manifest's)")
    predict.add_argument("--features-cache", default=None, metavar="DIR",
                         help="--slides: where their features go (default: OUT's stem + .features)")
    predict.add_argument("--weights", default=None, metavar="FILE",
                         help="--slides: the encoder weights file the run's features were made with")
    predict.add_argument("--out", required=True, metavar="CSV", help="predictions CSV")
    predict.add_argument("--device", default=default_of(load_run, "device"),
                         help="cpu, cuda or mps (default %(default)s)")
    predict.add_argument("--fold", type=_fold_arg, default=None, metavar="R,F",
                         help="with a --folds run: the model of repeat R, fold F alone (default: the mean of all "
                              "fold models' probabilities and attention)")
    predict.set_defaults(handler=_predict)

    (FORMATS,) = lib("abmil.export", "FORMATS")
    export = commands.add_parser(
        "export", help="a trained run as TorchScript, ONNX or wsinfer-mil, with a model card",
        description="Write DIR (new): the run's model (a study: the mean of its fold models, or one --fold) taking "
                    "one bag (n_patches, in_dim) float32 and returning (outputs, per-patch scores), export.json, "
                    "model_card.md and model_card.json (docs/export.md).")
    export.add_argument("--run", required=True, metavar="RUN", help="an `abmil train` --out folder")
    export.add_argument("--format", required=True, choices=FORMATS, help="torchscript (torch.jit.load), onnx "
                        "(onnxruntime; the onnx extra) or wsinfer-mil (torchscript_model.pt + config.json)")
    export.add_argument("--out", required=True, metavar="DIR", help="the export folder (must not exist)")
    which = export.add_mutually_exclusive_group()
    which.add_argument("--fold", type=_fold_arg, default=None, metavar="R,F",
                       help="with a --folds run: the model of repeat R, fold F alone")
    which.add_argument("--ensemble", action="store_true",
                       help="with a --folds run: all fold models, their outputs averaged (the default)")
    export.add_argument("--feature-extractor", default=None, metavar="NAME",
                        help="wsinfer-mil's feature_extractor (default: the encoder `abmil extract` recorded)")
    export.add_argument("--patch-size-um", type=float, default=None, metavar="UM",
                        help="wsinfer-mil's patch_size_um (default: mpp x patch size `abmil extract` recorded)")
    export.add_argument("--evaluation", default=None, metavar="DIR",
                        help="an `abmil evaluate` folder of the run's predictions: its metrics and intervals go on "
                             "the model card")
    export.set_defaults(handler=_export)

    heat = commands.add_parser(
        "heatmap", help="paint a trained run's attention over slides or an H&E image (PNG, top-k tiles, GeoJSON)",
        description="Paint each patch's attention at its coords with a colour bar: over the slide image read with "
                    "OpenSlide (--wsi, or --manifest with --slides: .svs, .ndpi, .mrxs, tiled TIFF...; needs the "
                    "slides extra: `pip install -e '.[slides]'` in a clone of abmil), over a thumbnail, or on a white "
                    "canvas (--slide: rank percentile within the slide); multi-class runs add each class's share of "
                    "its logit. Or over an H&E image cut into the patches of a histology run (--image: min-max "
                    "scaled; epithelial nuclei circled on annotated Warwick images). --manifest paints every slide "
                    "into --out DIR, skipping slides already done.")
    heat.add_argument("--run", required=True, metavar="RUN",
                      help="an `abmil train` --out folder (with --slide / --manifest) or an `abmil reproduce "
                           "histology` --out folder (with --image)")
    source = heat.add_mutually_exclusive_group(required=True)
    source.add_argument("--slide", metavar="FILE.h5", help="one slide's features with coords")
    source.add_argument("--manifest", metavar="CSV", help="every slide of this manifest (as `abmil predict`)")
    source.add_argument("--image", metavar="IMG",
                        help="an H&E image: cut into the run's patches and painted, as `abmil explain histology`")
    heat.add_argument("--model", default=default_of(explain_histology, "model"),
                      help="with --image: the histology model key (default %(default)s)")
    _unit_args(heat, "with --image: ")
    heat.add_argument("--features", default=None, metavar="DIR",
                      help="with --manifest: folder of the feature files (default: the manifest's)")
    heat.add_argument("--slides", default=None, metavar="DIR",
                      help="with --manifest: folder of the slide images, <slide_id>.svs/.ndpi/.mrxs/.tif...")
    heat.add_argument("--wsi", default=None, metavar="SLIDE",
                      help="with --slide: the slide image itself (.svs, .ndpi, .mrxs, tiled TIFF...)")
    heat.add_argument("--thumbnail", default=None, metavar="IMG", help="background image of the slide")
    heat.add_argument("--downsample", type=float, default=None, metavar="K",
                      help="level-0 pixels per thumbnail pixel (needed with --thumbnail)")
    heat.add_argument("--patch-size", type=int, default=None, metavar="PX",
                      help="patch side in level-0 pixels (default: from the file's attributes, CLAM's patch_size "
                           "at patch_level or TRIDENT's patch_size_level0, or the coords grid)")
    heat.add_argument("--mpp", type=float, default=None, metavar="UM",
                      help="the slide's microns per level-0 pixel, for feature files with coordinates in "
                           "micrometres (STAMP) (default: the file's, else the slide image's)")
    heat.add_argument("--scale", choices=("attention", "rank", "minmax"),
                      default=default_of(slide_heatmap, "normalise"),
                      help="colour scale, named under the colour bar: attention (the weights, linear from 0: only "
                           "the patches that hold the attention are bright), rank (percentile in the slide, as CLAM: "
                           "half the patches look hot whatever the weights) or minmax (default %(default)s)")
    heat.add_argument("--max-size", type=int, default=heat_option("max_size"), metavar="PX",
                      help="longer side of the slide overview in pixels (default %(default)s); read from the "
                           "pyramid level just above it")
    heat.add_argument("--layout", choices=LAYOUTS, default=heat_option("layout"),
                      help="colours over the slide, or the slide and the map side by side (default %(default)s)")
    heat.add_argument("--tissue", action="store_true", help="draw the tissue outline (Otsu on saturation)")
    heat.add_argument("--top-k", type=int, default=heat_option("top_k"), metavar="K",
                      help="also save the K highest- and K lowest-attention patches from the slide image: a "
                           "captioned grid OUT_topk.png and tiles with index.csv in OUT_tiles/")
    heat.add_argument("--geojson", action="store_true",
                      help="also write the patches as QuPath detections with their attention (OUT.geojson)")
    heat.add_argument("--out", required=True, metavar="PNG|DIR",
                      help="output PNG (--slide, --image) or folder (--manifest)")
    heat.add_argument("--device", default=default_of(slide_heatmap, "device"),
                      help="cpu, cuda or mps (default %(default)s)")
    heat.add_argument("--no-progress", action="store_true", help="no progress bar (--manifest)")
    heat.add_argument("--skip-unreadable", action="store_true",
                      help="--manifest: a slide that fails (image missing or unreadable, a corrupt tile, coordinates "
                           "outside it, a bad feature file) is skipped and named at the end, the others painted "
                           "(default: the first failure stops the batch, before anything is written where the checks "
                           "find it)")
    heat.set_defaults(handler=_heatmap)
    _extract_command(commands)

    LABEL_SOURCES, evaluate_predictions = lib("abmil.report.evaluate", "LABEL_SOURCES", "evaluate_predictions")

    evaluate = commands.add_parser(
        "evaluate", help="metrics with bootstrap confidence intervals, calibration, ROC/PR curves of predictions",
        description="Evaluate `abmil predict`'s CSV against the slides' labels (its label column or a manifest's, "
                    "or survival time/event or regression target columns: Harrell's and Uno's C, time-dependent AUC, "
                    "integrated Brier score, Kaplan-Meier curves and log-rank p with scikit-survival; MAE, RMSE, R2, "
                    "Pearson, Spearman) "
                    "joined on slide_id). An optional case_id column groups a patient's slides: metrics are "
                    "reported per slide and per case (a case's probabilities averaged), and the bootstrap "
                    "resamples cases. Writes OUT/metrics.json, metrics.csv, metrics.md, roc.png, pr.png, "
                    "reliability.png, all or nothing.")
    evaluate.add_argument("--predictions", required=True, metavar="CSV",
                          help="slide_id, [label], prob_<class>... [, case_id] (as `abmil predict` writes)")
    evaluate.add_argument("--manifest", default=None, metavar="CSV",
                          help="slide_id, label [, case_id]: the labels (and cases) of the predicted slides")
    evaluate.add_argument("--labels-from", choices=LABEL_SOURCES, default=default_of(evaluate_predictions,
                                                                                      "labels_from"),
                          help="where the labels come from (default %(default)s: the manifest when given, else "
                               "the predictions' label column; where both have one they must agree)")
    decision = evaluate.add_mutually_exclusive_group()
    decision.add_argument("--threshold", type=float, default=None, metavar="T",
                          help="binary: predict the positive (second) class when its probability >= T "
                               "(default 0.5); multi-class predictions take the argmax")
    decision.add_argument("--run", default=None, metavar="RUN",
                          help="read the threshold stored as \"threshold\" in RUN/threshold.json, run.json or "
                               "checkpoint.json; and refuse slides its models trained or validated on (a study's "
                               "oof.csv: each row against its own fold's model)")
    evaluate.add_argument("--bootstrap", type=int, default=default_of(evaluate_predictions, "n_bootstrap"),
                          metavar="N", help="bootstrap resamples of the cases for 95%% intervals, 0 for none "
                                            "(default %(default)s)")
    evaluate.add_argument("--seed", type=int, default=default_of(evaluate_predictions, "seed"),
                          help="seed of the bootstrap (default %(default)s)")
    evaluate.add_argument("--times", type=_float_list, default=None, metavar="T1,T2,...",
                          help="survival: the times of the time-dependent AUC and of Uno's C truncation (default: "
                               "the quartiles of the event times)")
    evaluate.add_argument("--risk-groups", type=int, choices=(2, 3),
                          default=default_of(evaluate_predictions, "risk_groups"),
                          help="survival: Kaplan-Meier curves and log-rank test of the median split (2) or tertiles "
                               "(3) of the risk (default %(default)s)")
    evaluate.add_argument("--time-unit", default=None, metavar="UNIT",
                          help="survival: the unit of the time column (e.g. months), named on km.png's time axis")
    evaluate.add_argument("--allow-training-slides", action="store_true",
                          help="evaluate predictions of slides the run's models trained or validated on (which "
                               "`abmil predict` records beside its CSV; or, with --run, its splits) with a warning "
                               "in the output, instead of refusing them: their metrics are optimistic")
    evaluate.add_argument("--by", default=None, metavar="COLUMN",
                          help="also evaluate within each value of this column (e.g. site) of the predictions file "
                               "(a --group-by study's oof.csv) or of --manifest")
    evaluate.add_argument("--out", required=True, metavar="DIR", help="output folder")
    evaluate.set_defaults(handler=_evaluate)

    (compare_runs,) = lib("abmil.report.compare", "compare_runs")
    compare = commands.add_parser(
        "compare", help="paired comparison of studies on the same cases: differences with paired bootstrap CIs, "
                        "DeLong's test",
        description="Compare cross-validation studies (their oof.csv) or predictions CSVs on the same slides: for "
                    "every later run against the first, the paired difference B - A of each metric with a 95 % "
                    "paired case-bootstrap interval (both runs scored on the same drawn cases), DeLong's test of the "
                    "AUC difference (two classes), per-group rows (--by), a figure of the ROC curves. Runs on "
                    "different slides are refused.")
    compare.add_argument("runs", nargs="+", metavar="RUN", help="study folders (oof.csv) or predictions CSVs")
    compare.add_argument("--manifest", default=None, metavar="CSV",
                         help="the slides' truth (joined on slide_id) and the --by column")
    compare.add_argument("--by", default=None, metavar="COLUMN",
                         help="also compare within each value of this column (e.g. site) of the first run's "
                              "predictions (a --group-by study's oof.csv) or of --manifest")
    compare.add_argument("--bootstrap", type=int, default=default_of(compare_runs, "n_bootstrap"),
                         help="paired case resamples (default %(default)s; at least 100)")
    compare.add_argument("--seed", type=int, default=default_of(compare_runs, "seed"),
                         help="seed of the resamples (default %(default)s)")
    compare.add_argument("--out", required=True, metavar="DIR", help="output folder")
    compare.set_defaults(handler=_compare)


def _extract_command(commands) -> None:
    from abmil._light import library_names

    (ExtractSettings,) = library_names("abmil.extract.settings", "ExtractSettings")

    setting = functools.partial(default_of, ExtractSettings)
    ex = commands.add_parser(
        "extract", help="slides to feature files: tissue, tiles at a physical scale, an encoder, TRIDENT HDF5",
        description="Write OUT/features/<slide_id>.h5 (TRIDENT's layout, what `abmil train` reads), OUT/qc/*.png, "
                    "OUT/tissue/*.geojson (QuPath) and OUT/summary.csv. Finished slides are skipped on a rerun. "
                    "Under `torchrun --nproc-per-node K -m abmil extract ...` the slides are shared over K processes.")
    where = ex.add_mutually_exclusive_group(required=True)
    where.add_argument("--slides", metavar="DIR", help="a folder of slides (.svs, .ndpi, .tif, ...)")
    where.add_argument("--manifest", metavar="CSV", help="a manifest; its path cells or <slide_id>.* beside it")
    ex.add_argument("--out", required=True, metavar="DIR", help="output folder")
    ex.add_argument("--encoder", required=True, metavar="NAME", help="resnet50-trunc, uni, uni2-h, virchow2, "
                    "h-optimus-0, h-optimus-1, prov-gigapath or timm:NAME (docs/extract.md)")
    ex.add_argument("--weights", default=None, metavar="FILE|none",
                    help="a weights file (offline), or none: random weights (default: the Hugging Face hub)")
    scale = ex.add_mutually_exclusive_group()
    scale.add_argument("--mpp", type=float, default=setting("mpp"), help="target um/px (default %(default)s)")
    scale.add_argument("--magnification", type=float, default=None, metavar="X", help="target magnification "
                       "(20 = 0.5 um/px)")
    ex.add_argument("--mpp-level0", type=float, default=None, metavar="M",
                    help="level-0 um/px for slides whose properties have none")
    ex.add_argument("--patch-size", type=int, default=setting("patch_size"), help="tile side at the target "
                    "scale, pixels (default %(default)s)")
    ex.add_argument("--overlap", type=int, default=setting("overlap"), help="pixels (default %(default)s)")
    ex.add_argument("--min-tissue", type=float, default=setting("min_tissue"),
                    help="fraction of a tile that must be tissue (default %(default)s)")
    ex.add_argument("--batch-size", type=int, default=32, help="tiles per batch (default %(default)s)")
    ex.add_argument("--workers", type=int, default=2, help="reading processes (default %(default)s)")
    ex.add_argument("--device", default="cpu", help="cpu, cuda or mps (default %(default)s)")
    ex.add_argument("--bf16", action="store_true", help="encode in bfloat16 (GPU)")
    ex.set_defaults(handler=_extract)


def _extract(args: argparse.Namespace) -> int:
    from abmil.extract.command import run_extract

    return run_extract(args)


def _cv_args(parser: argparse.ArgumentParser, default: Callable[[str], Any]) -> None:
    """--folds / --repeats / --seed of a cross-validated experiment; ``default(name)``: its function's default."""
    parser.add_argument("--folds", type=int, default=default("folds"), help="CV folds (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=default("repeats"), help="CV repetitions (default %(default)s)")
    parser.add_argument("--seed", type=int, default=default("seed"),
                        help="seed of the splits and of the runs (default %(default)s)")


def _unit_args(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """--repeat / --fold: which saved model of a histology run paints the heatmap."""
    from abmil._light import library_names

    (explain_histology,) = library_names("abmil.experiments.histology", "explain_histology")
    for name, what in (("repeat", "CV repetition"), ("fold", "fold")):
        parser.add_argument(f"--{name}", type=int, default=default_of(explain_histology, name),
                            help=f"{prefix}the {what} of the saved model (default %(default)s; others need "
                                 "--keep-models)")


def _fold_arg(text: str) -> tuple[int, int]:
    parts = _csv_list(text)
    try:
        r, f = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected R,F (repeat and fold, e.g. 0,3), got {text!r}") from None
    return r, f


def _float_list(text: str) -> list[float]:
    try:
        return [float(t) for t in _csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in _csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _check_number(flag: str, value: float | None, *, above: float | None = None,
                  minimum: float | None = None) -> None:
    """A float flag's value: finite (argparse's float() takes "nan" and "inf") and in range, else a ValueError
    naming the flag; None (not given) passes."""
    if value is None:
        return
    bound = f" > {above:g}" if above is not None else f" >= {minimum:g}" if minimum is not None else ""
    if (not math.isfinite(value) or (above is not None and value <= above)
            or (minimum is not None and value < minimum)):
        raise ValueError(f"{flag} must be a finite number{bound}, got {value:g}")


def _check_out(args: argparse.Namespace, *, folder: bool) -> None:
    """--out before any work: a folder (reproduce, demo) must not be a file, a file (a PNG) must not be a folder."""
    from abmil.experiments.runner import check_out_dir, check_out_file

    if args.out is not None:
        if folder:
            check_out_dir(args.out)
        else:
            check_out_file(args.out)


def _mnist_dir_args(parser: argparse.ArgumentParser) -> None:
    from abmil._light import library_names

    (DEFAULT_MNIST_DIR,) = library_names("abmil.data.mnist", "DEFAULT_MNIST_DIR")
    parser.add_argument("--mnist-dir", default=None, metavar="DIR",
                        help=f"folder with the four MNIST idx files, gzipped or not (default {DEFAULT_MNIST_DIR})")
    parser.add_argument("--download", action="store_true",
                        help="fetch missing MNIST files into --mnist-dir first (checksums verified)")


def _mnist_dir(args: argparse.Namespace) -> str:
    from abmil.data.mnist import mnist_dir

    return str(mnist_dir(args.mnist_dir, download=args.download))


def _reproduce_mnist_bags(args: argparse.Namespace) -> int:
    from abmil.experiments.benchmarks import format_row
    from abmil.experiments.mnist_bags import reproduce_mnist_bags

    _check_out(args, folder=True)  # before --download fetches anything
    rows = reproduce_mnist_bags(_mnist_dir(args), bag_means=args.bag_means, train_bags=args.train_bags,
                                models=args.models, repeats=args.repeats, seed=args.seed, test_bags=args.test_bags,
                                epochs=args.epochs, out_dir=args.out, progress=not args.no_progress, jobs=args.jobs)
    for row in rows:
        print(f"mean {row.extra['bag_mean']:>3}, {row.extra['train_bags']:>3} bags, {row.metric}: {format_row(row)}")
    print(f"wrote {args.out}/results.md, results.json, results.csv, results.png")
    return 0


def _explain_mnist_bags(args: argparse.Namespace) -> int:
    from abmil.experiments.mnist_bags import explain_mnist_bags

    _check_out(args, folder=False)
    print(explain_mnist_bags(args.run, _mnist_dir(args), model=args.model, bag_mean=args.bag_mean,
                             train_bags=args.train_bags, bag=args.bag, out=args.out))
    return 0


def _reproduce_benchmarks(args: argparse.Namespace) -> int:
    from abmil.experiments.benchmarks import format_row, reproduce_benchmarks

    _check_out(args, folder=True)
    metrics = args.metrics or default_of(reproduce_benchmarks, "metrics")
    rows = reproduce_benchmarks(args.datasets, args.models, folds=args.folds, repeats=args.repeats, seed=args.seed,
                                epochs=args.epochs, batch_size=args.batch_size, out_dir=args.out,
                                engine=args.engine, progress=not args.no_progress, data_paths=_data_paths(args.data),
                                jobs=args.jobs, metrics=metrics, preset=args.preset)
    for row in rows:
        print(f"{row.metric:>9}: {format_row(row)}" if args.metrics else format_row(row))
    print(f"wrote {args.out}/results.md, results.json, results.csv")
    return 0


def _reproduce_histology(args: argparse.Namespace) -> int:
    from abmil.experiments.benchmarks import format_row
    from abmil.experiments.histology import histology_progress, reproduce_histology

    out = args.out or f"runs/histology-{args.dataset}"
    _check_number("--lr", args.lr, above=0.0)
    _check_number("--weight-decay", args.weight_decay, minimum=0.0)
    _check_number("--max-white-fraction", args.max_white_fraction, above=0.0)
    run = {"models": args.models, "repeats": args.repeats, "folds": args.folds, "seed": args.seed,
           "epochs": args.epochs, "patience": args.patience, "lr": args.lr, "weight_decay": args.weight_decay,
           "augment": not args.no_augment, "stain_normalize": args.stain_normalize,
           "max_white_fraction": args.max_white_fraction, "out_dir": out}
    if args.status:
        print(histology_progress(args.dataset, args.data_dir, **run))
        return 0
    rows = reproduce_histology(args.dataset, args.data_dir, **run, progress=not args.no_progress, jobs=args.jobs,
                               keep_models=args.keep_models)
    for row in rows:
        print(f"{row.extra['averaging']:>6} {row.metric:>12}: {format_row(row)}")
    print(f"wrote {out}/results.md, results.json, results.csv" if rows else
          f"no model finished all its folds yet; finished folds are in {out}/units")
    return 0


def _explain_histology(args: argparse.Namespace) -> int:
    from abmil.experiments.histology import explain_histology

    _check_number("--downsample", args.downsample, above=0.0)
    _check_out(args, folder=False)
    print(explain_histology(args.run, model=args.model, image=args.image, out=args.out,
                            markers=not args.no_markers, downsample=args.downsample, repeat=args.repeat,
                            fold=args.fold))
    return 0


def _demo(args: argparse.Namespace) -> int:
    _check_out(args, folder=True)
    if args.which == "histology":
        from abmil.experiments.histology_demo import demo_histology

        print(demo_histology(args.out, seed=args.seed))
        return 0
    from abmil.experiments.benchmarks import demo

    print(demo(args.out, folds=args.folds, seed=args.seed, progress=not args.no_progress))
    return 0


def wsi_config_from_args(args: argparse.Namespace) -> Any:
    """The ``WSIConfig`` of an ``abmil train`` command line: every field its flag sets, the rest the dataclass's.
    (Typed ``Any`` so that the config's module is named in :func:`_slide_training` only.)"""
    config = _slide_training().WSIConfig
    given = vars(args)
    return config(**{f.name: given[f.name] for f in dataclasses.fields(config) if f.name in given})


def _train(args: argparse.Namespace) -> int:
    from abmil.cli_progress import TrainProgress
    from abmil.slides.features import FeatureBagDataset
    from abmil.train.distributed import world_from_env

    config = wsi_config_from_args(args)
    dataset = FeatureBagDataset(args.manifest, args.features, task=config.task_class())
    classes = config.task_class().class_names(dataset) if config.task == "classification" else []
    if args.positive_class is not None:
        from abmil.slides.manifest import positive_last

        if config.task != "classification":
            raise ValueError(f"--positive-class is for --task classification, not {config.task}")
        classes = positive_last(classes, args.positive_class)  # the class order makes it the second
        dataset = FeatureBagDataset(args.manifest, args.features, task=config.task_class(), classes=classes)
    positive = "" if len(classes) != 2 else (
        f"positive class {classes[1]!r}, the one AUC, thresholds and sensitivity are about ("
        + ("--positive-class" if args.positive_class is not None else "the labels' last in sorted order; "
           "--positive-class NAME to choose") + ")")
    progress = TrainProgress(args.verbosity, epochs=config.epochs, monitor=config.monitor)
    study = args.folds is not None or args.splits_from is not None
    if args.group_by is not None and not study:
        raise ValueError(f"--group-by {args.group_by} makes site-preserved cross-validation folds: give --folds K")
    if args.seeds != 1 and not study:
        raise ValueError(f"--seeds {args.seeds} trains a seed ensemble per cross-validation fold: give --folds K")
    log = None
    if args.log == "tensorboard" and world_from_env().is_main:
        from abmil.train.tracking import TensorBoardLog

        log = TensorBoardLog(os.path.join(args.out, "logs"))

    def on_epoch(record: dict, key: str | None = None) -> None:
        progress.epoch(record, key)
        if log is not None:
            log(key or "", record)

    if study:
        from abmil.slides.study import cross_validate

        given = {}
        if args.splits_from is not None:
            from abmil.slides.clam_splits import read_clam_splits

            if args.repeats != 1:
                raise ValueError("--repeats: the folds come from --splits-from (CLAM's splits_K.csv), not repeated")
            given = {"splits": read_clam_splits(args.splits_from, dataset, bag_level=config.bag_level, k=args.folds,
                                                seed=config.seed),
                     "splitter": f"CLAM splits_K.csv files of {os.path.abspath(args.splits_from)}"}
        try:
            summary = cross_validate(dataset, args.out, config, folds=args.folds, repeats=args.repeats,
                                     device=args.device, on_epoch=lambda key, record: on_epoch(record, key),
                                     on_fold=progress.fold, group_by=args.group_by, seeds=args.seeds, **given)
        finally:
            progress.close()
            if log is not None:
                log.close()
        print("mean over folds: " + ", ".join(
            f"{k} {v['mean']:.4f}" + (f" ± {v['sd']:.4f}" if v["sd"] is not None else "")
            for k, v in summary["mean"].items() if v["mean"] is not None))
        if positive:
            print(positive)
        print(f"wrote {args.out}/oof.csv, summary.json/.csv/.md, splits.json, run.json")
        return 0
    training = _slide_training()
    try:
        with warnings.catch_warnings():  # the library's warning, as a line (under PYTHONWARNINGS=ignore too)
            warnings.simplefilter("always", training.NoValidationWarning)
            warnings.showwarning = lambda message, *_: _warn(str(message))
            info = training.train_feature_model(dataset, args.out, config, device=args.device, resume=args.resume,
                                                on_epoch=on_epoch)
    finally:
        if log is not None:
            log.close()
    if world_from_env().is_main:
        if positive:
            print(positive)
        print(f"wrote {args.out}/checkpoint.json, {info['weights']} (epoch {info['epoch']})")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from abmil.slides.features import FeatureBagDataset
    from abmil.slides.leakage import prediction_record, training_overlap
    from abmil.slides.predict import ensemble_head, load_models, predict_dataset, run_threshold, write_predictions

    if args.model is not None:
        return _predict_exported(args)
    runs = load_models(args.run, args.device, args.fold)
    classes = runs[0].classes
    threshold = run_threshold(args.run, args.fold)
    if args.slides is not None:
        from abmil.extract.deploy import extract_for_run

        cache = args.features_cache or os.path.splitext(args.out)[0] + ".features"
        args.manifest, args.features = extract_for_run(args.run, args.slides, cache, weights=args.weights,
                                                       device=args.device)
    dataset = FeatureBagDataset(args.manifest, args.features, classes=classes, require_labels=False,
                                task=type(runs[0].head))
    preds = predict_dataset(runs, dataset)
    level = runs[0].bag_level
    overlap = training_overlap(args.run, [p.slide_id for p in preds], args.fold)
    cases = dict(zip(dataset.slide_ids, dataset.case_ids))  # a manifest's patients: kept, as in oof.csv
    keep_cases = level == "slide" and any(c != s for s, c in cases.items())
    h5 = write_predictions(preds, classes, args.out, id_column=f"{level}_id", head=ensemble_head(runs),
                           threshold=threshold, attrs=prediction_record(overlap),
                           case_ids=cases if keep_cases else None)
    models = f", mean of {len(runs)} fold models" if len(runs) > 1 else ""
    decided = "" if threshold is None else f"; '{classes[1]}' at P >= {threshold:.4f}, the run's threshold"
    print(f"wrote {args.out} ({len(preds)} {level}s{models}{decided}), {h5}")
    if overlap:
        _warn(f"{overlap.message()}. `abmil evaluate` refuses these predictions without --allow-training-slides")
    return 0


def _predict_exported(args: argparse.Namespace) -> int:
    from abmil.export.deployed import load_export, predict_exported
    from abmil.slides.features import FeatureBagDataset
    from abmil.slides.predictions import write_predictions

    for flag in ("fold", "slides"):
        if getattr(args, flag) is not None:
            raise ValueError(f"--{flag} is for --run; an export is one model on feature files (--manifest)")
    model = load_export(args.model)
    dataset = FeatureBagDataset(args.manifest, args.features, classes=model.classes, require_labels=False,
                                task=type(model.head))
    preds = predict_exported(model, dataset)
    h5 = write_predictions(preds, model.classes, args.out, id_column=f"{model.bag_level}_id", head=model.head,
                           threshold=model.threshold)
    print(f"wrote {args.out} ({len(preds)} {model.bag_level}s, {model.meta['export_format']} export), {h5}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from abmil.export import export_run

    meta = export_run(args.run, args.out, args.format, fold=args.fold, ensemble=args.ensemble,
                      feature_extractor=args.feature_extractor, patch_size_um=args.patch_size_um,
                      evaluation=args.evaluation, command=" ".join([PROG, *sys.argv[1:]]))
    members = f"mean of {len(meta['members'])} fold models" if len(meta["members"]) > 1 else meta["members"][0]
    print(f"wrote {args.out}/{meta['model_file']} ({meta['export_format']}, {meta['pooling']}, {members}), "
          "export.json, model_card.md, model_card.json")
    return 0


def _heatmap(args: argparse.Namespace) -> int:
    if args.image is not None:
        from abmil.experiments.histology import explain_histology

        downsample = args.downsample if args.downsample is not None else default_of(explain_histology, "downsample")
        print(explain_histology(args.run, model=args.model, image=args.image, out=args.out,
                                downsample=downsample, repeat=args.repeat, fold=args.fold))
        return 0
    from abmil.slides.heatmap import HeatmapOptions, manifest_heatmaps, slide_heatmap

    options = HeatmapOptions(max_size=args.max_size, layout=args.layout, tissue=args.tissue, top_k=args.top_k,
                             geojson=args.geojson, normalise=args.scale, patch_size=args.patch_size, mpp=args.mpp)
    if args.manifest is not None:
        for flag in ("wsi", "thumbnail", "downsample"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag} is for one --slide; with --manifest give --slides DIR")
        print(manifest_heatmaps(args.run, args.manifest, args.out, features_dir=args.features,
                                slides_dir=args.slides, options=options, device=args.device,
                                progress=not args.no_progress, skip_unreadable=args.skip_unreadable))
        return 0
    for flag in ("features", "slides"):
        if getattr(args, flag) is not None:
            raise ValueError(f"--{flag} is for --manifest; with --slide give --wsi SLIDE")
    print(slide_heatmap(args.run, args.slide, args.out, thumbnail=args.thumbnail, downsample=args.downsample,
                        patch_size=args.patch_size, device=args.device, normalise=args.scale, wsi=args.wsi,
                        options=options))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from abmil.report.evaluate import evaluate_predictions

    result = evaluate_predictions(args.predictions, out_dir=args.out, manifest=args.manifest,
                                  labels_from=args.labels_from, threshold=args.threshold, run=args.run,
                                  n_bootstrap=args.bootstrap, seed=args.seed, times=args.times,
                                  risk_groups=args.risk_groups, allow_training_slides=args.allow_training_slides,
                                  time_unit=args.time_unit, by=args.by)
    meta = result["meta"]
    if "training_overlap" in meta:
        _warn(meta["training_overlap"]["warning"])
    print(f"{meta['n_slides']} slides, {meta['n_cases']} cases; "
          + (meta["decision"] if "decision" in meta else f"{meta['task']}"))
    for r in result["metrics"]:
        name = f"{r['metric']} ({r['class']})" if r["class"] else r["metric"]
        value = "n/a" if r["value"] is None else f"{r['value']:.3f}"
        ci = "" if r["ci_low"] is None else f" [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        level = f"{r['group']:>8} {r['level']:>5}" if "group" in r else f"{r['level']:>5}"
        print(f"{level} {name:>24}: {value}{ci}" if r["metric"] != "logrank_p" else
              f"{level} {name:>24}: {r['value']:.3g}" if r["value"] is not None else
              f"{level} {name:>24}: n/a")
    print(f"wrote {args.out}/metrics.json, metrics.csv, metrics.md, {', '.join(meta['figures'])}")
    if "model_card" in meta:  # with --run: the run's model card beside the evaluation, or why not
        print(f"model card: {args.out}/{meta['model_card']}" if meta["model_card"].endswith(".md")
              else f"model card {meta['model_card']}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from abmil.report.compare import compare_runs

    result = compare_runs(args.runs, out_dir=args.out, manifest=args.manifest, by=args.by,
                          n_bootstrap=args.bootstrap, seed=args.seed)
    meta = result["meta"]
    print(f"{meta['n_slides']} slides, {meta['n_cases']} cases; {meta['method']}")
    for r in result["rows"]:
        if r["difference"] is None:
            continue
        name = f"{r['metric']} ({r['class']})" if r["class"] else r["metric"]
        delong = "" if r["delong_p"] is None else f"  DeLong p {r['delong_p']:.3g}"
        ci = "" if r["ci_low"] is None else f" [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
        print(f"{r['group']:>8} {r['level']:>5} {name:>20}: {r['value_a']:.3f} -> {r['value_b']:.3f}, "
              f"B - A {r['difference']:+.3f}{ci}{delong}")
    print(f"wrote {args.out}/" + ", ".join(meta["files"]))
    return 0


def _error(message: str) -> None:
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)


def _warn(message: str) -> None:
    """A warning the user must not miss (stderr, one line, before the command's last words)."""
    print(f"{PROG}: WARNING: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def _record_settings(parser: argparse.ArgumentParser, argv: Sequence[str], args: argparse.Namespace) -> None:
    """OUT/config.json: the settings the run ran with, which ``--config OUT/config.json`` reads back."""
    from abmil.cli_config import leaf_parser, resolved_settings, settings_json
    from abmil.io import write_text_atomic
    from abmil.train.distributed import world_from_env

    if world_from_env().is_main and os.path.isdir(args.out):
        write_text_atomic(os.path.join(args.out, "config.json"),
                          settings_json(resolved_settings(leaf_parser(parser, argv), args)))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``abmil`` command; returns the exit status."""
    from abmil.cli_config import add_config_flag, apply_settings_file
    from abmil.errors import DataError, MissingDependency, OutputError

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    add_config_flag(parser)
    try:
        apply_settings_file(parser, argv)  # --config FILE: the file's settings become the command's defaults
        args = parser.parse_args(argv)
    except DataError as e:
        _error(str(e))
        return 2
    except SystemExit as e:  # --help, --version, usage errors (argparse has printed them)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    from abmil.train.subnormal import subnormals_as_zero

    try:
        # Entered before torch's first parallel op: its intra-op threads, started inside, inherit the mode, so all
        # of the command's CPU arithmetic treats subnormals as zero, not only the training thread's.
        with subnormals_as_zero():
            status = args.handler(args)
        if status == 0 and args.command == "train":
            _record_settings(parser, argv, args)
        return status
    except (DataError, ValueError, FileNotFoundError, OutputError, MissingDependency) as e:
        # bad input, an output that cannot be written, an optional package missing: one line naming the file, flag,
        # bag or the install to run
        _error(str(e))
        return 2
    except OSError as e:
        _error(f"{e.strerror or e}{f': {e.filename}' if e.filename else ''}")
        return 1
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        again = ("rerun it with --resume" if args.command == "train" and getattr(args, "folds", None) is None
                 else "rerun the same command")
        hint = f"; what finished is kept in {out} - {again} to continue" if out else ""
        _error(f"interrupted{hint}")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
