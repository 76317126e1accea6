"""What every task's evaluation shares: the case bootstrap, its metric rows, the rows as CSV, the all-or-nothing
output folder.

Intervals: 95% percentile bootstrap, ``n_bootstrap`` resamples of cases drawn from
``numpy.random.default_rng(seed)``, the same resamples for every metric and level (:func:`bootstrap`). A resample
where a metric is undefined (e.g. one class only: no AUC) is skipped for that metric and counted (``n_skipped``).
"""
from __future__ import annotations

import csv
import io
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

__all__ = ["CI_LEVEL", "CSV_COLUMNS", "LABEL_SOURCES", "Level", "bootstrap", "by_values", "case_groups",
           "group_metric_rows", "metric_rows", "rows_csv", "subset_levels", "write_folder"]

CI_LEVEL = 0.95
#: Where the truth comes from: the predictions' own columns or a manifest's (``auto``: the manifest's when given).
LABEL_SOURCES = ("auto", "predictions", "manifest")


@dataclass
class Level:
    """One level of evaluation: its samples' labels (n,) and probabilities (n, k), and for each bootstrap unit
    (case) the rows it contributes."""

    name: str
    labels: np.ndarray
    probs: np.ndarray
    rows_of_case: list[np.ndarray]


def bootstrap(levels: Sequence[Level], n_bootstrap: int, seed: int,
              metrics: Callable[[np.ndarray, np.ndarray], dict]) -> dict[str, dict[tuple[str, str], np.ndarray]]:
    """``{level: {(metric, class): (n_bootstrap,) values, NaN where undefined}}``: each resample draws
    ``n_cases`` cases with replacement (the same draws for every level and metric) and takes all their rows.
    ``metrics(labels, probs)`` -> ``{(metric, class): value}``: what is computed on each resample (the task's:
    :func:`abmil.report.class_evaluate.compute_metrics`, :mod:`abmil.report.outcome_evaluate`'s)."""
    import sklearn

    n_cases = len(levels[0].rows_of_case)
    rng = np.random.default_rng(seed)
    out: dict[str, dict[tuple[str, str], np.ndarray]] = {lv.name: {} for lv in levels}
    # the inputs were checked once; skipping sklearn's per-call validation makes the loop ~10% faster
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        for b in range(n_bootstrap):
            drawn = rng.integers(0, n_cases, n_cases)
            for lv in levels:
                rows = np.concatenate([lv.rows_of_case[i] for i in drawn])
                for key, v in metrics(lv.labels[rows], lv.probs[rows]).items():
                    out[lv.name].setdefault(key, np.full(n_bootstrap, math.nan))[b] = v
    return out


CSV_COLUMNS = ("level", "metric", "class", "value", "ci_low", "ci_high", "n_bootstrap", "n_skipped")


