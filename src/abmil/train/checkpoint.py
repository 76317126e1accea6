"""Run checkpoints without pickle: tensors in safetensors, everything else in JSON.

    RUN/checkpoint.json                 what the run is and how far it got (the commit point)
    RUN/weights-e0003.safetensors       model state dict after epoch 3
    RUN/optimizer-e0003.safetensors     optimizer state tensors ("state.<param>.<name>")
    RUN/<name>-e0003.safetensors        any further named state dicts (e.g. "best": the best epoch's weights)

Each file is written atomically, the tensor files first under names carrying the epoch, then
``checkpoint.json`` naming them, then older epochs' files are removed. A process killed at any
moment leaves either the previous checkpoint or the new one, complete, never a mix.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from torch import nn

from ..errors import DataError
from ..io import write_json_atomic, write_safetensors_atomic

CHECKPOINT = "checkpoint.json"
FORMAT = "abmil-checkpoint-1"


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return st_load(path.read_bytes())
    except FileNotFoundError:
        raise DataError("checkpoint file missing", path=str(path)) from None
    except Exception as e:  # safetensors raises its own error types on corrupt headers
        raise DataError(f"not a readable safetensors file ({e})", path=str(path)) from None


def optimizer_to_safetensors(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors ``{"state.<param>.<name>": tensor}`` and a
    JSON-able rest: param_groups, plus any non-tensor per-parameter state."""
    tensors, extra = {}, {}
    for pid, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value
            else:
                extra.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalar_state": extra}


def optimizer_from_safetensors(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Inverse of :func:`optimizer_to_safetensors`: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, entries in meta.get("scalar_state", {}).items():
        state.setdefault(int(pid), {}).update(entries)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):  # JSON turned the tuple into a list
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def save_checkpoint(run_dir: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                    info: dict, extra: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> None:
    """Write the model and optimizer of a finished epoch ``info["epoch"]`` (completed epochs)
    and ``info`` (JSON-able: model spec, classes, training settings, history...); ``extra`` names further
    state dicts to keep with it (read back with :func:`load_extra`)."""
    run = Path(run_dir)
    epoch = int(info["epoch"])
    files = {name: f"{name}-e{epoch:04d}.safetensors" for name in ("weights", "optimizer", *(extra or {}))}
    write_safetensors_atomic(run / files["weights"], model.state_dict())
    opt_tensors, opt_meta = optimizer_to_safetensors(optimizer.state_dict())
    write_safetensors_atomic(run / files["optimizer"], opt_tensors)
    for name, tensors in (extra or {}).items():
        write_safetensors_atomic(run / files[name], tensors)
    write_json_atomic(run / CHECKPOINT, {**info, "format": FORMAT, "weights": files["weights"],
                                         "optimizer": files["optimizer"], "optimizer_meta": opt_meta,
                                         "extra": {name: files[name] for name in extra or {}}})
    for old in run.glob("*-e[0-9][0-9][0-9][0-9].safetensors"):
        if old.name not in files.values():
            old.unlink(missing_ok=True)


def read_checkpoint(run_dir: str | os.PathLike) -> dict | None:
    """The run's ``checkpoint.json``, or None when it has none yet.

    Raises:
        DataError: naming the file: not JSON, not an abmil checkpoint, or lacking (or mangling) an entry that
            :func:`save_checkpoint` writes (epoch, the tensor files' names, the optimizer's settings).
    """
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"unreadable checkpoint ({e})", path=str(path)) from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise DataError(f"not an abmil checkpoint (format {info.get('format') if isinstance(info, dict) else None!r})",
                        path=str(path))
    _check_info(info, str(path))
    return info


def _check_info(info: dict, path: str) -> None:
    """The entries of a checkpoint that its readers here rely on, each present and of its type."""
    def fail(what: str) -> DataError:
        return DataError(f"incomplete checkpoint: {what} (delete the folder to start the run over)", path=path)

    epoch = info.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise fail(f"'epoch' must be a count of finished epochs, got {epoch!r}" if "epoch" in info
                   else "no 'epoch' entry")
    files = {"weights": info.get("weights"), "optimizer": info.get("optimizer")}
    extra = info.get("extra", {})
    if not isinstance(extra, dict):
        raise fail(f"'extra' must map names to files, got {extra!r}")
    files.update({f"extra.{k}": v for k, v in extra.items()})
    for key, name in files.items():
        if key in ("weights", "optimizer") and key not in info:
            raise fail(f"no {key!r} entry")
        if not isinstance(name, str) or not name or Path(name).name != name:
            raise fail(f"{key!r} must name a file in the run folder, got {name!r}")
    meta = info.get("optimizer_meta")
    if not isinstance(meta, dict) or not isinstance(meta.get("param_groups"), list) \
            or not all(isinstance(g, dict) for g in meta["param_groups"]) \
            or not isinstance(meta.get("scalar_state", {}), dict):
        raise fail("no 'optimizer_meta' with the optimizer's 'param_groups'" if "optimizer_meta" not in info
                   else "'optimizer_meta' is malformed")


def load_weights(run_dir: str | os.PathLike, info: dict) -> dict[str, torch.Tensor]:
    """The model state dict a checkpoint names."""
    return _read_tensors(Path(run_dir) / info["weights"])


def load_optimizer_state(run_dir: str | os.PathLike, info: dict) -> dict:
    """The optimizer state dict a checkpoint names."""
    path = Path(run_dir) / info["optimizer"]
    tensors = _read_tensors(path)
    try:
        return optimizer_from_safetensors(tensors, info["optimizer_meta"])
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise DataError(f"optimizer state does not match its checkpoint's description ({e})", path=str(path)) from None


def load_into(module: nn.Module, run_dir: str | os.PathLike, info: dict, name: str = "weights") -> None:
    """Load the state dict a checkpoint names (``"weights"`` or an ``extra`` name) into ``module``; DataError naming
    the file when its tensors do not fit ``module`` (another architecture or size)."""
    file = info["weights"] if name == "weights" else info["extra"][name]
    path = Path(run_dir) / file
    state = _read_tensors(path)
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        first = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
        raise DataError(f"weights do not fit the model ({first})", path=str(path)) from None


def restore_optimizer(optimizer: torch.optim.Optimizer, run_dir: str | os.PathLike, info: dict) -> None:
    """Load the optimizer state a checkpoint names into ``optimizer``, each state tensor in the memory layout of its
    parameter. Files store plain contiguous tensors; fused optimizers walk a parameter and its state as flat memory
    together, so a channels_last conv weight with a contiguous moment buffer would get scrambled updates."""
    try:
        optimizer.load_state_dict(load_optimizer_state(run_dir, info))
    except (ValueError, KeyError, RuntimeError) as e:  # torch's refusals of another model's optimizer state
        raise DataError(f"optimizer state does not fit the model ({e})",
                        path=str(Path(run_dir) / info["optimizer"])) from None
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for name, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                    state[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def load_extra(run_dir: str | os.PathLike, info: dict, name: str) -> dict[str, torch.Tensor]:
    """The state dict saved as ``extra[name]`` by :func:`save_checkpoint`."""
    extra = info.get("extra", {})
    if name not in extra:
        raise DataError(f"incomplete checkpoint: no {name!r} state in 'extra'", path=str(Path(run_dir) / CHECKPOINT))
    return _read_tensors(Path(run_dir) / extra[name])
