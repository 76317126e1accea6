"""Cross-validated slide studies: patient-level K-fold cross-validation of the slide model, resumable fold by fold.

    cross_validate(FeatureBagDataset(manifest, features), "runs/cv", WSIConfig(patience=5), folds=5, repeats=1)

For each (repeat, fold) of :func:`abmil.train.splits.case_cv_splits` (scikit-learn's ``StratifiedGroupKFold`` over
the cases, reshuffled per repeat; whole cases in each part) one model is trained on the training folds less a
validation part (``config.val_split``, default 0.2, in whole cases), with the best validation epoch kept
(``config.monitor``; early stopping after ``config.patience`` epochs without improvement, else all epochs), and
predicts its held-out fold. Every fold is a unit (:class:`abmil.experiments.runner.UnitCache`): a run restarted with
the same command skips the finished folds and resumes the current one from its last checkpoint, ending with the
numbers of a run that never stopped.

Output (:mod:`abmil.slides.run_folder`, every file written atomically): run.json, splits.json, folds/r{r}_f{f}/
(each fold's run and, once finished, fold.json: its validation threshold and metrics, test metrics and predictions,
the kept epoch ``best_epoch``, counted from 1), oof.csv (every slide or case once per repeat, as ``abmil predict``
writes them plus ``case_id`` (slides), ``repeat`` and ``fold``), summary.json/.csv/.md (the task's metrics per fold,
:attr:`abmil.tasks.base.Task.metrics`; mean and SD over the folds).

Site-preserved folds (``group_by``, e.g. the manifest's ``site``): every value of the column whole in one test fold;
oof.csv gains the column, the summary each value's metrics (``by_group``). Seed ensembles (``seeds`` N > 1): N models
per fold on its split, the fold predicting with their mean, the members' spread in the summary (``seed_spread``).

Every input check (manifest, cases, splits, settings) runs before anything is written.
"""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..tasks import DEFAULT_TASK, Task, combine_heads, get_task, head_from_info
from ..train.loop import Callback
from ..train.splits import CaseSplit, case_cv_splits, member_seed
from .features import FeatureBagDataset, bags_at_level
from .manifest import group_values
from .predictions import prediction_header
from .run_folder import (  # noqa: F401 (CV_FORMAT, fold_dirs, is_cv_run: imported from here before run_folder)
    CV_FORMAT,
    FOLD_RECORD,
    fold_dir,
    fold_dirs,
    folds_dir,
    is_cv_run,
    member_dir,
    read_cv_run,
    write_oof,
    write_run_json,
    write_splits,
    write_summary,
)
from .train import WSIConfig

__all__ = ["CV_FORMAT", "DEFAULT_VAL_FRACTION", "cross_validate", "fold_dirs", "is_cv_run", "read_cv_run"]

#: The validation fraction of each training part when ``config.val_split`` is None (gmum's, as the histology runs).
DEFAULT_VAL_FRACTION = 0.2


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


def _plain_label(label):
    """A prediction's truth as JSON: a class index, [time, event], a target, [0/1 per target], or None."""
    if label is None:
        return None
    if isinstance(label, tuple):  # survival (time, event), multilabel's 0/1 per target
        return [_plain_label(v) for v in label]
    return int(label) if isinstance(label, (int, np.integer)) else float(label)


def _fold_metrics(preds: list, head) -> dict:
    """A fold's metrics of its predictions (:meth:`~abmil.tasks.base.Task.fold_metrics`)."""
    return head.fold_metrics([p.label for p in preds], [p.probabilities for p in preds])


