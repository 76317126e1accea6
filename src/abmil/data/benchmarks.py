"""The classic MIL benchmarks (Musk1/2, Fox, Tiger, Elephant, UCSB breast) and their file formats.

Two on-disk formats are read:

* CSV (the ``mil`` package layout): no header, one row per instance; column 0 = bag label 0/1 (copied onto every
  instance, so it is *not* an instance label), column 1 = bag id, columns 2.. = features; a bag's rows are contiguous.
* MATLAB v5 (Andrews et al.'s ``*_matlab.mat``): ``features`` (instances x d, sparse or dense), ``labels``
  (1 x instances, bag labels -1/+1 or 0/1), ``bag_ids`` (1 x instances, a bag's rows contiguous).

Both may be gzip-compressed. The real benchmark files ship inside the package (``abmil/data/files``) and are read with
:mod:`importlib.resources`; nothing here downloads or reads outside the package unless given a path.
Every input problem raises :class:`abmil.errors.DataError` naming the file and, where one is at fault, the bag.
"""
from __future__ import annotations

import csv
import gzip
import io
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import scipy.io
import scipy.sparse

from abmil.errors import DataError

__all__ = [
    "BENCHMARKS",
    "EXPECTED_FEATURES",
    "MILDataset",
    "load_benchmark",
    "load_dataset",
    "load_mil_csv",
    "load_mil_mat",
    "validate_bags",
]

# name -> (shipped file, feature count). Order is the paper's table order.
_SHIPPED: dict[str, tuple[str, int]] = {
    "musk1": ("musk1.csv.gz", 166),
    "musk2": ("musk2.csv.gz", 166),
    "fox": ("fox.mat.gz", 230),
    "tiger": ("tiger.mat.gz", 230),
    "elephant": ("elephant.mat.gz", 230),
    "ucsb_breast": ("ucsb_breast_cancer.csv.gz", 708),
}
BENCHMARKS: tuple[str, ...] = tuple(_SHIPPED)
EXPECTED_FEATURES: dict[str, int] = {name: d for name, (_, d) in _SHIPPED.items()}

_CSV_SUFFIXES = (".csv", ".csv.gz")
_MAT_SUFFIXES = (".mat", ".mat.gz")
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class MILDataset:
    """A set of labelled bags.

    Attributes:
        name: short dataset name (e.g. ``"musk1"``).
        bags: one float32 array of shape (n_i, d) per bag, n_i >= 1, the same d for all bags.
        labels: (n_bags,) int64 bag labels in {0, 1}.
        bag_ids: (n_bags,) bag ids as strings, in file order (``"1"`` .. ``"B"`` for the benchmarks).
        source: the file path read, or ``"abmil:<name>"`` for a shipped benchmark.
    """

    name: str
    bags: list[np.ndarray]
    labels: np.ndarray
    bag_ids: list[str]
    source: str

    @property
    def n_features(self) -> int:
        """Feature dimension d (0 for a dataset without bags)."""
        return int(self.bags[0].shape[1]) if self.bags else 0

    @property
    def n_instances(self) -> int:
        """Total number of instances over all bags."""
        return int(sum(b.shape[0] for b in self.bags))

    def __len__(self) -> int:
        return len(self.bags)


# --------------------------------------------------------------------------------------------------------------------
# Validation shared by the loaders and by callers that build bags themselves.


def validate_bags(
    bags: Sequence[np.ndarray],
    labels: np.ndarray | Sequence[int],
    *,
    source: str | None,
    bag_ids: Sequence[str] | None = None,
) -> None:
    """Check bags and bag labels; raise :class:`DataError` naming ``source`` and the bag at fault.

    Args:
        bags: sequence of arrays, each of shape (n_i, d) with n_i >= 1, finite values and one common d.
        labels: (n_bags,) bag labels, each 0 or 1.
        source: file or description used in messages (``None`` for none).
        bag_ids: optional (n_bags,) ids used in messages; without them bags are named by their index.
    """
    if len(bags) == 0:
        raise DataError("empty dataset: no bags", path=source)
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != len(bags):
        raise DataError(f"{len(bags)} bags but labels of shape {labels.shape}", path=source)
    if bag_ids is not None and len(bag_ids) != len(bags):
        raise DataError(f"{len(bags)} bags but {len(bag_ids)} bag ids", path=source)
    d = None
    for i, bag in enumerate(bags):
        who = bag_ids[i] if bag_ids is not None else i
        d = _check_bag(np.asarray(bag), d, i, who, source)
    bad = np.flatnonzero(~np.isin(labels, (0, 1)))
    if bad.size:
        i = int(bad[0])
        who = bag_ids[i] if bag_ids is not None else i
        raise DataError(f"label {labels[i]!r} (bag index {i}) is not 0 or 1", path=source, bag=who)


