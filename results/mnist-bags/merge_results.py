"""Merge finished MNIST-bags runs into this folder's results: a later run's cells replace the same cells here.

    python results/mnist-bags/merge_results.py RUN_DIR [RUN_DIR ...] [--mnist-dir PATH]

A cell is (model, metric, mean bag size, number of training bags); only cells with all 5 repetitions are taken.
Each run's command (the indented lines of its results.md command block) joins the command list; results.{json,csv,
md,png} are rewritten here, and the tables in the repository's README (from its ``<!-- mnist-table -->`` marker to
the sentence on ±) are replaced by results.md's.
"""
from __future__ import annotations

import sys
from pathlib import Path

from abmil.report.plots import plot_mnist_bags
from abmil.report.results import read_results, write_results

HERE = Path(__file__).resolve().parent
REPEATS = 5


def _commands(md: Path) -> list[str]:
    """The indented command lines of a results.md, between "Command:" and "Seed:"."""
    text = md.read_text().split("Command:", 1)[1].split("Seed:", 1)[0]
    return [line.strip() for line in text.splitlines() if line.startswith("    ")]


def _cell(row) -> tuple:
    return row.model, row.metric, int(row.extra["bag_mean"]), int(row.extra["train_bags"])


def main(runs: list[str], mnist_dir: str | None = None) -> None:
    cells = {_cell(r): r for r in read_results(HERE / "results.json")}
    commands = _commands(HERE / "results.md")
    for run in map(Path, runs):
        # only finished cells: a partial run's cell with fewer repetitions is left out
        cells.update({_cell(r): r for r in read_results(run / "results.json") if r.n_runs == REPEATS})
        commands += [c for c in _commands(run / "results.md") if c not in commands]
    commands = [c.replace(mnist_dir, "DIR") for c in commands] if mnist_dir else commands
    commands = list(dict.fromkeys(commands))  # a run merged again adds nothing
    rows = [cells[k] for k in sorted(cells, key=lambda c: (c[2], c[3], c[1], c[0]))]
    write_results(HERE, rows, title="MNIST-bags: test AUC vs number of training bags", command="\n    ".join(commands),
                  seed=0, table_layout="mnist-bags")
    plot_mnist_bags(rows, HERE / "results.png")
    _refresh_readme(HERE.parents[1] / "README.md", HERE / "results.md")


def _refresh_readme(readme: Path, results_md: Path) -> None:
    text, md = readme.read_text(), results_md.read_text()
    tables = md[md.index("### AUC"):md.index("Notes:")].strip().replace("### ", "#### ")
    start = text.index("<!-- mnist-table -->\n") + len("<!-- mnist-table -->\n")
    end = text.index("± is the standard deviation over repetitions (ddof 0).")
    readme.write_text(text[:start] + tables + "\n\n" + text[end:])


if __name__ == "__main__":
    args = sys.argv[1:]
    # --mnist-dir PATH: shown as DIR in the command list
    mnist = args[args.index("--mnist-dir") + 1] if "--mnist-dir" in args else None
    main([a for a in args if a not in ("--mnist-dir", mnist)], mnist)
