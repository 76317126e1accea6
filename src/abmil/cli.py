"""Command line: argument parsing and printing only; the work is done in :mod:`abmil.experiments`.

    abmil reproduce benchmarks [--datasets musk1,...] [--models attention,gated,...] [--folds 10] [--repeats 5]
                               [--seed 0] [--epochs N] [--batch-size 1] [--engine stacked|sequential]
                               [--data musk1=path.mat,...] [--out DIR] [--no-progress]
    abmil demo [--out DIR]

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
    bench.add_argument("--engine", choices=("stacked", "sequential"), default="stacked",
                       help="stacked: all runs of a cell trained at once (fast); sequential: one by one. "
                            "Same numbers (default stacked)")
    bench.add_argument("--jobs", type=int, default=1,
                       help="stacked engine: worker processes, one CPU core each (default 1). Same numbers")
    bench.add_argument("--data", action="append", default=None, metavar="NAME=PATH[,NAME=PATH]",
                       help="read dataset NAME from a .csv/.mat(.gz) file instead of the shipped copy "
                            "(repeatable)")
    bench.add_argument("--out", default=_DEFAULT_OUT, metavar="DIR", help=f"output directory (default {_DEFAULT_OUT})")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    bench.set_defaults(handler=_reproduce_benchmarks)

    demo = commands.add_parser("demo", help="a quick look: Musk1, attention vs gated attention, top instances",
                               description="Musk1, attention and gated attention, one 10-fold CV repeat, beside the "
                                           "paper; then the highest-attention instances of one positive bag.")
    demo.add_argument("--out", default=None, metavar="DIR", help="also write results.{json,csv,md} to DIR")
    demo.add_argument("--folds", type=int, default=10, help=argparse.SUPPRESS)
    demo.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    demo.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    demo.set_defaults(handler=_demo)
    # Room for: train, predict, heatmap (commands.add_parser(...) with their own handler).
    return parser


def _reproduce_benchmarks(args: argparse.Namespace) -> int:
    from abmil.experiments.benchmarks import DEFAULT_DATASETS, DEFAULT_MODELS, format_row, reproduce_benchmarks

    data = _data_paths(args.data)
    datasets = args.datasets if args.datasets is not None else (list(data) if data else list(DEFAULT_DATASETS))
    models = args.models if args.models is not None else list(DEFAULT_MODELS)
    rows = reproduce_benchmarks(datasets, models, folds=args.folds, repeats=args.repeats, seed=args.seed,
                                epochs=args.epochs, batch_size=args.batch_size, out_dir=args.out,
                                engine=args.engine, progress=not args.no_progress, data_paths=data,
                                jobs=args.jobs)
    for row in rows:
        print(format_row(row))
    print(f"wrote {args.out}/results.md, results.json, results.csv")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from abmil.experiments.benchmarks import demo

    print(demo(args.out, folds=args.folds, seed=args.seed, progress=not args.no_progress))
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

    try:
        return args.handler(args)
    except (DataError, ValueError, FileNotFoundError) as e:
        _error(str(e))
        return 2
    except OSError as e:
        _error(f"{e.strerror or e}{f': {e.filename}' if e.filename else ''}")
        return 1
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        hint = f"; finished cells are kept in {out}/cells - rerun the same command to resume" if out else ""
        _error(f"interrupted{hint}")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
