"""Paired comparison of studies on the same cases: ``abmil compare``.

    abmil compare RUN_A RUN_B [RUN_C ...] --out DIR [--bootstrap 1000] [--seed 0] [--manifest CSV --by site]

Each run is a cross-validation study (its ``oof.csv``) or a predictions CSV. The runs must hold the same slides with
the same truth (refused otherwise, naming the differing slides). Every later run is compared with the first:

- the paired difference ``B - A`` of every metric of the task (:func:`abmil.report.class_evaluate.compute_metrics`;
  survival Harrell's C), with a 95 % paired case-bootstrap interval: each resample draws cases once and scores both
  runs on the very same draws (:func:`abmil.report.bootstrap.bootstrap` over the two runs' outputs side by side);
- for two classes, DeLong's test of the AUC difference (:mod:`abmil.report.delong`);
- with ``by`` (a manifest column, e.g. ``site``), the same rows within each of its groups;
- a figure of the runs' ROC curves (classification).

Outputs, written all or nothing: ``compare.json``, ``compare.csv``, ``compare.md`` and ``roc.png``.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..tasks import Task
from .bootstrap import CI_LEVEL, bootstrap, write_folder
from .outcome_evaluate import outcome_levels

__all__ = ["COMPARE_COLUMNS", "RunPredictions", "compare_runs", "read_run_predictions"]

COMPARE_COLUMNS = ("group", "level", "metric", "class", "run_a", "run_b", "value_a", "value_b", "difference",
                   "ci_low", "ci_high", "n_bootstrap", "delong_z", "delong_p")


@dataclass
class RunPredictions:
    """One run's out-of-fold predictions, one row per slide: ``truth`` (n,) class indices or (n, 2) time/event,
    ``scores`` (n, k) class probabilities or (n, 1) risk."""

    name: str
    path: str
    task: type[Task]
    slide_ids: list[str]
    case_ids: list[str]
    has_cases: bool
    classes: list[str]
    truth: np.ndarray
    scores: np.ndarray


def _predictions_file(run: str | os.PathLike) -> Path:
    from ..slides.run_folder import OOF_CSV

    path = Path(run)
    if path.is_dir():
        if not (path / OOF_CSV).is_file():
            raise DataError(f"no {OOF_CSV} here: compare takes finished cross-validation studies (abmil train "
                            "--folds) or predictions CSVs", path=os.fspath(path))
        return path / OOF_CSV
    if not path.is_file():
        raise DataError("no such run folder or predictions file", path=os.fspath(path))
    return path


def read_run_predictions(run: str | os.PathLike, manifest: str | os.PathLike | None = None) -> RunPredictions:
    """A study's ``oof.csv`` (or a predictions CSV) read by its task
    (:meth:`~abmil.tasks.base.Task.scored_predictions`), the truth joined from ``manifest`` when given."""
    from ..slides.predictions import predictions_task

    path = _predictions_file(run)
    task = predictions_task(path)
    slide_ids, case_ids, has_cases, classes, truth, scores = task.scored_predictions(
        os.fspath(path), None if manifest is None else os.fspath(manifest))
    return RunPredictions(os.fspath(run), os.fspath(path), task, slide_ids, case_ids, has_cases, classes, truth,
                          scores)


def _check_same_cases(a: RunPredictions, b: RunPredictions) -> np.ndarray:
    """Positions of ``a``'s slides in ``b``; DataError naming the slides only one holds, or of other truth."""
    if a.task != b.task or a.classes != b.classes:
        raise DataError(f"{b.name} is a {b.task.name} run with classes {b.classes}, {a.name} a {a.task.name} run "
                        f"with classes {a.classes}: compare runs of one task and the same classes", path=b.path)
    if len(set(b.slide_ids)) != len(b.slide_ids) or len(set(a.slide_ids)) != len(a.slide_ids):
        raise DataError("a slide appears twice (a study of several --repeats): compare one repeat's predictions",
                        path=b.path if len(set(b.slide_ids)) != len(b.slide_ids) else a.path)
    only_a = sorted(set(a.slide_ids) - set(b.slide_ids))
    only_b = sorted(set(b.slide_ids) - set(a.slide_ids))
    if only_a or only_b:
        parts = [f"{len(s)} only in {run} ({', '.join(s[:5])}{' ...' if len(s) > 5 else ''})"
                 for s, run in ((only_a, a.name), (only_b, b.name)) if s]
        raise DataError("the runs hold different slides: " + "; ".join(parts) + ": compare runs on the same cases",
                        path=b.path)
    where = {s: i for i, s in enumerate(b.slide_ids)}
    order = np.array([where[s] for s in a.slide_ids])
    differ = [s for i, s in enumerate(a.slide_ids) if not np.array_equal(a.truth[i], b.truth[order[i]])]
    if differ:
        raise DataError(f"the runs give slides different truth ({', '.join(differ[:5])}): compare runs on the same "
                        "labels", path=b.path)
    cases_b = [b.case_ids[i] for i in order]
    if a.has_cases and b.has_cases and cases_b != a.case_ids:
        bad = next(s for s, x, y in zip(a.slide_ids, a.case_ids, cases_b) if x != y)
        raise DataError(f"slide {bad!r} belongs to different cases in the two runs", path=b.path)
    return order


