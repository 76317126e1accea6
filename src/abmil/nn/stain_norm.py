"""Reinhard colour normalisation of H&E patches: each patch's CIE-Lab statistics matched to a fixed target.

gmum's histology pipeline (``HistoNormalize``, docs/protocols.md section 4 "Augmentation and normalisation")
normalises every patch, at training and test time: the mean and standard deviation of L, a and b over the patch's
non-white pixels (grey level <= 215/255) are mapped to a fixed H&E target; white pixels are left as they are. Whether
the paper did this is not known; a user of the reference code found colour normalisation decisive on the colon set.

Used as the ``preprocess`` of :class:`abmil.nn.patch_cnn.PatchCNN`, i.e. inside the model: training, prediction and
heatmaps see the same input, and since the map is per patch and per pixel value, it commutes with the rotations and
flips of the augmentation (gmum normalises after the H&E jitter and before the geometry; so do we, in effect).

Colour conversions are CIE 1976 L*a*b* of sRGB under D65 (scikit-image's ``rgb2lab`` constants), in torch so that
they run on the model's device.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["GMUM_LAB_TARGET", "ReinhardNormalize", "lab_to_rgb", "rgb_to_lab"]

#: gmum's target: (mean, sd) of L, a, b (scikit-image Lab units) of a reference H&E image.
GMUM_LAB_TARGET = ((57.4, 15.84), (39.9, 9.14), (-22.34, 6.58))
WHITE_GREY = 215 / 255  # gmum: pixels brighter than this are background, not counted and not changed

_XYZ_FROM_RGB = torch.tensor([[0.412453, 0.357580, 0.180423],
                              [0.212671, 0.715160, 0.072169],
                              [0.019334, 0.119193, 0.950227]], dtype=torch.float64)
_RGB_FROM_XYZ = torch.linalg.inv(_XYZ_FROM_RGB)
_D65 = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)
_GREY = (0.2125, 0.7154, 0.0721)  # scikit-image's rgb2gray weights, as gmum's mask uses
_DELTA3 = 0.008856  # (6/29)^3, the CIE linear/cubic switch


def _channels(x: Tensor, matrix: Tensor) -> Tensor:
    return torch.einsum("dc,nchw->ndhw", matrix.to(x), x)


def rgb_to_lab(x: Tensor) -> Tensor:
    """sRGB (n, 3, h, w) in [0, 1] -> CIE Lab (n, 3, h, w): L in [0, 100], a and b about [-128, 127]."""
    linear = torch.where(x > 0.04045, ((x + 0.055) / 1.055) ** 2.4, x / 12.92)
    xyz = _channels(linear, _XYZ_FROM_RGB) / _D65.to(x)[:, None, None]
    f = torch.where(xyz > _DELTA3, xyz.clamp_min(_DELTA3) ** (1 / 3), 7.787 * xyz + 16 / 116)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


def lab_to_rgb(lab: Tensor) -> Tensor:
    """CIE Lab (n, 3, h, w) -> sRGB (n, 3, h, w), clipped to [0, 1]."""
    L, a, b = lab.unbind(1)
    fy = (L + 16) / 116
    f = torch.stack([a / 500 + fy, fy, fy - b / 200], dim=1)
    xyz = torch.where(f ** 3 > _DELTA3, f ** 3, (f - 16 / 116) / 7.787) * _D65.to(lab)[:, None, None]
    linear = _channels(xyz, _RGB_FROM_XYZ).clamp_min(0)
    rgb = torch.where(linear > 0.0031308, 1.055 * linear.clamp_min(0.0031308) ** (1 / 2.4) - 0.055, 12.92 * linear)
    return rgb.clamp(0.0, 1.0)


class ReinhardNormalize(nn.Module):
    """``(n, 3, h, w)`` RGB in [0, 1] -> the same, each patch's Lab mean and sd over its non-white pixels mapped to
    ``target``; white pixels (grey > ``white``) and all-white patches pass unchanged. No parameters.

    Args:
        target: ((mean, sd) of L, (mean, sd) of a, (mean, sd) of b); default gmum's.
        white: grey level above which a pixel is background.
    """

    def __init__(self, target: tuple[tuple[float, float], ...] = GMUM_LAB_TARGET, white: float = WHITE_GREY):
        super().__init__()
        target_t = torch.as_tensor(target, dtype=torch.float32)
        if target_t.shape != (3, 2) or not bool((target_t[:, 1] > 0).all()):
            raise ValueError(f"target must be three (mean, sd > 0) pairs for L, a, b, got {target!r}")
        # Not persistent: a fixed constant, so a model's saved weights do not depend on whether it normalises.
        self.register_buffer("target", target_t, persistent=False)
        self.white = float(white)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"ReinhardNormalize expects (n, 3, h, w) RGB, got {tuple(x.shape)}")
        grey = sum(w * c for w, c in zip(_GREY, x.unbind(1)))
        tissue = (grey <= self.white).unsqueeze(1).to(x.dtype)                      # (n, 1, h, w)
        count = tissue.sum(dim=(2, 3), keepdim=True)                                # (n, 1, 1, 1)
        lab = rgb_to_lab(x)
        mean = (lab * tissue).sum(dim=(2, 3), keepdim=True) / count.clamp_min(1)
        var = (((lab - mean) ** 2) * tissue).sum(dim=(2, 3), keepdim=True) / count.clamp_min(1)
        target = self.target.to(x.dtype)
        scaled = (lab - mean) / (var.sqrt() + 1e-11) * target[:, 1, None, None] + target[:, 0, None, None]
        out = lab_to_rgb(scaled)
        return torch.where(tissue.bool(), out, x)  # all-white patches: no tissue pixel, all unchanged

    def extra_repr(self) -> str:
        return f"target={self.target.tolist()}, white={self.white:.4f}"
