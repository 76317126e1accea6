"""Run ``abmil ARGS`` and SIGKILL the process after N optimizer steps: ``python kill_after.py N ARGS...``
(the run's step number: a resumed run counts on from its checkpoint), or after N step callbacks of this process
whatever runs they belong to: ``python kill_after.py --calls N ARGS...`` (e.g. in the second fold of ``--folds``).

Fault injection for the resume tests through a training-loop callback (the production loop reads no such hook)."""
from __future__ import annotations

import functools
import os
import signal
import sys

import abmil.slides.train as wsi
from abmil.cli import main
from abmil.train.loop import Callback


class KillAfterSteps(Callback):
    def __init__(self, steps: int):
        self.steps = steps

    def on_step_end(self, step: int) -> None:
        if step >= self.steps:
            os.kill(os.getpid(), signal.SIGKILL)


class KillAfterCalls(Callback):
    def __init__(self, calls: int):
        self.calls, self.seen = calls, 0

    def on_step_end(self, step: int) -> None:
        self.seen += 1
        if self.seen >= self.calls:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    if sys.argv[1] == "--calls":
        killer, argv = KillAfterCalls(int(sys.argv[2])), sys.argv[3:]
    else:
        killer, argv = KillAfterSteps(int(sys.argv[1])), sys.argv[2:]
    wsi.train_feature_model = functools.partial(wsi.train_feature_model, callbacks=[killer])
    sys.exit(main(argv))
