"""``abmil evaluate`` for outcome predictions (survival, regression): what the two share.

The reader of an outcome task's predictions CSV (:func:`read_outcomes`: the truth from its own columns or a
manifest's, joined on ``slide_id`` through :func:`abmil.slides.manifest.read_manifest`, as for classes:
``labels_from``), the slide and case levels (with ``case_id`` the case level averages a case's outputs, and the
bootstrap, :func:`abmil.report.bootstrap.bootstrap`, draws cases), and the writer of the evaluation folder
(:func:`write_outcome_evaluation`). What a task measures is its own module's: :mod:`abmil.report.survival_evaluate`,
:mod:`abmil.report.regression_evaluate`, which :meth:`abmil.tasks.base.Task.evaluate` calls; the task is passed
in (its truth columns, :meth:`~abmil.tasks.base.Task.parse_row`, its output columns), so that this module knows
none.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..slides.manifest import read_manifest
from ..slides.tables import case_column as _case_column
from ..slides.tables import read_table as _read_table
from .bootstrap import (
    CI_LEVEL,
    LABEL_SOURCES,
    Level,
    bootstrap,
    by_values,
    case_groups,
    group_metric_rows,
    metric_rows,
    rows_csv,
    write_folder,
)

__all__ = ["outcome_groups", "outcome_levels", "read_outcomes", "write_outcome_evaluation"]


def _number(cells: dict, column: str, line: int, path: str) -> float:
    text = cells.get(column, "")
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not math.isfinite(v):
        raise DataError(f"line {line}: column '{column}': {text!r} is not a finite number", path=path,
                        bag=cells["slide_id"])
    return v


def read_outcomes(predictions: str, task, manifest: str | None = None, labels_from: str = "auto"):
    """``(slide ids, truth, outputs, case ids, has cases, source, output columns)`` of an outcome task's predictions
    CSV: truth (n, 2) time/event or (n,) target, outputs (n, k) the task's output columns
    (:meth:`~abmil.tasks.base.Task.output_columns`, e.g. ``risk, surv_<t>...``), the case of each slide (its id
    without case ids), where the truth came from (``predictions`` or ``manifest``). ``task``: the predictions'
    task (a :class:`~abmil.tasks.base.Task` class), which reads the truth cells
    (:meth:`~abmil.tasks.base.Task.parse_row`, of the predictions file's rows or of the manifest,
    :func:`~abmil.slides.manifest.read_manifest`). DataError naming the file, line, column and slide."""
    if labels_from not in LABEL_SOURCES:
        raise ValueError(f"labels_from must be one of {', '.join(LABEL_SOURCES)}, got {labels_from!r}")
    columns, rows = _read_table(predictions, "predictions file")
    slide_ids = [cells["slide_id"] for _, cells in rows]
    out_cols = task.output_columns(columns, predictions)
    outputs = np.array([[_number(cells, c, line, predictions) for c in out_cols] for line, cells in rows])

    truth_cols = tuple(task.columns)
    cases = _case_column(predictions, rows) if "case_id" in columns else None
    source = labels_from if labels_from != "auto" else ("manifest" if manifest is not None else "predictions")
    if manifest is not None:
        mpath = os.fspath(manifest)
        mrows = read_manifest(mpath, task=task, require_labels=False, truth_columns=source == "manifest")
        by_id = {r.slide_id: r for r in mrows}
        missing = [s for s in slide_ids if s not in by_id]
        if missing:
            raise DataError(f"slide is in the predictions {predictions} but not in the manifest", path=mpath,
                            bag=missing[0])
        if any(r.case_id is not None for r in mrows):
            cases = {s: by_id[s].case for s in slide_ids}
    elif source == "manifest":
        raise ValueError("labels_from='manifest' needs a manifest")
    if source == "manifest":
        source_path = mpath
        truths = {s: by_id[s].outcome for s in slide_ids}
    else:
        source_path = predictions
        absent = [c for c in truth_cols if c not in columns]
        if absent:
            raise DataError(f"no {', '.join(absent)} column(s) to evaluate the {task.name} predictions against "
                            "(give --manifest)", path=source_path)
        truths = {cells["slide_id"]: task.parse_row(cells, line, predictions, cells["slide_id"])[1]
                  for line, cells in rows}
    for s in slide_ids:
        if truths[s] is None:
            raise DataError(f"field(s) {', '.join(truth_cols)} empty: nothing to evaluate the slide against",
                            path=source_path, bag=s)
    truth = np.asarray([truths[s] for s in slide_ids], dtype=np.float64)
    case_ids = [cases[s] for s in slide_ids] if cases is not None else list(slide_ids)
    if cases is not None:
        first: dict[str, int] = {}
        for i, c in enumerate(case_ids):
            if c in first and not np.array_equal(truth[first[c]], truth[i]):
                raise DataError(f"case {c!r}: its slides have different {'/'.join(truth_cols)}", path=source_path,
                                bag=slide_ids[i])
            first.setdefault(c, i)
    return slide_ids, truth, outputs, case_ids, cases is not None, source, out_cols


def outcome_levels(truth: np.ndarray, outputs: np.ndarray, case_ids: list[str], has_cases: bool) -> list[Level]:
    """The slide level and, with case ids, the case level (a case's outputs averaged)."""
    cases = list(dict.fromkeys(case_ids))
    pos = {c: i for i, c in enumerate(cases)}
    case_of = np.array([pos[c] for c in case_ids])
    slide_rows = [np.flatnonzero(case_of == i) for i in range(len(cases))]
    levels = [Level("slide", truth, outputs, slide_rows)]
    if has_cases:
        levels.append(Level("case", np.stack([truth[r[0]] for r in slide_rows]),
                             np.stack([outputs[r].mean(0) for r in slide_rows]),
                             [np.array([i]) for i in range(len(cases))]))
    return levels


def outcome_groups(by: str | None, slide_ids: list[str], case_ids: list[str], predictions: str,
                   manifest) -> tuple[str, list] | None:
    """``(by, [(value, its cases)])`` of the column ``by`` (:func:`~abmil.report.bootstrap.by_values`), or None
    without ``by``: the ``groups`` of :func:`write_outcome_evaluation`."""
    if by is None:
        return None
    return by, case_groups(by_values(by, slide_ids, predictions, manifest, case_ids), case_ids)


def _nan(fn, *args, **kwargs):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args, **kwargs)
    except (ValueError, ZeroDivisionError, np.linalg.LinAlgError, Exception):  # sksurv: undefined on this sample
        return None


