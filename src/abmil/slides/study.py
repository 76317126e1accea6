"""Cross-validated slide studies: patient-level K-fold cross-validation of the slide model, resumable fold by fold.

    cross_validate(FeatureBagDataset(manifest, features), "runs/cv", WSIConfig(patience=5), folds=5, repeats=1)

For each (repeat, fold) of :func:`abmil.train.splits.case_cv_splits` (scikit-learn's ``StratifiedGroupKFold`` over
the cases, reshuffled per repeat; whole cases in each part) one model is trained on the training folds less a
validation part (``config.val_split``, default 0.2, in whole cases), with the best validation epoch kept
(``config.monitor``; early stopping after ``config.patience`` epochs without improvement, else all epochs), and
predicts its held-out fold. Every fold is a unit (:class:`abmil.experiments.runner.UnitCache`): a run restarted with
the same command skips the finished folds and resumes the current one from its last checkpoint, ending with the
numbers of a run that never stopped.

Output (every file written atomically)::

    RUN/run.json            the study: settings, classes, fold keys, status; when finished the mean of the folds'
                            Youden thresholds ("threshold", two classes) and the summary
    RUN/splits.json         each fold's train / val / test cases and slides: auditable
    RUN/folds/r{r}_f{f}/    the fold's run: checkpoint.json (settings, per-epoch history), weights, the kept (best)
                            weights; fold.json once finished (its validation threshold and metrics, test metrics
                            and predictions, the kept epoch ``best_epoch``, counted from 1)
    RUN/oof.csv             out-of-fold predictions: every slide (or case) once per repeat, as ``abmil predict``
                            writes them plus ``case_id`` (slides), ``repeat`` and ``fold``
    RUN/summary.json/.csv/.md   per fold AUC, accuracy, balanced accuracy; mean and SD over the folds

Every input check (manifest, cases, splits, settings) runs before anything is written.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..io import write_json_atomic, write_text_atomic
from ..train.loop import Callback
from ..train.splits import CaseSplit, case_cv_splits
from .features import FeatureBagDataset, bags_at_level
from .outcomes import Head, common_head, strata, stratum_names
from .train import WSIConfig, class_names

__all__ = ["CV_FORMAT", "DEFAULT_VAL_FRACTION", "cross_validate", "fold_dirs", "is_cv_run", "read_cv_run"]

CV_FORMAT = "abmil-slide-cv-1"
RUN_JSON = "run.json"
#: The validation fraction of each training part when ``config.val_split`` is None (gmum's, as the histology runs).
DEFAULT_VAL_FRACTION = 0.2


def is_cv_run(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds a cross-validation study (its run.json)."""
    return read_cv_run(run_dir) is not None


def read_cv_run(run_dir: str | os.PathLike) -> dict | None:
    """The study's run.json, or None where there is none (a DataError if it is not a study's)."""
    path = Path(run_dir) / RUN_JSON
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"unreadable run.json ({e})", path=str(path)) from None
    if not isinstance(info, dict) or info.get("format") != CV_FORMAT:
        return None
    return info


def fold_dirs(run_dir: str | os.PathLike, fold: tuple[int, int] | None = None) -> list[Path]:
    """The finished fold runs of a study: all (the study must be finished) or the one of ``fold`` (repeat, fold)."""
    info = read_cv_run(run_dir)
    if info is None:
        raise DataError("not a cross-validation run (no run.json of `abmil train --folds`)", path=os.fspath(run_dir))
    keys = info["fold_keys"]
    if fold is not None:
        key = f"r{fold[0]}_f{fold[1]}"
        if key not in keys:
            raise ValueError(f"--fold {fold[0]},{fold[1]}: the study in {run_dir} has folds "
                             f"r0..{info['settings']['repeats'] - 1}, f0..{info['settings']['folds'] - 1}")
        keys = [key]
    missing = [k for k in keys if not (Path(run_dir) / "folds" / k / "fold.json").is_file()]
    if missing:
        raise ValueError(f"the cross-validation in {run_dir} has not finished fold(s) {', '.join(missing)}: rerun "
                         "its `abmil train --folds` command to finish it, or pick a finished fold with --fold")
    return [Path(run_dir) / "folds" / k for k in keys]


