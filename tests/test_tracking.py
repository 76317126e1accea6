"""``abmil train --log tensorboard``: every fold's epoch records as TensorBoard scalars, read back with
tensorboard's own reader, equal to the records the fold's checkpoint keeps."""
from __future__ import annotations

import pytest

from abmil.cli import main
from abmil.train.checkpoint import read_checkpoint
from wsi_helpers import make_case_dataset

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator.EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_every_folds_curves_are_logged(tmp_path):
    manifest, features, _ = make_case_dataset(tmp_path / "d", 8, sizes=(6, 10))
    out = tmp_path / "run"
    assert main(["train", "--manifest", str(manifest), "--features", str(features), "--out", str(out), "--folds", "2",
                 "--epochs", "3", "--hidden", "8", "--att-dim", "4", "--log", "tensorboard"]) == 0
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["r0_f0", "r0_f1"]
    for key in ("r0_f0", "r0_f1"):
        records = read_checkpoint(out / "folds" / key)["history"]["records"]
        logged = scalars(out / "logs" / key)
        assert set(logged) == {k for k in records[0] if k != "epoch"}
        for name, points in logged.items():  # float32 in the event file
            assert points == [(r["epoch"], pytest.approx(r[name], rel=1e-6)) for r in records]
