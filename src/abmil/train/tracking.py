"""Optional tracking of a run's epochs: TensorBoard event files, through torch's own writer
(:class:`torch.utils.tensorboard.SummaryWriter`; the ``tensorboard`` package, ``pip install -e ".[tracking]"``).

    log = TensorBoardLog("runs/cv/logs")
    log("r0_f1", {"epoch": 3, "train_loss": 0.41, "val_auc": 0.83})   # logs/r0_f1/events.out.tfevents...

One event folder per fold (or run), one scalar per number of each epoch's record (train loss, validation metrics),
at step = the epoch. Nothing is written before the first record, so that a command refused on bad input leaves no
folder behind; ``tensorboard --logdir runs/cv/logs`` shows every fold's curves side by side.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import optional_import

__all__ = ["TensorBoardLog"]


class TensorBoardLog:
    """A callable ``(key, epoch record)`` writing each record's numbers under ``log_dir/key`` (``key`` "": the
    folder itself); :meth:`close` flushes and closes the writers."""

    def __init__(self, log_dir: str | os.PathLike):
        self._writer_class = optional_import("torch.utils.tensorboard", "tracking", "--log tensorboard",
                                             package="tensorboard").SummaryWriter
        self.log_dir = Path(log_dir)
        self._writers: dict[str, object] = {}

    def __call__(self, key: str, record: dict) -> None:
        writer = self._writers.get(key)
        if writer is None:
            writer = self._writers[key] = self._writer_class(os.fspath(self.log_dir / key if key else self.log_dir))
        step = int(record["epoch"])
        for name, value in record.items():
            if name != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.add_scalar(name, float(value), step)
        writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
