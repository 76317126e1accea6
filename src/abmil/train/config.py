"""Training settings: one dataclass, stored as given, validated at the boundary."""
from __future__ import annotations

import math
import numbers
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
        for name in ("lr", "weight_decay", "momentum", "eps", "lr_decay"):
            value = getattr(self, name)
            # not (value >= 0) also catches NaN, which every comparison calls False
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                    or not value >= 0 or (name == "lr" and value == 0):
                raise ValueError(f"{name} must be a finite number {'> 0' if name == 'lr' else '>= 0'}, got {value!r}")
        if len(self.betas) != 2 or not all(isinstance(b, numbers.Real) and 0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    def lr_at(self, step: int) -> float:
        return self.lr / (1.0 + self.lr_decay * step)

    def to_dict(self) -> dict:
        return asdict(self)
