"""``abmil evaluate`` for class predictions: metrics, bootstrap confidence intervals, calibration, curves.

    abmil evaluate --predictions preds.csv [--manifest CSV] [--threshold T | --run RUN] --out DIR

(:func:`abmil.report.evaluate.evaluate_predictions` asks the predictions' task,
:class:`abmil.tasks.classification.ClassificationTask`, which calls :func:`evaluate_classification`.)

The predictions are ``abmil predict``'s CSV (``slide_id, label, prob_<class>..., predicted``); the labels come
from its ``label`` column or from a manifest joined on ``slide_id``. An optional ``case_id`` column (in either
file) groups slides of one patient:

- metrics are reported per slide (``level = slide``) and, with case ids, per case (``level = case``: a case's
  probability vectors are averaged, its slides must share one label);
- the bootstrap resamples *cases* with replacement (a case with 3 slides is drawn, or not, as one unit), so
  slides of one patient never pretend to be independent; without case ids every slide is its own case.

Metrics (scikit-learn's): AUC (binary: of the positive class, the second ``prob_`` column; multi-class: one-vs-rest
macro and per class), accuracy, balanced accuracy, F1 (binary: positive class; multi-class: macro), Cohen's kappa,
sensitivity and specificity (binary: positive class; multi-class: each class one-vs-rest), Brier score
(binary: positive probability, range [0, 1]; multi-class: sum over classes, range [0, 2]) and ECE (10 equal-width
bins of [0, 1], scikit-learn's ``calibration_curve`` binning, on the positive probability for binary and on the
predicted class's probability for multi-class; weighted by bin size). Predicted class: binary ``p_pos >= threshold``
(default 0.5, or ``--threshold``, or a run's stored threshold); multi-class argmax. (The CSV's ``predicted``
column is not read: the decision is made again from the probabilities.)

Intervals: 95% percentile bootstrap, ``n_bootstrap`` resamples of cases drawn from ``numpy.random.default_rng(seed)``,
the same resamples for every metric and level. A resample where a metric is undefined (e.g. one class only: no
AUC) is skipped for that metric and counted (``n_skipped``).

Everything is read, checked and computed before anything is written; the output files are written into a
temporary folder beside ``out_dir`` and then moved into it.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..slides.manifest import read_manifest
from ..slides.run_folder import THRESHOLD_FILES, read_run_threshold, run_classes
from ..slides.tables import PROB_PREFIX
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
from .metrics import youden_threshold

__all__ = ["ECE_BINS", "LABEL_SOURCES", "Predictions", "THRESHOLD_FILES", "compute_metrics",
           "evaluate_classification", "expected_calibration_error", "read_predictions", "read_run_threshold",
           "youden_threshold"]

ECE_BINS = 10
OUTPUT_FILES = ("metrics.json", "metrics.csv", "metrics.md", "roc.png", "pr.png", "reliability.png")
# predict writes 6 decimals: k rounded values may miss 1 by k * 5e-7; a wider tolerance still catches logits or
# percentages
SUM_TOLERANCE = 1e-3


# ----------------------------------------------------------------------------- reading
@dataclass
class Predictions:
    """The slides to evaluate, in the predictions file's order.

    ``probs`` (n_slides, n_classes) float64, rows summing to 1; ``labels`` (n_slides,) class indices into
    ``classes``; ``case_ids`` (n_slides,) the case of each slide (the slide id itself without case ids).
    """

    slide_ids: list[str]
    classes: list[str]
    probs: np.ndarray
    labels: np.ndarray
    case_ids: list[str]
    has_cases: bool
    labels_from: str


def read_predictions(predictions: str | os.PathLike, *, manifest: str | os.PathLike | None = None,
                     labels_from: str = "auto") -> Predictions:
    """Read and check ``abmil predict``'s CSV and join the labels (and case ids) of ``manifest``.

    ``labels_from``: ``predictions`` (the CSV's ``label`` column), ``manifest`` (the manifest's, joined on
    ``slide_id``) or ``auto`` (the manifest's when one is given, else the CSV's; where both hold a label for a
    slide they must agree). Labels are class names, matched as text against the ``prob_<class>`` columns.
    DataError naming the file, slide and column on anything wrong.
    """
    if labels_from not in LABEL_SOURCES:
        raise ValueError(f"labels_from must be one of {', '.join(LABEL_SOURCES)}, got {labels_from!r}")
    path = os.fspath(predictions)
    columns, rows = _read_table(path, "predictions file")
    classes = [c[len(PROB_PREFIX):] for c in columns if c.startswith(PROB_PREFIX)]
    if len(classes) < 2:
        raise DataError(f"predictions need a {PROB_PREFIX}<class> column per class, at least two "
                        f"(found: {', '.join(columns)})", path=path)
    slide_ids = [cells["slide_id"] for _, cells in rows]

    probs = np.empty((len(rows), len(classes)))
    for i, (line, cells) in enumerate(rows):
        for j, c in enumerate(classes):
            col = PROB_PREFIX + c
            try:
                v = float(cells[col])
            except ValueError:
                raise DataError(f"line {line}: column '{col}': {cells[col]!r} is not a number", path=path,
                                bag=cells["slide_id"]) from None
            if not 0.0 <= v <= 1.0:  # also refuses NaN
                raise DataError(f"line {line}: column '{col}': probability {cells[col]} is not in [0, 1]",
                                path=path, bag=cells["slide_id"])
            probs[i, j] = v
        total = probs[i].sum()
        if abs(total - 1.0) > SUM_TOLERANCE:
            raise DataError(f"line {line}: the {PROB_PREFIX}* columns sum to {total:.6g}, not 1", path=path,
                            bag=cells["slide_id"])

    if len(classes) > 2:  # undo the CSV's rounding (checked above): sklearn's multi-class Brier wants sums of 1
        probs /= probs.sum(1, keepdims=True)

    # labels: {slide_id: (label text, file, column)} from each source that has them
    own = {cells["slide_id"]: cells["label"] for _, cells in rows if cells.get("label")} if "label" in columns \
        else {}
    cases = _case_column(path, rows) if "case_id" in columns else None
    joined: dict[str, str] = {}
    mpath = None
    if manifest is not None:
        mpath = os.fspath(manifest)
        mrows = read_manifest(mpath, require_labels=False, truth_columns=labels_from != "predictions")
        joined = {r.slide_id: r.label for r in mrows}
        missing = [s for s in slide_ids if s not in joined]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DataError(f"slide is in the predictions {path} but not in the manifest{more}", path=mpath,
                            bag=missing[0])
        if any(r.case_id is not None for r in mrows):
            mcases = {r.slide_id: r.case for r in mrows}
            for s in slide_ids:
                if cases is not None and cases[s] != mcases[s]:
                    raise DataError(f"column 'case_id': {cases[s]!r} in the predictions {path}, {mcases[s]!r} in "
                                    "the manifest", path=mpath, bag=s)
            cases = {s: mcases[s] for s in slide_ids}
    elif labels_from == "manifest":
        raise ValueError("labels_from='manifest' needs a manifest")

    source = labels_from if labels_from != "auto" else ("manifest" if manifest is not None else "predictions")
    if source == "predictions" and "label" not in columns:
        raise DataError("predictions have no 'label' column: give a manifest with the slides' labels "
                        "(--manifest)", path=path)
    labels_text, lpath = (own, path) if source == "predictions" else (joined, mpath)
    for s in slide_ids:
        if not labels_text.get(s):
            raise DataError("column 'label' is empty: no label to evaluate the slide against", path=lpath, bag=s)
    if labels_from == "auto" and manifest is not None:
        for s in slide_ids:
            if own.get(s) and own[s] != joined[s]:
                raise DataError(f"column 'label': {own[s]!r} in the predictions {path}, {joined[s]!r} in the "
                                "manifest (choose one with --labels-from)", path=mpath, bag=s)
    index = {c: k for k, c in enumerate(classes)}
    labels = np.empty(len(slide_ids), dtype=np.int64)
    for i, s in enumerate(slide_ids):
        if labels_text[s] not in index:
            raise DataError(f"column 'label': {labels_text[s]!r} is not one of the classes {classes} "
                            f"(the {PROB_PREFIX}* columns of {path})", path=lpath, bag=s)
        labels[i] = index[labels_text[s]]
    present = np.unique(labels)
    if present.size < 2:
        raise DataError(f"column 'label': every slide is of class {classes[present[0]]!r}: AUC and the other "
                        "two-class metrics are undefined with one class", path=lpath)

    case_ids = [cases[s] for s in slide_ids] if cases is not None else list(slide_ids)
    if cases is not None:
        first: dict[str, int] = {}
        for i, c in enumerate(case_ids):
            if c in first and labels[first[c]] != labels[i]:
                raise DataError(f"case {c!r}: its slides have different labels ({classes[labels[first[c]]]!r} for "
                                f"{slide_ids[first[c]]}, {classes[labels[i]]!r})", path=lpath, bag=slide_ids[i])
            first.setdefault(c, i)
    return Predictions(slide_ids, classes, probs, labels, case_ids, cases is not None, source)


# ----------------------------------------------------------------------------- metrics
def expected_calibration_error(correct: np.ndarray, confidence: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE: ``sum_b n_b / n * |mean(correct in b) - mean(confidence in b)|`` over ``n_bins`` equal-width bins of
    [0, 1], binned as ``sklearn.calibration.calibration_curve(strategy="uniform")`` bins (which gives the per-bin
    means but not the bin sizes that weight them). ``correct`` (n,) 0/1, ``confidence`` (n,) in [0, 1]."""
    bins = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(bins[1:-1], confidence)
    total = np.bincount(ids, minlength=n_bins)
    gap = np.bincount(ids, weights=correct, minlength=n_bins) - np.bincount(ids, weights=confidence,
                                                                             minlength=n_bins)
    return float(np.abs(gap).sum() / total.sum())


