"""Lazy public names for a package's ``__init__`` (PEP 562): a subpackage's public API is importable from it,
while ``import abmil.data.bags`` still loads only what it needs (no PIL, scipy or sklearn on the way)."""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], list[str]]:
    """``(__getattr__, __all__)`` for ``package`` whose names ``exports`` maps to their module (``".bags"``)."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, sorted(exports)
