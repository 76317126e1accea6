"""Command line: argument parsing and printing only; the work is done in :mod:`abmil.experiments`.

    abmil reproduce benchmarks [--datasets musk1,...] [--models attention,gated,...] [--folds 10] [--repeats 5]
                               [--seed 0] [--epochs N] [--batch-size 1] [--engine auto|direct|stacked|sequential]
                               [--data musk1=path.mat,...] [--out DIR] [--no-progress]
    abmil reproduce mnist-bags [--bag-means 10,50,100] [--train-bags 50,...,500] [--models attention,gated]
                               [--repeats 5] [--mnist-dir DIR] [--download] [--out DIR] [--jobs N]
    abmil explain mnist-bags --run DIR [--model attention] [--bag-mean 10] [--train-bags N] [--bag K] [--out PNG]
    abmil demo [--out DIR]
    abmil train --manifest CSV [--features DIR] --out RUN [--model gated|attention] [--epochs N] [--val-split F]
                [--lr] [--seed] [--batch-size B | --batch-instances N] [--device cpu] [--bf16] [--resume]
    abmil predict --run RUN --manifest CSV [--features DIR] --out preds.csv
    abmil heatmap --run RUN --slide FILE.h5 [--thumbnail IMG --downsample K] --out heat.png

Bad input (unknown names, a malformed data file, ...) prints one line ``abmil: error: ...`` on stderr and exits
with status 2 before anything is written.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

# OpenMP worker threads that spin while waiting make the many tiny per-bag ops of MIL training 10-20x slower as
# soon as the cores are shared with anything else (measured on 2 cores: 2 CV epochs of Musk1 65.7 s spinning vs
# 2.7 s passive). Must be set before torch loads its OpenMP runtime, so here, before any handler imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

PROG = "abmil"
_DEFAULT_OUT = "runs/benchmarks"


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
    from abmil import __version__
    from abmil.train.engines import ENGINES

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
    bench.add_argument("--datasets", type=_csv_list, default=None, metavar="A,B,...",
                       help="comma-separated dataset names (default: musk1,musk2,fox,tiger,elephant; with --data "
                            "and no --datasets: the datasets named in --data)")
    bench.add_argument("--models", type=_csv_list, default=None, metavar="A,B,...",
                       help="comma-separated model keys (default: attention,gated,instance-max,embedding-max,"
                            "mi-net-ds,mi-net-rc)")
    bench.add_argument("--folds", type=int, default=10, help="CV folds (default 10)")
    bench.add_argument("--repeats", type=int, default=5, help="CV repetitions (default 5)")
    bench.add_argument("--seed", type=int, default=0, help="seed of the splits and of the runs (default 0)")
    bench.add_argument("--epochs", type=int, default=None, help="training epochs (default: the protocol's 50)")
    bench.add_argument("--batch-size", type=int, default=1, help="bags per optimizer step (default 1, the paper's)")
    bench.add_argument("--engine", choices=ENGINES, default="auto",
                       help="direct: runs one by one, backward passes written out (MLP models, batch size 1); "
                            "stacked: all runs of a cell at once; sequential: one by one with autograd; "
                            "auto: direct where it applies, else stacked. Same numbers (default auto)")
    bench.add_argument("--jobs", type=int, default=1,
                       help="worker processes, one CPU core each (default 1). Same numbers")
    bench.add_argument("--metrics", type=_csv_list, default=None, metavar="A,B,...",
                       help="bag metrics from each test fold: accuracy (default; Table 1's layout), precision, "
                            "recall, f1, auc (more than accuracy: one methods x metrics table per dataset)")
    bench.add_argument("--data", action="append", default=None, metavar="NAME=PATH[,NAME=PATH]",
                       help="read dataset NAME from a .csv/.mat(.gz) file instead of the shipped copy "
                            "(repeatable)")
    bench.add_argument("--out", default=_DEFAULT_OUT, metavar="DIR", help=f"output directory (default {_DEFAULT_OUT})")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    bench.set_defaults(handler=_reproduce_benchmarks)

    mnist = experiments.add_parser(
        "mnist-bags", help="Figures 1-3: MNIST-bags, test AUC vs number of training bags",
        description="The paper's MNIST-bags grid (bags holding a 9 are positive): test AUC per (mean bag size, "
                    "training bags, model), repeated. Writes OUT/results.{json,csv,md,png} after every finished point "
                    "and OUT/points/*.json; rerunning with the same OUT and settings skips the finished points.")
    mnist.add_argument("--bag-means", type=_int_list, default=[10, 50, 100], metavar="A,B,...",
                       help="mean bag sizes (default 10,50,100; spreads 2,10,20 as the paper)")
    mnist.add_argument("--train-bags", type=_int_list, default=[50, 100, 150, 200, 300, 400, 500], metavar="A,B,...",
                       help="numbers of training bags (default 50,100,150,200,300,400,500)")
    mnist.add_argument("--models", type=_csv_list, default=["attention", "gated"], metavar="A,B,...",
                       help="model keys (default attention,gated; also instance-max, instance-mean, embedding-max, "
                            "embedding-mean)")
    mnist.add_argument("--repeats", type=int, default=5, help="repetitions (default 5)")
    mnist.add_argument("--seed", type=int, default=0, help="seed of the bags and the runs (default 0)")
    mnist.add_argument("--test-bags", type=int, default=1000, help="test bags per repetition (default 1000)")
    mnist.add_argument("--epochs", type=int, default=20, help="training epochs (default 20, the reference code's)")
    _mnist_dir_args(mnist)
    mnist.add_argument("--jobs", type=int, default=1, help="worker processes, one CPU core each (default 1)")
    mnist.add_argument("--out", default="runs/mnist-bags", metavar="DIR",
                       help="output directory (default runs/mnist-bags)")
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
    histo.add_argument("--dataset", required=True, choices=("breast", "colon"),
                       help="breast: UCSB Bisque images, 32x32 grid patches; colon: Warwick CRCHistoPhenotypes "
                            "Classification folders, 27x27 patches on every annotated nucleus")
    histo.add_argument("--data-dir", required=True, metavar="DIR",
                       help="the Bisque (breast) or Classification (colon) folder, or the folder holding it")
    histo.add_argument("--models", type=_csv_list, default=None, metavar="A,B,...",
                       help="model keys (default all six: instance-max,instance-mean,embedding-max,"
                            "embedding-mean,attention,gated)")
    histo.add_argument("--repeats", type=int, default=5, help="CV repetitions (default 5)")
    histo.add_argument("--folds", type=int, default=10, help="CV folds (default 10)")
    histo.add_argument("--seed", type=int, default=0, help="seed of the splits and the runs (default 0)")
    histo.add_argument("--epochs", type=int, default=200,
                       help="cap on training epochs; early stopping usually ends a fold sooner (default 200)")
    histo.add_argument("--patience", type=int, default=25,
                       help="stop after this many epochs without a better validation score (default 25)")
    histo.add_argument("--lr", type=float, default=None, help="Adam's learning rate (default 1e-4)")
    histo.add_argument("--weight-decay", type=float, default=None,
                       help="L2 weight decay on every parameter (default 5e-4; one third-party code used 5e-3)")
    histo.add_argument("--no-augment", action="store_true", help="train without augmentation")
    histo.add_argument("--stain-normalize", action="store_true",
                       help="Reinhard-normalise each patch's Lab colours to a fixed H&E target, in training and "
                            "testing (a third-party code's step; not in the paper's known protocol)")
    histo.add_argument("--max-white-fraction", type=float, default=None, metavar="F",
                       help="breast: drop a grid tile as background when at least this share of its pixels is white "
                            "(default 0.75, the paper's rule as far as it is known); heatmaps of the run use it too")
    histo.add_argument("--jobs", type=int, default=1, help="worker processes, one CPU core each (default 1)")
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
    ex_mnist.add_argument("--model", default="attention", help="model key (default attention)")
    ex_mnist.add_argument("--bag-mean", type=int, default=None, help="mean bag size (default: the run's smallest)")
    ex_mnist.add_argument("--train-bags", type=int, default=None, help="training bags (default: the run's largest)")
    ex_mnist.add_argument("--bag", type=int, default=None,
                          help="test bag index (default: the first positive bag of at most 12 instances)")
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
    ex_histo.add_argument("--model", default="attention", help="model key (default attention)")
    ex_histo.add_argument("--image", default=None, metavar="PATH",
                          help="image to paint (default: the first positive test image of the saved fold)")
    ex_histo.add_argument("--out", default=None, metavar="PNG",
                          help="output PNG (default RUN/heatmap_<model>__<image>.png)")
    ex_histo.add_argument("--no-markers", action="store_true", help="do not circle the epithelial nuclei")
    ex_histo.add_argument("--downsample", type=float, default=1.0, help="image pixels per PNG pixel (default 1)")
    _unit_args(ex_histo)
    ex_histo.set_defaults(handler=_explain_histology)

    demo = commands.add_parser("demo", help="a quick look: Musk1 attention vs gated (default), or histology",
                               description="benchmarks (default): Musk1, attention and gated attention, one 10-fold "
                                           "CV repeat, beside the paper, then the highest-attention instances of one "
                                           "positive bag. histology: a shipped H&E image cut into bags, a few "
                                           "epochs, an attention heatmap PNG.")
    demo.add_argument("--out", default=None, metavar="DIR", help="also write results.{json,csv,md} to DIR")
    demo.add_argument("--folds", type=int, default=10, help=argparse.SUPPRESS)
    demo.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    demo.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    demo.add_argument("which", nargs="?", choices=("benchmarks", "histology"), default="benchmarks",
                      help="benchmarks (default): Musk1, attention vs gated; histology: one H&E image -> bags -> "
                           "a few epochs -> a heatmap PNG (a demonstration, not a result)")
    demo.set_defaults(handler=_demo)
    _wsi_commands(commands)
    return parser


def _wsi_commands(commands) -> None:
    """train / predict / heatmap: attention MIL on whole-slide feature bags (abmil.train.wsi)."""
    from abmil.nn.chunked import DEFAULT_CHUNK_SIZE

    train = commands.add_parser(
        "train", help="train attention MIL on whole-slide feature bags (HDF5 / .pt + manifest)",
        description="Train a gated-attention MIL classifier on pre-extracted patch features, one slide per "
                    "step by default. Writes OUT/checkpoint.json and safetensors weights after every epoch; "
                    "--resume continues a stopped run to the weights an uninterrupted run would have. Under "
                    "`torchrun --nproc-per-node K -m abmil train ...` K processes share every step: the same "
                    "run as one process with --batch-size K*b (or --batch-instances K*N).")
    train.add_argument("--manifest", required=True, metavar="CSV", help="slide_id,label[,split][,path] per slide")
    train.add_argument("--features", default=None, metavar="DIR",
                       help="folder of <slide_id>.h5/.pt files (default: the manifest's folder)")
    train.add_argument("--out", required=True, metavar="RUN", help="run folder (checkpoints)")
    train.add_argument("--model", choices=("gated", "attention"), default="gated",
                       help="attention pooling (default gated)")
    train.add_argument("--epochs", type=int, default=20, help="epochs (default 20)")
    train.add_argument("--val-split", type=float, default=None, metavar="FRACTION",
                       help="hold out this fraction of the training slides, per class (default: the manifest's "
                            "split column: train / val rows; no validation without one)")
    train.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4, CLAM's)")
    train.add_argument("--weight-decay", type=float, default=1e-5, help="L2 (default 1e-5, CLAM's)")
    train.add_argument("--dropout", type=float, default=0.25, help="dropout after the first layer (default 0.25)")
    train.add_argument("--hidden", type=int, default=512, help="first layer width (default 512)")
    train.add_argument("--att-dim", type=int, default=256, help="attention hidden size (default 256)")
    train.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    train.add_argument("--batch-size", type=int, default=None, metavar="B",
                       help="slides per step and process (default 1, the paper's)")
    train.add_argument("--batch-instances", type=int, default=None, metavar="N",
                       help="group consecutive slides per step up to N instances per process (small slides "
                            "are packed into passes without padding)")
    train.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE,
                       help="slides above this many patches are pooled in chunks, recomputed in the backward "
                            f"pass: memory O(chunk), up to a third slower (default {DEFAULT_CHUNK_SIZE})")
    train.add_argument("--device", default="cpu", help="cpu, cuda or mps (default cpu)")
    train.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the forward pass")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.set_defaults(handler=_train)

    predict = commands.add_parser(
        "predict", help="class probabilities per slide and attention per patch from a trained run",
        description="Write OUT (CSV: slide_id, label, prob_<class>..., predicted) and, beside it, "
                    "OUT's stem + .attention.h5 (per slide: attention, attention_logits, coords).")
    predict.add_argument("--run", required=True, metavar="RUN", help="an `abmil train` --out folder")
    predict.add_argument("--manifest", required=True, metavar="CSV", help="slides to predict")
    predict.add_argument("--features", default=None, metavar="DIR", help="feature folder (default: the manifest's)")
    predict.add_argument("--out", required=True, metavar="CSV", help="predictions CSV")
    predict.add_argument("--device", default="cpu", help="cpu, cuda or mps (default cpu)")
    predict.set_defaults(handler=_predict)

    heat = commands.add_parser(
        "heatmap", help="paint a trained run's attention over one slide or H&E image (PNG)",
        description="Paint each patch's attention at its coords with a colour bar: over a thumbnail of the slide "
                    "or a white canvas (--slide: rank percentile within the slide), or over an H&E image cut into "
                    "the patches of a histology run (--image: min-max scaled; epithelial nuclei circled on "
                    "annotated Warwick images).")
    heat.add_argument("--run", required=True, metavar="RUN",
                      help="an `abmil train` --out folder (with --slide) or an `abmil reproduce histology` --out "
                           "folder (with --image)")
    source = heat.add_mutually_exclusive_group(required=True)
    source.add_argument("--slide", metavar="FILE.h5", help="the slide's features with coords")
    source.add_argument("--image", metavar="IMG",
                        help="an H&E image: cut into the run's patches and painted, as `abmil explain histology`")
    heat.add_argument("--model", default="attention", help="with --image: the histology model key (default attention)")
    _unit_args(heat, "with --image: ")
    heat.add_argument("--thumbnail", default=None, metavar="IMG", help="background image of the slide")
    heat.add_argument("--downsample", type=float, default=None, metavar="K",
                      help="level-0 pixels per thumbnail pixel (needed with --thumbnail)")
    heat.add_argument("--patch-size", type=int, default=None, metavar="PX",
                      help="patch side in level-0 pixels (default: from the file's attributes or coords grid)")
    heat.add_argument("--scale", choices=("rank", "minmax"), default="rank",
                      help="colour scale: rank percentile (default, as CLAM) or min-max")
    heat.add_argument("--out", required=True, metavar="PNG", help="output PNG")
    heat.add_argument("--device", default="cpu", help="cpu, cuda or mps (default cpu)")
    heat.set_defaults(handler=_heatmap)


def _unit_args(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """--repeat / --fold: which saved model of a histology run paints the heatmap."""
    parser.add_argument("--repeat", type=int, default=0,
                        help=f"{prefix}the CV repetition of the saved model (default 0; others need --keep-models)")
    parser.add_argument("--fold", type=int, default=0,
                        help=f"{prefix}the fold of the saved model (default 0; others need --keep-models)")


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in _csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _mnist_dir_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mnist-dir", default=None, metavar="DIR",
                        help="folder with the four MNIST idx files, gzipped or not (default ~/.cache/abmil/mnist)")
    parser.add_argument("--download", action="store_true",
                        help="fetch missing MNIST files into --mnist-dir first (checksums verified)")


def _mnist_dir(args: argparse.Namespace) -> str:
    from pathlib import Path

    root = args.mnist_dir or str(Path.home() / ".cache" / "abmil" / "mnist")
    if args.download:
        from abmil.data.mnist import download_mnist

        download_mnist(root)
    return root


def _reproduce_mnist_bags(args: argparse.Namespace) -> int:
    from abmil.experiments.benchmarks import format_row
    from abmil.experiments.mnist_bags import reproduce_mnist_bags

    rows = reproduce_mnist_bags(_mnist_dir(args), bag_means=args.bag_means, train_bags=args.train_bags,
                                models=args.models, repeats=args.repeats, seed=args.seed, test_bags=args.test_bags,
                                epochs=args.epochs, out_dir=args.out, progress=not args.no_progress, jobs=args.jobs)
    for row in rows:
        print(f"mean {row.extra['bag_mean']:>3}, {row.extra['train_bags']:>3} bags, {row.metric}: {format_row(row)}")
    print(f"wrote {args.out}/results.md, results.json, results.csv, results.png")
    return 0


def _explain_mnist_bags(args: argparse.Namespace) -> int:
    from abmil.experiments.mnist_bags import explain_mnist_bags

    print(explain_mnist_bags(args.run, _mnist_dir(args), model=args.model, bag_mean=args.bag_mean,
                             train_bags=args.train_bags, bag=args.bag, out=args.out))
    return 0


def _reproduce_benchmarks(args: argparse.Namespace) -> int:
    from abmil.experiments.benchmarks import DEFAULT_DATASETS, DEFAULT_MODELS, format_row, reproduce_benchmarks

    data = _data_paths(args.data)
    datasets = args.datasets if args.datasets is not None else (list(data) if data else list(DEFAULT_DATASETS))
    models = args.models if args.models is not None else list(DEFAULT_MODELS)
    rows = reproduce_benchmarks(datasets, models, folds=args.folds, repeats=args.repeats, seed=args.seed,
                                epochs=args.epochs, batch_size=args.batch_size, out_dir=args.out,
                                engine=args.engine, progress=not args.no_progress, data_paths=data,
                                jobs=args.jobs, metrics=args.metrics or ("accuracy",))
    for row in rows:
        print(f"{row.metric:>9}: {format_row(row)}" if args.metrics else format_row(row))
    print(f"wrote {args.out}/results.md, results.json, results.csv")
    return 0


def _reproduce_histology(args: argparse.Namespace) -> int:
    from abmil.experiments.benchmarks import format_row
    from abmil.experiments.histology import HISTOLOGY_MODELS, reproduce_histology

    out = args.out or f"runs/histology-{args.dataset}"
    if args.status:
        from abmil.experiments.histology import histology_progress

        print(histology_progress(args.dataset, args.data_dir, models=args.models or list(HISTOLOGY_MODELS),
                                 repeats=args.repeats, folds=args.folds, seed=args.seed, epochs=args.epochs,
                                 patience=args.patience, lr=args.lr, weight_decay=args.weight_decay,
                                 augment=not args.no_augment, stain_normalize=args.stain_normalize,
                                 max_white_fraction=args.max_white_fraction, out_dir=out))
        return 0
    rows = reproduce_histology(args.dataset, args.data_dir, models=args.models or list(HISTOLOGY_MODELS),
                               repeats=args.repeats, folds=args.folds, seed=args.seed, epochs=args.epochs,
                               patience=args.patience, lr=args.lr, weight_decay=args.weight_decay,
                               augment=not args.no_augment, stain_normalize=args.stain_normalize,
                               max_white_fraction=args.max_white_fraction, out_dir=out,
                               progress=not args.no_progress, jobs=args.jobs, keep_models=args.keep_models)
    for row in rows:
        print(f"{row.extra['averaging']:>6} {row.metric:>12}: {format_row(row)}")
    print(f"wrote {out}/results.md, results.json, results.csv" if rows else
          f"no model finished all its folds yet; finished folds are in {out}/units")
    return 0


def _explain_histology(args: argparse.Namespace) -> int:
    from abmil.experiments.histology import explain_histology

    print(explain_histology(args.run, model=args.model, image=args.image, out=args.out,
                            markers=not args.no_markers, downsample=args.downsample, repeat=args.repeat,
                            fold=args.fold))
    return 0


def _demo(args: argparse.Namespace) -> int:
    if args.which == "histology":
        from abmil.experiments.histology_demo import demo_histology

        print(demo_histology(args.out, seed=args.seed))
        return 0
    from abmil.experiments.benchmarks import demo

    print(demo(args.out, folds=args.folds, seed=args.seed, progress=not args.no_progress))
    return 0


def _train(args: argparse.Namespace) -> int:
    from abmil.data.features import FeatureBagDataset
    from abmil.train.distributed import world_from_env
    from abmil.train.wsi import WSIConfig, train_feature_model

    config = WSIConfig(pooling=args.model, hidden=args.hidden, att_dim=args.att_dim, dropout=args.dropout,
                       lr=args.lr, weight_decay=args.weight_decay, epochs=args.epochs, batch_size=args.batch_size,
                       batch_instances=args.batch_instances, val_split=args.val_split, seed=args.seed,
                       chunk_size=args.chunk_size, bf16=args.bf16)
    dataset = FeatureBagDataset(args.manifest, args.features)

    def show(record: dict) -> None:
        print(", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()),
              flush=True)

    info = train_feature_model(dataset, args.out, config, device=args.device, resume=args.resume, on_epoch=show)
    if world_from_env().is_main:
        print(f"wrote {args.out}/checkpoint.json, {info['weights']} (epoch {info['epoch']})")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from abmil.data.features import FeatureBagDataset
    from abmil.train.wsi_predict import load_run, predict_dataset, write_predictions

    run = load_run(args.run, args.device)
    dataset = FeatureBagDataset(args.manifest, args.features, classes=run.classes, require_labels=False)
    preds = predict_dataset(run, dataset)
    h5 = write_predictions(preds, run.classes, args.out)
    print(f"wrote {args.out} ({len(preds)} slides), {h5}")
    return 0


def _heatmap(args: argparse.Namespace) -> int:
    if args.image is not None:
        from abmil.experiments.histology import explain_histology

        print(explain_histology(args.run, model=args.model, image=args.image, out=args.out,
                                downsample=args.downsample or 1.0, repeat=args.repeat, fold=args.fold))
        return 0
    from abmil.explain.slide import slide_heatmap

    print(slide_heatmap(args.run, args.slide, args.out, thumbnail=args.thumbnail, downsample=args.downsample,
                        patch_size=args.patch_size, device=args.device, normalise=args.scale))
    return 0


def _error(message: str) -> None:
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``abmil`` command; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors (argparse has printed them)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    from abmil.errors import DataError
    from abmil.train.subnormal import subnormals_as_zero

    try:
        # Entered before torch's first parallel op: its intra-op threads, started inside, inherit the mode, so all
        # of the command's CPU arithmetic treats subnormals as zero, not only the training thread's.
        with subnormals_as_zero():
            return args.handler(args)
    except (DataError, ValueError, FileNotFoundError) as e:
        _error(str(e))
        return 2
    except OSError as e:
        _error(f"{e.strerror or e}{f': {e.filename}' if e.filename else ''}")
        return 1
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        again = "rerun it with --resume" if args.command == "train" else "rerun the same command"
        hint = f"; what finished is kept in {out} - {again} to continue" if out else ""
        _error(f"interrupted{hint}")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
