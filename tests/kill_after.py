"""Run ``abmil ARGS`` and SIGKILL the process after N optimizer steps: ``python kill_after.py N ARGS...``.

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


if __name__ == "__main__":
    wsi.train_feature_model = functools.partial(wsi.train_feature_model, callbacks=[KillAfterSteps(int(sys.argv[1]))])
    sys.exit(main(sys.argv[2:]))