def rows_csv(result: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    columns = ("group", *CSV_COLUMNS) if result["metrics"] and "group" in result["metrics"][0] else CSV_COLUMNS
    w.writerow(columns)
    for r in result["metrics"]:
        w.writerow(["" if r[c] is None else (f"{r[c]:.6g}" if isinstance(r[c], float) else r[c])
                    for c in columns])
    return buf.getvalue()


def write_folder(out_dir: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` into ``out_dir`` all or nothing: into a temporary folder beside it first, then renamed to
    ``out_dir`` (absent or empty), or each file moved into an existing ``out_dir`` (each move atomic)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        for name, data in files.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        install_folder(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def install_folder(staged: Path, out_dir: Path) -> None:
    """A folder written in full beside ``out_dir`` becomes it: renamed to ``out_dir`` (absent or empty), or each of
    its entries moved into an existing ``out_dir`` (each move atomic; a subfolder replaces the one of its name)."""
    os.chmod(staged, 0o777 & ~_umask())  # mkdtemp's 0700 would hide the results from the user's group
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    if not out_dir.exists():
        os.replace(staged, out_dir)
        return
    if not out_dir.is_dir():
        raise DataError("exists and is not a folder", path=os.fspath(out_dir))
    for entry in staged.iterdir():
        if (out_dir / entry.name).is_dir():
            shutil.rmtree(out_dir / entry.name)
        os.replace(entry, out_dir / entry.name)


def _umask() -> int:
    from ..io import _umask as umask

    return umask()


def _plain(v: float) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


def metric_rows(levels: Sequence, point: Callable[[Any], dict], boot: dict) -> list[dict]:
    """One output row per level and metric: ``point(level)`` gives ``{(metric, class): value}``, ``boot`` (of
    :func:`bootstrap`) the resampled values behind its 95 % percentile interval; resamples where the metric is
    undefined (NaN) are left out and counted."""
    lo_q, hi_q = 100 * (1 - CI_LEVEL) / 2, 100 * (1 + CI_LEVEL) / 2
    rows = []
    for lv in levels:
        for (metric, cls), value in point(lv).items():
            values = boot.get(lv.name, {}).get((metric, cls), np.empty(0))
            ok = values[~np.isnan(values)]
            lo, hi = (np.percentile(ok, [lo_q, hi_q]) if ok.size else (math.nan, math.nan))
            rows.append({"level": lv.name, "metric": metric, "class": cls, "value": _plain(value),
                         "ci_low": _plain(lo), "ci_high": _plain(hi), "n_bootstrap": int(ok.size),
                         "n_skipped": int(values.size - ok.size)})
    return rows


# ---------------------------------------------------------------------------------------------- rows by group
def by_values(by: str, slide_ids: Sequence[str], predictions: str | os.PathLike,
              manifest: str | os.PathLike | None, cases: Sequence[str] | None = None) -> list[str]:
    """Each slide's value of the column ``by`` (``--by``, e.g. ``site``): from the predictions file when it has the
    column (a site-preserved study's oof.csv), else from ``manifest``
    (:func:`abmil.slides.manifest.group_values`; ``cases``: a case's slides must share a value)."""
    from ..slides.manifest import group_values
    from ..slides.tables import read_csv

    columns, _ = read_csv(os.fspath(predictions), "predictions file")
    if by not in columns and manifest is None:
        raise DataError(f"--by {by}: no column {by!r} here (found: {', '.join(columns)}): give --manifest with the "
                        "column", path=os.fspath(predictions))
    return group_values(predictions if by in columns else manifest, by, slide_ids, flag="--by", cases=cases)


def case_groups(values: Sequence[str], case_ids: Sequence[str]) -> list[tuple[str, np.ndarray]]:
    """``[(value, its cases (m,) int) ...]``, values sorted; cases numbered in first-appearance order, as the levels'
    ``rows_of_case`` (each slide's ``values`` and ``case_ids``; a case's slides share a value)."""
    cases = list(dict.fromkeys(case_ids))
    value = dict(zip(case_ids, values))
    return [(g, np.flatnonzero([value[c] == g for c in cases])) for g in sorted(set(values))]


def subset_levels(levels: Sequence[Level], cases: np.ndarray) -> list[Level]:
    """``levels`` restricted to the cases ``cases`` (positions into ``rows_of_case``), each level's rows re-numbered."""
    out = []
    for lv in levels:
        parts = [lv.rows_of_case[c] for c in cases]
        rows = np.concatenate(parts)
        ends = np.cumsum([len(p) for p in parts])
        out.append(Level(lv.name, lv.labels[rows], lv.probs[rows], [np.arange(e - len(p), e) for p, e in
                                                                     zip(parts, ends)]))
    return out


def group_metric_rows(levels: Sequence[Level], groups: Sequence[tuple[str, np.ndarray]], n_bootstrap: int, seed: int,
                      metrics: Callable[[np.ndarray, np.ndarray], dict]) -> list[dict]:
    """:func:`metric_rows` of each group's cases (:func:`case_groups`), each with its own case bootstrap (the same
    ``seed``), the rows tagged ``group``."""
    rows = []
    for name, cases in groups:
        sub = subset_levels(levels, cases)
        boot = bootstrap(sub, n_bootstrap, seed, metrics) if n_bootstrap else {}
        rows += [{"group": name, **r} for r in metric_rows(sub, lambda lv: metrics(lv.labels, lv.probs), boot)]
    return rows