def write_outcome_evaluation(predictions: str, task_name: str, *, out_dir: str | os.PathLike,
                             manifest: str | os.PathLike | None, source: str, n_slides: int, levels: list[Level],
                             has_cases: bool, n_bootstrap: int, seed: int,
                             metrics: Callable[[np.ndarray, np.ndarray], dict], figure: str,
                             plot: Callable[[Level, str], bytes], meta: dict | None = None,
                             notes: dict[str, str] | None = None, lines: list[str] | None = None,
                             point_only: Sequence[str] = (), groups: tuple[str, list] | None = None
                             ) -> dict[str, Any]:
    """Bootstrap ``metrics(truth, outputs)`` over ``levels`` and write ``out_dir`` (metrics.json/.csv/.md and the
    ``figure`` that ``plot(level, title)`` draws of the last level), all or nothing; returns the JSON's content.
    ``meta``/``notes``: the task's additions to the JSON's meta (after the common keys) and notes (after the
    bootstrap's); ``lines``: the task's lines of the Markdown's list; ``point_only``: metrics reported without an
    interval (a p-value: a bootstrap percentile interval of p is no confidence interval of anything); ``groups``
    (:func:`outcome_groups`): the rows again within each value of a column (``group``; all slides ``all``)."""
    boot = bootstrap(levels, n_bootstrap, seed, metrics) if n_bootstrap else {}
    rows = metric_rows(levels, lambda lv: metrics(lv.labels, lv.probs), boot)
    if groups is not None:
        rows = [{"group": "all", **r} for r in rows] + group_metric_rows(levels, groups[1], n_bootstrap, seed,
                                                                          metrics)
    for r in rows:
        if r["metric"] in point_only:
            r.update(ci_low=None, ci_high=None, n_bootstrap=0, n_skipped=0)
    plot_level = levels[-1]
    m = {"task": task_name, "predictions": predictions, "manifest": None if manifest is None else os.fspath(manifest),
         "labels_from": source, "n_slides": n_slides, "n_cases": len(levels[0].rows_of_case),
         "has_cases": has_cases, "n_bootstrap": n_bootstrap, "seed": seed, "ci_level": CI_LEVEL,
         "plot_level": plot_level.name, "figures": [figure],
         "notes": {"bootstrap": f"{CI_LEVEL:.0%} percentile intervals of {n_bootstrap} bootstrap resamples of the "
                                f"{len(levels[0].rows_of_case)} cases (seed {seed}; a case's slides are drawn "
                                "together); resamples where a metric is undefined are skipped and counted"}}
    if groups is not None:
        m["by"] = groups[0]
    m.update(meta or {})
    m["notes"].update(notes or {})
    result = {"meta": m, "metrics": rows}
    png = plot(plot_level, f"{plot_level.name} level, n = {len(plot_level.labels)}")
    files = {"metrics.json": (json.dumps(result, indent=2) + "\n").encode(), "metrics.csv": rows_csv(result).encode(),
             "metrics.md": _markdown(result, lines or []).encode(), figure: png}
    write_folder(Path(out_dir), files)
    return result


def _markdown(result: dict[str, Any], task_lines: list[str]) -> str:
    m = result["meta"]
    lines = [f"# Evaluation of {m['predictions']} ({m['task']})", "",
             f"- truth: {m['labels_from']}" + (f" ({m['manifest']})" if m["manifest"] else ""),
             f"- slides: {m['n_slides']}; cases: {m['n_cases']}", *task_lines]
    lines += [f"- intervals: {m['notes']['bootstrap']}", f"- figure ({m['plot_level']} level): {m['figures'][0]}", "",
              (f"| {m['by']} " if m.get("by") else "") + "| level | metric | at | value | 95% CI | resamples skipped |",
              ("|---" if m.get("by") else "") + "|---|---|---|---|---|---|"]
    for r in result["metrics"]:
        f = (lambda v: "n/a" if v is None else f"{v:.3g}") if r["metric"] == "logrank_p" else \
            (lambda v: "n/a" if v is None else f"{v:.3f}")
        ci = "n/a" if r["ci_low"] is None else f"{f(r['ci_low'])} – {f(r['ci_high'])}"
        lines.append((f"| {r['group']} " if m.get("by") else "") +
                     f"| {r['level']} | {r['metric']} | {r['class']} | {f(r['value'])} | {ci} | {r['n_skipped']} |")
    return "\n".join(lines) + "\n"
