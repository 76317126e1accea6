"""``--format wsinfer-mil``: the layout wsinfer-mil (Apache-2.0) loads, ``torchscript_model.pt`` + ``config.json``.

wsinfer-mil calls ``logits, attention = model(embedding)`` (embedding (n_patches, D) float32) and reports
``logits.softmax(1)``; so the exported model returns the **log** of the class probabilities (one model or the mean
of a study's folds): their softmax is the probabilities ``abmil predict`` gives. ``attention`` is the per-patch
scores (empty for mean, max and linear-probe). ``config.json`` follows wsinfer-mil's
``schemas/model-config.schema.json``: ``spec_version``, ``type``, ``num_classes``, ``class_names``,
``feature_extractor`` and ``patch_size_um``. Classification runs only (wsinfer-mil applies softmax).
"""
from __future__ import annotations

from pathlib import Path

from ..io import write_json_atomic
from .graph import Ensemble
from .source import ExportSource
from .torchscript import write as write_torchscript

MODEL_FILE = "torchscript_model.pt"
CONFIG = "config.json"
SPEC_VERSION = "1.0"


def check(source: ExportSource) -> None:
    if not source.head.has_classes:
        raise ValueError(f"--format wsinfer-mil is for classification runs (wsinfer-mil applies softmax to the "
                         f"outputs); this run is a {source.head.name} run: export it with --format torchscript or onnx")


def model_type(source: ExportSource) -> str:
    """wsinfer-mil's ``type``: ``clam`` for CLAM-SB, else ``abmil`` (the schema's enum has no other MIL method)."""
    return "clam" if source.pooling == "clam-sb" else "abmil"


def config(source: ExportSource, feature_extractor: str, patch_size_um: float) -> dict:
    return {"spec_version": SPEC_VERSION, "type": model_type(source), "num_classes": len(source.classes),
            "class_names": list(source.classes), "feature_extractor": feature_extractor,
            "patch_size_um": float(patch_size_um)}


def write(module: Ensemble, source: ExportSource, folder: Path, feature_extractor: str,
          patch_size_um: float) -> str:
    name = write_torchscript(module, source, folder, MODEL_FILE)
    write_json_atomic(folder / CONFIG, config(source, feature_extractor, patch_size_um))
    return name
