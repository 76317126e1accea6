"""``abmil evaluate`` for survival and regression predictions: metrics with case-bootstrap intervals, and figures.

Survival (``abmil predict``'s ``slide_id, time, event, risk[, surv_<t>...]``), with scikit-survival (the
``survival`` extra: ``pip install scikit-survival``): one well-kept, scikit-learn-style library that has all of
Harrell's and Uno's concordance, the time-dependent AUC, the integrated Brier score, Kaplan-Meier and the log-rank test.

- ``c_index_harrell``: ``concordance_index_censored(event, time, risk)``;
- ``c_index_uno``: ``concordance_index_ipcw`` truncated at ``tau`` = the last evaluation time; its censoring
  distribution is the Kaplan-Meier estimate of the *evaluated* set (no separate training set is at hand);
- ``auc`` at each evaluation time (class ``t=<time>``) and ``mean_auc``: ``cumulative_dynamic_auc``;
- ``ibs`` (where the predictions have ``surv_<t>`` columns, the discrete-time model's ``S(t)``, linear between its
  bin ends): ``integrated_brier_score`` over 50 times evenly spaced between the 10th and 90th percentiles of the
  observed times;
- ``logrank_p``: the log-rank test (``compare_survival``) of the risk groups (``risk_groups`` 2: split at the
  median risk; 3: tertiles), whose Kaplan-Meier curves (``kaplan_meier_estimator``) are drawn in ``km.png``.

Evaluation times: ``times`` or the quartiles of the event times, kept within the follow-up (sksurv's rule).

Regression (``slide_id, target, predicted``): MAE, RMSE, R² (scikit-learn), Pearson's r and Spearman's rho (SciPy);
``scatter.png``.

Truth: the predictions' own columns or a manifest's (joined on ``slide_id``, as for classes: ``labels_from``);
with ``case_id`` the case level averages a case's risks (and survival functions) or predictions, and the bootstrap
(:func:`abmil.report.evaluate.bootstrap`, the same resampling of cases) draws cases.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, optional_import
from .evaluate import (
    CI_LEVEL,
    LABEL_SOURCES,
    _case_column,
    _csv,
    _Level,
    _read_table,
    _write_folder,
    bootstrap,
    metric_rows,
)

__all__ = ["IBS_POINTS", "evaluate_outcomes", "regression_metrics", "survival_metrics"]

IBS_POINTS = 50
SURV_PREFIX = "surv_"


def _sksurv():
    optional_import("sksurv", "survival", "evaluating survival predictions")


def _number(cells: dict, column: str, line: int, path: str, *, non_negative: bool = False) -> float:
    text = cells.get(column, "")
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or (non_negative and v < 0):
        what = "a finite number >= 0" if non_negative else "a finite number"
        raise DataError(f"line {line}: column '{column}': {text!r} is not {what}", path=path, bag=cells["slide_id"])
    return v


def _truth_columns(task: str) -> tuple[str, ...]:
    return ("time", "event") if task == "survival" else ("target",)


def _read(predictions: str, task: str, manifest: str | None, labels_from: str):
    """(slide ids, truth (n, 2) time/event or (n,) target, outputs (n, k), case ids, has cases, source, surv times)."""
    if labels_from not in LABEL_SOURCES:
        raise ValueError(f"labels_from must be one of {', '.join(LABEL_SOURCES)}, got {labels_from!r}")
    columns, rows = _read_table(predictions, "predictions file")
    slide_ids = [cells["slide_id"] for _, cells in rows]
    if task == "survival":
        surv_cols = [c for c in columns if c.startswith(SURV_PREFIX)]
        try:
            surv_times = np.array([float(c[len(SURV_PREFIX):]) for c in surv_cols])
        except ValueError:
            raise DataError(f"columns {', '.join(surv_cols)}: {SURV_PREFIX}<time> needs a number", path=predictions) \
                from None
        out_cols = ["risk", *surv_cols]
    else:
        surv_times, out_cols = np.zeros(0), ["predicted"]
    outputs = np.array([[_number(cells, c, line, predictions) for c in out_cols] for line, cells in rows])

    truth_cols = _truth_columns(task)
    cases = _case_column(predictions, rows) if "case_id" in columns else None
    source_rows, source_path = rows, predictions
    source = labels_from if labels_from != "auto" else ("manifest" if manifest is not None else "predictions")
    if manifest is not None:
        mpath = os.fspath(manifest)
        mcolumns, mrows = _read_table(mpath, "manifest")
        known = {cells["slide_id"] for _, cells in mrows}
        missing = [s for s in slide_ids if s not in known]
        if missing:
            raise DataError(f"slide is in the predictions {predictions} but not in the manifest", path=mpath,
                            bag=missing[0])
        if "case_id" in mcolumns:
            mcases = _case_column(mpath, mrows)
            cases = {s: mcases[s] for s in slide_ids}
        if source == "manifest":
            source_rows, source_path, columns = mrows, mpath, mcolumns
    elif source == "manifest":
        raise ValueError("labels_from='manifest' needs a manifest")
    absent = [c for c in truth_cols if c not in columns]
    if absent:
        raise DataError(f"no {', '.join(absent)} column(s) to evaluate the {task} predictions against "
                        + ("(give --manifest)" if source == "predictions" else ""), path=source_path)
    by_id = {cells["slide_id"]: (line, cells) for line, cells in source_rows}
    truth = []
    for s in slide_ids:
        line, cells = by_id[s]
        for c in truth_cols:
            if not cells.get(c):
                raise DataError(f"line {line}: column '{c}' is empty: nothing to evaluate the slide against",
                                path=source_path, bag=s)
        if task == "survival":
            time = _number(cells, "time", line, source_path, non_negative=True)
            if cells["event"] not in ("0", "1", "0.0", "1.0"):
                raise DataError(f"line {line}: column 'event': {cells['event']!r} is not 0 (censored) or 1 (event)",
                                path=source_path, bag=s)
            truth.append((time, float(cells["event"])))
        else:
            truth.append(_number(cells, "target", line, source_path))
    truth = np.asarray(truth, dtype=np.float64)
    if task == "survival" and not truth[:, 1].any():
        raise DataError("column 'event': every slide is censored (event 0): no concordance to measure",
                        path=source_path)
    case_ids = [cases[s] for s in slide_ids] if cases is not None else list(slide_ids)
    if cases is not None:
        first: dict[str, int] = {}
        for i, c in enumerate(case_ids):
            if c in first and not np.array_equal(truth[first[c]], truth[i]):
                raise DataError(f"case {c!r}: its slides have different {'/'.join(truth_cols)}", path=source_path,
                                bag=slide_ids[i])
            first.setdefault(c, i)
    return slide_ids, truth, outputs, case_ids, cases is not None, source, surv_times


def _levels(truth: np.ndarray, outputs: np.ndarray, case_ids: list[str], has_cases: bool) -> list[_Level]:
    cases = list(dict.fromkeys(case_ids))
    pos = {c: i for i, c in enumerate(cases)}
    case_of = np.array([pos[c] for c in case_ids])
    slide_rows = [np.flatnonzero(case_of == i) for i in range(len(cases))]
    levels = [_Level("slide", truth, outputs, slide_rows)]
    if has_cases:
        levels.append(_Level("case", np.stack([truth[r[0]] for r in slide_rows]),
                             np.stack([outputs[r].mean(0) for r in slide_rows]),
                             [np.array([i]) for i in range(len(cases))]))
    return levels


def _nan(fn, *args, **kwargs):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args, **kwargs)
    except (ValueError, ZeroDivisionError, np.linalg.LinAlgError, Exception):  # sksurv: undefined on this sample
        return None


def risk_groups_of(risk: np.ndarray, groups: int) -> np.ndarray:
    """(n,) group 0 (lowest risk) .. groups - 1: split at the median (2) or the tertiles (3) of ``risk``."""
    cuts = np.quantile(risk, np.arange(1, groups) / groups)
    return np.searchsorted(cuts, risk, side="right")


def survival_metrics(truth: np.ndarray, outputs: np.ndarray, times: np.ndarray, surv_times: np.ndarray,
                     groups: int = 2) -> dict[tuple[str, str], float]:
    """The survival metrics of one sample (see the module docstring): ``truth`` (n, 2) time/event, ``outputs``
    (n, 1 + k) risk and ``S`` at ``surv_times`` (k,), ``times`` the evaluation times. NaN where undefined."""
    from sksurv.compare import compare_survival
    from sksurv.metrics import (
        concordance_index_censored,
        concordance_index_ipcw,
        cumulative_dynamic_auc,
        integrated_brier_score,
    )
    from sksurv.util import Surv

    time, event = truth[:, 0], truth[:, 1].astype(bool)
    risk = outputs[:, 0]
    y = Surv.from_arrays(event, time)
    out: dict[tuple[str, str], float] = {}
    c = _nan(concordance_index_censored, event, time, risk)
    out["c_index_harrell", ""] = math.nan if c is None else float(c[0])
    ok = times[(times >= time.min()) & (times < time.max())]
    c = _nan(concordance_index_ipcw, y, y, risk, tau=float(times.max())) if times.size else None
    out["c_index_uno", ""] = math.nan if c is None else float(c[0])
    auc = _nan(cumulative_dynamic_auc, y, y, risk, ok) if ok.size else None
    for t in times:
        k = np.flatnonzero(ok == t)
        out["auc", f"t={t:g}"] = math.nan if auc is None or not k.size else float(np.asarray(auc[0])[k[0]])
    out["mean_auc", ""] = math.nan if auc is None else float(auc[1])
    if surv_times.size:
        lo, hi = np.percentile(time, [10, 90])
        grid = np.linspace(lo, hi, IBS_POINTS)
        grid = grid[(grid >= time.min()) & (grid < time.max())]
        surv = np.stack([np.interp(grid, np.concatenate([[0.0], surv_times]), np.concatenate([[1.0], s]))
                         for s in outputs[:, 1:]])
        ibs = _nan(integrated_brier_score, y, y, surv, grid) if grid.size > 1 else None
        out["ibs", ""] = math.nan if ibs is None else float(ibs)
    g = risk_groups_of(risk, groups)
    p = _nan(compare_survival, y, g) if np.unique(g).size > 1 else None
    out["logrank_p", ""] = math.nan if p is None else float(p[1])
    return out


def regression_metrics(truth: np.ndarray, outputs: np.ndarray) -> dict[tuple[str, str], float]:
    from .metrics import regression_metrics as metrics

    return {(k, ""): v for k, v in metrics(truth, outputs[:, 0]).items()}


def evaluation_times(truth: np.ndarray, times: Sequence[float] | None) -> np.ndarray:
    """``times``, or the quartiles of the event times."""
    if times is not None:
        t = np.asarray(sorted(float(x) for x in times))
        if t.size == 0 or not np.all(np.isfinite(t)) or np.any(t <= 0):
            raise ValueError(f"--times must be positive numbers, got {list(times)}")
        return t
    return np.quantile(truth[truth[:, 1] > 0, 0], [0.25, 0.5, 0.75])


def evaluate_outcomes(predictions_csv: str | os.PathLike, task: str, *, out_dir: str | os.PathLike,
                      manifest: str | os.PathLike | None = None, labels_from: str = "auto",
                      run: str | os.PathLike | None = None, n_bootstrap: int = 1000, seed: int = 0,
                      times: Sequence[float] | None = None, risk_groups: int = 2) -> dict[str, Any]:
    """Evaluate survival or regression predictions and write ``out_dir`` (metrics.json/.csv/.md and ``km.png`` or
    ``scatter.png``), all or nothing. ``run``: checked to be a run of this task. Returns the JSON's content."""
    from .evaluate import CSV_COLUMNS  # noqa: F401 (the rows have evaluate's columns)

    if task == "survival":
        _sksurv()
    if risk_groups not in (2, 3):
        raise ValueError(f"--risk-groups must be 2 (median split) or 3 (tertiles), got {risk_groups}")
    if run is not None:
        _check_run_task(run, task)
    path = os.fspath(predictions_csv)
    slide_ids, truth, outputs, case_ids, has_cases, source, surv_times = _read(
        path, task, None if manifest is None else os.fspath(manifest), labels_from)
    levels = _levels(truth, outputs, case_ids, has_cases)
    if task == "survival":
        eval_times = evaluation_times(truth, times)

        def metrics(y, o):
            return survival_metrics(y, o, eval_times, surv_times, risk_groups)
    else:
        eval_times = None

        def metrics(y, o):
            return regression_metrics(y, o)

    boot = bootstrap(levels, [], None, n_bootstrap, seed, metrics=metrics) if n_bootstrap else {}
    rows = metric_rows(levels, lambda lv: metrics(lv.labels, lv.probs), boot)
    plot_level = levels[-1]
    figure = "km.png" if task == "survival" else "scatter.png"
    meta = {"task": task, "predictions": path, "manifest": None if manifest is None else os.fspath(manifest),
            "labels_from": source, "n_slides": len(slide_ids), "n_cases": len(levels[0].rows_of_case),
            "has_cases": has_cases, "n_bootstrap": n_bootstrap, "seed": seed, "ci_level": CI_LEVEL,
            "plot_level": plot_level.name, "figures": [figure],
            "notes": {"bootstrap": f"{CI_LEVEL:.0%} percentile intervals of {n_bootstrap} bootstrap resamples of the "
                                   f"{len(levels[0].rows_of_case)} cases (seed {seed}; a case's slides are drawn "
                                   "together); resamples where a metric is undefined are skipped and counted"}}
    if task == "survival":
        meta.update({"times": [float(t) for t in eval_times], "risk_groups": risk_groups,
                     "n_events": int(levels[0].labels[:, 1].sum()),
                     "censored_fraction": float(1 - levels[0].labels[:, 1].mean()),
                     "has_survival_function": bool(surv_times.size)})
        meta["notes"]["survival"] = (
            "c_index_harrell: sksurv concordance_index_censored; c_index_uno: concordance_index_ipcw with tau = the "
            "last evaluation time and the censoring distribution of the evaluated set; auc: cumulative_dynamic_auc at "
            "each time; ibs: integrated_brier_score over 50 times between the 10th and 90th percentiles of the "
            "observed times (S(t) linear between the surv_<t> columns); logrank_p: compare_survival of the "
            + ("median split" if risk_groups == 2 else "tertiles") + " of the risk")
    result = {"meta": meta, "metrics": rows}
    title = f"{plot_level.name} level, n = {len(plot_level.labels)}"
    png = (plot_km(plot_level.labels, plot_level.probs[:, 0], risk_groups, title=title) if task == "survival"
           else plot_scatter(plot_level.labels, plot_level.probs[:, 0], title=title))
    files = {"metrics.json": (json.dumps(result, indent=2) + "\n").encode(), "metrics.csv": _csv(result).encode(),
             "metrics.md": _markdown(result).encode(), figure: png}
    _write_folder(Path(out_dir), files)
    return result


