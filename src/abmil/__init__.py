"""abmil: attention-based deep multiple-instance learning (Ilse, Tomczak & Welling, ICML 2018)."""
from ._lazy import lazy_exports

__version__ = "0.2.0"
# Lazy: `import abmil` stays light; scikit-learn loads only when the estimator is used.
__getattr__, _public = lazy_exports(__name__, {"AttentionMILClassifier": ".estimator", "create_model": ".nn.zoo"})
__all__ = [*_public, "__version__"]
