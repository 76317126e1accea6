"""Multitarget: several heads of different tasks on one pooling (``--task multitarget --targets
label,os:survival,grade:regression``).

``--targets`` lists the heads ``NAME[:TASK[:LOSS]]``, comma-separated: ``TASK`` one of :data:`HEAD_TASKS`
(classification, the default, survival, regression), ``LOSS`` one of its losses (default its first). A head reads its
task's manifest columns named after it: a task of one column reads the column ``NAME`` (``label`` reads ``label``,
``grade:regression`` reads ``grade``), a task of several reads ``NAME_<column>`` (``os:survival`` reads ``os_time``
and ``os_event``). At most one head is a classification (the run's classes); Cox is refused (its loss couples the
bags of a step; the heads' losses are per bag: use ``nll``).

- The model's outputs are the heads' outputs side by side (a classification head: one logit for two classes, else
  one per class); the loss of a bag is the sum of its heads' losses, each on its slice
  (:class:`abmil.train.loss.CompositeObjective`); class weights and the balanced sampler act on the classification
  head. Training slides need every head's truth.
- Validation: ``val_loss`` (the ``--monitor``) and each head's own metrics named ``NAME.val_<metric>``.
- Predictions: each head's columns prefixed ``NAME.`` (``label.label``, ``label.prob_tumor``, ``label.predicted``,
  ``os.time``, ``os.event``, ``os.risk``, ``os.surv_<t>``, ``grade.target``, ``grade.predicted``); the decision of a
  classification head is its most probable class (no stored threshold).
- Studies: each head's metrics prefixed (``label.auc``, ``os.c_index``, ``grade.r2``), stratified by the first head.
- Evaluation: each head's own evaluation (:meth:`Task.evaluate` on a view of the CSV with its prefix removed) in
  ``out/NAME/``, and ``out/metrics.json|csv|md`` gathering them.
- Heatmaps: the attention, and each head's maps (a binary classification head: the patches' shares of its logit).
"""
from __future__ import annotations

import csv
import functools
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import DataError
from .base import Task
from .classification import ClassificationTask
from .regression import RegressionTask
from .survival import SurvivalTask

__all__ = ["HEAD_TASKS", "MultitargetTask", "parse_heads"]

#: The tasks a head may be, in the order a predictions file's columns are claimed (classification, the most general
#: reader, last). Multilabel is not one: it is several heads itself. A new task that can be a head gets a place here.
HEAD_TASKS: dict[str, type[Task]] = {t.name: t for t in (SurvivalTask, RegressionTask, ClassificationTask)}

#: The columns of a predictions file that are a bag's, not a head's.
_ID_COLUMNS = ("slide_id", "case_id", "repeat", "fold")


def parse_heads(targets: Sequence[str]) -> tuple[tuple[str, str, str | None], ...]:
    """``(name, task, loss)`` of each ``NAME[:TASK[:LOSS]]``; ValueError naming the item at fault."""
    heads = []
    for item in targets:
        parts = [p.strip() for p in str(item).split(":")]
        if not parts[0] or len(parts) > 3:
            raise ValueError(f"--targets: {item!r} is not NAME[:TASK[:LOSS]]")
        name, task, loss = parts[0], parts[1] if len(parts) > 1 else "classification", \
            parts[2] if len(parts) > 2 else None
        if "." in name or name in _ID_COLUMNS:
            raise ValueError(f"--targets: {name!r} cannot name a head (no '.', not {', '.join(_ID_COLUMNS)})")
        kind = HEAD_TASKS.get(task)
        if kind is None:
            choices = ", ".join(HEAD_TASKS)
            raise ValueError(f"--targets: head {name!r}: task must be one of {choices}, got {task!r}")
        kind(loss)  # validates the loss
        if kind(loss).objective().coupled:
            raise ValueError(f"--targets: head {name!r}: the {loss} loss couples the bags of a step; a multitarget "
                             "head's loss is per bag (use the task's default)")
        heads.append((name, task, loss))
    names = [h[0] for h in heads]
    if not heads:
        raise ValueError("--targets needs one or more heads NAME[:TASK[:LOSS]]")
    if len(set(names)) != len(names):
        raise ValueError(f"--targets names the head {sorted({n for n in names if names.count(n) > 1})[0]!r} twice")
    if sum(HEAD_TASKS[t].has_classes for _, t, _ in heads) > 1:
        raise ValueError("--targets: at most one classification head (the run's classes); several 0/1 targets are "
                         "a multilabel task")
    return tuple(heads)


