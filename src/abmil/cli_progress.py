"""What ``abmil train`` prints while it trains: a line per epoch, or a progress bar per fold.

A single run prints one line per epoch (its progress and its validation metrics). A study (``--folds``) would print
folds x epochs lines (500 for a 10-fold study of 50 epochs), so by default it shows one bar per fold on stderr
(a terminal only), the fold's current validation metric beside it, and one line per finished fold on stdout.
``verbose``: every epoch's line in a study too; ``quiet``: no epoch or fold lines, only the results.
"""
from __future__ import annotations

import sys
from typing import Any

__all__ = ["VERBOSITIES", "TrainProgress", "epoch_line"]

VERBOSITIES = ("quiet", "normal", "verbose")


def epoch_line(record: dict) -> str:
    """``epoch 3, train_loss 0.6931, val_loss ...``: an epoch record as one line."""
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())


class TrainProgress:
    """The printer of one ``abmil train`` command (:data:`VERBOSITIES`). ``epochs``: a fold's bar's length (early
    stopping ends it sooner); ``monitor``: the validation metric shown beside the bar; ``bar``: draw the bars (None:
    when stderr is a terminal)."""

    def __init__(self, verbosity: str = "normal", *, epochs: int, monitor: str = "val_loss",
                 bar: bool | None = None):
        if verbosity not in VERBOSITIES:
            raise ValueError(f"verbosity must be one of {', '.join(VERBOSITIES)}, got {verbosity!r}")
        self.verbosity, self.epochs, self.monitor = verbosity, epochs, monitor
        self.bars = verbosity == "normal" and (sys.stderr.isatty() if bar is None else bar)
        self._bar: Any = None
        self._key: str | None = None

    def epoch(self, record: dict, key: str | None = None) -> None:
        """After an epoch of the single run (``key`` None) or of the study's fold ``key``."""
        if self.verbosity == "quiet":
            return
        if key is None or self.verbosity == "verbose":
            print(epoch_line(record if key is None else {"fold": key, **record}), flush=True)
            return
        if not self.bars:
            return
        if key != self._key:
            self._close_bar()
            from tqdm import tqdm

            self._bar, self._key = tqdm(total=self.epochs, desc=f"fold {key}", unit="epoch", file=sys.stderr,
                                        leave=False, dynamic_ncols=True, mininterval=0), key
        shown = {k: f"{record[k]:.4f}" for k in dict.fromkeys((self.monitor, "val_auc", "train_loss"))
                 if isinstance(record.get(k), float)}
        self._bar.set_postfix(shown, refresh=False)
        self._bar.update(1)

    def fold(self, record: dict) -> None:
        """A finished fold (a study's ``on_fold`` record): its test metrics and kept epoch, one line."""
        self._close_bar()
        if self.verbosity == "quiet":
            return
        test = record["test"]
        print(f"fold {record['key']}: " + ", ".join(f"{k} {v:.4f}" for k, v in test.items() if v is not None)
              + f" (best epoch {record['best_epoch']})", flush=True)

    def close(self) -> None:
        self._close_bar()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._key = None, None