def _check_run_task(run: str | os.PathLike, task: str) -> None:
    """A run (its checkpoint.json, or a study's first fold) must be of ``task``."""
    run = Path(run)
    candidates = [run / "checkpoint.json", *sorted(run.glob("folds/*/checkpoint.json"))[:1]]
    for path in candidates:
        if path.is_file():
            try:
                head = json.loads(path.read_text(encoding="utf-8")).get("head") or {}
            except (OSError, ValueError) as e:
                raise DataError(f"not a readable JSON file ({e})", path=str(path)) from None
            found = head.get("task", "classification")
            if found != task:
                raise DataError(f"the run was trained for {found}, the predictions are {task} predictions",
                                path=os.fspath(run))
            return
    raise DataError("no checkpoint.json of `abmil train` in the run folder", path=os.fspath(run))


def _markdown(result: dict[str, Any]) -> str:
    m = result["meta"]
    lines = [f"# Evaluation of {m['predictions']} ({m['task']})", "",
             f"- truth: {m['labels_from']}" + (f" ({m['manifest']})" if m["manifest"] else ""),
             f"- slides: {m['n_slides']}; cases: {m['n_cases']}"]
    if m["task"] == "survival":
        lines += [f"- events: {m['n_events']} (censored {m['censored_fraction']:.0%}); times: "
                  f"{', '.join(f'{t:g}' for t in m['times'])}", f"- {m['notes']['survival']}"]
    lines += [f"- intervals: {m['notes']['bootstrap']}", f"- figure ({m['plot_level']} level): {m['figures'][0]}", "",
              "| level | metric | at | value | 95% CI | resamples skipped |", "|---|---|---|---|---|---|"]
    for r in result["metrics"]:
        f = (lambda v: "n/a" if v is None else f"{v:.3g}") if r["metric"] == "logrank_p" else \
            (lambda v: "n/a" if v is None else f"{v:.3f}")
        ci = "n/a" if r["ci_low"] is None else f"{f(r['ci_low'])} – {f(r['ci_high'])}"
        lines.append(f"| {r['level']} | {r['metric']} | {r['class']} | {f(r['value'])} | {ci} | {r['n_skipped']} |")
    return "\n".join(lines) + "\n"