def _columns_of(name: str, kind: type[Task]) -> dict[str, str]:
    """``{task column: manifest column}`` of a head: ``NAME`` for a task of one column, else ``NAME_<column>``."""
    if len(kind.columns) == 1:
        return {kind.columns[0]: name}
    return {c: f"{name}_{c}" for c in kind.columns}


def _renamed(error: DataError, columns: dict[str, str]) -> DataError:
    """``error`` with the task's column names replaced by the head's."""
    message = error.message
    for ours, theirs in columns.items():
        message = message.replace(f"'{ours}'", f"'{theirs}'")
    return DataError(message, path=error.path, bag=error.bag)


class _View:
    """A dataset as one head sees it: its slot of each outcome."""

    def __init__(self, dataset, k: int):
        self.labels, self.manifest = dataset.labels, getattr(dataset, "manifest", None)
        self.outcomes = [None if o is None else o[k] for o in dataset.outcomes]


@dataclass(frozen=True)
class MultitargetTask(Task):
    """Heads of other tasks (:attr:`heads`, the ``--targets``); the unparametrised class knows none. A fitted task
    holds its fitted heads (:attr:`parts`) and the run's number of classes."""

    name: ClassVar[str] = "multitarget"
    losses: ClassVar[tuple[str, ...]] = ("sum",)
    columns: ClassVar[tuple[str, ...]] = ()
    monitors: ClassVar[tuple[str, ...]] = ("val_loss",)
    stratum: ClassVar[str] = "stratum of the first head"
    description: ClassVar[str] = "several heads of any tasks (--targets label,os:survival,...)"
    needs_targets: ClassVar[bool] = True
    metrics_note: ClassVar[str] = "Each head's metrics of each fold's test predictions, prefixed by its name."
    heads: ClassVar[tuple[tuple[str, str, str | None], ...]] = ()
    """``(name, task, loss)`` of each head."""

    parts: tuple[Task, ...] | None = None
    """The heads, fitted (:meth:`fit`)."""
    n_classes: int = 0
    """The run's classes (0 without a classification head)."""

    @classmethod
    def with_targets(cls, targets: Sequence[str]) -> type[MultitargetTask]:
        return _with_heads(parse_heads(targets))

    # ------------------------------------------------------------------ the heads
    @classmethod
    def kinds(cls) -> list[type[Task]]:
        """Each head's task."""
        if not cls.heads:
            raise ValueError("the multitarget task needs its heads: --targets label,os:survival,...")
        return [HEAD_TASKS[t] for _, t, _ in cls.heads]

    @classmethod
    def names(cls) -> list[str]:
        return [n for n, _, _ in cls.heads]

    def _parts(self) -> tuple[Task, ...]:
        return self.parts if self.parts is not None else tuple(k(loss) for k, (_, _, loss) in
                                                              zip(self.kinds(), self.heads))

    def _widths(self, part: Task) -> tuple[int, int, int]:
        """(outputs, loop targets, values) of one head."""
        if part.has_classes:
            return (1 if self.n_classes == 2 else self.n_classes), 1, self.n_classes
        return part.n_out(), part.loop_width, part.n_out()

    def _slices(self, which: int) -> list[slice]:
        """Each head's slice of the outputs (0), loop targets (1) or values (2)."""
        out, start = [], 0
        for p in self._parts():
            width = self._widths(p)[which]
            out.append(slice(start, start + width))
            start += width
        return out

    # ------------------------------------------------------------------ targets (the manifest)
    @classmethod
    def parse_row(cls, cells: dict[str, str], line: int, path: str, slide_id: str) -> tuple[str, Any]:
        label, outcome = "", []
        for (name, _, _), kind in zip(cls.heads, cls.kinds()):
            columns = _columns_of(name, kind)
            view = {"slide_id": slide_id, **{ours: cells.get(theirs, "") for ours, theirs in columns.items()}}
            try:
                text, value = kind.parse_row(view, line, path, slide_id)
            except DataError as e:
                raise _renamed(e, columns) from None
            if kind.has_classes:
                label = view[kind.columns[0]]
                value = label or None
            outcome.append(value)
        if all(v is None for v in outcome):
            return label, None
        if any(v is None for v in outcome):
            empty = next(c for (n, _, _), k, v in zip(cls.heads, cls.kinds(), outcome) if v is None
                         for c in _columns_of(n, k).values())
            raise DataError(f"line {line}: field '{empty}' is empty (a slide with targets needs every head's: "
                            f"{', '.join(cls.columns)})", path=path, bag=slide_id)
        return label, tuple(outcome)

    @classmethod
    def check_rows(cls, rows: Sequence, path: str, require_labels: bool) -> None:
        for k, ((name, _, _), kind) in enumerate(zip(cls.heads, cls.kinds())):
            view = [replace(r, outcome=None if r.outcome is None else r.outcome[k]) for r in rows]
            try:
                kind.check_rows(view, path, require_labels)
            except DataError as e:
                raise _renamed(e, _columns_of(name, kind)) from None

    @classmethod
    def truth(cls, label: int | None, outcome: Any) -> Any:
        """Each head's truth (the class index for a classification head); None where unknown."""
        if outcome is None:
            return None
        return tuple(kind.truth(label, o) for kind, o in zip(cls.kinds(), outcome))

    @classmethod
    def strata(cls, labels: Sequence, outcomes: Sequence, folds: int | None = None) -> np.ndarray:
        """The first head's."""
        return cls.kinds()[0].strata(labels, [o[0] for o in outcomes], folds)

    @classmethod
    def check_study(cls, outcomes: Sequence, manifest: str | None) -> None:
        for k, ((name, _, _), kind) in enumerate(zip(cls.heads, cls.kinds())):
            try:
                kind.check_study([o[k] for o in outcomes], manifest)
            except DataError as e:
                raise _renamed(e, _columns_of(name, kind)) from None

    @classmethod
    def class_names(cls, dataset) -> list[str]:
        kinds = [k for k in cls.kinds() if k.has_classes]
        return kinds[0].class_names(dataset) if kinds else []

    @classmethod
    def check_training_part(cls, dataset, train_idx: Sequence[int], classes: list[str]) -> None:
        for k, ((name, _, _), kind) in enumerate(zip(cls.heads, cls.kinds())):
            try:
                kind.check_training_part(_View(dataset, k), train_idx, classes)
            except DataError as e:
                raise _renamed(e, _columns_of(name, kind)) from None

    # ------------------------------------------------------------------ fitting and the head
    @classmethod
    def fit(cls, loss: str | None, outcomes: Sequence, n_bins: int, *, manifest: str | None = None,
            classes: Sequence[str] = ()) -> MultitargetTask:
        parts = []
        for k, ((name, _, head_loss), kind) in enumerate(zip(cls.heads, cls.kinds())):
            try:
                parts.append(kind.fit(head_loss, [o[k] for o in outcomes], n_bins, manifest=manifest))
            except DataError as e:
                raise _renamed(e, _columns_of(name, kind)) from None
        return cls(loss, parts=tuple(parts), n_classes=len(classes))

    def objective(self, **kwargs):
        from ..train.loss import CompositeObjective

        return CompositeObjective(tuple((None if p.has_classes else p.objective(), o, t)
                                        for p, o, t in zip(self._parts(), self._slices(0), self._slices(1))))

    def n_out(self) -> int | None:
        return sum(self._widths(p)[0] for p in self._parts())

    def baseline_logits(self, outcomes: Sequence) -> np.ndarray | None:
        """The heads' starts side by side (NaN for a head without one: the model's initialisation is kept there)."""
        starts = [p.baseline_logits([o[k] for o in outcomes]) for k, p in enumerate(self._parts())]
        if all(s is None for s in starts):
            return None
        return np.concatenate([np.full(self._widths(p)[0], np.nan) if s is None else np.asarray(s, dtype=np.float64)
                               for p, s in zip(self._parts(), starts)])

    def loop_target(self, outcome: Any, label: int | None = None):
        """The heads' loop targets end to end (floats)."""
        return tuple(float(v) for p, o in zip(self._parts(), outcome)
                     for v in np.atleast_1d(p.loop_target(o, label)))

    def torch_outputs(self, logits):
        """Each head's outputs on its slice of the logits, side by side."""
        import torch

        return torch.cat([p.torch_outputs(logits[:, s]) for p, s in zip(self._parts(), self._slices(0))], 1)

    def align(self, values: np.ndarray, other: Task) -> np.ndarray:
        values = np.asarray(values)
        return np.concatenate([p.align(values[s], q) for p, q, s in
                               zip(self._parts(), other._parts(), self._slices(2))])

    @classmethod
    def combine(cls, heads: Sequence[Task]) -> Task:
        first = heads[0]
        for h in heads[1:]:
            if type(h) is not type(first) or h.n_classes != first.n_classes:
                raise ValueError(f"an ensemble's models must share their heads: {type(first).__name__} and "
                                 f"{type(h).__name__}")
        parts = tuple(type(p).combine([h._parts()[k] for h in heads]) for k, p in enumerate(first._parts()))
        return replace(first, parts=parts)

    # ------------------------------------------------------------------ validation
    def val_row(self, position: int, out, label) -> tuple:
        return (position, out.logits[0].float().cpu().tolist(), label)

    def val_record(self, rows: list[tuple], outcomes: Sequence, monitor: str | None) -> dict:
        """The mean loss (``val_loss``) and each head's metrics on its slice, ``NAME.val_<metric>``."""
        import torch

        from ..nn.models import MILOutput
        from ..train.loss import bag_losses

        rows = sorted(rows)
        logits = torch.tensor([r[1] for r in rows], dtype=torch.float64)
        y = torch.tensor([self.loop_target(outcomes[r[0]], r[2]) for r in rows], dtype=torch.float64)
        record = {"val_loss": float(bag_losses(MILOutput(logits), y, objective=self.objective()).mean())}
        for (name, _, _), p, s, k in zip(self.heads, self._parts(), self._slices(0), range(len(self.heads))):
            if p.has_classes:
                labels = torch.tensor([r[2] for r in rows])
                sub = [(r[0], float(loss), prob, r[2]) for r, loss, prob in
                       zip(rows, bag_losses(MILOutput(logits[:, s]), labels).tolist(),
                           MILOutput(logits[:, s]).probabilities().tolist())]
                found = p.val_record(sub, outcomes, None)
            else:
                found = p.val_record([(r[0], r[1][s]) for r in rows], [None if o is None else o[k] for o in outcomes],
                                     None)
            record.update({f"{name}.{m}": v for m, v in found.items() if not m.startswith("val_neg_")})
        return record

    # ------------------------------------------------------------------ predictions
    def header(self, classes: Sequence[str], id_column: str = "slide_id") -> list[str]:
        return [id_column, *[f"{name}.{c}" for name, p in zip(self.names(), self._parts())
                             for c in p.header(classes, id_column)[1:]]]

    def _rows(self, bag_id: str, truth, values: np.ndarray, row: Callable) -> list[str]:
        values = np.asarray(values)
        cells = [bag_id]
        for k, (p, s) in enumerate(zip(self._parts(), self._slices(2))):
            cells += row(k, p, None if truth is None else truth[k], values[s])[1:]
        return cells

    def row(self, bag_id: str, truth, values: np.ndarray, classes: Sequence[str],
            threshold: float | None = None) -> list[str]:
        return self._rows(bag_id, truth, values, lambda k, p, t, v: p.row(bag_id, t, v, classes))

    def study_row(self, bag_id: str, truth, values: np.ndarray, fold: Task, classes: Sequence[str],
                  threshold: float | None) -> list[str]:
        return self._rows(bag_id, truth, values,
                          lambda k, p, t, v: p.study_row(bag_id, t, v, fold._parts()[k], classes, None))

    @classmethod
    def claims(cls, columns: Sequence[str]) -> bool:
        """Columns ``NAME.<column>``, and none of another task's outputs undotted (a bag's own columns, ``slide_id``,
        ``case_id``, ``repeat``, ``fold``, a ``--group-by`` column, may stand beside them)."""
        return any("." in c for c in columns) and not any(
            c in ("predicted", "risk") or c.startswith("prob_") for c in columns)

    def predicted(self, values: np.ndarray, classes: Sequence[str], threshold: float | None = None):
        values = np.asarray(values)
        return "; ".join(f"{n}={p.predicted(values[s], classes)}" for n, p, s in
                         zip(self.names(), self._parts(), self._slices(2)))

    def summary(self, values: np.ndarray, classes: Sequence[str]) -> str:
        values = np.asarray(values)
        return "; ".join(f"{n}: {p.summary(values[s], classes)}" for n, p, s in
                         zip(self.names(), self._parts(), self._slices(2)))

    def title_label(self, label, classes: Sequence[str]) -> str:
        return "" if label is None else "".join(p.title_label(t, classes) for p, t in zip(self._parts(), label))

    def patch_maps(self, shares: Callable[[], np.ndarray], classes: Sequence[str]) -> list[tuple[str, np.ndarray]]:
        """Each head's maps on its slice of the shares (a binary classification head: its logit's)."""
        values = shares()
        maps = []
        for name, p, s in zip(self.names(), self._parts(), self._slices(0)):
            found = p.patch_maps(lambda s=s: values[:, s], classes)
            if not found and p.has_classes:
                found = [("share of logit", values[:, s][:, 0])]
            maps += [(f"{name}: {m}", v) for m, v in found]
        return maps

    # ------------------------------------------------------------------ studies
    def fold_metrics(self, truths: Sequence, values: np.ndarray) -> dict:
        truths, values = list(truths), np.asarray(values, dtype=np.float64)
        out = {}
        for k, (name, p, s) in enumerate(zip(self.names(), self._parts(), self._slices(2))):
            found = p.fold_metrics([t[k] for t in truths], values[:, s])
            out.update({f"{name}.{m}": v for m, v in found.items()})
        return out

    # ------------------------------------------------------------------ evaluation
    @classmethod
    def evaluate(cls, predictions_csv: str, *, out_dir, manifest, labels_from: str, threshold: float | None,
                 run, n_bootstrap: int, seed: int, times: Sequence[float] | None, risk_groups: int,
                 by: str | None = None) -> dict:
        """Each head's evaluation, into ``out_dir/NAME/``, and the rows of all in ``out_dir/metrics.*``; all or
        nothing (staged beside ``out_dir``). ``by``: each head's rows within each value of that column too."""
        from ..report.bootstrap import install_folder
        from ..slides.tables import read_table

        predictions_csv = os.fspath(predictions_csv)
        columns, rows = read_table(predictions_csv, "predictions file")
        names = list(dict.fromkeys(c.split(".", 1)[0] for c in columns if "." in c))
        if run is not None:
            from ..slides.run_folder import run_head_info

            stored = (run_head_info(run).get("head") or {})
            if stored.get("task") != cls.name or [h["name"] for h in stored.get("heads", [])] != names:
                raise DataError(f"the run's heads are not this file's ({', '.join(names)})", path=os.fspath(run))
        keep = [c for c in columns if "." not in c]  # the bag's columns (ids, fold, a --group-by column)
        views = {n: keep + [c[len(n) + 1:] for c in columns if c.startswith(f"{n}.")] for n in names}
        kinds = {n: next(k for k in HEAD_TASKS.values() if k.claims(v)) for n, v in views.items()}
        if threshold is not None and not any(k.has_classes for k in kinds.values()):
            raise ValueError("a decision threshold is for a classification head; these predictions have none")
        if times is not None and not any(k.takes_times for k in kinds.values()):
            raise ValueError("--times is for a survival head (a risk column); these predictions have none")
        manifest_view = None if manifest is None else read_table(os.fspath(manifest), "manifest")
        out_dir = Path(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
        try:
            results, table = {}, []
            for name in names:
                own = [c for c in columns if c.startswith(f"{name}.")]
                view_columns, kind = views[name], kinds[name]
                view = stage / f".{name}.csv"
                _write_csv(view, view_columns, [[cells[c] for c in keep + own] for _, cells in rows])
                view_manifest = None
                if manifest_view is not None:
                    view_manifest = stage / f".{name}.manifest.csv"
                    mapped = _columns_of(name, kind)
                    m_cols, m_rows = manifest_view
                    ids = [c for c in m_cols if c in ("slide_id", "case_id") or c == by]
                    have = [c for c in kind.columns if mapped[c] in m_cols]
                    _write_csv(view_manifest, ids + have,
                               [[cells[c] for c in ids] + [cells[mapped[c]] for c in have] for _, cells in m_rows])
                result = kind.evaluate(os.fspath(view), out_dir=stage / name, manifest=view_manifest,
                                       labels_from=labels_from, threshold=threshold if kind.has_classes else None,
                                       run=None, n_bootstrap=n_bootstrap, seed=seed,
                                       times=times if kind.takes_times else None,
                                       risk_groups=risk_groups, **({} if by is None else {"by": by}))
                view.unlink()
                if view_manifest is not None:
                    view_manifest.unlink()
                result["meta"].update(predictions=predictions_csv, head=name,
                                      manifest=None if manifest is None else os.fspath(manifest))
                (stage / name / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
                results[name] = result
                table += [{"target": name, **r} for r in result.get("metrics", [])]
            first = results[names[0]]["meta"]
            combined = {"meta": {"predictions": predictions_csv, "task": cls.name, "heads": names,
                                 "n_slides": first["n_slides"], "n_cases": first["n_cases"],
                                 "n_bootstrap": n_bootstrap, "seed": seed,
                                 "figures": [f"{n}/{f}" for n in names for f in results[n]["meta"]["figures"]]},
                        "metrics": table}
            (stage / "metrics.json").write_text(json.dumps(combined, indent=2) + "\n")
            _write_csv(stage / "metrics.csv", list(table[0]) if table else ["target"],
                       [list(r.values()) for r in table])
            (stage / "metrics.md").write_text(_markdown(names, table))
            install_folder(stage, out_dir)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return combined

    # ------------------------------------------------------------------ storage
    def fitted(self) -> dict:
        return {"heads": [{"name": n, **p.to_dict()} for n, p in zip(self.names(), self._parts())],
                "n_classes": self.n_classes}

    @classmethod
    def from_dict(cls, d: dict) -> Task:
        specs = d.get("heads") or []
        task = _with_heads(tuple((h["name"], h["task"], h.get("loss")) for h in specs))
        parts = tuple(HEAD_TASKS[h["task"]].from_dict(h) for h in specs)
        return task(d.get("loss"), parts=parts, n_classes=int(d.get("n_classes") or 0))



def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buf.getvalue())


def _markdown(names: list[str], table: list[dict]) -> str:
    lines = ["# Evaluation of a multitarget run", ""]
    for name in names:
        lines += [f"## {name}", "", "| level | metric | class | value | 95% CI |", "|---|---|---|---|---|"]
        for r in table:
            if r["target"] == name:
                v, lo, hi = r.get("value"), r.get("ci_low"), r.get("ci_high")
                ci = "" if lo is None or hi is None else f"[{lo:.3f}, {hi:.3f}]"
                lines.append(f"| {r.get('level', '')} | {r.get('metric', '')} | {r.get('class', '')} | "
                             f"{'' if v is None else f'{v:.3f}'} | {ci} |")
        lines += ["", f"Each head's own report: `{name}/metrics.md`.", ""]
    return "\n".join(lines)


@functools.cache
def _with_heads(heads: tuple[tuple[str, str, str | None], ...]) -> type[MultitargetTask]:
    """One class per tuple of heads (cached: runs of the same heads share it)."""
    columns = tuple(c for name, task, _ in heads for c in _columns_of(name, HEAD_TASKS[task]).values())
    metrics = tuple(f"{name}.{m}" for name, task, _ in heads for m in HEAD_TASKS[task].metrics)
    return type(f"MultitargetTask[{','.join(h[0] for h in heads)}]", (MultitargetTask,),
                {"heads": heads, "columns": columns, "metrics": metrics, "__module__": __name__,
                 "__qualname__": "MultitargetTask", "has_classes": any(HEAD_TASKS[t].has_classes for _, t, _ in heads)})
