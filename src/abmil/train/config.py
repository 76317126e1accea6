"""Training settings: one dataclass, stored as given, validated at the boundary."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TrainConfig:
    """How one model is trained.

    Attributes:
        optimizer: ``"sgd"`` or ``"adam"`` (torch semantics: coupled L2 ``weight_decay``).
        lr: initial learning rate.
        weight_decay: L2 coefficient added to the gradient (torch convention, ``g += wd * p``).
        decay_biases: apply ``weight_decay`` to biases too (torch default) or only to weight
            matrices (Keras ``kernel_regularizer``, as in Wang et al.'s baselines).
        momentum, nesterov: SGD momentum.
        betas, eps: Adam.
        lr_decay: Keras-style per-step decay, ``lr_t = lr / (1 + lr_decay * t)``.
        epochs: passes over the training bags.
        batch_size: bags per optimizer step; 1 is the paper's setting.
    """

    optimizer: str = "sgd"
    lr: float = 5e-4
    weight_decay: float = 0.0
    decay_biases: bool = True
    momentum: float = 0.9
    nesterov: bool = True
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    lr_decay: float = 0.0
    epochs: int = 50
    batch_size: int = 1

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.lr <= 0 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("lr must be > 0, epochs and batch_size >= 1")
        if self.weight_decay < 0 or self.lr_decay < 0:
            raise ValueError("weight_decay and lr_decay must be >= 0")

    def lr_at(self, step: int) -> float:
        return self.lr / (1.0 + self.lr_decay * step)

    def to_dict(self) -> dict:
        return asdict(self)
