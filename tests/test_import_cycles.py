"""No import cycles among abmil's modules, deferred imports and package __init__ files counted (tools/import_cycles.py),
and every subpackage importable on its own (a cycle through a package __init__ breaks only that order)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_import_cycles():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import import_cycles
    finally:
        sys.path.pop(0)
    mods = import_cycles.modules(ROOT / "src" / "abmil")
    graph = {m: import_cycles.imports(m, p, set(mods)) for m, p in mods.items()}
    assert import_cycles.cycles(graph) == []


def test_each_subpackage_imports_first():
    packages = ("tasks", "report", "slides", "extract")  # the packages whose modules import one another
    code = "import importlib, sys\nfor p in sys.argv[1:]:\n    importlib.import_module('abmil.' + p)\n"
    for p in packages:  # each in a fresh interpreter: the first import decides the order
        proc = subprocess.run([sys.executable, "-c", code, p], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (p, proc.stderr[-2000:])
