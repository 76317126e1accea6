"""Data-parallel training: 2 CPU processes (gloo) under torch.distributed.run equal one process with
twice the batch, and stay in step with each other."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch

from abmil.cli import main
from abmil.train.checkpoint import read_checkpoint
from wsi_helpers import load_weights, make_dataset

# 9 slides, 2 validate, 7 train: steps of 2 + 2 slides, the last global batch one slide (one rank idle);
# dropout on; one slide of 80 patches pooled in chunks of 32
ARGS = ["--epochs", "2", "--hidden", "32", "--att-dim", "16", "--chunk-size", "32", "--lr", "1e-3",
        "--seed", "3", "--val-split", "0.15"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_equal_one_process_with_double_batch(tmp_path):
    manifest, features = make_dataset(tmp_path, 9, big=80)
    data = ["--manifest", str(manifest), "--features", str(features)]
    ddp_run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(free_port()), "-m", "abmil", "train", *data, "--out", str(ddp_run),
         "--batch-size", "1", *ARGS],
        env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("wrote ") == 1  # only rank 0 prints and writes
    info = read_checkpoint(ddp_run)
    assert info["world_size"] == 2 and len(info["train_slides"]) == 7 and "s00" in info["train_slides"]  # s00: chunked
    # both ranks hold the same weights after every epoch (rank 0 broadcasts its copy, max |difference|)
    assert [h["rank_weight_max_diff"] for h in info["history"]["records"]] == [0.0, 0.0]

    # the documented single-process equivalent: --batch-size 2 (= 2 ranks x 1)
    assert main(["train", *data, "--out", str(tmp_path / "single"), "--batch-size", "2", *ARGS]) == 0
    ddp, single = load_weights(ddp_run), load_weights(tmp_path / "single")
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], rtol=0, atol=1e-6, msg=k)
    for a, b in zip(info["history"]["records"], read_checkpoint(tmp_path / "single")["history"]["records"]):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-6 and abs(a["val_loss"] - b["val_loss"]) < 1e-6
