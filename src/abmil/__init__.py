"""abmil: attention-based deep multiple-instance learning (Ilse, Tomczak & Welling, ICML 2018)."""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["AttentionMILClassifier", "__version__"]


def __getattr__(name: str):
    # Lazy: `import abmil` stays light; scikit-learn loads only when the estimator is used.
    if name == "AttentionMILClassifier":
        from .estimator import AttentionMILClassifier

        return AttentionMILClassifier
    raise AttributeError(f"module 'abmil' has no attribute {name!r}")
