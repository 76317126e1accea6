"""Importing abmil sets OMP_WAIT_POLICY=PASSIVE before torch loads OpenMP (the API as fast as the CLI on shared
cores), keeps a policy the user set, and warns when torch came first and it is too late."""
from __future__ import annotations

import os
import subprocess
import sys

CODE = """
import sys, warnings
warnings.simplefilter("always")
if sys.argv[1] == "torch-first":
    import torch
    torch.set_num_threads(2)
with warnings.catch_warnings(record=True) as caught:
    import abmil
import os
print(os.environ.get("OMP_WAIT_POLICY"), [str(w.message).split(":")[0] for w in caught])
"""


def _run(order: str, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    proc = subprocess.run([sys.executable, "-c", CODE, order], capture_output=True, text=True, timeout=120,
                          env={**base, **env})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_importing_abmil_first_sets_the_passive_policy():
    assert _run("abmil-first") == "PASSIVE []"


def test_a_policy_the_user_set_is_kept_without_a_warning():
    assert _run("abmil-first", OMP_WAIT_POLICY="ACTIVE") == "ACTIVE []"
    assert _run("torch-first", OMP_WAIT_POLICY="ACTIVE") == "ACTIVE []"


def test_torch_imported_first_warns_that_the_policy_comes_too_late():
    assert _run("torch-first") == "None ['torch was imported before abmil with OMP_WAIT_POLICY unset']"
