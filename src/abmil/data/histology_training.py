"""Histology patch bags as the training loop sees them: float tensors made on demand, augmented at each visit.

Bags stay uint8 in memory (all 58 breast bags are 88 MB as uint8, 352 MB as float32); :class:`FloatBags` makes the
(n, 3, s, s) float32 [0, 1] tensor of a bag when it is asked for. :class:`BagAugmenter` is the ``augment(i, bag,
generator)`` of :func:`abmil.train.fit.fit`: every visit of a training bag draws a fresh
augmentation from the visit's generator (:mod:`abmil.data.augment`):

* colon bags (nucleus-centred, given their image): each nucleus centre moved by round(N(0, 3)) px per axis and the
  27x27 windows cut again (gmum; :func:`abmil.data.augment.jitter_centres`), then
* every bag: H&E stain jitter (each patch's H and E amounts x N(1, 0.02)), then a random symmetry of the square.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import overload

import numpy as np
import torch
from torch import Tensor

from abmil.data.augment import HE_SIGMA, PatchAugment, jitter_centres
from abmil.data.histology import PatchBag
from abmil.data.patches import centred_patches, patches_to_tensor

__all__ = ["CENTRE_SIGMA", "BagAugmenter", "FloatBags"]

CENTRE_SIGMA = 3.0  # gmum's nucleus-centre jitter (px); not in the quoted paper text


class FloatBags(Sequence[Tensor]):
    """A read-only sequence of bags: item i is ``patches_to_tensor(bags[i].patches)``, (n_i, 3, s, s) float32."""

    def __init__(self, bags: Sequence[PatchBag]):
        self._bags = list(bags)

    def __len__(self) -> int:
        return len(self._bags)

    @overload
    def __getitem__(self, i: int) -> Tensor: ...

    @overload
    def __getitem__(self, i: slice) -> list[Tensor]: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [patches_to_tensor(b.patches) for b in self._bags[i]]
        return patches_to_tensor(self._bags[int(i)].patches)


class BagAugmenter:
    """``augment(i, bag, generator) -> (n_i, 3, s, s)`` float32 in [0, 1]: training bag ``i`` at one visit.

    Args:
        bags: the training bags, in the order the training loop indexes them.
        images: for nucleus-centred bags, each bag's (H, W, 3) uint8 image (same order): the centres are jittered
            and the windows re-cut. ``None``: the stored patches are used as they are (grid bags).
        centre_sigma: sd in px of the centre jitter (only with ``images``).
        stain_sigma: sd of the H and E factors.
    """

    def __init__(self, bags: Sequence[PatchBag], *, images: Sequence[np.ndarray] | None = None,
                 centre_sigma: float = CENTRE_SIGMA, stain_sigma: float = HE_SIGMA):
        self.bags = list(bags)
        self.images = None if images is None else list(images)
        if self.images is not None:
            if len(self.images) != len(self.bags):
                raise ValueError(f"{len(self.images)} images for {len(self.bags)} bags")
            if any(b.centres is None for b in self.bags):
                raise ValueError("re-cutting needs nucleus centres: bags without centres (grid bags?) got images")
        self.centre_sigma = centre_sigma
        self.patch_augment = PatchAugment(sigma=stain_sigma)

    def __call__(self, i: int, bag: Tensor | None, generator: torch.Generator) -> Tensor:
        src = self.bags[i]
        if self.images is not None and self.centre_sigma > 0:
            image = self.images[i]
            centres = jitter_centres(src.centres, image.shape[:2], generator, self.centre_sigma)
            x = patches_to_tensor(centred_patches(image, centres, src.patches.shape[-1]).patches)
        else:
            x = bag if bag is not None else patches_to_tensor(src.patches)
        return self.patch_augment(x, generator)
