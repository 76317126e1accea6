"""Tiles read from a slide in batches, in DataLoader worker processes: each worker opens the slide once (OpenSlide
handles are not shared across processes), reads its batch at the grid's level, resizes each tile to the target
scale and applies the encoder's preprocessing, so the main process only encodes."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .encoders import Preprocess
from .tiling import TileGrid


def read_tile(slide, x: int, y: int, grid: TileGrid) -> np.ndarray:
    """(patch_size, patch_size, 3) uint8: the tile at level-0 ``(x, y)``, read at ``grid.level`` and resized
    (PIL bilinear) to the target scale when the level's side differs."""
    tile = slide.read_region(x, y, grid.level, grid.read_size, grid.read_size)
    if grid.read_size != grid.patch_size:
        from PIL import Image

        tile = np.asarray(Image.fromarray(tile).resize((grid.patch_size, grid.patch_size),
                                                       Image.Resampling.BILINEAR))
    return tile


class TileBatches(Dataset):
    """Item ``i``: ``(batch (b, 3, s, s) float32, None)``, the ``i``-th ``batch_size`` tiles of ``grid`` encoded by
    ``preprocess``, or ``(None, message)`` when the slide cannot be read there (a corrupt tile): the message
    travels back to the main process, which reports the slide and goes on with the next."""

    def __init__(self, path: str, grid: TileGrid, preprocess: Preprocess, batch_size: int):
        self.path, self.grid, self.preprocess, self.batch_size = path, grid, preprocess, batch_size
        self._slide = None

    def __len__(self) -> int:
        return -(-len(self.grid.coords) // self.batch_size)

    def _open(self):
        if self._slide is None:
            from ..slides.wsi import Slide

            self._slide = Slide(self.path)
        return self._slide

    def __getitem__(self, i: int) -> tuple[Tensor | None, str | None]:
        from ..errors import DataError

        coords = self.grid.coords[i * self.batch_size:(i + 1) * self.batch_size]
        try:
            slide = self._open()
            tiles = [self.preprocess(read_tile(slide, int(x), int(y), self.grid)) for x, y in coords]
        except DataError as e:
            return None, str(e)
        return torch.stack(tiles), None

    def __getstate__(self) -> dict:  # workers open their own handle
        return {**self.__dict__, "_slide": None}
