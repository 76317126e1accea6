"""The CSV tables of slides that predictions files and manifests are, read back: the header and the rows, checked.

The layer below :mod:`abmil.slides.predictions` (which owns the predictions files and re-exports these) that the
evaluation code (:mod:`abmil.report`) reads with; it knows no task, so that the tasks, which call the evaluation,
stay above it. The column prefixes of the predictions' outputs are named here for the same reason.
"""
from __future__ import annotations

import csv

from ..errors import DataError

__all__ = ["PROB_PREFIX", "SURV_PREFIX", "case_column", "read_csv", "read_table"]

#: Classification: a ``prob_<class>`` column per class.
PROB_PREFIX = "prob_"
#: Survival (discrete time): a ``surv_<t>`` column per bin end ``t``.
SURV_PREFIX = "surv_"


def read_csv(path: str, what: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """A CSV's stripped header and its non-blank rows as ``(line, {column: stripped cell})``: the one CSV reader of
    manifests (:func:`abmil.slides.manifest.read_manifest`) and predictions files (:func:`read_table`). DataError
    naming the file where it is missing, unreadable, without a header or with a column twice."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets write a BOM
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            reader.fieldnames = columns
            rows = []
            for r in reader:
                cells = {k: (v or "").strip() for k, v in r.items() if k is not None}
                if any(cells.values()):  # a trailing blank line is not a slide
                    rows.append((reader.line_num, cells))
    except FileNotFoundError:
        raise DataError(f"{what} not found", path=path) from None
    except IsADirectoryError:
        raise DataError(f"{what} is a folder, not a CSV file", path=path) from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{what} is not a readable CSV file ({e})", path=path) from None
    if not columns:
        raise DataError(f"{what} is empty: no header line", path=path)
    if len(set(columns)) != len(columns):
        dup = sorted({c for c in columns if columns.count(c) > 1})
        raise DataError(f"{what} has duplicate column(s) {', '.join(dup)}", path=path)
    return columns, rows


def read_table(path: str, what: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """:func:`read_csv`, checked as a table of slides: unique, non-empty ``slide_id`` s; DataError naming the file
    (and line, slide) otherwise."""
    columns, rows = read_csv(path, what)
    if "slide_id" not in columns:
        raise DataError(f"{what} has no 'slide_id' column (found: {', '.join(columns)})", path=path)
    if not rows:
        raise DataError(f"{what} lists no slides", path=path)
    seen: dict[str, int] = {}
    for line, cells in rows:
        sid = cells["slide_id"]
        if not sid:
            raise DataError(f"line {line}: column 'slide_id' is empty", path=path)
        if sid in seen:
            raise DataError(f"column 'slide_id': duplicate slide id (lines {seen[sid]} and {line})", path=path,
                            bag=sid)
        seen[sid] = line
    return columns, rows


def case_column(path: str, rows: list[tuple[int, dict[str, str]]]) -> dict[str, str]:
    """``{slide_id: case_id}`` of a file with a ``case_id`` column; every cell must be filled."""
    out = {}
    for line, cells in rows:
        if not cells["case_id"]:
            raise DataError(f"line {line}: column 'case_id' is empty", path=path, bag=cells["slide_id"])
        out[cells["slide_id"]] = cells["case_id"]
    return out