def calibration_target(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What ECE and the reliability diagram bin: binary ``(label == 1, p_1)``; multi-class the predicted class's
    probability and whether it was right ``(argmax == label, max p)``. Both (n,)."""
    if probs.shape[1] == 2:
        return (labels == 1).astype(np.float64), probs[:, 1]
    return (probs.argmax(1) == labels).astype(np.float64), probs.max(1)


def predicted_classes(probs: np.ndarray, threshold: float | None) -> np.ndarray:
    """(n,) class indices: binary ``p_1 >= threshold``, multi-class argmax."""
    if probs.shape[1] == 2:
        return (probs[:, 1] >= (0.5 if threshold is None else threshold)).astype(np.int64)
    return probs.argmax(1)


def _nan_on_error(fn, *args, **kwargs) -> float:
    """sklearn raises (or warns and returns NaN) where a metric is undefined on the sample: NaN either way."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(fn(*args, **kwargs))
    except ValueError:
        return math.nan


def compute_metrics(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                    threshold: float | None = None) -> dict[tuple[str, str], float]:
    """Every metric of one sample: ``labels`` (n,) class indices, ``probs`` (n, n_classes) -> ``{(metric, class):
    value}``, class ``""`` for the overall metrics. NaN where undefined on this sample (e.g. a class absent)."""
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        brier_score_loss,
        cohen_kappa_score,
        confusion_matrix,
        f1_score,
        roc_auc_score,
    )

    k = probs.shape[1]
    ks = list(range(k))
    pred = predicted_classes(probs, threshold)
    present = np.unique(labels).size
    out: dict[tuple[str, str], float] = {}
    if k == 2:
        out["auc", ""] = _nan_on_error(roc_auc_score, labels, probs[:, 1]) if present == 2 else math.nan
    else:
        out["auc", ""] = (_nan_on_error(roc_auc_score, labels, probs, multi_class="ovr", average="macro", labels=ks)
                          if present == k else math.nan)
    out["accuracy", ""] = float(accuracy_score(labels, pred))
    out["balanced_accuracy", ""] = _nan_on_error(balanced_accuracy_score, labels, pred) if present > 1 else math.nan
    out["f1", ""] = _nan_on_error(f1_score, labels, pred, labels=ks, pos_label=1, zero_division=0,
                                  average="binary" if k == 2 else "macro")
    out["kappa", ""] = _nan_on_error(cohen_kappa_score, labels, pred, labels=ks)
    cm = confusion_matrix(labels, pred, labels=ks)  # rows true, columns predicted
    tp = np.diag(cm).astype(np.float64)
    pos = cm.sum(1)
    neg = cm.sum() - pos
    tn = neg - (cm.sum(0) - tp)

    def ratio(a: float, b: float) -> float:
        return float(a / b) if b > 0 else math.nan

    if k == 2:
        out["sensitivity", ""] = ratio(tp[1], pos[1])
        out["specificity", ""] = ratio(tn[1], neg[1])
    else:
        for j, c in enumerate(classes):
            out["auc", c] = _nan_on_error(roc_auc_score, labels == j, probs[:, j]) if 0 < pos[j] < len(labels) \
                else math.nan
        for j, c in enumerate(classes):
            out["sensitivity", c] = ratio(tp[j], pos[j])
            out["specificity", c] = ratio(tn[j], neg[j])
    out["brier", ""] = (float(brier_score_loss(labels, probs[:, 1], pos_label=1)) if k == 2
                        else float(brier_score_loss(labels, probs, labels=ks)))
    out["ece", ""] = expected_calibration_error(*calibration_target(labels, probs))
    return out


