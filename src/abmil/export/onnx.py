"""``--format onnx``: ``model.onnx`` (opset :data:`OPSET`), run by onnxruntime (the ``onnx`` extra: ``onnx`` for the
exporter, ``onnxruntime`` to run it).

    session = onnxruntime.InferenceSession("DIR/model.onnx")
    outputs, scores = session.run(None, {"embedding": embedding})     # (n_patches, in_dim) float32

The graph is recorded by torch's TorchScript-based exporter (``dynamo=False``: no onnxscript needed), with the
number of patches a dynamic axis (the survival head's cumulative product as ``exp(cumsum(log))``). TransMIL does
not export: its padding of the bag to a square grid is Python arithmetic on the bag's size, which that exporter
records as constants (a graph right for one bag size only).
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
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
    with warnings.catch_warnings(), torch.no_grad(), _positive_cumprod():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
        torch.onnx.export(module, (example_bag(source.in_dim),), str(folder / MODEL_FILE), dynamo=False,
                          input_names=[INPUT], output_names=[OUTPUTS, SCORES], dynamic_axes=axes,
                          opset_version=OPSET)
    return MODEL_FILE


@contextlib.contextmanager
def _positive_cumprod() -> Iterator[None]:
    """While inside, ``torch.cumprod`` exports as ``exp(cumsum(log x))`` (ONNX has no CumProd): exact for the one
    cumprod of an exported graph, the survival head's ``S_k = Π_{j<=k} sigmoid(-l_j)``, whose factors are positive
    (one that underflows to 0 gives log -inf and S 0, as the product does)."""
    from torch.onnx import register_custom_op_symbolic, symbolic_helper, unregister_custom_op_symbolic

    @symbolic_helper.parse_args("v", "i", "none")
    def cumprod(g, x, dim, dtype):
        axis = g.op("Constant", value_t=torch.tensor(dim, dtype=torch.int64))
        return g.op("Exp", g.op("CumSum", g.op("Log", x), axis))

    register_custom_op_symbolic("aten::cumprod", cumprod, OPSET)
    try:
        yield
    finally:
        unregister_custom_op_symbolic("aten::cumprod", OPSET)
