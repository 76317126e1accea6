"""The patch CNN that encodes H&E patches in Ilse et al.'s histopathology experiments (Tables 2-3)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .dropout import KeyedDropout

__all__ = ["PATCH_CNN_DROPOUT", "PatchCNN", "flat_dim"]

#: Dropout rate after each fc-512. The paper's rate is not known; the two independent implementations differ
#: (utayao 0.5, gmum 0.2; docs/protocols.md section 4 "Architecture"). 0.2 is gmum's, whose histology code
#: its README says derives from the authors' (and whose flattened size matches the paper's architecture).
PATCH_CNN_DROPOUT = 0.2


def flat_dim(patch_size: int) -> int:
    """Size of the flattened conv features for ``patch_size`` x ``patch_size`` input: 27 -> 1200, 32 -> 1728.

    conv 4 (s - 3), pool 2 (floor / 2), conv 3 (- 2), pool 2 (floor / 2); 48 channels.
    """
    side = ((patch_size - 3) // 2 - 2) // 2
    if side < 1:
        raise ValueError(f"patch_size {patch_size} is too small for the patch CNN (need >= 10)")
    return 48 * side * side


class PatchCNN(nn.Module):
    """``(n_instances, 3, s, s)`` RGB in [0, 1] → ``(n_instances, 512)``.

    conv 4x4 3→36, ReLU, max-pool 2; conv 3x3 36→48, ReLU, max-pool 2 (computed pool-then-ReLU, identical);
    flatten (48·5·5 = 1200 for s = 27, 48·6·6 = 1728 for s = 32); fc-512, ReLU, dropout; fc-512, ReLU, dropout
    (docs/protocols.md section 4; the paper's table is unconfirmed, gmum's and utayao's code agree on it). Plug it
    into :class:`abmil.nn.models.EmbeddingMIL` with a 512-dim pooling (attention L = 128) or into ``InstanceMIL``.

    The input is mapped from [0, 1] to [-1, 1] first (gmum's ``Normalize((0.5,) * 3, (0.5,) * 3)``), inside the
    model so that training, prediction and heatmaps cannot disagree about it. PyTorch's default initialisation, as
    every model of this package and the reference code (gmum uses Glorot-uniform with zero biases).

    Args:
        patch_size: side s of the square patches (27 colon, 32 breast).
        dropout: rate of the two dropout layers (keyed, see :mod:`abmil.nn.dropout`).
        preprocess: an optional parameter-free map of the [0, 1] RGB patches applied first, e.g.
            :class:`abmil.nn.stain_norm.ReinhardNormalize`.
    """

    out_dim = 512

    def __init__(self, patch_size: int = 27, dropout: float = PATCH_CNN_DROPOUT,
                 preprocess: nn.Module | None = None) -> None:
        super().__init__()
        self.patch_size = int(patch_size)
        self.preprocess = preprocess
        # Max-pool before ReLU: relu(maxpool(x)) == maxpool(relu(x)) exactly (ReLU is monotone), at a quarter of
        # the ReLU work. Channels-last: ~30% faster conv fwd+bwd on CPU (oneDNN), same math.
        self.features = nn.Sequential(
            nn.Conv2d(3, 36, kernel_size=4), nn.MaxPool2d(2, stride=2), nn.ReLU(),
            nn.Conv2d(36, 48, kernel_size=3), nn.MaxPool2d(2, stride=2), nn.ReLU(),
        ).to(memory_format=torch.channels_last)
        drop = (lambda salt: KeyedDropout(dropout, salt=salt)) if dropout > 0 else (lambda salt: nn.Identity())
        self.fc = nn.Sequential(
            nn.Linear(flat_dim(self.patch_size), self.out_dim), nn.ReLU(), drop(11),
            nn.Linear(self.out_dim, self.out_dim), nn.ReLU(), drop(12),
        )

    def forward(self, x: Tensor) -> Tensor:
        s = self.patch_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, s, s):
            raise ValueError(f"PatchCNN({s}) expects (n_instances, 3, {s}, {s}), got {tuple(x.shape)}")
        if self.preprocess is not None:
            x = self.preprocess(x)
        h = self.features((x * 2.0 - 1.0).contiguous(memory_format=torch.channels_last))
        return self.fc(h.contiguous().flatten(1))  # flatten in (channel, row, col) order

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}"