def _two_classes(run: RunPredictions) -> bool:
    """Class probabilities of two classes: DeLong's test and the ROC figure apply."""
    return run.task.has_classes and len(run.classes) == 2


def _plain(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _pair_rows(a: RunPredictions, b: RunPredictions, order: np.ndarray, rows: np.ndarray, group: str,
               n_bootstrap: int, seed: int) -> list[dict[str, Any]]:
    """The rows of one pair of runs over the slides ``rows`` (positions in ``a``)."""
    k = a.scores.shape[1]
    metrics = a.task.comparison_metrics(a.classes)
    both = np.concatenate([a.scores[rows], b.scores[order[rows]]], 1)  # side by side: one draw scores both

    def paired(truth: np.ndarray, scores: np.ndarray) -> dict:
        ma, mb = metrics(truth, scores[:, :k]), metrics(truth, scores[:, k:])
        return {key: mb[key] - ma[key] for key in ma}

    levels = outcome_levels(a.truth[rows], both, [a.case_ids[i] for i in rows], a.has_cases)
    boot = bootstrap(levels, n_bootstrap, seed, paired)
    lo_q, hi_q = 100 * (1 - CI_LEVEL) / 2, 100 * (1 + CI_LEVEL) / 2
    out = []
    for lv in levels:
        ma, mb = metrics(lv.labels, lv.probs[:, :k]), metrics(lv.labels, lv.probs[:, k:])
        delong = None
        if _two_classes(a):
            from .delong import delong_test

            try:
                delong = delong_test(lv.labels, lv.probs[:, 1], lv.probs[:, k + 1])
            except ValueError:  # too few of a class in this group
                delong = None
        for (metric, cls), va in ma.items():
            values = boot[lv.name].get((metric, cls), np.empty(0))
            ok = values[~np.isnan(values)]
            lo, hi = np.percentile(ok, [lo_q, hi_q]) if ok.size else (math.nan, math.nan)
            with_delong = delong is not None and metric == "auc" and cls == ""
            out.append({"group": group, "level": lv.name, "metric": metric, "class": cls, "run_a": a.name,
                        "run_b": b.name, "value_a": _plain(va), "value_b": _plain(mb[metric, cls]),
                        "difference": _plain(mb[metric, cls] - va), "ci_low": _plain(lo), "ci_high": _plain(hi),
                        "n_bootstrap": int(ok.size),
                        # B - A, as the difference column (delong_test gives A - B)
                        "delong_z": -delong.z if with_delong else None,
                        "delong_p": delong.p_value if with_delong else None})
    return out


def _groups(a: RunPredictions, manifest: str | os.PathLike | None, by: str | None) -> list[tuple[str, np.ndarray]]:
    """``[("all", every slide), (value, its slides) ...]`` of the column ``by`` (the first run's predictions file's, a
    site-preserved study's oof.csv, or the manifest's: :func:`abmil.report.bootstrap.by_values`)."""
    everything = [("all", np.arange(len(a.slide_ids)))]
    if by is None:
        return everything
    from .bootstrap import by_values

    return everything + group_rows(by_values(by, a.slide_ids, a.path, manifest))


def group_rows(values: Sequence[str]) -> list[tuple[str, np.ndarray]]:
    """``[(value, its rows (m,) int) ...]`` of each row's group value, values sorted."""
    values = np.asarray(values)
    return [(str(g), np.flatnonzero(values == g)) for g in sorted(set(values.tolist()))]


def _markdown(result: dict[str, Any]) -> str:
    def cell(v: Any, digits: str = ".3f") -> str:
        return "" if v is None else format(v, digits) if isinstance(v, float) else str(v)

    lines = ["# Paired comparison", "", result["meta"]["method"], "",
             "| group | level | metric | class | A | B | B - A | 95 % CI | DeLong p |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['group']} | {r['level']} | {r['metric']} | {r['class']} | {cell(r['value_a'])} | "
                     f"{cell(r['value_b'])} | {cell(r['difference'])} | [{cell(r['ci_low'])}, {cell(r['ci_high'])}] "
                     f"| {cell(r['delong_p'], '.3g')} |")
    runs = "; ".join(f"{'A' if i == 0 else 'B'} = {name}" for i, name in enumerate(result["meta"]["runs"][:2]))
    return "\n".join([*lines, "", runs, ""])


def _csv(rows: list[dict[str, Any]]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COMPARE_COLUMNS)
    for r in rows:
        w.writerow(["" if r[c] is None else (f"{r[c]:.6g}" if isinstance(r[c], float) else r[c])
                    for c in COMPARE_COLUMNS])
    return buf.getvalue()


def plot_rocs(runs: Sequence[RunPredictions], *, title: str) -> bytes:
    """The ROC curves of two-class runs on the same slides, one curve each, AUC in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve

    from .evaluation_plots import _png
    from .plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    for run in runs:
        fpr, tpr, _ = roc_curve(run.truth, run.scores[:, 1])
        ax.plot(fpr, tpr, lw=1.8, label=f"{run.name} (AUC {roc_auc_score(run.truth, run.scores[:, 1]):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="chance")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="false positive rate (1 - specificity)",
           ylabel="true positive rate (sensitivity)", aspect="equal")
    ax.set_title(f"ROC, positive class {runs[0].classes[1]!r}\n{title}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def compare_runs(runs: Sequence[str | os.PathLike], *, out_dir: str | os.PathLike,
                 manifest: str | os.PathLike | None = None, by: str | None = None, n_bootstrap: int = 1000,
                 seed: int = 0) -> dict[str, Any]:
    """Compare every run of ``runs`` after the first with the first (see the module docstring) and write
    ``out_dir``; returns the JSON's content (``{"meta": ..., "rows": [...]}``). Nothing is written on any error."""
    if len(runs) < 2:
        raise ValueError("compare needs at least two runs")
    if n_bootstrap < 100:
        raise ValueError(f"--bootstrap {n_bootstrap} is too few resamples for a 95 % interval: give 100 or more "
                         "(1000 is usual)")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise DataError("output exists and is not a folder", path=os.fspath(out_dir))
    preds = [read_run_predictions(r, manifest) for r in runs]
    first = preds[0]
    orders = [_check_same_cases(first, other) for other in preds[1:]]
    groups = _groups(first, manifest, by)
    rows = [row for other, order in zip(preds[1:], orders) for group, where in groups
            for row in _pair_rows(first, other, order, where, group, n_bootstrap, seed)]
    meta = {"runs": [p.name for p in preds], "predictions": [p.path for p in preds], "task": first.task.name,
            "n_slides": len(first.slide_ids), "n_cases": len(set(first.case_ids)), "by": by,
            "n_bootstrap": n_bootstrap, "seed": seed,
            "method": f"B - A on the same slides; {CI_LEVEL:.0%} paired percentile intervals of {n_bootstrap} case "
                      f"resamples (seed {seed}), each scoring both runs on the same drawn cases"
                      + ("; DeLong's test of the AUC difference" if _two_classes(first) else "")}
    result = {"meta": meta, "rows": rows}
    import json

    files = {"compare.json": (json.dumps(result, indent=2) + "\n").encode(), "compare.csv": _csv(rows).encode(),
             "compare.md": _markdown(result).encode()}
    if _two_classes(first):
        aligned = [first] + [RunPredictions(p.name, p.path, p.task, first.slide_ids, first.case_ids, p.has_cases,
                                            p.classes, first.truth, p.scores[order])
                             for p, order in zip(preds[1:], orders)]
        files["roc.png"] = plot_rocs(aligned, title=f"{len(first.slide_ids)} slides, the same for every run")
    meta["files"] = list(files)
    files["compare.json"] = (json.dumps(result, indent=2) + "\n").encode()  # with the list of files
    write_folder(Path(out_dir), files)
    return result
