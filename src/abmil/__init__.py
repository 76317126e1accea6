"""abmil: attention-based deep multiple-instance learning (Ilse, Tomczak & Welling, ICML 2018)."""
import os as _os
import sys as _sys

from ._lazy import lazy_exports

__version__ = "0.2.0"

# OpenMP worker threads that spin while waiting make the many tiny per-bag ops of MIL training several times slower
# as soon as the cores are shared with anything else (benchmarks/omp_wait_policy.py; on 2 cores, 2 CV epochs of
# Musk1: 65.7 s spinning, 2.7 s passive). The OpenMP runtime reads the policy once, when torch loads it: so here,
# before any abmil module imports torch, unless the user chose a policy. Set OMP_WAIT_POLICY=ACTIVE to keep spinning.
if "OMP_WAIT_POLICY" not in _os.environ:
    if "torch" not in _sys.modules:
        _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    elif _sys.modules["torch"].get_num_threads() > 1:
        import warnings as _warnings

        _warnings.warn("torch was imported before abmil with OMP_WAIT_POLICY unset: its idle OpenMP threads spin, "
                       "which makes training several times slower on a machine whose cores are shared; import abmil "
                       "first or set OMP_WAIT_POLICY=PASSIVE before Python starts (ACTIVE: keep spinning, no warning)",
                       RuntimeWarning, stacklevel=2)

# Lazy: `import abmil` stays light; scikit-learn loads only when the estimator is used.
__getattr__, _public = lazy_exports(__name__, {"AttentionMILClassifier": ".estimator", "create_model": ".nn.zoo"})
__all__ = [*_public, "__version__"]