def _fingerprint(ids: Sequence[str], labels: Sequence[int], cases: Sequence[str]) -> str:
    from ..experiments.runner import fingerprint

    return fingerprint(["\n".join(f"{i}\t{y}\t{c}" for i, y, c in zip(ids, labels, cases))])


def _check_out(out: Path, settings: dict) -> None:
    """The output folder is new, empty, or this same study (settings equal); else ValueError, before any write."""
    from ..experiments.runner import check_out_dir

    check_out_dir(out)
    if not out.exists() or not any(out.iterdir()):
        return
    found = read_cv_run(out)
    if found is None:
        raise ValueError(f"{out} already holds other files (no run.json of a cross-validation): choose another --out")
    stored = found.get("settings", {})
    for key in settings.keys() | stored.keys():
        if key not in ("config",) and stored.get(key) != settings.get(key):
            raise ValueError(f"{out} holds a cross-validation with {key} {stored.get(key)!r}, this command has "
                             f"{settings.get(key)!r}: choose another --out (or rerun the same command to continue)")
    for key, value in settings["config"].items():
        if stored.get("config", {}).get(key) != value:
            raise ValueError(f"{out} holds a cross-validation with setting {key!r} {stored['config'].get(key)!r}, "
                             f"this command has {value!r}: choose another --out (or rerun the same command)")


#: The metrics of each fold and of the summary, per task.
TASK_METRICS = {"classification": ("auc", "accuracy", "balanced_accuracy"), "survival": ("c_index",),
                "regression": ("r2", "mae", "pearson")}


def _plain_label(label):
    """A prediction's truth as JSON: a class index, [time, event], a target, or None."""
    if label is None:
        return None
    if isinstance(label, tuple):
        return [float(label[0]), int(label[1])]
    return int(label) if isinstance(label, (int, np.integer)) else float(label)


def _fold_metrics(preds: list, head: Head) -> dict:
    """A fold's metrics (:data:`TASK_METRICS`) of its predictions: classification by :func:`_class_metrics`;
    survival Harrell's c-index of the risks; regression R², MAE and Pearson's r."""
    from ..report.metrics import harrell_c_index, regression_metrics

    if head.is_classification:
        return _class_metrics(np.array([p.label for p in preds]),
                              np.array([p.probabilities for p in preds], dtype=np.float64))
    if head.task == "survival":
        return {"c_index": _none_if_nan(harrell_c_index([p.label[0] for p in preds], [p.label[1] for p in preds],
                                                        [head.risk(p.probabilities) for p in preds]))}
    m = regression_metrics([p.label for p in preds], [p.probabilities[0] for p in preds])
    return {k: _none_if_nan(m[k]) for k in TASK_METRICS["regression"]}


def _class_metrics(labels: np.ndarray, probs: np.ndarray) -> dict:
    """AUC (binary, or one-vs-rest macro when every class occurs; None where undefined), accuracy, balanced accuracy
    of class probabilities (n, n_classes) against labels (n,), argmax predictions."""
    from sklearn.metrics import balanced_accuracy_score

    from ..report.metrics import class_metrics

    m = class_metrics(probs, labels)
    with warnings.catch_warnings():  # a validation part of one class: "y_pred contains classes not in y_true"
        warnings.simplefilter("ignore", UserWarning)
        balanced = float(balanced_accuracy_score(labels, probs.argmax(1)))
    return {"auc": m["auc"], "accuracy": m["accuracy"], "balanced_accuracy": balanced}


