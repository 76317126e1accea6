"""Reporting: metrics, the paper's published numbers, results files (json/csv/md) and figures."""
from .._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "BAG_METRICS": ".metrics", "bag_metrics": ".metrics", "class_metrics": ".metrics",
    "ResultRow": ".results", "read_results": ".results", "summarise": ".results", "write_results": ".results",
})
