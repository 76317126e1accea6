"""Result rows, their summary over CV folds/repeats, and results.{json,csv,md} side by side with the paper.

One :class:`ResultRow` = one (dataset, model, metric) cell: our mean, SD and SE over ``n_runs`` values and the paper's
number for the same cell with which of its parts an independent copy confirms (:mod:`abmil.report.paper`). ``extra``
carries whatever a later experiment adds (``std_folds``, ``train_bags``, ``bag_mean``, ...); it is written flat
beside the fixed keys.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from abmil.io import atomic_open
from abmil.report import paper

__all__ = [
    "ADDED_KEYS",
    "CORE_KEYS",
    "ResultRow",
    "read_results",
    "render_markdown",
    "summarise",
    "within_one_std",
    "write_results",
]

CORE_KEYS: tuple[str, ...] = ("dataset", "model", "metric", "mean", "std", "n_runs", "paper_mean", "paper_std")
# Written after CORE_KEYS since 2026-12. Older files lack them and still read: ``se`` is derived (recomputed, never
# read), a missing confirmation flag reads as None (not recorded; rendered as unconfirmed).
ADDED_KEYS: tuple[str, ...] = ("se", "paper_mean_confirmed", "paper_std_confirmed")
_FIXED_KEYS = CORE_KEYS + ADDED_KEYS
# Extras that describe a cell's statistics, not the setting it was run in; the md groups tables by the others.
_STAT_EXTRAS = frozenset({"std_folds", "std_over", "n_repeats"})
_STD_OVER = ("repeats", "folds")


@dataclass
class ResultRow:
    """One table cell: ours (mean, std over ``n_runs`` values) and the paper's (``None`` where it has none).

    ``paper_mean_confirmed`` / ``paper_std_confirmed``: whether an independent copy confirms the paper's mean / ±
    (:func:`abmil.report.paper.paper_confirmation`); ``None`` = not recorded (a file written before 2026-12).
    """

    dataset: str
    model: str
    metric: str
    mean: float
    std: float | None
    n_runs: int
    paper_mean: float | None = None
    paper_std: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    paper_mean_confirmed: bool | None = None
    paper_std_confirmed: bool | None = None

    @property
    def se(self) -> float | None:
        """Standard error of our mean, ``std / √n``: n = the repetitions when ``std`` spreads over repetition means
        (``std_over == "repeats"``), else the runs. The paper's ± is most likely this quantity, so it is shown."""
        n = self.extra.get("n_repeats") if self.extra.get("std_over") == "repeats" else self.n_runs
        if self.std is None or not n:
            return None
        return self.std / math.sqrt(n)

    def to_dict(self) -> dict[str, Any]:
        """Flat dict: the core keys in :data:`CORE_KEYS` order, then :data:`ADDED_KEYS`, then the extras."""
        clash = set(self.extra) & set(_FIXED_KEYS)
        if clash:
            raise ValueError(f"extra keys {sorted(clash)} clash with the fixed result keys")
        d = {k: getattr(self, k) for k in _FIXED_KEYS}
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ResultRow:
        """Inverse of :meth:`to_dict`; every key not in :data:`CORE_KEYS` or :data:`ADDED_KEYS` goes to ``extra``."""
        missing = [k for k in CORE_KEYS if k not in d]
        if missing:
            raise ValueError(f"result row lacks keys {missing}")
        return cls(
            dataset=str(d["dataset"]),
            model=str(d["model"]),
            metric=str(d["metric"]),
            mean=math.nan if _opt_float(d["mean"]) is None else float(d["mean"]),  # NaN is written as null
            std=_opt_float(d["std"]),
            n_runs=int(d["n_runs"]),
            paper_mean=_opt_float(d["paper_mean"]),
            paper_std=_opt_float(d["paper_std"]),
            extra={k: v for k, v in d.items() if k not in _FIXED_KEYS},
            paper_mean_confirmed=_opt_bool(d.get("paper_mean_confirmed")),
            paper_std_confirmed=_opt_bool(d.get("paper_std_confirmed")),
        )