def _check_bag(bag: np.ndarray, d: int | None, index: int, who: object, source: str | None) -> int:
    """Validate one bag against the feature count ``d`` of the bags before it; return its feature count."""
    where = f"(bag index {index})"
    if bag.ndim != 2:
        raise DataError(f"bag must be a 2-D (instances x features) array, got shape {bag.shape} {where}",
                        path=source, bag=who)
    if bag.shape[0] == 0:
        raise DataError(f"empty bag: 0 instances {where}", path=source, bag=who)
    if not (np.issubdtype(bag.dtype, np.integer) or np.issubdtype(bag.dtype, np.floating)
            or bag.dtype == np.bool_):
        raise DataError(f"features must be real numbers, got dtype {bag.dtype} {where}", path=source, bag=who)
    if d is not None and bag.shape[1] != d:
        raise DataError(f"inconsistent feature dimension: {bag.shape[1]} features, earlier bags have {d} {where}",
                        path=source, bag=who)
    finite = np.isfinite(bag)
    if not finite.all():
        row, col = (int(k) for k in np.argwhere(~finite)[0])
        raise DataError(f"non-finite feature value {bag[row, col]} at instance {row} (0-based), feature {col} "
                        f"{where}", path=source, bag=who)
    return int(bag.shape[1])


def _check_feature_count(d: int, expected: int | None, source: str) -> None:
    """The feature count is checked because circulating copies leak the instance label as an extra column."""
    if expected is None or d == expected:
        return
    msg = f"inconsistent feature dimension: {d} features, expected {expected}"
    if d == expected + 1:
        msg += ("; one extra column is the known leak of an instance-label column in some circulating copies "
                "(e.g. Musk1 with 167 vs 166, Fox with 231 vs 230) - drop that column, do not train on it")
    else:
        msg += " (a copy with one extra column, e.g. 167 vs 166, usually leaks the instance label)"
    raise DataError(msg, path=source)


# --------------------------------------------------------------------------------------------------------------------
# Turning per-instance rows into bags (shared by both formats).


def _norm_id(token: object) -> str:
    """Bag id as text; numeric ids are normalised so that CSV "1", "1.0" and MATLAB uint8 1 all give "1"."""
    text = str(token).strip()
    try:
        value = float(text)
    except ValueError:
        return text
    if np.isfinite(value) and value == int(value):
        return str(int(value))
    return text


def _group_rows(
    features: np.ndarray,
    labels: np.ndarray,
    ids: list[str],
    rows: np.ndarray,
    unit: str,
    source: str,
) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """Split per-instance arrays into contiguous bags.

    Args:
        features: (n, d) float64; labels: (n,) int64 in {0, 1}; ids: n bag ids.
        rows: (n,) 1-based row numbers used in messages; unit: their name ("row" or "instance").
    Returns:
        bags (list of (n_i, d) float32), bag labels (n_bags,) int64, bag ids.
    """
    finite = np.isfinite(features)
    if not finite.all():
        r, c = (int(k) for k in np.argwhere(~finite)[0])
        raise DataError(f"non-finite feature value {features[r, c]} at {unit} {rows[r]}, feature {c + 1}",
                        path=source, bag=ids[r])
    too_big = np.abs(features) > np.finfo(np.float32).max  # would silently become inf in the float32 bags
    if too_big.any():
        r, c = (int(k) for k in np.argwhere(too_big)[0])
        raise DataError(f"feature value {features[r, c]} at {unit} {rows[r]}, feature {c + 1} exceeds the float32 "
                        f"range", path=source, bag=ids[r])
    starts = [0] + [i for i in range(1, len(ids)) if ids[i] != ids[i - 1]]
    ends = starts[1:] + [len(ids)]
    seen: dict[str, int] = {}
    bags, bag_labels = [], []
    for s, e in zip(starts, ends):
        bag_id = ids[s]
        if bag_id in seen:
            raise DataError(f"rows of the bag are not contiguous: it reappears at {unit} {rows[s]} after other bags "
                            f"(first seen at {unit} {rows[seen[bag_id]]})", path=source, bag=bag_id)
        seen[bag_id] = s
        changed = np.flatnonzero(labels[s:e] != labels[s])
        if changed.size:
            k = s + int(changed[0])
            raise DataError(f"bag label is not constant within the bag: {unit} {rows[s]} has {labels[s]}, "
                            f"{unit} {rows[k]} has {labels[k]}", path=source, bag=bag_id)
        bags.append(features[s:e].astype(np.float32))
        bag_labels.append(labels[s])
    return bags, np.asarray(bag_labels, dtype=np.int64), list(seen)


