"""Explanations: attention painted over images (histology) and patch grids."""
from .._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "paint_heatmap": ".heatmap",
    "heatmap_for_image": ".histology",
})