def _opt_float(x: Any) -> float | None:
    return None if x is None or x == "" else float(x)


def _opt_bool(x: Any) -> bool | None:
    return None if x is None or x == "" else bool(x)


def summarise(
    values: Sequence[float],
    *,
    dataset: str,
    model: str,
    metric: str,
    experiment: str = "benchmarks",
    std_over: str = "repeats",
    repeat_ids: Sequence[Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> ResultRow:
    """Summarise per-fold (or per-run) scores into one row, with the paper's value for the same cell.

    ``mean`` is over all values. ``std`` (ddof=0): with ``repeat_ids`` (one id per value) and
    ``std_over="repeats"``, the spread of the per-repeat means — the most plausible meaning of the paper's ±
    (docs/protocols.md, "Open questions": ±0.02-0.05 cannot be a per-fold sd on ~9-bag folds); otherwise the std of all
    values. Both are kept: ``extra["std_folds"]`` is always the std over all values, ``extra["std_over"]`` says
    which one ``std`` is.
    """
    if std_over not in _STD_OVER:
        raise ValueError(f"std_over must be one of {_STD_OVER}, got {std_over!r}")
    v = np.asarray(values, dtype=float).ravel()
    if v.size == 0:
        raise ValueError(f"no values to summarise for {dataset}/{model}/{metric}")
    std_folds = float(v.std())
    info: dict[str, Any] = {"std_folds": std_folds, "std_over": "folds"}
    std = std_folds
    if repeat_ids is not None:
        ids = list(repeat_ids)
        if len(ids) != v.size:
            raise ValueError(f"repeat_ids has {len(ids)} entries for {v.size} values")
        groups: dict[Any, list[float]] = {}
        for rid, x in zip(ids, v):
            groups.setdefault(rid, []).append(float(x))
        info["n_repeats"] = len(groups)
        if std_over == "repeats":
            std = float(np.std([np.mean(g) for g in groups.values()]))
            info["std_over"] = "repeats"
    paper_mean, paper_std = paper.paper_value(experiment, dataset, model, metric)
    mean_ok, std_ok = paper.paper_confirmation(experiment, dataset, model, metric)
    return ResultRow(
        dataset=dataset, model=model, metric=metric, mean=float(v.mean()), std=std, n_runs=int(v.size),
        paper_mean=paper_mean, paper_std=paper_std, extra={**info, **(extra or {})},
        paper_mean_confirmed=mean_ok, paper_std_confirmed=std_ok,
    )


def within_one_std(row: ResultRow) -> bool | None:
    """Is our mean within one paper ± of the paper's mean? ``None`` when the paper gives no mean or no ±.

    The ± is taken as printed; it is most likely the SE of the paper's mean over 5 repetitions, so this is a
    one-SE band around it that ignores our own SE (results.md shows both, so readers can judge).
    """
    if row.paper_mean is None or row.paper_std is None or row.mean is None or math.isnan(row.mean):
        return None
    # Paper cells are rounded to 3 decimals; the epsilon only absorbs float error at the exact boundary.
    return abs(row.mean - row.paper_mean) <= row.paper_std + 1e-9


# --------------------------------------------------------------------------------------------------------------------
# Serialisation


def _jsonable(x: Any) -> Any:
    """Plain JSON values: numpy scalars unwrapped, NaN/inf -> null (they are not valid JSON)."""
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in x]
    return x


def _columns(dicts: Sequence[Mapping[str, Any]]) -> list[str]:
    cols = list(_FIXED_KEYS)
    for d in dicts:
        cols.extend(k for k in d if k not in cols)
    return cols


def _csv_cell(x: Any) -> Any:
    # Strings and numbers as they are (csv writes floats with repr, so they round-trip exactly); anything else
    # (bool, list, dict) as JSON so read_results can parse it back.
    if x is None:
        return ""
    if isinstance(x, (str, int, float)) and not isinstance(x, bool):
        return x
    return json.dumps(x)


def _parse_csv_extra(s: str) -> Any:
    if s == "":
        return None
    try:
        return json.loads(s)
    except ValueError:
        return s


def _to_csv(dicts: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_columns(dicts), restval="", lineterminator="\n")
    w.writeheader()
    for d in dicts:
        w.writerow({k: _csv_cell(v) for k, v in d.items()})
    return buf.getvalue()


def read_results(path: str | os.PathLike) -> list[ResultRow]:
    """Read rows back from ``results.json`` or ``results.csv`` (a directory means its ``results.json``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = []
            for d in csv.DictReader(f):
                rows.append({k: (v if k in CORE_KEYS else _parse_csv_extra(v)) for k, v in d.items()})
        for d in rows:
            # Columns absent from a row's extras were padded with "" on write; drop them again.
            for k in [k for k, v in d.items() if k not in CORE_KEYS and v is None]:
                del d[k]
    else:
        with open(path, encoding="utf-8") as f:
            rows = json.load(f)
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of result rows")
    return [ResultRow.from_dict(d) for d in rows]


# --------------------------------------------------------------------------------------------------------------------
# Markdown


_UNCONFIRMED = "†"


def _num(x: float | None, na: str = "?") -> str:
    return na if x is None else f"{x:.3f}"


def _ours(row: ResultRow) -> str:
    """Our mean, SD and SE side by side: the paper's ± is most likely an SE, our SD is the spread a reader expects."""
    if row.mean is None or math.isnan(row.mean):
        return "ours —"
    return f"ours {row.mean:.3f} (SD {_num(row.std)}, SE {_num(row.se)})"


def _theirs(mean: float | None, std: float | None, mean_ok: bool | None, std_ok: bool | None) -> str:
    """The paper's mean ± as printed, each part marked † unless an independent copy confirms it."""
    if mean is None:
        return "n/a"
    std_text = "N/A" if std is None else _num(std) + ("" if std_ok else _UNCONFIRMED)
    return f"{mean:.3f}{'' if mean_ok else _UNCONFIRMED} ± {std_text}"


def _esc(s: str) -> str:
    return str(s).replace("|", "\\|")


def _mark(row: ResultRow) -> str:
    return {True: " ✓", False: " ✗", None: ""}[within_one_std(row)]


def _cell(row: ResultRow | None, experiment: str, dataset: str, model: str, metric: str) -> str:
    """One table cell: ours (when run) beside the paper's, which a paper-only cell looks up in :mod:`paper`."""
    if row is not None:
        theirs = _theirs(row.paper_mean, row.paper_std, row.paper_mean_confirmed, row.paper_std_confirmed)
        return f"{_ours(row)}{_mark(row)} · paper {theirs}"
    pm, ps = paper.paper_value(experiment, dataset, model, metric)
    if pm is None:
        return "—"
    return f"paper {_theirs(pm, ps, *paper.paper_confirmation(experiment, dataset, model, metric))}"


def _setting(row: ResultRow) -> tuple[tuple[str, str], ...]:
    """The extras that say in which setting a row was run (e.g. train_bags=50); rows are tabled per setting."""
    return tuple(
        sorted((k, json.dumps(_jsonable(v))) for k, v in row.extra.items()
               if k not in _STAT_EXTRAS and isinstance(v, (str, int, float, bool, np.generic)))
    )


def _ordered(seen: Iterable[str], preferred: Sequence[str]) -> list[str]:
    seen = list(dict.fromkeys(seen))
    return [x for x in preferred if x in seen] + [x for x in seen if x not in preferred]


def _index(rows: Sequence[ResultRow]) -> dict[tuple, ResultRow]:
    out: dict[tuple, ResultRow] = {}
    for r in rows:
        key = (_setting(r), r.dataset, r.model, r.metric)
        if key in out:
            raise ValueError(f"two rows for the same cell {key[1:]} (setting {dict(key[0]) or '-'})")
        out[key] = r
    return out


def _setting_title(setting: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"{k}={json.loads(v)}" for k, v in setting)


def _benchmarks_tables(rows: Sequence[ResultRow], experiment: str) -> list[str]:
    idx = _index(rows)
    settings = list(dict.fromkeys(k[0] for k in idx)) or [()]
    metrics = _ordered((r.metric for r in rows), ("accuracy",)) or ["accuracy"]
    out = []
    for setting in settings:
        for metric in metrics:
            mine = [r for k, r in idx.items() if k[0] == setting and k[3] == metric]
            datasets = _ordered((r.dataset for r in mine), paper.TABLE1_DATASETS)
            # Paper columns always shown, ours appended, so the table keeps the paper's shape.
            datasets = list(paper.TABLE1_DATASETS) + [d for d in datasets if d not in paper.TABLE1_DATASETS]
            paper_models = [m for m in paper.TABLE1_ROWS
                            if any(paper.paper_value(experiment, d, m, metric)[0] is not None for d in datasets)]
            models = _ordered([r.model for r in mine] + paper_models, paper.TABLE1_ROWS)
            head = f"### {paper.METRIC_LABELS.get(metric, metric)}"
            if setting:
                head += f" ({_setting_title(setting)})"
            header = " | ".join(_esc(paper.DATASET_LABELS.get(d, d)) for d in datasets)
            lines = [head, "", f"| Method | {header} |",
                     "|---" * (len(datasets) + 1) + "|"]
            for m in models:
                ours = {d: idx.get((setting, d, m, metric)) for d in datasets}
                label = paper.MODEL_LABELS.get(m, m)
                if any(ours.values()) and label != m:
                    label += f" (`{m}`)"  # show which of our keys the paper row maps to
                elif not any(ours.values()):
                    label += " (paper only)"
                cells = [_cell(ours[d], experiment, d, m, metric) for d in datasets]
                lines.append(f"| {_esc(label)} | " + " | ".join(_esc(c) for c in cells) + " |")
            out.append("\n".join(lines))
    return out


def _metrics_tables(rows: Sequence[ResultRow], experiment: str) -> list[str]:
    idx = _index(rows)
    groups = list(dict.fromkeys((k[0], k[1]) for k in idx))
    out = []
    for setting, dataset in groups:
        mine = [r for k, r in idx.items() if k[0] == setting and k[1] == dataset]
        metrics = _ordered((r.metric for r in mine), paper.HISTOLOGY_METRICS)
        paper_models = [m for m in paper.HISTOLOGY_ROWS
                        if any(paper.paper_value(experiment, dataset, m, x)[0] is not None for x in metrics)]
        models = _ordered([r.model for r in mine] + paper_models, paper.HISTOLOGY_ROWS)
        head = f"### {paper.DATASET_LABELS.get(paper.canonical_dataset(dataset), dataset)}"
        if setting:
            head += f" ({_setting_title(setting)})"
        lines = [head, "", "| Method | " + " | ".join(_esc(paper.METRIC_LABELS.get(x, x)) for x in metrics) + " |",
                 "|---" * (len(metrics) + 1) + "|"]
        for m in models:
            ours = {x: idx.get((setting, dataset, m, x)) for x in metrics}
            label = paper.HISTOLOGY_MODEL_LABELS.get(m, m) + ("" if any(ours.values()) else " (paper only)")
            cells = [_cell(ours[x], experiment, dataset, m, x) for x in metrics]
            lines.append(f"| {_esc(label)} | " + " | ".join(_esc(c) for c in cells) + " |")
        out.append("\n".join(lines))
    return out


def _mnist_bags_tables(rows: Sequence[ResultRow], experiment: str) -> list[str]:
    """The paper's appendix layout: one table per mean bag size (and metric), training bags x models."""
    out = []
    groups = list(dict.fromkeys((r.extra.get("bag_mean"), r.metric) for r in rows))
    for bag_mean, metric in sorted(groups, key=lambda g: (g[1] != "auc", g[1], g[0])):
        mine = [r for r in rows if r.extra.get("bag_mean") == bag_mean and r.metric == metric]
        models = _ordered((r.model for r in mine), paper.HISTOLOGY_ROWS)
        cells = {(r.extra.get("train_bags"), r.model): r for r in mine}
        spreads = sorted({r.extra.get("bag_std") for r in mine}, key=str)
        spread = ", ".join(map(str, spreads))
        head = f"### {paper.METRIC_LABELS.get(metric, metric)}, mean bag size {bag_mean} (spread {spread})"
        labels = " | ".join(_esc(paper.HISTOLOGY_MODEL_LABELS.get(m, m)) for m in models)
        lines = [head, "", "| # training bags | " + labels + " |", "|---" * (len(models) + 1) + "|"]
        for n in sorted({k[0] for k in cells}):
            row = []
            for m in models:
                r = cells.get((n, m))
                row.append("—" if r is None else _cell(r, experiment, r.dataset, m, metric))
            lines.append(f"| {n} | " + " | ".join(_esc(c) for c in row) + " |")
        out.append("\n".join(lines))
    return out


# What independent copies confirm, per experiment (shared/paper/results.md, "Update, 2026-12"); the per-cell data
# behind the † marks is paper.PAPER_CONFIRMATIONS.
_CONFIRMED_TEXT: dict[str, tuple[str, tuple[str, ...]]] = {
    "benchmarks": ("Table 1", (
        "Confirmed: every mean [A]; the Attention row's ± [B] (its and Gated-Attention's means also [B]). "
        "Every other ± is unconfirmed; MI-Kernel's may not exist in the paper ([A] prints N/A for it)."), ("A", "B")),
    "histology": ("Tables 2-3", (
        "Confirmed: the accuracy and AUC means of all six models [B]. Precision, recall, F-score and every ± "
        "are unconfirmed."), ("B",)),
    "mnist-bags": ("MNIST-bags figures/appendix tables", (
        "Only Attention's AUC 0.768 (mean bag size 10, 50 training bags) has a source [S1]; every other number is "
        "unconfirmed."), ("S1",)),
}


def _footnotes(rows: Sequence[ResultRow], experiment: str) -> str:
    tables, confirmed, letters = _CONFIRMED_TEXT.get(
        paper.canonical_experiment(experiment), ("tables", "No cell is known to be confirmed.", ()))
    # The argument about the ± cites [A] and [B] whatever the table.
    sources = "; ".join(f"[{k}] {paper.PAPER_SOURCES[k]}" for k in sorted({*letters, "A", "B"}))
    over = {r.extra.get("std_over", "folds") for r in rows}
    n_runs = sorted({r.n_runs for r in rows})
    n_se = sorted({r.extra.get("n_repeats") if r.extra.get("std_over") == "repeats" else r.n_runs for r in rows})
    ours_sd = []
    if "repeats" in over:
        ours_sd.append("the standard deviation (ddof=0) across the per-repetition means (each the mean over one "
                       "repetition's folds)")
    if "folds" in over:
        ours_sd.append("the standard deviation (ddof=0) over all folds/runs of the cell")
    notes = [
        f"Paper numbers: Ilse, Tomczak & Welling (ICML 2018, {paper.PAPER_URL}) {tables}, transcribed in "
        "shared/paper/results.md; the paper's PDF itself was not read. **†: not confirmed** by an independent copy "
        f"(treat as a provisional target). {confirmed} Sources: {sources}. The paper's ± is most likely a standard "
        "error over its 5 repetitions ([A]'s standard deviations are √5 times the ± in 39 of 40 checkable baseline "
        "cells of Table 1, and [B] reads it as one): compare it with our SE, not our SD.",
        f"Ours: mean over n_runs = {', '.join(map(str, n_runs)) or '-'} values per cell; SD is "
        + (" or ".join(ours_sd) or "-")
        + f"; SE = SD/√n with n = {', '.join(map(str, n_se)) or '-'} (the repetitions when SD is over them). "
        "results.json has `std` (SD), `se`, `std_folds`, `std_over` (which one `std` is), and "
        "`paper_mean_confirmed` / `paper_std_confirmed`.",
        "✓: our mean is within one paper ± of the paper mean (|ours − paper| ≤ ±, the ± as printed: most likely one "
        "SE of the paper's mean, so a narrow band that ignores our own SE); ✗: it is not; no mark: the paper gives "
        "no ± (N/A) or no number. \"paper only\": a method not run here.",
    ]
    if any(r.extra.get("averaging") == "pooled" for r in rows):
        notes.append("averaging=folds: each metric computed on each test fold, then averaged (a fold that calls no "
                     "bag positive scores precision and recall 0); averaging=pooled: each repetition's test "
                     "predictions (every bag once) scored together, mean, SD and SE over the repetitions (SD ? with "
                     "one). The paper does not say which it used.")
    return "\n".join(f"{i}. {n}" for i, n in enumerate(notes, 1))


def render_markdown(
    rows: Sequence[ResultRow], *, title: str, command: str, seed: Any,
    table_layout: str = "benchmarks", experiment: str | None = None,
) -> str:
    """results.md text: title, command and seed, the tables (ours beside the paper), then the footnotes.

    ``table_layout="benchmarks"``: the paper's Table 1 (methods x datasets, paper-only baselines included);
    ``"metrics"``: one table per dataset, methods x metrics (the histology Tables 2-3); ``"mnist-bags"``: one table
    per mean bag size, training bags x methods (the paper's appendix tables). ``experiment`` picks the paper
    table for paper-only rows (default: "benchmarks" / "histology").
    """
    if table_layout == "benchmarks":
        experiment = experiment or "benchmarks"
        tables = _benchmarks_tables(rows, experiment)
    elif table_layout == "metrics":
        experiment = experiment or "histology"
        tables = _metrics_tables(rows, experiment)
    elif table_layout == "mnist-bags":
        experiment = experiment or "mnist-bags"
        tables = _mnist_bags_tables(rows, experiment)
    else:
        raise ValueError(f"table_layout must be 'benchmarks', 'metrics' or 'mnist-bags', got {table_layout!r}")
    # An indented code block shows any command verbatim, backticks included.
    parts = [f"# {title}", "", "Command:", "", "    " + command, "", f"Seed: {seed}", "", *[t + "\n" for t in tables],
             "Notes:", "", _footnotes(rows, experiment), ""]
    return "\n".join(parts)


def write_results(
    out_dir: str | os.PathLike, rows: Sequence[ResultRow], *, title: str, command: str, seed: Any,
    table_layout: str = "benchmarks", experiment: str | None = None,
) -> None:
    """Write out_dir/results.json, results.csv and results.md, all or none.

    Every text is rendered before anything touches the disk; the three files are then written and fsynced to
    temporary files, which are renamed into place only when all three are on disk (md, csv, then json last — so
    the presence of results.json signals a complete set). A failure while rendering or writing leaves no results.*
    and no temporary file behind, and results.* of an earlier run untouched; only a failing rename could split a set.
    """
    dicts = [_jsonable(r.to_dict()) for r in rows]
    texts = {
        "results.json": json.dumps(dicts, indent=2, ensure_ascii=False, allow_nan=False) + "\n",
        "results.csv": _to_csv(dicts),
        "results.md": render_markdown(rows, title=title, command=command, seed=seed,
                                      table_layout=table_layout, experiment=experiment),
    }
    out_dir = Path(out_dir)
    with contextlib.ExitStack() as stack:
        # ExitStack unwinds in reverse: on success the renames run md, csv, json; on error every temp is deleted.
        for name, text in texts.items():
            f = stack.enter_context(atomic_open(out_dir / name, "w", encoding="utf-8", newline=""))
            f.write(text)
            # Flush and fsync now, inside the block, so that a full disk fails before the first rename rather
            # than between renames (atomic_open would otherwise flush each file only as it renames it).
            f.flush()
            os.fsync(f.fileno())