def cross_validate(dataset: FeatureBagDataset, out: str | os.PathLike, config: WSIConfig, *, folds: int,
                   repeats: int = 1, device: str = "cpu", on_epoch: Callable[[str, dict], None] | None = None,
                   on_fold: Callable[[dict], None] | None = None, callbacks: Sequence[Callback] = (),
                   splits: Sequence[CaseSplit] | None = None, splitter: str | None = None,
                   group_by: str | None = None, seeds: int = 1) -> dict:
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
        splits: the folds, given (e.g. CLAM's split files, :func:`abmil.slides.clam_splits.read_clam_splits`)
            instead of made (``folds``, ``repeats`` and ``val_split`` are then theirs); ``splitter``: how they
            were made, for splits.json.
        group_by: a manifest column (typically ``site``, :func:`~abmil.slides.manifest.group_values`): site-preserved
            folds, each of its values whole in one test fold (leave-one-site-out when ``folds`` equals the number of
            values; :func:`~abmil.train.splits.case_cv_splits` ``sites``); oof.csv gains the column and the summary
            the metrics of each value (``by_group``). Not with given ``splits``.
        seeds: a seed ensemble of this many models per fold, on the fold's split, each with its own seed
            (:func:`~abmil.train.splits.member_seed`: initialisation, epoch orders, dropout); the fold predicts with
            their mean (its threshold chosen on the mean's validation predictions) and the summary gives the spread
            of the members' test metrics (``seed_spread``). 1: a study as without it.
    """
    from ..experiments.runner import UnitCache, run_pending
    from ..train.distributed import world_from_env
    from . import train as training  # its train_feature_model looked up at each fold, so that tests can wrap it
    from .predict import ensemble_head, load_run, predict_dataset

    if world_from_env().size > 1:
        raise ValueError("--folds runs in one process: start it without torchrun (each fold may use a GPU)")
    if any(s is not None for s in dataset.splits):
        raise DataError("the manifest has a 'split' column but --folds makes its own splits: drop the column (keep "
                        "held-out test slides in another manifest, for `abmil predict`)", path=dataset.manifest)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"--seeds must be an integer >= 1, got {seeds!r}")
    out = Path(out)
    config = replace(config, val_split=config.val_split or DEFAULT_VAL_FRACTION)
    task = config.task_class()
    if getattr(dataset, "task_class", get_task(DEFAULT_TASK)) is not task:
        raise ValueError(f"the dataset was read for the {dataset.task} task ({', '.join(dataset.task_class.columns)}), "
                         f"the study is for {task.name} ({', '.join(task.columns)})")
    bags = bags_at_level(dataset, config.bag_level)
    classes = task.class_names(bags)
    in_dim = bags.validate()
    labels = np.asarray(task.strata(bags.labels, bags.outcomes, folds))
    task.check_study(bags.outcomes, dataset.manifest)
    given = splits is not None
    if given and group_by is not None:
        raise ValueError(f"--group-by {group_by} makes site-preserved folds; the folds are given (--splits-from): "
                         "one or the other")
    groups = None if group_by is None else _bag_groups(dataset, bags, group_by, folds)
    if given:
        splits = list(splits)
        folds, repeats = len({s.fold for s in splits}), len({s.repeat for s in splits})
    else:
        splits = case_cv_splits(labels, bags.case_ids, folds=folds, repeats=repeats, seed=config.seed,
                                val_fraction=config.val_split, class_names=classes or None,
                                stratum=task.stratum, sites=groups)
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
                "data": _fingerprint(ids, [task.truth(bags.labels[i], bags.outcomes[i]) for i in range(len(ids))],
                                     bags.case_ids),
                "config": config.to_dict()}
    if given:  # a rerun with other split files is another study
        from ..experiments.runner import fingerprint

        settings["splits"] = fingerprint([f"{s.key}:{s.train.tolist()}:{s.val.tolist()}:{s.test.tolist()}"
                                          for s in splits])
    if group_by is not None:  # only then: the settings of a study without groups stay as they were
        settings["group_by"] = group_by
    if seeds > 1:  # likewise
        settings["seeds"] = seeds
    _check_out(out, settings)

    # ---- from here on, files are written
    keys = [s.key for s in splits]
    run_info = {"format": CV_FORMAT, "kind": "cv", "settings": settings, "fold_keys": keys, "status": "running",
                "manifest": dataset.manifest}
    write_run_json(out, run_info)
    case_of = np.asarray(bags.case_ids)
    slide_ids = np.asarray(dataset.slide_ids)
    slide_case = np.asarray(dataset.case_ids)

    def part(idx: np.ndarray) -> dict:
        cases = sorted(set(case_of[idx].tolist()))
        return {"cases": cases, "slides": slide_ids[np.isin(slide_case, cases)].tolist()}

    def fold_split(s: CaseSplit) -> dict:
        doc = {"key": s.key, "repeat": s.repeat, "fold": s.fold, "seed": s.seed,
               "train": part(s.train), "val": part(s.val), "test": part(s.test)}
        if groups is not None:
            doc["test_groups"] = sorted(set(np.asarray(groups)[s.test].tolist()))
        return doc

    made = ("sklearn StratifiedGroupKFold(shuffle=True, random_state=seed*1000+repeat) over cases; "
            "validation: abmil.train.splits.stratified_group_holdout(seed=fold seed, min_per_class)")
    if groups is not None:
        made = (f"site-preserved over the manifest column {group_by!r}: sklearn LeaveOneGroupOut when folds == "
                "its values, else StratifiedGroupKFold(shuffle=True, random_state=seed*1000+repeat) over them; "
                "validation: abmil.train.splits.stratified_group_holdout(seed=fold seed, min_per_class)")
    write_splits(out, {"bag_level": config.bag_level, "seed": config.seed, "val_fraction": config.val_split,
                       **({} if groups is None else {"group_by": group_by}),
                       "splitter": splitter or ("given" if given else made),
                       "folds": [fold_split(s) for s in splits]})

    def unit_settings(s: CaseSplit) -> dict:
        return {"study": settings, "key": s.key, "seed": s.seed, "train": [ids[i] for i in s.train],
                "val": [ids[i] for i in s.val], "test": [ids[i] for i in s.test]}  # (settings hold seeds > 1)

    records: dict[str, dict] = {}
    pending = []
    for s in splits:
        found = UnitCache(fold_dir(out, s.key)).read(FOLD_RECORD, unit_settings(s))
        if found is not None:
            records[s.key] = found
            if on_fold is not None:
                on_fold(found)
        else:
            pending.append(s)

    def work(s: CaseSplit) -> dict:
        folder = fold_dir(out, s.key)
        extra = {"callbacks": list(callbacks)} if callbacks else {}
        histories, runs = [], []
        for j in range(seeds):
            name = s.key if j == 0 else f"{s.key}/s{j}"
            report = None if on_epoch is None else (lambda record, name=name: on_epoch(name, record))
            member = replace(config, seed=member_seed(s.seed, j))
            info = training.train_feature_model(bags, member_dir(folder, j), member, device=device, resume=True,
                                                on_epoch=report, split=(s.train, s.val), select_best=True, **extra)
            histories.append(info["history"])
            runs.append(load_run(member_dir(folder, j), device))
        run = runs[0] if seeds == 1 else runs
        val = predict_dataset(run, dataset, s.val)
        test = predict_dataset(run, dataset, s.test)
        head = runs[0].head if seeds == 1 else ensemble_head(runs)
        threshold = head.threshold(val, classes)
        history = histories[0]
        record = {"settings": unit_settings(s), "key": s.key, "repeat": s.repeat, "fold": s.fold, "seed": s.seed,
                  "best_epoch": history.get("best_epoch", -1) + 1, "epochs_run": history.get("epochs_run"),
                  "stopped_early": history.get("stopped_early"), "threshold": threshold,
                  "val": _fold_metrics(val, head), "test": _fold_metrics(test, head), "head": head.to_dict(),
                  "predictions": [[p.slide_id, _plain_label(p.label), [float(v) for v in p.probabilities]]
                                  for p in test]}
        if seeds > 1:
            record["seeds"] = [{"member": j, "seed": member_seed(s.seed, j), "best_epoch": h.get("best_epoch", -1) + 1,
                                "test": _fold_metrics(predict_dataset(r, dataset, s.test), r.head)}
                               for j, (r, h) in enumerate(zip(runs, histories))]
        UnitCache(folder).write(FOLD_RECORD, record)
        return record

    by = None if groups is None else (group_by, groups)

    def publish() -> None:
        _write_results(out, dataset, bags, splits, records, classes, config.bag_level, task, by)

    def done(unit: CaseSplit, record: dict) -> None:
        if on_fold is not None:
            on_fold(record)

    if pending:
        folds_dir(out).mkdir(parents=True, exist_ok=True)
    run_pending(pending, work, records=records, publish=publish, on_done=done)
    summary = _write_results(out, dataset, bags, splits, records, classes, config.bag_level, task, by)
    thresholds = [records[k]["threshold"] for k in keys if records[k]["threshold"] is not None]
    write_run_json(out, {**run_info, "status": "finished",
                                       "threshold": float(np.mean(thresholds)) if thresholds else None,
                                       "fold_thresholds": {k: records[k]["threshold"] for k in keys},
                                       "summary": summary["mean"]})
    return summary


def _bag_groups(dataset: FeatureBagDataset, bags, column: str, folds: int) -> list[str]:
    """Each bag's value of the manifest ``column`` (a case's slides share it); DataError / ValueError naming
    ``--group-by`` or ``--folds`` where it cannot make ``folds`` site-preserved folds."""
    values = group_values(dataset.manifest, column, dataset.slide_ids, flag="--group-by", cases=dataset.case_ids)
    of_case = dict(zip(dataset.case_ids, values))
    groups = values if bags is dataset else [of_case[c] for c in bags.case_ids]
    found = sorted(set(groups))
    if len(found) < 2:
        raise DataError(f"--group-by {column}: every slide has {column} {found[0]!r}: site-preserved folds need at "
                        "least two values (drop --group-by for case-level folds)", path=dataset.manifest)
    if folds > len(found):
        raise ValueError(f"--folds {folds} is more than the {len(found)} values of --group-by {column} "
                         f"({', '.join(found)}): every test fold holds whole {column}s (use --folds {len(found)} for "
                         f"leave-one-{column}-out, or fewer)")
    return groups


def _group_metrics(splits: list[CaseSplit], records: dict[str, dict], heads: dict, position: dict[str, int],
                   column: str, groups: Sequence[str], metrics: Sequence[str]) -> dict:
    """The summary's ``by_group``: the test metrics of each value of ``column`` in each repeat (a value lies whole in
    one test fold: one fold model's predictions, :meth:`~abmil.tasks.base.Task.fold_metrics`), and their mean and SD
    over the values."""
    rows = []
    for s in splits:
        rec = records.get(s.key)
        if rec is None:
            continue
        preds = rec["predictions"]
        for g in sorted({groups[position[p[0]]] for p in preds}):
            mine = [p for p in preds if groups[position[p[0]]] == g]
            truths = [tuple(p[1]) if isinstance(p[1], list) else p[1] for p in mine]
            values = heads[s.key].fold_metrics(truths, [np.asarray(p[2]) for p in mine])
            rows.append({"group": g, "repeat": s.repeat, "fold": s.fold, "key": s.key, "n_test": len(mine),
                         **{m: values[m] for m in metrics}})
    mean = {}
    for m in metrics:
        v = np.array([r[m] for r in rows if r[m] is not None], dtype=np.float64)
        mean[m] = {"mean": float(v.mean()) if v.size else None, "sd": float(v.std(ddof=1)) if v.size > 1 else None,
                   "n_groups": int(v.size)}
    return {"column": column, "per_group": rows, "mean": mean,
            "note": f"each {column} is whole in one test fold: its metrics are that fold model's on its bags; mean "
                    f"and SD (ddof 1) over the {column}s and repeats (None where undefined, e.g. one class)"}


def _write_results(out: Path, dataset: FeatureBagDataset, bags, splits: list[CaseSplit], records: dict[str, dict],
                   classes: list[str], bag_level: str, task: str | type[Task] = DEFAULT_TASK,
                   by: tuple[str, Sequence[str]] | None = None) -> dict:
    """oof.csv and summary.{json,csv,md} of the finished folds (all of them at the end). A survival nll study's
    ``surv_<t>`` columns are at the mean of the finished folds' bin ends (each fold's survival function interpolated
    there: :func:`~abmil.tasks.combine_heads`); its ``risk`` is each fold model's own
    (:meth:`~abmil.tasks.base.Task.study_row`). ``by``: (column, each bag's value) of a site-preserved study: the
    column last in oof.csv, and the summary's ``by_group``."""

    first = "slide_id" if bag_level == "slide" else "case_id"
    extra = ["case_id"] if bag_level == "slide" else []
    position = {b: i for i, b in enumerate(bags.slide_ids)}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    heads = {k: head_from_info(r) for k, r in records.items()}
    head = combine_heads(list(heads.values())) if heads else get_task(task)()
    header = prediction_header(classes, first, head)
    group_cell = [] if by is None or by[0] in (*header, *extra, "repeat", "fold") else [by[0]]
    writer.writerow([header[0], *extra, *header[1:], "repeat", "fold", *group_cell])
    repeats = sorted({s.repeat for s in splits})
    for r in repeats:
        rows = []
        for s in splits:
            rec = records.get(s.key)
            if s.repeat != r or rec is None:
                continue
            fold_head = heads[s.key]
            for bag_id, label, probs in rec["predictions"]:
                label = tuple(label) if isinstance(label, list) else label
                # the fold's own validation threshold
                row = head.study_row(bag_id, label, np.asarray(probs), fold_head, classes, rec.get("threshold"))
                cells = [row[0], *([bags.case_ids[position[bag_id]]] if extra else []), *row[1:], r, s.fold,
                         *([by[1][position[bag_id]]] if group_cell else [])]
                rows.append((position[bag_id], cells))
        for _, cells in sorted(rows, key=lambda t: t[0]):
            writer.writerow(cells)
    write_oof(out, buf.getvalue())

    metrics = head.metrics
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
    if by is not None:
        summary["by_group"] = _group_metrics(splits, records, heads, position, by[0], by[1], metrics)
    if any("seeds" in records[s.key] for s in splits if s.key in records):
        summary["seed_spread"] = _seed_spread([records[s.key] for s in splits if s.key in records], metrics)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["key", "repeat", "fold", "n_test", *metrics, "threshold", "best_epoch", "epochs_run"])
    for f in per_fold:
        w.writerow([f["key"], f["repeat"], f["fold"], f["n_test"], *[_fmt(f[m]) for m in metrics],
                    _fmt(f["threshold"]), f["best_epoch"], f["epochs_run"]])
    for stat in ("mean", "sd"):
        w.writerow([stat, "", "", "", *[_fmt(mean[m][stat]) for m in metrics], "", "", ""])
    csv_text = buf.getvalue()
    lines = [f"# Cross-validation ({bag_level} level, {len(per_fold)} of {len(splits)} folds)", "",
             "| metric | mean | SD | folds |", "|---|---|---|---|"]
    lines += [f"| {m} | {_fmt(mean[m]['mean'])} | {_fmt(mean[m]['sd'])} | {mean[m]['n_folds']} |" for m in metrics]
    lines += ["", *head.summary_table(per_fold)]
    if by is not None:
        lines += ["", *_group_table(summary["by_group"], metrics)]
    if "seed_spread" in summary:
        lines += ["", *_seed_table(summary["seed_spread"], metrics)]
    write_summary(out, summary, csv_text, "\n".join(lines) + "\n")
    return summary


