"""Models out: a trained run exported to TorchScript, ONNX or wsinfer-mil, with a model card (``abmil export``).

    export_run("runs/cv", "exports/cv-ts", "torchscript")                 # a study: the mean of its folds
    export_run("runs/cv", "exports/f2", "onnx", fold=(0, 2))              # one fold
    export_run("runs/cv", "exports/wsi", "wsinfer-mil", feature_extractor="uni", patch_size_um=128)

An exported model takes one bag, ``(n_patches, in_dim)`` float32, and returns ``(outputs, scores)``: the run's task
outputs, ``(1, k)``, as ``abmil predict`` writes them (class probabilities; survival ``S_k`` at the bins' ends or
the log hazard ratio; the regression value; the targets' probabilities), and the per-patch scores ``(n_patches,)``
(attention weights, instance probabilities, TransMIL's class-token attention; ``(0,)`` where the model has none).
wsinfer-mil's export returns the log of the class probabilities instead, since wsinfer-mil applies softmax.
A study's folds export as one module averaging their outputs and scores, as ``abmil predict --run`` does.

One module per format (:mod:`.torchscript`, :mod:`.onnx`, :mod:`.wsinfer`), the shared graph (:mod:`.graph`) and
source and folder (:mod:`.source`), the card (:mod:`.card`); :mod:`.deployed` runs an export
(``abmil predict --model``).
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError
from ..io import write_json_atomic

__all__ = ["FORMATS", "export_run"]

#: The ``--format`` choices.
FORMATS = ("torchscript", "onnx", "wsinfer-mil")


def _format_module(name: str):
    from . import onnx, torchscript, wsinfer

    modules = {"torchscript": torchscript, "onnx": onnx, "wsinfer-mil": wsinfer}
    if name not in modules:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {name!r}")
    return modules[name]


def feature_settings(run: str | os.PathLike, feature_extractor: str | None, patch_size_um: float | None) -> dict:
    """The encoder and scale of the run's features: given (the flags win), else what the run's ``abmil extract``
    feature files record (``encoder``, ``mpp``, ``patch_size``: ``patch_size_um = mpp · patch_size``); {} where
    neither says."""
    from ..extract.deploy import run_feature_settings

    try:
        found = run_feature_settings(run)
    except DataError:
        found = {}
    out = dict(found)
    if "mpp" in found and "patch_size" in found:
        out["patch_size_um"] = float(found["mpp"]) * float(found["patch_size"])
    if "encoder" in found:
        out["feature_extractor"] = str(found["encoder"])
    if feature_extractor is not None:
        out["feature_extractor"] = feature_extractor
    if patch_size_um is not None:
        if not patch_size_um >= 1:
            raise ValueError(f"--patch-size-um must be a number >= 1 (micrometres), got {patch_size_um}")
        out["patch_size_um"] = float(patch_size_um)
    return out


def export_run(run: str | os.PathLike, out: str | os.PathLike, format: str = "torchscript", *,
               fold: tuple[int, int] | None = None, ensemble: bool = False, feature_extractor: str | None = None,
               patch_size_um: float | None = None, evaluation: str | os.PathLike | None = None,
               command: str | None = None) -> dict:
    """Export ``run`` (a single run, or a study's folds: all by default, ``fold`` = (repeat, fold) one) to the folder
    ``out`` (new) in ``format``; with a model card (``evaluation``: an ``abmil evaluate`` folder of the run's
    predictions, its metrics and intervals on the card; ``command``: the command line, for the card). Returns
    export.json's content. Everything is checked before the folder appears; a failure leaves nothing."""
    from .card import model_card, write_card
    from .source import EXPORT_FORMAT, EXPORT_JSON, export_folder, export_source, exported_module

    writer = _format_module(format)
    if Path(out).exists():
        raise ValueError(f"--out {out} exists: give a new folder (an export never overwrites)")
    source = export_source(run, fold, ensemble)
    writer.check(source)
    features = feature_settings(run, feature_extractor, patch_size_um)
    wsinfer = format == "wsinfer-mil"
    if wsinfer:
        missing = [f"--{k.replace('_', '-')}" for k in ("feature_extractor", "patch_size_um") if k not in features]
        if missing:
            raise ValueError(f"--format wsinfer-mil: {' and '.join(missing)} needed (the run's feature files do not "
                             f"record them: only `abmil extract` files do)")
    module = exported_module(source, log_outputs=wsinfer)
    meta = {"format": EXPORT_FORMAT, "export_format": format, "model_file": None, "in_dim": source.in_dim,
            "classes": source.classes, "bag_level": source.bag_level, "head": source.head.to_dict(),
            "pooling": source.pooling, "scores": source.spec.instance_scores, "members": source.members,
            "threshold": source.threshold, "outputs": "log" if wsinfer else "values",
            "output_names": source.output_names(),
            "run": os.fspath(run)}
    with export_folder(out) as folder:
        if wsinfer:
            meta["model_file"] = writer.write(module, source, folder, features["feature_extractor"],
                                              features["patch_size_um"])
        else:
            meta["model_file"] = writer.write(module, source, folder)
        write_json_atomic(folder / EXPORT_JSON, meta)
        write_card(folder, model_card(source, meta, feature_settings=features, evaluation=evaluation,
                                      command=command))
    return meta
