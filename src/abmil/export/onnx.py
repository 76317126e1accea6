"""``--format onnx``: ``model.onnx`` (opset :data:`OPSET`), run by onnxruntime (the ``onnx`` extra: ``onnx`` for the
exporter, ``onnxruntime`` to run it).

    session = onnxruntime.InferenceSession("DIR/model.onnx")
    outputs, scores = session.run(None, {"embedding": embedding})     # (n_patches, in_dim) float32

The graph is recorded by torch's TorchScript-based exporter (``dynamo=False``: no onnxscript needed), with the
number of patches a dynamic axis. TransMIL does not export: its padding of the bag to a square grid is Python
arithmetic on the bag's size, which that exporter records as constants (a graph right for one bag size only).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..errors import optional_import
from .graph import Ensemble
from .source import ExportSource, example_bag

MODEL_FILE = "model.onnx"
OPSET = 17
INPUT, OUTPUTS, SCORES = "embedding", "outputs", "scores"


def check(source: ExportSource) -> None:
    """ValueError for a model ONNX cannot express."""
    if source.spec.level == "transformer":
        raise ValueError(f"--format onnx cannot express --pooling {source.pooling}: its padding to a square grid "
                         f"follows the bag's size, which the ONNX exporter records as a constant; export it with "
                         f"--format torchscript")


def write(module: Ensemble, source: ExportSource, folder: Path) -> str:
    """Write ``module`` as ONNX into ``folder``; returns the file's name."""
    optional_import("onnx", "onnx", "exporting to ONNX", package="onnx")
    axes = {INPUT: {0: "n_patches"}}
    if source.spec.instance_scores is not None:
        axes[SCORES] = {0: "n_patches"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
        torch.onnx.export(module, (example_bag(source.in_dim),), str(folder / MODEL_FILE), dynamo=False,
                          input_names=[INPUT], output_names=[OUTPUTS, SCORES], dynamic_axes=axes,
                          opset_version=OPSET)
    return MODEL_FILE