def _seed_spread(records: list[dict], metrics: Sequence[str]) -> dict:
    """The summary's ``seed_spread`` of a seed-ensemble study: per fold and metric the members' test values, their
    mean and SD (ddof 1), and over the folds the mean of those SDs (the run-to-run spread of one model) beside the
    ensemble's own mean (the summary's ``mean``)."""
    per_fold, spread = [], {}
    for rec in records:
        row = {"key": rec["key"]}
        for m in metrics:
            v = [x["test"][m] for x in rec["seeds"] if x["test"][m] is not None]
            row[m] = {"values": v, "mean": float(np.mean(v)) if v else None,
                      "sd": float(np.std(v, ddof=1)) if len(v) > 1 else None}
        per_fold.append(row)
    for m in metrics:
        sds = [r[m]["sd"] for r in per_fold if r[m]["sd"] is not None]
        single = [r[m]["mean"] for r in per_fold if r[m]["mean"] is not None]
        spread[m] = {"mean_sd": float(np.mean(sds)) if sds else None,
                     "mean_single": float(np.mean(single)) if single else None}
    return {"n_seeds": len(records[0]["seeds"]), "per_fold": per_fold, "mean": spread,
            "note": "each fold's members are trained on the fold's split with their own seeds; the fold's "
                    "predictions (and the summary's mean) are the members' mean; mean_sd: the mean over folds of the "
                    "SD (ddof 1) of the members' test metric; mean_single: the mean over folds of the members' mean "
                    "test metric"}


