"""What is exported: a trained run's model(s), read as ``abmil predict`` reads them, and the export folder's layout.

    DIR/export.json       what the folder holds (:data:`EXPORT_FORMAT`): the format, the model file, the input
                          width, the classes, the bag level, the head (:meth:`abmil.tasks.base.Task.to_dict`), the
                          per-patch scores, the folds, the decision threshold; :mod:`abmil.export.deployed` reads it
    DIR/model.pt          TorchScript (``--format torchscript``); ``model.onnx`` (onnx); ``torchscript_model.pt`` and
                          ``config.json`` (wsinfer-mil)
    DIR/model_card.md     the model card, and ``model_card.json`` for machines (:mod:`abmil.export.card`)

The folder is written beside its place under a temporary name and renamed at the end: an export that fails leaves
nothing.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..io import _umask, make_dirs
from ..nn.zoo import ModelSpec
from ..slides.predict import TrainedRun, ensemble_head, load_models
from ..slides.run_folder import fold_key, read_cv_run, run_threshold
from ..tasks import Task
from .graph import Ensemble, HeadOutputs, Member, bag_graph, scriptable

__all__ = ["EXPORT_FORMAT", "EXPORT_JSON", "ExportSource", "export_folder", "export_source", "exported_module"]

EXPORT_FORMAT = "abmil-export-1"
EXPORT_JSON = "export.json"
#: Rows of the example bag the graphs are traced with (any size: no traced shape depends on it).
TRACE_ROWS = 7


@dataclass
class ExportSource:
    """The run's models that are exported together (one, or a study's folds: their mean) and what they share."""

    run: Path
    models: list[TrainedRun]
    members: list[str]
    """Each model's name: ``run`` (a single run) or its fold key (``r0_f2``)."""
    head: Task
    """The head of their mean outputs (:func:`abmil.slides.predict.ensemble_head`)."""
    threshold: float | None
    cv: dict | None
    """The study's run.json (None for a single run)."""

    @property
    def spec(self) -> ModelSpec:
        return self.models[0].spec

    @property
    def in_dim(self) -> int:
        return self.models[0].in_dim

    @property
    def classes(self) -> list[str]:
        return self.models[0].classes

    @property
    def bag_level(self) -> str:
        return self.models[0].bag_level

    @property
    def pooling(self) -> str:
        return self.models[0].info.get("config", {}).get("pooling", "gated")

    def n_outputs(self) -> int:
        """k: the width of the outputs (1, k)."""
        return len(self.head.outputs(torch.zeros(1, self.models[0].model.classifier.out_features))[0])

    def output_names(self) -> list[str]:
        """What each output is: the predictions CSV's columns that hold them (``prob_<class>``, ``surv_<t>``,
        ``risk``, ``predicted``)."""
        head = self.head
        names = [c for c in head.header(self.classes)[1:] if c not in head.columns and c != "predicted"]
        k = self.n_outputs()
        return names[-k:] if len(names) >= k else ["predicted"] * k


def export_source(run: str | os.PathLike, fold: tuple[int, int] | None = None, ensemble: bool = False
                  ) -> ExportSource:
    """The models of ``run`` to export: a single run's; a study's one fold (``fold`` = (repeat, fold)) or all its
    folds (the default, or ``ensemble``). ValueError / DataError naming the run, the flag or the file otherwise."""
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"--run: no run folder {run}")
    cv = read_cv_run(run)
    if ensemble and fold is not None:
        raise ValueError("--fold and --ensemble: give one")
    if ensemble and cv is None:
        raise ValueError(f"--ensemble exports a cross-validation run's fold models together; {run} is a single run")
    models = load_models(run, "cpu", fold)
    if cv is None:
        members = ["run"]
    elif fold is not None:
        members = [fold_key(*fold)]
    else:
        members = list(cv["fold_keys"])
    head = ensemble_head(models)
    for m in models:  # the head must have a tensor form of its outputs (a task without one cannot be exported)
        try:
            m.head.torch_outputs(torch.zeros(1, m.model.classifier.out_features))
        except NotImplementedError as e:
            raise ValueError(f"--run {run}: {e}, so its runs cannot be exported yet") from None
    source = ExportSource(run, models, members, head, run_threshold(run, fold) if cv is not None else None, cv)
    probe = np.linspace(0.9, 0.1, source.n_outputs())
    for key, m in zip(members, models):  # the mean of the folds' outputs is the ensemble's only where they align
        if not np.array_equal(m.head.align(probe, head), probe):
            raise ValueError(f"the fold models' outputs are put on common terms by interpolation ({key}'s differ: "
                             f"e.g. survival time bins), which an exported graph does not do: export one fold "
                             f"with --fold R,F")
    return source


def exported_module(source: ExportSource, *, log_outputs: bool = False) -> Ensemble:
    """The eager module of ``source`` (:class:`~abmil.export.graph.Ensemble`): a bag (n, in_dim) → ``(outputs (1, k),
    scores (n,) or (0,))``; ``log_outputs``: the log of the outputs (wsinfer-mil's softmax gives them back)."""
    members = []
    for m in source.models:
        graph = bag_graph(m.model.eval(), m.spec, m.in_dim).eval()
        members.append(Member(graph, HeadOutputs(m.head), graph.returns_outputs))
    return Ensemble(members, log_outputs).eval().requires_grad_(False)  # outputs without autograd history


def example_bag(in_dim: int) -> torch.Tensor:
    """The bag the graphs are traced with."""
    return torch.randn(TRACE_ROWS, in_dim, generator=torch.Generator().manual_seed(0))


def to_torchscript(module: Ensemble, source: ExportSource) -> torch.jit.ScriptModule:
    """``module`` as TorchScript: traced, or scripted where a graph's shapes follow the bag's size (TransMIL: its
    graphs scripted, each head traced)."""
    x = example_bag(source.in_dim)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # branches on the head's fixed width, by design
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit: deprecated for torch.export, still supported
        if not scriptable(source.spec):
            return torch.jit.trace(module, (x,), check_trace=False)
        n_out = source.models[0].model.classifier.out_features
        for member in module.members:
            member.graph = torch.jit.script(member.graph)
            member.head = torch.jit.trace(member.head, (torch.zeros(1, n_out),))
        return torch.jit.script(module)


@contextlib.contextmanager
def export_folder(out: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder beside ``out``, renamed to ``out`` when the block ends without an error (removed
    otherwise). ``out`` must not exist: an export never overwrites."""
    out = Path(out)
    if out.exists():
        raise ValueError(f"--out {out} exists: give a new folder (an export never overwrites)")
    parent = make_dirs(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
