"""The machinery the paper reproductions share: argument checks, a cache of finished units, a worker pool that
publishes after every unit, the recorded command line and saved models.

An experiment is a list of *units* (a benchmark cell, a histology fold, an MNIST-bags grid point), each with a
``key`` that names its file. A unit's JSON file is its cache entry: it stores the settings that determined its numbers,
and a rerun reuses it only when those settings are the expected ones, so a killed run restarted with the same output
folder trains only what is missing, and a run under other settings never mixes in stale numbers.
"""
from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import shlex
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from abmil.errors import DataError
from abmil.io import make_dirs, write_json_atomic, write_safetensors_atomic

__all__ = [
    "UnitCache",
    "check_float",
    "check_int",
    "check_ints",
    "check_out_dir",
    "check_out_file",
    "command_line",
    "fingerprint",
    "is_number",
    "load_model",
    "numbers",
    "progress_bar",
    "run_pending",
    "save_model",
]


# --------------------------------------------------------------------------------------------------------------------
# Argument checks: each names the argument, so that the CLI's one-line error says what to fix.


def check_int(value: Any, name: str, minimum: int) -> int:
    """``value`` as an int if it is an integer >= ``minimum`` (bools and floats are refused, not truncated)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_float(value: Any, name: str, *, minimum: float | None = None, above: float | None = None) -> float:
    """``value`` as a float if it is a finite real number (and ``>= minimum`` / ``> above`` when given)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {value!r}")
    if above is not None and value <= above:
        raise ValueError(f"{name} must be > {above:g}, got {value!r}")
    return float(value)


def check_ints(values: Iterable[Any], name: str, minimum: int) -> list[int]:
    """A non-empty list of integers >= ``minimum``, sorted and without duplicates (a grid axis)."""
    values = list(values)
    ok = values and all(not isinstance(v, bool) and isinstance(v, (int, np.integer)) and v >= minimum
                        for v in values)
    if not ok:
        raise ValueError(f"{name}: expected integers >= {minimum}, got {values!r}")
    return sorted(dict.fromkeys(int(v) for v in values))