def _seed_table(spread: dict, metrics: Sequence[str]) -> list[str]:
    """summary.md's table of a seed-ensemble study's spread."""
    lines = [f"## Seed spread ({spread['n_seeds']} seeds per fold)", "",
             "| metric | one model (mean over folds and seeds) | SD over seeds (mean over folds) |", "|---|---|---|"]
    lines += [f"| {m} | {_fmt(spread['mean'][m]['mean_single'])} | {_fmt(spread['mean'][m]['mean_sd'])} |"
              for m in metrics]
    return [*lines, "", spread["note"][0].upper() + spread["note"][1:] + "."]


def _group_table(by_group: dict, metrics: Sequence[str]) -> list[str]:
    """summary.md's table of each group's metrics (a site-preserved study)."""
    column = by_group["column"]
    lines = [f"## By {column}", "", f"| {column} | fold | n test | {' | '.join(metrics)} |",
             "|---|---|---|" + "---|" * len(metrics)]
    lines += [f"| {r['group']} | {r['key']} | {r['n_test']} | " + " | ".join(_fmt(r[m]) for m in metrics) + " |"
              for r in by_group["per_group"]]
    lines += ["| mean | | | " + " | ".join(_fmt(by_group["mean"][m]["mean"]) for m in metrics) + " |",
              "| SD | | | " + " | ".join(_fmt(by_group["mean"][m]["sd"]) for m in metrics) + " |"]
    return [*lines, "", by_group["note"][0].upper() + by_group["note"][1:] + "."]


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"
