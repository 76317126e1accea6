"""Experiment drivers: the library side of ``abmil reproduce ...`` and ``abmil demo`` (the CLI parses and prints)."""
from __future__ import annotations

from .benchmarks import DEFAULT_DATASETS, DEFAULT_MODELS, demo, reproduce_benchmarks

__all__ = ["DEFAULT_DATASETS", "DEFAULT_MODELS", "demo", "reproduce_benchmarks"]