def _blocking_ancestor(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` if it is not a folder (then nothing can be created below it)."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_out_dir(path: str | Path) -> Path:
    """The output folder as a Path; refused before any work when a file stands in its place or above it."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a directory")
    blocker = _blocking_ancestor(out)
    if blocker is not None:
        raise ValueError(f"output path {out}: {blocker} is a file, not a directory")
    return out


def check_out_file(path: str | Path, flag: str = "--out") -> Path:
    """An output file's path (a PNG, a CSV) as a Path; refused before any work when it is a folder or a file stands
    where one of its folders should be."""
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"{flag} {out} is a directory; give a file name")
    blocker = _blocking_ancestor(out)
    if blocker is not None:
        raise ValueError(f"{flag} {out}: {blocker} is a file, not a directory")
    return out


# --------------------------------------------------------------------------------------------------------------------
# What a unit's numbers depend on


def fingerprint(parts: Iterable[str | bytes | np.ndarray]) -> str:
    """SHA-256 over ``parts`` in order (text as UTF-8, arrays as their C-order bytes).

    Stored in a unit's settings so that a cached unit computed from other data (a changed or re-cut file of the same
    name) is not taken for a finished one.
    """
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, str):
            part = part.encode()
        elif isinstance(part, np.ndarray):
            part = np.ascontiguousarray(part).tobytes()
        h.update(part)
    return h.hexdigest()


def command_line(words: Sequence[str], options: Iterable[tuple[str, Any]]) -> str:
    """``words --option value ...`` as one shell-quoted line, recorded in results.md so a reader can rerun it.

    An option's value: None or False leaves it out, True writes the bare flag, a list or tuple is comma-joined,
    anything else is written with ``str``.
    """
    args = list(words)
    for flag, value in options:
        if value is None or value is False:
            continue
        args.append(flag)
        if value is True:
            continue
        args.append(",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value))
    return shlex.join(args)


# --------------------------------------------------------------------------------------------------------------------
# Finished units on disk


@dataclass(frozen=True)
class UnitCache:
    """One JSON file per finished unit, ``folder/{key}.json``, holding the settings it was computed under.

    Attributes:
        folder: where the unit files are.
        settings_key: the entry of a unit file that holds its settings.
        ignore: settings recorded in a file but not compared: they do not change the unit's numbers (e.g. how many
            CV repeats follow the unit's own).
    """

    folder: Path
    settings_key: str = "settings"
    ignore: tuple[str, ...] = ()

    def path(self, key: str) -> Path:
        """The unit's file (whether or not it exists)."""
        return self.folder / f"{key}.json"

    def create(self) -> None:
        """Make the folder now, so that an unwritable output fails before the first unit trains, not after it
        (:class:`abmil.errors.OutputError` naming it)."""
        make_dirs(self.folder)

    def read(self, key: str, settings: Mapping[str, Any],
             valid: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any] | None:
        """The unit's record if its file parses, holds ``settings`` (less ``ignore``) and passes ``valid``;
        else None (missing, half-foreign or stale files are recomputed, never trusted)."""
        try:
            record = json.loads(self.path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or not isinstance(record.get(self.settings_key), dict):
            return None
        if self._compared(record[self.settings_key]) != self._compared(settings):
            return None
        return record if valid is None or valid(record) else None

    def write(self, key: str, record: Mapping[str, Any]) -> None:
        """Write the unit's record atomically: a killed run leaves the old file or the new one, never half of one."""
        write_json_atomic(self.path(key), record)

    def _compared(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in settings.items() if k not in self.ignore}


def is_number(value: Any) -> bool:
    """A JSON number (not a bool), for the checks of a cached record's fields."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def numbers(value: Any, length: int | None = None, *, optional: bool = False) -> bool:
    """A list of JSON numbers (``None`` entries allowed with ``optional``), of ``length`` when given."""
    return (isinstance(value, list) and (length is None or len(value) == length)
            and all(is_number(v) or (optional and v is None) for v in value))


# --------------------------------------------------------------------------------------------------------------------
# Running the pending units


class Keyed(Protocol):
    """A unit: its ``key`` names its files and its entry in the records."""

    @property
    def key(self) -> str: ...


U = TypeVar("U", bound=Keyed)
R = TypeVar("R")

# The current run's work function and torch threads, inherited by forked workers: only units and records are pickled,
# so ``work`` may close over large data (images, patches) and need not be importable.
_JOB: tuple[Callable[[Any], Any], int | None] | None = None


def _run_one(unit: Any) -> tuple[Any, Any]:
    work, threads = _JOB
    if threads is not None:
        torch.set_num_threads(threads)
    return unit, work(unit)


def run_pending(pending: Sequence[U], work: Callable[[U], R], *, records: dict[str, R],
                publish: Callable[[], Any], jobs: int = 1, threads: int | None = None,
                cost: Callable[[U], float] | None = None,
                on_done: Callable[[U, R], None] | None = None) -> None:
    """Run ``work(unit)`` for every pending unit; after each, store its record and ``publish()``.

    Each finished unit is published at once, so that a run killed at any point leaves results for all it finished.
    ``work`` writes its own unit file (and any other per-unit output), in the worker, so that nothing is lost if
    the parent dies first.

    Args:
        jobs: with more than one (and more than one unit pending), a pool of ``min(jobs, len(pending))`` forked
            worker processes; else in this process. The records do not depend on it.
        threads: torch threads for each unit; None: 1 in pool workers (one core each), unchanged in-process.
        cost: with a pool, units are handed out most costly first, so that the pool's tail holds short ones.
        on_done: called with (unit, record) after publishing, e.g. to advance a progress bar.
    """
    global _JOB
    outer = _JOB  # restored after: a work function may itself run a (nested) set of units in-process
    pooled = jobs > 1 and len(pending) > 1
    if pooled and threads is None:
        threads = 1
    if pooled and cost is not None:
        pending = sorted(pending, key=lambda u: -cost(u))
    _JOB = (work, threads)
    pool = mp.get_context("fork").Pool(min(jobs, len(pending))) if pooled else None
    try:
        results: Iterator[tuple[U, R]] = (pool.imap_unordered(_run_one, pending) if pool is not None
                                          else map(_run_one, pending))
        for unit, record in results:
            records[unit.key] = record
            publish()
            if on_done is not None:
                on_done(unit, record)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        _JOB = outer


def progress_bar(total: int, *, enabled: bool = True, **options: Any) -> Any:
    """A tqdm bar on stderr (results go to stdout), or None when disabled."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, file=sys.stderr, **options)


# --------------------------------------------------------------------------------------------------------------------
# Saved models: weights through safetensors only (no pickle), their settings as JSON metadata.


def save_model(path: str | Path, model: torch.nn.Module, metadata: Mapping[str, Any]) -> None:
    """The model's weights, with each metadata value stored as JSON (safetensors metadata holds strings only)."""
    write_safetensors_atomic(path, model.state_dict(), {k: json.dumps(v) for k, v in metadata.items()})


def load_model(path: str | Path,
               build: Callable[[dict[str, Any]], torch.nn.Module]) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A saved model in eval mode and its metadata: ``build(metadata)`` makes the architecture, then the weights
    are loaded into it (strictly: a file of another architecture fails).

    Raises:
        FileNotFoundError: no file at ``path``.
        DataError: naming the file: not a safetensors file (truncated, another format), metadata that is not JSON or
            lacks what ``build`` reads, weights missing, extra, of another shape than the model's, or non-finite.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no saved model {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no mapping)
    except Exception as e:  # safetensors raises its own error types on truncated or foreign files
        raise DataError(f"not a readable safetensors model ({' '.join(str(e).split())})", path=str(path)) from None
    metadata = {}
    for key, value in raw_meta.items():
        try:
            metadata[key] = json.loads(value)
        except ValueError:
            raise DataError(f"metadata entry {key!r} is not JSON", path=str(path)) from None
    try:
        net = build(metadata)
    except KeyError as e:
        raise DataError(f"the saved model's metadata lacks {e} (not a model saved by this experiment?)",
                        path=str(path)) from None
    except (TypeError, ValueError, AttributeError, IndexError) as e:
        raise DataError(f"the saved model's metadata is malformed ({e})", path=str(path)) from None
    _check_weights(net.state_dict(), tensors, str(path))
    net.load_state_dict(tensors)
    return net.eval(), metadata


def _check_weights(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], path: str) -> None:
    """DataError naming ``path`` and the first tensor at fault unless ``found`` holds exactly ``expected``'s tensors,
    of the same shapes, all finite."""
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    if missing or extra:
        what = f"lacks {missing[0]!r}" if missing else f"holds {extra[0]!r}, which the model has not"
        raise DataError(f"weights do not fit the model its metadata describes: the file {what} "
                        f"({len(missing)} missing, {len(extra)} unexpected tensors)", path=path)
    for k, v in expected.items():
        if tuple(found[k].shape) != tuple(v.shape):
            raise DataError(f"weights do not fit the model its metadata describes: {k!r} has shape "
                            f"{tuple(found[k].shape)}, the model's is {tuple(v.shape)}", path=path)
        if found[k].is_floating_point() and not torch.isfinite(found[k]).all():
            raise DataError(f"weight {k!r} holds NaN or Inf", path=path)