# ----------------------------------------------------------------------------- bootstrap
def _levels(pred: Predictions) -> list[Level]:
    """The slide level, and the case level (mean probabilities per case) when the slides have case ids."""
    cases = list(dict.fromkeys(pred.case_ids))  # first-appearance order
    pos = {c: i for i, c in enumerate(cases)}
    case_of = np.array([pos[c] for c in pred.case_ids])
    slide_rows = [np.flatnonzero(case_of == i) for i in range(len(cases))]
    levels = [Level("slide", pred.labels, pred.probs, slide_rows)]
    if pred.has_cases:
        probs = np.stack([pred.probs[r].mean(0) for r in slide_rows])
        labels = np.array([pred.labels[r[0]] for r in slide_rows])
        levels.append(Level("case", labels, probs, [np.array([i]) for i in range(len(cases))]))
    return levels


# ----------------------------------------------------------------------------- the command
def _threshold(pred: Predictions, threshold: float | None, run: str | os.PathLike | None) -> tuple[float | None, str]:
    """The decision threshold and where it came from."""
    if threshold is not None and run is not None:
        raise ValueError("give either a threshold or a run folder to read it from, not both")
    if run is not None:
        classes = run_classes(run)
        if classes is not None and classes != pred.classes:
            raise DataError(f"the run was trained on classes {classes}, the predictions have {pred.classes}",
                            path=os.fspath(run))
    binary = len(pred.classes) == 2
    if threshold is None and run is None:
        return (0.5, "default") if binary else (None, "argmax")
    if not binary:
        raise ValueError(f"a decision threshold applies to two classes only; the predictions have "
                         f"{len(pred.classes)} ({', '.join(pred.classes)}), predicted by argmax")
    if run is not None:
        t, path = read_run_threshold(run)
        return t, path
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a probability in [0, 1], got {threshold}")
    return float(threshold), "given"


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _markdown(result: dict[str, Any]) -> str:
    m = result["meta"]
    lines = [f"# Evaluation of {m['predictions']}", ""]
    lines += [f"- labels: {m['labels_from']}" + (f" ({m['manifest']})" if m["manifest"] else ""),
              f"- classes: {', '.join(m['classes'])}" + (f"; positive class {m['positive_class']!r}"
                                                         if m["positive_class"] else ""),
              f"- slides: {m['n_slides']}; cases: {m['n_cases']}"
              + ("" if m["has_cases"] else " (no case_id column: each slide is its own case)"),
              f"- decision: {m['decision']}",
              f"- {m['notes']['case_level']}" if m["has_cases"] else "",
              f"- intervals: {m['notes']['bootstrap']}",
              f"- calibration: {m['notes']['calibration']}",
              f"- figures ({m['plot_level']} level): {', '.join(m['figures'])}", ""]
    lines = [ln for ln in lines[:-1] if ln] + [""]
    by = m.get("by")
    lines += [(f"| {by} " if by else "") + "| level | metric | class | value | 95% CI | resamples skipped |",
              ("|---" if by else "") + "|---|---|---|---|---|---|"]
    for r in result["metrics"]:
        ci = "n/a" if r["ci_low"] is None else f"{_fmt(r['ci_low'])} – {_fmt(r['ci_high'])}"
        lines.append((f"| {r['group']} " if by else "") + f"| {r['level']} | {r['metric']} | {r['class']} | "
                     f"{_fmt(r['value'])} | {ci} | {r['n_skipped']} |")
    return "\n".join(lines) + "\n"


