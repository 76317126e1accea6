"""``--format torchscript``: ``model.pt``, loaded by ``torch.jit.load`` alone (no abmil needed).

    model = torch.jit.load("DIR/model.pt")
    outputs, scores = model(embedding)        # embedding (n_patches, in_dim) float32

Every slide pooling exports: attention, gated, clam-sb, mean, max, instance-mean / -max and the linear probe are
traced, TransMIL is scripted (its grid padding follows the bag's size).
"""
from __future__ import annotations

from pathlib import Path

from .graph import Ensemble
from .source import ExportSource, to_torchscript

MODEL_FILE = "model.pt"


def check(source: ExportSource) -> None:
    """Every model of the registry exports to TorchScript."""


def write(module: Ensemble, source: ExportSource, folder: Path, name: str = MODEL_FILE) -> str:
    """Write ``module`` as TorchScript into ``folder``; returns the file's name."""
    to_torchscript(module, source).save(str(folder / name))
    return name
