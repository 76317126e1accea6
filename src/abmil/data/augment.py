"""Training-time augmentation of histology patches: H&E stain jitter, 90-degree rotations and flips.

All functions take patches ``x`` (n, 3, h, w) float in [0, 1] (RGB, channels first; see
:func:`abmil.data.patches.patches_to_tensor`) and an explicit :class:`torch.Generator`; every random draw comes from
that generator on the CPU, so a seed gives the same result on any device. Each patch gets its own draw.

What the sources say (docs/protocols.md §4 "Augmentation and normalisation"):

* H&E jitter — the paper, verbatim: "We randomly adjust the amount of H&E by decomposing the RGB color of the tissue
  into the H&E color space, followed by multiplying the magnitude of H&E for a pixel by two i.i.d. Gaussian random
  variables with expectation equal to one." The standard deviation is not given; the default 0.02 is gmum's
  (``RandomHEStain``: scikit-image ``rgb2hed``, H and E each x N(1, 0.02), one draw per patch). "For a pixel" could
  mean a draw per pixel; we follow gmum's one pair of factors per patch.
* Rotations by 0/90/180/270 degrees and horizontal/vertical flips — gmum's pipeline (``RandomRotate``,
  ``RandomVerticalFlip``, ``RandomHorizontalFlip``); not in the quoted paper text (unconfirmed for the paper).
  Uniform rotation and two fair flips give each of the 8 symmetries of the square with probability 1/8, which is
  what :func:`random_dihedral` draws directly.
* gmum's order is stain jitter, then geometry (:class:`PatchAugment` keeps it; the two commute anyway).
* Colon only, gmum: each nucleus centre moved by round(N(0, 3)) pixels per axis before cutting
  (:func:`jitter_centres`; it acts on coordinates, so the caller re-cuts with
  :func:`abmil.data.patches.centred_patches`). Not in the quoted paper text.

gmum also stain-normalises every patch (``HistoNormalize``, Lab statistics matched to a fixed target) at train and
test time; that is normalisation, not augmentation: an option of the model (:mod:`abmil.nn.stain_norm`).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "HE_SIGMA",
    "HED_FROM_RGB",
    "PatchAugment",
    "RGB_FROM_HED",
    "he_to_rgb",
    "jitter_centres",
    "random_dihedral",
    "random_he_stain",
    "rgb_to_he",
]

HE_SIGMA = 0.02  # gmum's sd of the H and E factors; the paper's is not known
# Ruifrok & Johnston stain vectors as in scikit-image (rows: optical density of haematoxylin, eosin, DAB).
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29],
                             [0.07, 0.99, 0.11],
                             [0.27, 0.57, 0.78]], dtype=torch.float64)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
_EPS = 1e-6  # scikit-image's floor on RGB before the log: black pixels get a finite optical density


def rgb_to_he(x: Tensor) -> Tensor:
    """RGB (n, 3, h, w) in [0, 1] -> stain amounts (n, 3, h, w): channels H, E, DAB (optical-density units).

    ``stains = OD @ HED_FROM_RGB`` with ``OD = -log(max(rgb, 1e-6))``, scikit-image's deconvolution except that
    negative amounts are kept (scikit-image clips them to 0), so :func:`he_to_rgb` inverts this exactly.
    """
    od = -torch.log(x.clamp_min(_EPS))
    return torch.einsum("nchw,cd->ndhw", od, HED_FROM_RGB.to(x))


def he_to_rgb(stains: Tensor) -> Tensor:
    """Stain amounts (n, 3, h, w) (H, E, DAB) -> RGB (n, 3, h, w) clipped to [0, 1]."""
    od = torch.einsum("nchw,cd->ndhw", stains, RGB_FROM_HED.to(stains))
    return torch.exp(-od).clamp_(0.0, 1.0)


def random_he_stain(x: Tensor, generator: torch.Generator, sigma: float = HE_SIGMA) -> Tensor:
    """Multiply each patch's haematoxylin and eosin amounts by two i.i.d. N(1, sigma^2) factors.

    x: (n, 3, h, w) float RGB in [0, 1]. Draws ``torch.randn((n, 2))`` from ``generator`` (H then E column);
    DAB is left as is. Factors of exactly 1 return ``x`` up to float rounding (and the 1e-6 floor on black).
    Returns a new (n, 3, h, w) tensor in [0, 1].
    """
    if not x.is_floating_point():
        raise TypeError(f"random_he_stain expects float RGB in [0, 1], got {x.dtype}")
    n = x.shape[0]
    factors = 1.0 + sigma * torch.randn((n, 2), generator=generator)  # (n, 2): H, E
    scale = torch.cat([factors, torch.ones(n, 1)], dim=1).to(x)       # DAB untouched
    return he_to_rgb(rgb_to_he(x) * scale[:, :, None, None])


def random_dihedral(x: Tensor, generator: torch.Generator) -> Tensor:
    """Apply to each patch a uniformly drawn symmetry of the square: optional horizontal flip, then k x 90 degrees.

    x: (n, c, h, w) with h == w. Draws ``k = randint(4, (n,))`` then ``flip = randint(2, (n,))`` from
    ``generator``. Returns a new (n, c, h, w) tensor.
    """
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"random_dihedral needs square patches, got {tuple(x.shape[-2:])}")
    n = x.shape[0]
    k = torch.randint(4, (n,), generator=generator).to(x.device)
    flip = torch.randint(2, (n,), generator=generator).to(x.device)
    out = torch.empty_like(x)
    for f in (0, 1):
        src = x.flip(-1) if f else x
        for r in range(4):
            idx = ((k == r) & (flip == f)).nonzero().squeeze(1)
            if idx.numel():
                out[idx] = torch.rot90(src[idx], r, dims=(-2, -1))
    return out


def jitter_centres(centres: np.ndarray, image_shape: tuple[int, int], generator: torch.Generator,
                   sigma: float = 3.0) -> np.ndarray:
    """Move each (row, col) centre by ``round(N(0, sigma^2))`` pixels per axis, then clip it onto the image.

    centres: (n, 2) int (row, col), 0-based; image_shape: (H, W). Draws ``torch.randn((n, 2))`` from ``generator``.
    Returns (n, 2) int64. Clipping the centre gives the same window as gmum's unclipped centre, because
    :func:`abmil.data.patches.centred_patches` shifts border windows inward either way.
    """
    centres = np.asarray(centres, dtype=np.int64).reshape(-1, 2)
    shift = torch.round(sigma * torch.randn((len(centres), 2), generator=generator, dtype=torch.float64))
    moved = centres + shift.numpy().astype(np.int64)
    return np.clip(moved, 0, np.asarray(image_shape, dtype=np.int64) - 1)


class PatchAugment(nn.Module):
    """H&E jitter then a random square symmetry, per patch: (n, 3, h, w) in [0, 1] -> same shape and range.

    ``forward(x, generator)`` takes the generator explicitly so that a caller controls every draw; with
    ``stain=False`` / ``geometry=False`` the corresponding step is skipped (and draws nothing).
    """

    def __init__(self, *, stain: bool = True, geometry: bool = True, sigma: float = HE_SIGMA):
        super().__init__()
        self.stain, self.geometry, self.sigma = stain, geometry, sigma

    def forward(self, x: Tensor, generator: torch.Generator) -> Tensor:
        if self.stain:
            x = random_he_stain(x, generator, self.sigma)
        if self.geometry:
            x = random_dihedral(x, generator)
        return x

    def extra_repr(self) -> str:
        return f"stain={self.stain}, geometry={self.geometry}, sigma={self.sigma}"
