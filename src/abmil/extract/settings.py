"""The settings of an extraction besides the encoder (light to import: the CLI reads its defaults)."""
from __future__ import annotations

from dataclasses import dataclass

from .tissue import TissueParams


@dataclass(frozen=True)
class ExtractSettings:
    """Everything besides the encoder that decides a slide's features. ``mpp``: target µm per pixel;
    ``mpp_level0``: used for slides whose properties carry none; ``min_tissue``: the fraction of a tile that must be
    tissue; ``overview``: the overview's longer side for tissue detection (pixels)."""

    mpp: float = 0.5
    patch_size: int = 256
    overlap: int = 0
    min_tissue: float = 0.25
    mpp_level0: float | None = None
    overview: int = 2048
    tissue: TissueParams = TissueParams()
