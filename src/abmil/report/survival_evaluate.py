"""``abmil evaluate`` for survival predictions, with scikit-survival (the ``survival`` extra:
``pip install scikit-survival``).

Survival predictions are ``abmil predict``'s ``slide_id, time, event, risk[, surv_<t>...]``
(:class:`abmil.tasks.survival.SurvivalTask`, which calls :func:`evaluate_survival`); scikit-survival is one well-kept,
scikit-learn-style library that has all of Harrell's and Uno's concordance, the time-dependent AUC, the integrated
Brier score, Kaplan-Meier and the log-rank test.

- ``c_index_harrell``: ``concordance_index_censored(event, time, risk)``;
- ``c_index_uno``: ``concordance_index_ipcw`` truncated at ``tau`` = the last evaluation time; its censoring
  distribution is the Kaplan-Meier estimate of the *evaluated* set (no separate training set is at hand);
- ``auc`` at each evaluation time (class ``t=<time>``) and ``mean_auc``: ``cumulative_dynamic_auc``;
- ``ibs`` (where the predictions have ``surv_<t>`` columns, the discrete-time model's ``S(t)``, linear between its
  bin ends): ``integrated_brier_score`` over 50 times evenly spaced between the 10th and 90th percentiles of the
  observed times;
- ``logrank_p``: the log-rank test (``compare_survival``) of the risk groups (``risk_groups`` 2: split at the
  median risk; 3: tertiles), whose Kaplan-Meier curves (``kaplan_meier_estimator``) are drawn in ``km.png``.

Evaluation times: ``times`` or the quartiles of the event times, kept within the follow-up (sksurv's rule). The truth,
case level and bootstrap: :mod:`abmil.report.outcome_evaluate`.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import DataError, optional_import
from ..slides.tables import SURV_PREFIX
from .outcome_evaluate import _nan, outcome_groups, outcome_levels, read_outcomes, write_outcome_evaluation

__all__ = ["IBS_POINTS", "evaluate_survival", "evaluation_times", "plot_km", "risk_groups_of", "survival_metrics"]

IBS_POINTS = 50


def _sksurv():
    optional_import("sksurv", "survival", "evaluating survival predictions")


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


def evaluation_times(truth: np.ndarray, times: Sequence[float] | None) -> np.ndarray:
    """``times``, or the quartiles of the event times."""
    if times is not None:
        t = np.asarray(sorted(float(x) for x in times))
        if t.size == 0 or not np.all(np.isfinite(t)) or np.any(t <= 0):
            raise ValueError(f"--times must be positive numbers, got {list(times)}")
        return t
    return np.quantile(truth[truth[:, 1] > 0, 0], [0.25, 0.5, 0.75])


def evaluate_survival(predictions_csv: str | os.PathLike, task, *, out_dir: str | os.PathLike,
                      manifest: str | os.PathLike | None = None, labels_from: str = "auto", n_bootstrap: int = 1000,
                      seed: int = 0, times: Sequence[float] | None = None, risk_groups: int = 2,
                      time_unit: str | None = None, by: str | None = None) -> dict[str, Any]:
    """Evaluate survival predictions (``task``: their task, :class:`~abmil.tasks.survival.SurvivalTask`) and write
    ``out_dir`` (metrics.json/.csv/.md and ``km.png``), all or nothing; returns the JSON's content. ``logrank_p``
    has no interval (a p-value); ``time_unit`` (e.g. months) is named on km.png's time axis and in the meta."""
    _sksurv()
    if risk_groups not in (2, 3):
        raise ValueError(f"--risk-groups must be 2 (median split) or 3 (tertiles), got {risk_groups}")
    path = os.fspath(predictions_csv)
    slide_ids, truth, outputs, case_ids, has_cases, source, out_cols = read_outcomes(
        path, task, None if manifest is None else os.fspath(manifest), labels_from)
    surv_times = np.array([float(c[len(SURV_PREFIX):]) for c in out_cols[1:]])
    if not truth[:, 1].any():
        raise DataError("column 'event': every slide is censored (event 0): no concordance to measure",
                        path=os.fspath(manifest) if source == "manifest" else path)
    levels = outcome_levels(truth, outputs, case_ids, has_cases)
    eval_times = evaluation_times(truth, times)
    meta = {"times": [float(t) for t in eval_times], "risk_groups": risk_groups,
            "n_events": int(levels[0].labels[:, 1].sum()),
            "censored_fraction": float(1 - levels[0].labels[:, 1].mean()),
            "has_survival_function": bool(surv_times.size), "time_unit": time_unit}
    note = ("c_index_harrell: sksurv concordance_index_censored; c_index_uno: concordance_index_ipcw with tau = the "
            "last evaluation time and the censoring distribution of the evaluated set; auc: cumulative_dynamic_auc at "
            "each time; ibs: integrated_brier_score over 50 times between the 10th and 90th percentiles of the "
            "observed times (S(t) linear between the surv_<t> columns); logrank_p: compare_survival of the "
            + ("median split" if risk_groups == 2 else "tertiles") + " of the risk")
    lines = [f"- events: {meta['n_events']} (censored {meta['censored_fraction']:.0%}); times: "
             f"{', '.join(f'{t:g}' for t in meta['times'])}" + (f" {time_unit}" if time_unit else ""), f"- {note}"]
    return write_outcome_evaluation(
        path, task.name, out_dir=out_dir, manifest=manifest, source=source, n_slides=len(slide_ids), levels=levels,
        has_cases=has_cases, n_bootstrap=n_bootstrap, seed=seed,
        groups=outcome_groups(by, slide_ids, case_ids, path, manifest),
        metrics=lambda y, o: survival_metrics(y, o, eval_times, surv_times, risk_groups), figure="km.png",
        plot=lambda level, title: plot_km(level.labels, level.probs[:, 0], risk_groups, title=title,
                                          time_unit=time_unit),
        meta=meta, notes={"survival": note}, lines=lines, point_only=("logrank_p",))


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
