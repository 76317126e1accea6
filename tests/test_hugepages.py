"""The CLI's re-execution with glibc's huge-page tunable: when it applies, and that the program then runs under it."""
from __future__ import annotations

import os
import subprocess
import sys

from abmil.hugepages import TUNABLE, hugepage_env


def test_tunable_only_where_it_can_help():
    linux = dict(platform_name="linux", libc="glibc", mode="madvise")
    assert hugepage_env({"A": "1"}, **linux) == {"A": "1", "GLIBC_TUNABLES": TUNABLE}
    assert hugepage_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, **linux)["GLIBC_TUNABLES"] == \
        "glibc.malloc.arena_max=2:" + TUNABLE  # the user's own tunables are kept
    assert hugepage_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, **linux) is None  # the user's choice stands
    assert hugepage_env({"GLIBC_TUNABLES": TUNABLE}, **linux) is None  # already re-executed: no loop
    assert hugepage_env({"ABMIL_HUGEPAGES": "0"}, **linux) is None
    assert hugepage_env({}, **{**linux, "mode": "always"}) is None
    assert hugepage_env({}, **{**linux, "mode": "never"}) is None
    assert hugepage_env({}, **{**linux, "libc": "musl"}) is None
    assert hugepage_env({}, **{**linux, "platform_name": "darwin"}) is None


def test_cli_runs_under_the_tunable_where_it_applies(tmp_path):
    """`python -m abmil predict` (a usage error is enough) ends in a process that has the tunable, exactly once."""
    # a sitecustomize on PYTHONPATH reports each Python process's GLIBC_TUNABLES as it exits; the first process is
    # replaced by exec before it exits, so only the final one reports
    (tmp_path / "sitecustomize.py").write_text(
        "import atexit, os, sys\n"
        "atexit.register(lambda: print('TUNABLES=' + os.environ.get('GLIBC_TUNABLES', '-'), file=sys.stderr))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "ABMIL_HUGEPAGES")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    for extra, applies in (({}, hugepage_env(env) is not None), ({"ABMIL_HUGEPAGES": "0"}, False)):
        out = subprocess.run([sys.executable, "-m", "abmil", "predict", "--bogus"], env={**env, **extra},
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and "abmil predict: error" in out.stderr
        reports = [line for line in out.stderr.splitlines() if line.startswith("TUNABLES=")]
        assert reports == [f"TUNABLES={TUNABLE if applies else '-'}"], out.stderr