def _finish(bags: list[np.ndarray], labels: np.ndarray, ids: list[str], *, name: str, source: str,
            expected_features: int | None) -> MILDataset:
    _check_feature_count(bags[0].shape[1], expected_features, source)
    # Re-checked after the float32 cast: values beyond float32 range would have become inf.
    validate_bags(bags, labels, source=source, bag_ids=ids)
    return MILDataset(name=name, bags=bags, labels=labels, bag_ids=ids, source=source)


# --------------------------------------------------------------------------------------------------------------------
# File access.


def _read_bytes(path: str | os.PathLike) -> bytes:
    """Read a file, gunzipping it when it starts with the gzip magic (so ``.gz`` is transparent)."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError("file not found", path=source) from None
    except OSError as e:
        raise DataError(f"cannot read file ({e.strerror or e})", path=source) from e
    return _maybe_gunzip(raw, source)


def _maybe_gunzip(raw: bytes, source: str) -> bytes:
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"corrupt gzip data ({e})", path=source) from e


def _default_name(path: str | os.PathLike) -> str:
    name = Path(path).name
    for suffix in (".gz", ".csv", ".mat"):
        name = name.removesuffix(suffix)
    return name


# --------------------------------------------------------------------------------------------------------------------
# CSV.


def load_mil_csv(path: str | os.PathLike, *, name: str | None = None,
                 expected_features: int | None = None) -> MILDataset:
    """Load a MIL CSV file (``.csv`` or ``.csv.gz``): col 0 bag label 0/1, col 1 bag id, cols 2.. features.

    Returns a :class:`MILDataset` whose bags are (n_i, d) float32 with d = columns - 2.
    Raises :class:`DataError` on any malformed input (see the module docstring).
    """
    raw = _read_bytes(path)
    return _parse_csv(raw, source=str(path), name=name or _default_name(path), expected_features=expected_features)


def _parse_csv(raw: bytes, *, source: str, name: str, expected_features: int | None) -> MILDataset:
    try:
        text = raw.decode("utf-8-sig")  # -sig: tolerate a BOM written by spreadsheet tools
    except UnicodeDecodeError as e:
        raise DataError(f"not a UTF-8 text CSV file ({e.reason} at byte {e.start})", path=source) from None
    line_nos, records = _csv_records(text, source)
    labels = _csv_labels(records, line_nos, source)
    ids = [_norm_id(r[1]) for r in records]
    features = _csv_features(records, line_nos, ids, source)
    bags, bag_labels, bag_ids = _group_rows(features, labels, ids, np.asarray(line_nos), "row", source)
    return _finish(bags, bag_labels, bag_ids, name=name, source=source, expected_features=expected_features)


def _csv_records(text: str, source: str) -> tuple[list[int], list[list[str]]]:
    """Non-blank rows with their 1-based line numbers; checks the column count (>= 3 and the same for all rows)."""
    line_nos, records = [], []
    reader = csv.reader(io.StringIO(text))
    for record in reader:
        if len(record) <= 1 and not "".join(record).strip():
            continue  # blank line
        line_nos.append(reader.line_num)
        records.append(record)
    if not records:
        raise DataError("empty dataset: the CSV file has no rows", path=source)
    width = len(records[0])
    for line, record in zip(line_nos, records):
        bag = _norm_id(record[1]) if len(record) > 1 else None
        if len(record) > 1 and not bag:
            raise DataError(f"missing bag id at row {line}, column 2", path=source)
        if len(record) < 3:
            raise DataError(f"too few columns: row {line} has {len(record)}, need at least 3 "
                            f"(bag label, bag id, >= 1 feature)", path=source, bag=bag)
        if len(record) != width:
            raise DataError(f"inconsistent feature dimension: row {line} has {len(record) - 2} features, "
                            f"row {line_nos[0]} has {width - 2}", path=source, bag=bag)
    return line_nos, records


def _csv_labels(records: list[list[str]], line_nos: list[int], source: str) -> np.ndarray:
    """(n,) int64 labels from column 0; CSV bag labels must be 0/1 (the ``mil`` package convention)."""
    labels = np.empty(len(records), dtype=np.int64)
    for k, (line, record) in enumerate(zip(line_nos, records)):
        try:
            value = float(record[0])
        except ValueError:
            value = None
        if value not in (0.0, 1.0):
            raise DataError(f"bag label {record[0].strip()!r} at row {line} is not 0 or 1",
                            path=source, bag=_norm_id(record[1]))
        labels[k] = int(value)
    return labels


def _csv_features(records: list[list[str]], line_nos: list[int], ids: list[str], source: str) -> np.ndarray:
    """(n, d) float64 features from columns 2..; one vectorised parse, a row-by-row rescan only to name a bad value."""
    try:
        return np.array([r[2:] for r in records], dtype=np.float64)
    except ValueError:
        pass
    for line, record, bag in zip(line_nos, records, ids):
        for col, token in enumerate(record[2:], start=3):
            try:
                float(token)
            except ValueError:
                raise DataError(f"unparsable value {token.strip()!r} at row {line}, column {col}",
                                path=source, bag=bag) from None
    raise DataError("unparsable feature values", path=source)  # unreachable unless numpy and float() disagree


# --------------------------------------------------------------------------------------------------------------------
# MATLAB.


def load_mil_mat(path: str | os.PathLike, *, name: str | None = None,
                 expected_features: int | None = None) -> MILDataset:
    """Load a MATLAB MIL file (``.mat`` or ``.mat.gz``) with fields ``features``, ``labels``, ``bag_ids``.

    ``features`` is (instances x d), sparse or dense; ``labels`` holds per-instance copies of the bag label as
    -1/+1 (mapped to 0/1) or 0/1; ``bag_ids`` gives each instance's bag, a bag's rows contiguous.
    Returns a :class:`MILDataset` whose bags are (n_i, d) float32.
    """
    raw = _read_bytes(path)
    return _parse_mat(raw, source=str(path), name=name or _default_name(path), expected_features=expected_features)


def _parse_mat(raw: bytes, *, source: str, name: str, expected_features: int | None) -> MILDataset:
    try:
        mat = scipy.io.loadmat(io.BytesIO(raw))
    except Exception as e:  # scipy raises several unrelated types (ValueError, TypeError, MatReadError, ...)
        raise DataError(f"not a readable MATLAB .mat file ({type(e).__name__}: {e})", path=source) from e
    present = sorted(k for k in mat if not k.startswith("__"))
    for field in ("features", "labels", "bag_ids"):
        if field not in mat:
            raise DataError(f"no field '{field}' (fields present: {', '.join(present) or 'none'})", path=source)
    features = _mat_array(mat["features"], "features", source)
    if features.ndim != 2:
        raise DataError(f"field 'features' must be 2-D (instances x features), got shape {features.shape}",
                        path=source)
    n = features.shape[0]
    if n == 0 or features.shape[1] == 0:
        raise DataError(f"empty dataset: field 'features' has shape {features.shape}", path=source)
    ids = [_norm_id(v) for v in _mat_vector(mat["bag_ids"], "bag_ids", n, source)]
    labels = _mat_labels(_mat_vector(mat["labels"], "labels", n, source), ids, source)
    try:
        features = features.astype(np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(f"field 'features' is not numeric ({e})", path=source) from None
    bags, bag_labels, bag_ids = _group_rows(features, labels, ids, np.arange(1, n + 1), "instance", source)
    return _finish(bags, bag_labels, bag_ids, name=name, source=source, expected_features=expected_features)


def _mat_array(value: object, field: str, source: str) -> np.ndarray:
    if scipy.sparse.issparse(value):
        return value.toarray()
    if not isinstance(value, np.ndarray):
        raise DataError(f"field '{field}' is not an array", path=source)
    return value


def _mat_vector(value: object, field: str, n: int, source: str) -> np.ndarray:
    """A 1 x n or n x 1 field as an (n,) array; cell-array entries are unwrapped."""
    arr = _mat_array(value, field, source)
    if arr.size != n or (arr.ndim == 2 and min(arr.shape) != 1 and n > 1):
        raise DataError(f"field '{field}' has shape {arr.shape}, expected 1 x {n} (one entry per row of 'features')",
                        path=source)
    flat = arr.reshape(-1)
    if flat.dtype == object:  # cell array: each entry is itself a small array
        flat = np.array([np.asarray(v).reshape(-1)[0] if np.size(v) == 1 else v for v in flat], dtype=object)
    return flat


def _mat_labels(values: np.ndarray, ids: list[str], source: str) -> np.ndarray:
    """(n,) int64 0/1 from -1/+1 (Andrews et al.'s convention) or 0/1; one scheme per file."""
    try:
        labels = values.astype(np.float64)
    except (TypeError, ValueError):
        for k, v in enumerate(values):  # name the first entry that is not a number (a word among numbers, ...)
            try:
                float(v)
            except (TypeError, ValueError):
                raise DataError(f"field 'labels' is not numeric: {str(v)!r} at instance {k + 1}", path=source,
                                bag=ids[k]) from None
        raise DataError("field 'labels' is not numeric", path=source) from None
    allowed = (-1.0, 1.0) if np.any(labels == -1) else (0.0, 1.0)
    bad = np.flatnonzero(~np.isin(labels, allowed))
    if bad.size:
        k = int(bad[0])
        raise DataError(f"label {values[k]} at instance {k + 1} is not -1/+1 or 0/1 (nor a mix of the two)",
                        path=source, bag=ids[k])
    return (labels > 0).astype(np.int64)


# --------------------------------------------------------------------------------------------------------------------
# Public entry points.


def load_benchmark(name: str) -> MILDataset:
    """Load one of :data:`BENCHMARKS` from the files shipped in the package (no network, nothing outside it).

    Feature counts: musk1/musk2 166, fox/tiger/elephant 230, ucsb_breast 708 (checked on load).
    """
    if name not in _SHIPPED:
        raise DataError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    filename, d = _SHIPPED[name]
    source = f"abmil:{name}"
    try:
        raw = (resources.files("abmil.data") / "files" / filename).read_bytes()
    except (FileNotFoundError, OSError):
        raise DataError(f"shipped data file {filename} is missing from the installed package "
                        f"(package data 'abmil.data/files/*' not installed?)", path=source) from None
    raw = _maybe_gunzip(raw, source)
    parse = _parse_csv if filename.endswith(_CSV_SUFFIXES) else _parse_mat
    return parse(raw, source=source, name=name, expected_features=d)


def load_dataset(path_or_name: str | os.PathLike) -> MILDataset:
    """Load a shipped benchmark by name, or a file by extension (.csv, .csv.gz, .mat, .mat.gz)."""
    if isinstance(path_or_name, str) and path_or_name in _SHIPPED:
        return load_benchmark(path_or_name)
    lower = str(path_or_name).lower()
    if lower.endswith(_CSV_SUFFIXES):
        return load_mil_csv(path_or_name)
    if lower.endswith(_MAT_SUFFIXES):
        return load_mil_mat(path_or_name)
    raise DataError(f"neither a benchmark name ({', '.join(BENCHMARKS)}) nor a .csv, .csv.gz, .mat or .mat.gz file",
                    path=str(path_or_name))
