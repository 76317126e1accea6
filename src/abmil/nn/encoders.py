"""Instance encoders f: one instance in, one embedding h_k out."""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .dropout import KeyedDropout


class MLPEncoder(nn.Module):
    """The paper's encoder for the classic MIL benchmarks: (fc-ReLU-dropout) per hidden size.

    ``(n_instances, in_dim)`` → ``(n_instances, hidden[-1])``. The default 256-128-64 is the
    architecture of Ilse et al. (Table 1 experiments) and of Wang et al.'s mi-Net / MI-Net.

    Args:
        in_dim: number of instance features.
        hidden: sizes of the fully connected layers.
        dropout: dropout rate after each layer (``dropout_after`` picks which layers).
        dropout_after: indices of the layers followed by dropout; ``None`` = all.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int] = (256, 128, 64), dropout: float = 0.0,
                 dropout_after: Sequence[int] | None = None):
        super().__init__()
        self.out_dim = hidden[-1]
        after = range(len(hidden)) if dropout_after is None else dropout_after
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip((in_dim, *hidden[:-1]), hidden)):
            layers += [nn.Linear(a, b), nn.ReLU()]
            if dropout > 0 and i in after:
                layers.append(KeyedDropout(dropout, salt=i))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)