def evaluate_classification(predictions_csv: str | os.PathLike, *, out_dir: str | os.PathLike,
                            manifest: str | os.PathLike | None = None, labels_from: str = "auto",
                            threshold: float | None = None, run: str | os.PathLike | None = None,
                            n_bootstrap: int = 1000, seed: int = 0, by: str | None = None) -> dict[str, Any]:
    """Evaluate class predictions (see the module docstring) and write ``out_dir``: ``metrics.json``
    (``{"meta": ..., "metrics": [rows]}``), ``metrics.csv``, ``metrics.md``, ``roc.png``, ``pr.png``,
    ``reliability.png``. Returns the JSON's content. Rows: ``level, metric, class, value, ci_low, ci_high,
    n_bootstrap, n_skipped`` (``class`` ``""`` for overall metrics; None where undefined).

    ``threshold`` or ``run`` (a folder with a stored ``"threshold"``, :func:`read_run_threshold`): the binary
    decision threshold (default 0.5); multi-class predictions take the argmax. ``by``: a column (e.g. ``site``,
    of the predictions file or the manifest, :func:`~abmil.report.bootstrap.by_values`): the rows again within each
    of its values (``group``; the rows of all slides ``all``). Nothing is written on any error.
    """
    from .evaluation_plots import ROC_BAND_RESAMPLES, plot_calibration, plot_pr, plot_roc

    pred = read_predictions(predictions_csv, manifest=manifest, labels_from=labels_from)
    thr, thr_source = _threshold(pred, threshold, run)
    levels = _levels(pred)
    def metrics(labels: np.ndarray, probs: np.ndarray) -> dict:
        return compute_metrics(labels, probs, pred.classes, thr)

    boot = bootstrap(levels, n_bootstrap, seed, metrics) if n_bootstrap else {}
    rows = metric_rows(levels, lambda lv: metrics(lv.labels, lv.probs), boot)
    if by is not None:
        values = by_values(by, pred.slide_ids, predictions_csv, manifest, pred.case_ids)
        rows = [{"group": "all", **r} for r in rows] + group_metric_rows(
            levels, case_groups(values, pred.case_ids), n_bootstrap, seed, metrics)

    binary = len(pred.classes) == 2
    plot_level = levels[-1]  # the case level where there is one: the unit the intervals are about
    decision = (f"predicted {pred.classes[1]!r} when prob_{pred.classes[1]} >= {thr:g} ({thr_source})" if binary
                else "predicted class = argmax of the probabilities")
    figures = ["roc.png", "pr.png", "reliability.png"]
    meta = {
        "predictions": os.fspath(predictions_csv), "manifest": None if manifest is None else os.fspath(manifest),
        "labels_from": pred.labels_from, "classes": pred.classes,
        "positive_class": pred.classes[1] if binary else None,
        "threshold": thr, "threshold_source": thr_source, "decision": decision,
        "n_slides": len(pred.slide_ids), "n_cases": len(levels[0].rows_of_case), "has_cases": pred.has_cases,
        "class_counts": {lv.name: {c: int((lv.labels == j).sum()) for j, c in enumerate(pred.classes)}
                         for lv in levels},
        "n_bootstrap": n_bootstrap, "seed": seed, "ci_level": CI_LEVEL, "ece_bins": ECE_BINS,
        **({} if by is None else {"by": by}), "plot_level": plot_level.name, "figures": figures,
        "roc_band": {"n_bootstrap": ROC_BAND_RESAMPLES, "seed": seed, "level": plot_level.name,
                     "method": "pointwise 95 % percentile band of the sensitivity at 101 false positive rates, rows "
                               "resampled (abmil.report.evaluation_plots.roc_band)"},
        "notes": {
            "case_level": "case level: the mean of each case's slide probability vectors, then the same "
                          "metrics and threshold",
            "bootstrap": f"{CI_LEVEL:.0%} percentile intervals of {n_bootstrap} bootstrap resamples of the "
                         f"{len(levels[0].rows_of_case)} cases (seed {seed}; a case's slides are drawn together); "
                         "resamples where a metric is undefined (e.g. one class) are skipped and counted",
            "calibration": f"ECE over {ECE_BINS} equal-width bins of [0, 1] of "
                           + (f"prob_{pred.classes[1]}" if binary else "the predicted class's probability")
                           + ", weighted by bin size; Brier score "
                           + ("of the positive probability (range 0-1)" if binary
                              else "summed over classes (range 0-2)"),
        },
    }
    result = {"meta": meta, "metrics": rows}

    # everything is known: render and write
    files = {"metrics.json": (json.dumps(result, indent=2) + "\n").encode(),
             "metrics.csv": rows_csv(result).encode(), "metrics.md": _markdown(result).encode()}
    title = f"{plot_level.name} level, n = {len(plot_level.labels)}"
    files["roc.png"] = plot_roc(plot_level.labels, plot_level.probs, pred.classes, title=title,
                                threshold=thr if binary else None, n_bootstrap=ROC_BAND_RESAMPLES, seed=seed)
    files["pr.png"] = plot_pr(plot_level.labels, plot_level.probs, pred.classes, title=title)
    files["reliability.png"] = plot_calibration(*calibration_target(plot_level.labels, plot_level.probs),
                                                binary=binary, positive=pred.classes[1], n_bins=ECE_BINS,
                                                title=title)
    write_folder(Path(out_dir), files)
    return result
