"""The bad-input corpora's common check: the real entry point, ``python -m abmil``, in a fresh interpreter, refusing
an input with exit status 2 and one line naming the culprit, and writing nothing."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def abmil_process(*args: str, limit_file_size: int | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m abmil ARGS`` (PYTHONPATH and the rest of the environment inherited); ``limit_file_size``:
    RLIMIT_FSIZE in bytes, so that a bigger write fails as on a full disk (EFBIG)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "abmil", *args], capture_output=True, text=True, env=env,
                          timeout=120, preexec_fn=None if limit_file_size is None else limit)


def tree(root: Path) -> set[str]:
    """Every file and folder under ``root``, relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def assert_refused(root: Path, args: Sequence[str], culprit: str) -> None:
    """``args`` and ``culprit`` with ``{ws}`` standing for ``root``: exit 2, one ``abmil: error:`` line holding the
    culprit, no traceback, and nothing new under ``root`` (outputs included)."""
    before = tree(root)
    proc = abmil_process(*(a.format(ws=root) for a in args))
    err = proc.stderr
    assert proc.returncode == 2, err
    assert err.startswith("abmil: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert culprit.format(ws=root) in err, err
    assert tree(root) == before, sorted(tree(root) ^ before)