def _none_if_nan(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def cross_validate(dataset: FeatureBagDataset, out: str | os.PathLike, config: WSIConfig, *, folds: int,
                   repeats: int = 1, device: str = "cpu", on_epoch: Callable[[str, dict], None] | None = None,
                   on_fold: Callable[[dict], None] | None = None, callbacks: Sequence[Callback] = ()) -> dict:
    """Run (or continue) a K-fold study of ``config`` on ``dataset`` in ``out``; returns the summary.

    Args:
        dataset: the labelled slides (a manifest without a ``split`` column: the study makes its own splits).
        out: the study's folder (new, empty, or this same study to continue it).
        config: the model and training settings of every fold (each fold with its own seed,
            :func:`abmil.train.splits.fold_seed`); ``val_split`` None: :data:`DEFAULT_VAL_FRACTION`.
        folds, repeats: K folds, reshuffled ``repeats`` times.
        device: as :func:`~abmil.slides.train.train_feature_model`.
        on_epoch: called with (fold key, epoch record) after every epoch.
        on_fold: called with each fold's record once it is finished (or found finished).
        callbacks: training-loop callbacks of every fold.
    """
    from ..experiments.runner import UnitCache, run_pending
    from ..train.distributed import world_from_env
    from . import train as training  # its train_feature_model looked up at each fold, so that tests can wrap it
    from .predict import load_run, predict_dataset

    if world_from_env().size > 1:
        raise ValueError("--folds runs in one process: start it without torchrun (each fold may use a GPU)")
    if any(s is not None for s in dataset.splits):
        raise DataError("the manifest has a 'split' column but --folds makes its own splits: drop the column (keep "
                        "held-out test slides in another manifest, for `abmil predict`)", path=dataset.manifest)
    out = Path(out)
    config = replace(config, val_split=config.val_split or DEFAULT_VAL_FRACTION)
    task = config.task
    if getattr(dataset, "task", "classification") != task:
        raise ValueError(f"the dataset was read for the {dataset.task} task, the study is for {task}")
    bags = bags_at_level(dataset, config.bag_level)
    classes = class_names(bags) if task == "classification" else []
    in_dim = bags.validate()
    labels = np.asarray(strata(task, bags.labels, bags.outcomes, folds))
    if task == "survival" and not any(e for _, e in bags.outcomes):
        raise DataError("field 'event': every slide is censored (event 0)", path=dataset.manifest)
    splits = case_cv_splits(labels, bags.case_ids, folds=folds, repeats=repeats, seed=config.seed,
                            val_fraction=config.val_split, class_names=classes or None,
                            stratum=stratum_names(task))
    if config.monitor == "val_auc":
        for s in splits:
            missing = [classes[c] for c in range(len(classes)) if not np.any(labels[s.val] == c)]
            if missing:
                raise ValueError(f"repeat {s.repeat} fold {s.fold}: --monitor val_auc needs every class in the "
                                 f"validation part, which has no case of class {', '.join(missing)}: use more cases, a "
                                 "larger --val-fraction or --monitor val_loss")
    ids = list(bags.slide_ids)
    settings = {"folds": folds, "repeats": repeats, "bag_level": config.bag_level, "classes": classes,
                "in_dim": in_dim, "n_bags": len(ids),
                "data": _fingerprint(ids, [str(bags.outcomes[i]) if task != "classification" else bags.labels[i]
                                           for i in range(len(ids))], bags.case_ids),
                "config": config.to_dict()}
    _check_out(out, settings)

    # ---- from here on, files are written
    keys = [s.key for s in splits]
    run_info = {"format": CV_FORMAT, "kind": "cv", "settings": settings, "fold_keys": keys, "status": "running",
                "manifest": dataset.manifest}
    write_json_atomic(out / RUN_JSON, run_info)
    case_of = np.asarray(bags.case_ids)
    slide_ids = np.asarray(dataset.slide_ids)
    slide_case = np.asarray(dataset.case_ids)

    def part(idx: np.ndarray) -> dict:
        cases = sorted(set(case_of[idx].tolist()))
        return {"cases": cases, "slides": slide_ids[np.isin(slide_case, cases)].tolist()}

    write_json_atomic(out / "splits.json", {
        "bag_level": config.bag_level, "seed": config.seed, "val_fraction": config.val_split,
        "splitter": "sklearn StratifiedGroupKFold(shuffle=True, random_state=seed*1000+repeat) over cases; "
                    "validation: abmil.train.splits.stratified_group_holdout(seed=fold seed, min_per_class)",
        "folds": [{"key": s.key, "repeat": s.repeat, "fold": s.fold, "seed": s.seed,
                   "train": part(s.train), "val": part(s.val), "test": part(s.test)} for s in splits]})

    def unit_settings(s: CaseSplit) -> dict:
        return {"study": settings, "key": s.key, "seed": s.seed, "train": [ids[i] for i in s.train],
                "val": [ids[i] for i in s.val], "test": [ids[i] for i in s.test]}

    records: dict[str, dict] = {}
    pending = []
    for s in splits:
        found = UnitCache(out / "folds" / s.key).read("fold", unit_settings(s))
        if found is not None:
            records[s.key] = found
            if on_fold is not None:
                on_fold(found)
        else:
            pending.append(s)

    def work(s: CaseSplit) -> dict:
        fold_dir = out / "folds" / s.key
        fold_config = replace(config, seed=s.seed)
        report = None if on_epoch is None else (lambda record: on_epoch(s.key, record))
        extra = {"callbacks": list(callbacks)} if callbacks else {}
        info = training.train_feature_model(bags, fold_dir, fold_config, device=device, resume=True, on_epoch=report,
                                            split=(s.train, s.val), select_best=True, **extra)
        run = load_run(fold_dir, device)
        val = predict_dataset(run, dataset, s.val)
        test = predict_dataset(run, dataset, s.test)
        head = run.head
        threshold = None
        if len(classes) == 2:
            from ..report.metrics import youden_threshold

            threshold = _none_if_nan(youden_threshold([p.label for p in val], [p.probabilities[1] for p in val]))
        history = info["history"]
        record = {"settings": unit_settings(s), "key": s.key, "repeat": s.repeat, "fold": s.fold, "seed": s.seed,
                  "best_epoch": history.get("best_epoch", -1) + 1, "epochs_run": history.get("epochs_run"),
                  "stopped_early": history.get("stopped_early"), "threshold": threshold,
                  "val": _fold_metrics(val, head), "test": _fold_metrics(test, head), "head": head.to_dict(),
                  "predictions": [[p.slide_id, _plain_label(p.label), [float(v) for v in p.probabilities]]
                                  for p in test]}
        UnitCache(fold_dir).write("fold", record)
        return record

    def publish() -> None:
        _write_results(out, dataset, bags, splits, records, classes, config.bag_level, task)

    def done(unit: CaseSplit, record: dict) -> None:
        if on_fold is not None:
            on_fold(record)

    if pending:
        (out / "folds").mkdir(parents=True, exist_ok=True)
    run_pending(pending, work, records=records, publish=publish, on_done=done)
    summary = _write_results(out, dataset, bags, splits, records, classes, config.bag_level, task)
    thresholds = [records[k]["threshold"] for k in keys if records[k]["threshold"] is not None]
    write_json_atomic(out / RUN_JSON, {**run_info, "status": "finished",
                                       "threshold": float(np.mean(thresholds)) if thresholds else None,
                                       "fold_thresholds": {k: records[k]["threshold"] for k in keys},
                                       "summary": summary["mean"]})
    return summary


def _write_results(out: Path, dataset: FeatureBagDataset, bags, splits: list[CaseSplit], records: dict[str, dict],
                   classes: list[str], bag_level: str, task: str = "classification") -> dict:
    """oof.csv and summary.{json,csv,md} of the finished folds (all of them at the end). A survival nll study's
    ``surv_<t>`` columns are at the mean of the finished folds' bin ends (each fold's survival function interpolated
    there: :func:`~abmil.slides.outcomes.common_head`); its ``risk`` is each fold model's own."""
    from .predict import SlidePrediction, prediction_header, prediction_row

    first = "slide_id" if bag_level == "slide" else "case_id"
    extra = ["case_id"] if bag_level == "slide" else []
    position = {b: i for i, b in enumerate(bags.slide_ids)}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    heads = {k: Head.from_info(r) for k, r in records.items()}
    head = common_head(list(heads.values())) if heads else Head(task)
    header = prediction_header(classes, first, head)
    writer.writerow([header[0], *extra, *header[1:], "repeat", "fold"])
    repeats = sorted({s.repeat for s in splits})
    for r in repeats:
        rows = []
        for s in splits:
            rec = records.get(s.key)
            if s.repeat != r or rec is None:
                continue
            fold_head = heads[s.key]
            for bag_id, label, probs in rec["predictions"]:
                values = fold_head.align(np.asarray(probs), head)
                label = tuple(label) if isinstance(label, list) else label
                p = SlidePrediction(bag_id, values, np.zeros(0, np.float32), None, label)
                row = prediction_row(p, classes, head, rec.get("threshold"))  # the fold's own validation threshold
                if head.loss == "nll":  # the fold's own risk, not that of its interpolated survival function
                    row[3] = f"{fold_head.risk(np.asarray(probs)):.8g}"
                cells = [row[0], *([bags.case_ids[position[bag_id]]] if extra else []), *row[1:], r, s.fold]
                rows.append((position[bag_id], cells))
        for _, cells in sorted(rows, key=lambda t: t[0]):
            writer.writerow(cells)
    write_text_atomic(out / "oof.csv", buf.getvalue())

    metrics = TASK_METRICS[task]
    per_fold = [{"key": s.key, "repeat": s.repeat, "fold": s.fold, "n_test": len(s.test),
                 **{m: records[s.key]["test"][m] for m in metrics}, "threshold": records[s.key]["threshold"],
                 "best_epoch": records[s.key]["best_epoch"], "epochs_run": records[s.key]["epochs_run"]}
                for s in splits if s.key in records]
    mean: dict[str, dict] = {}
    for m in metrics:
        values = np.array([f[m] for f in per_fold if f[m] is not None], dtype=np.float64)
        mean[m] = {"mean": float(values.mean()) if values.size else None,
                   "sd": float(values.std(ddof=1)) if values.size > 1 else None, "n_folds": int(values.size)}
    summary = {"bag_level": bag_level, "classes": classes, "folds_done": len(per_fold), "folds_total": len(splits),
               "sd": "sample standard deviation over folds (ddof 1)",
               "auc": "binary: of the last class; more classes: one-vs-rest macro (None where a class is absent)",
               "per_fold": per_fold, "mean": mean}
    write_json_atomic(out / "summary.json", summary)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["key", "repeat", "fold", "n_test", *metrics, "threshold", "best_epoch", "epochs_run"])
    for f in per_fold:
        w.writerow([f["key"], f["repeat"], f["fold"], f["n_test"], *[_fmt(f[m]) for m in metrics],
                    _fmt(f["threshold"]), f["best_epoch"], f["epochs_run"]])
    for stat in ("mean", "sd"):
        w.writerow([stat, "", "", "", *[_fmt(mean[m][stat]) for m in metrics], "", "", ""])
    write_text_atomic(out / "summary.csv", buf.getvalue())
    lines = [f"# Cross-validation ({bag_level} level, {len(per_fold)} of {len(splits)} folds)", "",
             "| metric | mean | SD | folds |", "|---|---|---|---|"]
    lines += [f"| {m} | {_fmt(mean[m]['mean'])} | {_fmt(mean[m]['sd'])} | {mean[m]['n_folds']} |" for m in metrics]
    if task == "classification":
        lines += ["", "| fold | n test | AUC | accuracy | balanced accuracy | threshold | best epoch |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {f['key']} | {f['n_test']} | {_fmt(f['auc'])} | {_fmt(f['accuracy'])} | "
                  f"{_fmt(f['balanced_accuracy'])} | {_fmt(f['threshold'])} | {f['best_epoch']} |" for f in per_fold]
        lines += ["", "SD: sample standard deviation over folds (ddof 1). AUC: binary of the last class, else "
                  "one-vs-rest macro. Threshold: Youden's J on the fold's validation part (two classes)."]
    else:
        lines += ["", f"| fold | n test | {' | '.join(metrics)} | best epoch |", "|---|---|" + "---|" * len(metrics)
                  + "---|"]
        lines += [f"| {f['key']} | {f['n_test']} | " + " | ".join(_fmt(f[m]) for m in metrics)
                  + f" | {f['best_epoch']} |" for f in per_fold]
        lines += ["", "SD: sample standard deviation over folds (ddof 1). "
                  + ("c_index: Harrell's, of each fold's test risks." if task == "survival"
                     else "r2, mae, pearson of each fold's test predictions.")]
    write_text_atomic(out / "summary.md", "\n".join(lines) + "\n")
    return summary


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"