def plot_km(truth: np.ndarray, risk: np.ndarray, groups: int, *, title: str, time_unit: str | None = None) -> bytes:
    """Kaplan-Meier curves of the risk groups (:func:`risk_groups_of`) with their 95 % pointwise bands (log-log,
    ``kaplan_meier_estimator(conf_type="log-log")``), a tick at each censored time, the numbers at risk under the
    axis and the log-rank p (a p-value: no interval), as PNG bytes. ``time_unit``: named on the time axis."""
    from sksurv.compare import compare_survival
    from sksurv.nonparametric import kaplan_meier_estimator
    from sksurv.util import Surv

    from .evaluation_plots import _png, numbers_at_risk
    from .plots import _pyplot

    plt = _pyplot()
    time, event = truth[:, 0], truth[:, 1].astype(bool)
    g = risk_groups_of(risk, groups)
    names = ["low risk", "high risk"] if groups == 2 else ["low risk", "middle", "high risk"]
    fig, (ax, table) = plt.subplots(2, 1, figsize=(5.8, 5.4), gridspec_kw={"height_ratios": [4, 1], "hspace": 0.45})
    ticks = np.linspace(0.0, float(time.max()), 5)
    rows = []
    for k in range(groups):
        m = g == k
        if not m.any():
            continue
        t, s, (lo, hi) = kaplan_meier_estimator(event[m], time[m], conf_type="log-log")
        t0 = np.concatenate([[0.0], t])
        (line,) = ax.step(t0, np.concatenate([[1.0], s]), where="post",
                          label=f"{names[k]} (n = {int(m.sum())}, {int(event[m].sum())} events)")
        ax.fill_between(t0, np.concatenate([[1.0], lo]), np.concatenate([[1.0], hi]), step="post",
                        color=line.get_color(), alpha=0.15, lw=0)
        censored = time[m][~event[m]]
        at = np.searchsorted(t, censored, side="right") - 1  # the step's value at a censored time: S(t) just after
        ax.plot(censored, np.where(at >= 0, s[np.maximum(at, 0)], 1.0), "|", color=line.get_color(), ms=7,
                mew=1.2)
        rows.append((names[k], line.get_color(), numbers_at_risk(time[m], ticks).tolist()))
    p = _nan(compare_survival, Surv.from_arrays(event, time), g) if np.unique(g).size > 1 else None
    unit = f" ({time_unit})" if time_unit else ""
    ax.set_xlabel(f"time{unit}; | censored; bands: 95 % pointwise (log-log)", fontsize=8)
    ax.set_ylabel("survival (Kaplan-Meier)")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, float(time.max()) * 1.02)
    ax.set_title(f"{title}; log-rank p = {p[1]:.3g}" if p is not None else title, fontsize=9)
    ax.legend(fontsize=8)
    table.set_xlim(ax.get_xlim())
    table.set_ylim(-0.5, len(rows) - 0.5)
    table.axis("off")
    table.set_title("number at risk", fontsize=8, loc="left")
    for r, (name, colour, counts) in enumerate(reversed(rows)):
        table.text(-0.06 * float(time.max()), r, name, ha="right", va="center", fontsize=8, color=colour)
        for x, c in zip(ticks, counts):
            table.text(x, r, str(c), ha="center", va="center", fontsize=8, color=colour)
    return _png(fig)


def plot_scatter(target: np.ndarray, pred: np.ndarray, *, title: str) -> bytes:
    """Predicted against true values with the identity line, as PNG bytes."""
    from .evaluation_plots import _png
    from .plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(target, pred, s=12, alpha=0.7)
    lo, hi = float(min(target.min(), pred.min())), float(max(target.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel("target")
    ax.set_ylabel("predicted")
    ax.set_title(title, fontsize=9)
    return _png(fig)
