"""The model card of an export: ``model_card.md`` for people, ``model_card.json`` for machines (the same content).

Everything on it is read from the run folder and the export, never recomputed: the cohort and splits from the
checkpoints and the study's run.json, the out-of-fold metrics from the study's summary.json (mean and SD over the
folds), and — when the export is given an ``abmil evaluate`` folder of the run's predictions (``--evaluation``) —
that evaluation's metrics with their bootstrap intervals and calibration (ECE, Brier), its reliability figure copied
beside the card.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
from pathlib import Path

from .. import __version__
from ..errors import DataError
from ..slides.run_folder import read_run_settings, read_summary
from .source import ExportSource

__all__ = ["CARD_JSON", "CARD_MD", "model_card", "run_card", "write_card"]

CARD_MD, CARD_JSON = "model_card.md", "model_card.json"

INTENDED_USE = ("Research use: ranking or triaging slides of the cohort type it was trained on, and studying what the "
                "model attends to. Not a medical device; not for diagnosis or treatment decisions.")
LIMITATIONS = (
    "Validated only as the metrics below say: on the training cohort's out-of-fold slides (a study) or not at all "
    "(a single run); performance on other sites, scanners, stains or populations is unknown until measured.",
    "The input must be patch features of the same encoder, magnification and patch size as the training features "
    "(see Encoder and scale); other features give meaningless outputs without any error.",
    "Attention and instance scores show what the model weighed, not causal evidence; survival and regression "
    "outputs are on the training cohort's time bins and target scale.",
)


def _evaluation(folder: Path | None) -> dict | None:
    if folder is None:
        return None
    path = Path(folder) / "metrics.json"
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        meta, rows = result["meta"], result["metrics"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"--evaluation: not an `abmil evaluate` folder ({e})", path=str(path)) from None
    return {"folder": str(folder), "predictions": meta.get("predictions"), "meta": meta, "metrics": rows}


def _software(export_format: str) -> dict:
    import numpy
    import torch

    versions = {"abmil": __version__, "python": platform.python_version(), "torch": torch.__version__,
                "numpy": numpy.__version__}
    if export_format == "onnx":
        import onnx

        versions["onnx"] = onnx.__version__
    return versions


def model_card(source: ExportSource, export: dict | None, *, feature_settings: dict, evaluation: str | None = None,
               command: str | None = None) -> dict:
    """The card's content (JSON-ready) of ``source`` exported as ``export`` (export.json's content; None: the run
    itself, not exported, as ``abmil evaluate --run`` describes it)."""
    first = source.models[0]
    config = first.info.get("config", {})
    splits = [{"model": key, "train_slides": len(m.info.get("train_slides") or []),
               "val_slides": len(m.info.get("val_slides") or []), "epochs_run": m.info.get("epoch")}
              for key, m in zip(source.members, source.models)]
    cohort = {"bag_level": source.bag_level, "classes": source.classes, "in_dim": source.in_dim}
    if source.cv is not None:
        s = source.cv["settings"]
        cohort.update(n_bags=s.get("n_bags"), manifest=source.cv.get("manifest"), folds=s.get("folds"),
                      repeats=s.get("repeats"), data_sha256=s.get("data"))
    summary = read_summary(source.run)
    oof = None
    if summary is not None:
        oof = {"per_fold": summary.get("per_fold"), "mean": summary.get("mean"), "note": summary.get("sd")}
    settings = read_run_settings(source.run)
    return {
        "model": {"pooling": source.pooling, "title": source.spec.title, "task": source.head.to_dict(),
                  "members": source.members, "ensemble": len(source.members) > 1,
                  "scores": source.spec.instance_scores,
                  "n_parameters": sum(p.numel() for p in first.model.parameters()),
                  "output_names": source.output_names()},
        "export": export,
        "data": {"cohort": cohort, "splits": splits},
        "encoder_and_scale": feature_settings,
        "training": config,
        "out_of_fold_metrics": oof,
        "evaluation": _evaluation(Path(evaluation) if evaluation else None),
        "threshold": source.threshold,
        "intended_use": INTENDED_USE,
        "limitations": list(LIMITATIONS),
        "software": _software(export["export_format"] if export else ""),
        "commands": {"train": _train_command(settings), "export" if export else "evaluate": command},
    }


def run_card(run: str | os.PathLike, evaluation: str | os.PathLike, *, feature_settings: dict,
             command: str | None = None) -> dict:
    """The card of ``run`` itself (all its models: a study's folds) with ``evaluation`` (an ``abmil evaluate``
    folder of its predictions, where the card is written: ``abmil evaluate --run``); ``feature_settings``:
    :func:`abmil.export.feature_settings` of the run. Returns the card."""
    from .source import export_source

    source = export_source(run)
    card = {"run": os.fspath(run), **model_card(source, None, feature_settings=feature_settings,
                                                evaluation=os.fspath(evaluation), command=command)}
    write_card(Path(evaluation), card)
    return card


def _train_command(settings: dict | None) -> str | None:
    """``abmil train`` with the settings of RUN/config.json (``--config RUN/config.json`` reads the same back)."""
    if not settings:
        return None
    parts = ["abmil", "train"]
    for key, value in settings.items():
        if value is None or value is False:
            continue
        parts += [f"--{key}"] if value is True else [f"--{key}", str(value)]
    return " ".join(parts)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)


def markdown(card: dict) -> str:
    """The card as markdown."""
    m, d, ex = card["model"], card["data"], card["export"]
    lines = [f"# Model card: {m['title']} ({m['pooling']}), {m['task']['task']}", "",
             (f"Exported by abmil {card['software']['abmil']} as **{ex['export_format']}** (`{ex['model_file']}`): "
              if ex else f"The trained run {card['run']} (abmil {card['software']['abmil']}; `abmil export` makes "
              "it a file that runs without abmil): ")
             + f"a bag of patch features ({d['cohort']['in_dim']}-dim float32, one row per patch) in, "
             f"the {m['task']['task']} outputs ({', '.join(m['output_names'])}) and per-patch scores "
             f"({m['scores'] or 'none'}) out." + (f" Mean of {len(m['members'])} fold models "
                                                  f"({', '.join(m['members'])})." if m["ensemble"] else ""), "",
             "## Intended use", "", card["intended_use"], "", "## Limitations", "",
             *[f"- {t}" for t in card["limitations"]], "", "## Data", ""]
    lines += [f"- {k.replace('_', ' ')}: {_fmt(v) if not isinstance(v, list) else ', '.join(map(str, v))}"
              for k, v in d["cohort"].items() if v is not None]
    counts = (card["evaluation"] or {}).get("meta", {}).get("class_counts")
    if counts:
        lines += [f"- {level}s per class (the evaluation's): " + ", ".join(f"{c} {n}" for c, n in per.items())
                  for level, per in counts.items()]
    tests = {f["key"]: f.get("n_test") for f in (card["out_of_fold_metrics"] or {}).get("per_fold") or []}
    lines += ["", "| model | train slides | validation slides | test bags (out-of-fold) | epochs run |",
              "|---|---|---|---|---|"]
    lines += [f"| {s['model']} | {s['train_slides']} | {s['val_slides']} | {_fmt(tests.get(s['model']))} | "
              f"{_fmt(s['epochs_run'])} |" for s in d["splits"]]
    lines += ["", "## Encoder and scale", ""]
    lines += [f"- {k}: {v}" for k, v in card["encoder_and_scale"].items()] or ["- not recorded"]
    lines += ["", "## Model and training settings", "", f"- parameters: {m['n_parameters']}",
              *[f"- {k}: {_fmt(v)}" for k, v in card["training"].items()]]
    lines += ["", "## Out-of-fold metrics", ""]
    oof = card["out_of_fold_metrics"]
    if oof and oof.get("mean"):
        lines += ["| metric | mean | SD | folds |", "|---|---|---|---|"]
        lines += [f"| {k} | {_fmt(v.get('mean'))} | {_fmt(v.get('sd'))} | {v.get('n_folds')} |"
                  for k, v in oof["mean"].items() if isinstance(v, dict)]
        lines += ["", f"Over the study's folds (summary.json); SD: {oof.get('note') or 'over folds'}."]
    else:
        lines += ["None: a single run has no held-out folds. Evaluate it on held-out slides (`abmil predict`, "
                  "`abmil evaluate`) and export with --evaluation."]
    ev = card["evaluation"]
    if ev:
        lines += ["", "## Evaluation with confidence intervals", "",
                  f"`abmil evaluate` of {ev['predictions']} ({ev['meta'].get('notes', {}).get('bootstrap', '')}).",
                  "", "| level | metric | class | value | 95% CI |", "|---|---|---|---|---|"]
        lines += [f"| {r['level']} | {r['metric']} | {r.get('class', '')} | {_fmt(r['value'])} | "
                  + ("" if r.get("ci_low") is None else f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]") + " |"
                  for r in ev["metrics"]]
        if "reliability.png" in ev["meta"].get("figures", []):
            lines += ["", "![reliability](reliability.png)"]
    lines += ["", "## Decision threshold", "",
              f"{_fmt(card['threshold'])}" + (" (the study's mean of its folds' Youden thresholds on their "
                                                "validation parts)" if card["threshold"] is not None else
                                                " stored: the most probable class is predicted"),
              "", "## Software", "", *[f"- {k} {v}" for k, v in card["software"].items()],
              "", "## Commands", ""]
    lines += [f"- {k}: `{v}`" for k, v in card["commands"].items() if v]
    return "\n".join(lines) + "\n"


def write_card(folder: Path, card: dict) -> None:
    """model_card.md and model_card.json into ``folder`` (and the evaluation's reliability figure)."""
    from ..io import write_json_atomic, write_text_atomic

    ev = card["evaluation"]
    if ev and "reliability.png" in ev["meta"].get("figures", []):
        figure = Path(ev["folder"]) / "reliability.png"
        if figure.is_file() and figure.resolve() != (folder / "reliability.png").resolve():
            shutil.copyfile(figure, folder / "reliability.png")
    write_json_atomic(folder / CARD_JSON, card)
    write_text_atomic(folder / CARD_MD, markdown(card))
