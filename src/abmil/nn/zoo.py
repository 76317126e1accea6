"""The paper's named models, built from the composable parts.

Model keys are shared by every experiment family and by the CLI:

    attention       embedding-level, attention pooling          (Ilse et al.)
    gated           embedding-level, gated attention pooling    (Ilse et al.)
    embedding-max   MI-Net: embedding-level, max pooling        (Wang et al. 2018)
    embedding-mean  embedding-level, mean pooling
    instance-max    mi-Net: instance scores, max pooling        (Wang et al. 2018)
    instance-mean   instance scores, mean pooling
    mi-net-ds       MI-Net with deep supervision                (Wang et al. 2018)
    mi-net-rc       MI-Net with residual connections            (Wang et al. 2018)
"""
from __future__ import annotations

from torch import nn

from .encoders import MLPEncoder
from .models import DeepSupervisedMINet, EmbeddingMIL, InstanceMIL, ResidualMINet, make_pool

MODEL_KEYS = ("attention", "gated", "embedding-max", "embedding-mean", "instance-max", "instance-mean",
              "mi-net-ds", "mi-net-rc")
ATTENTION_KEYS = ("attention", "gated")


def check_model_key(name: str) -> str:
    if name not in MODEL_KEYS:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(MODEL_KEYS)}")
    return name


def benchmark_model(name: str, in_dim: int, *, attention_dropout: float = 0.2) -> nn.Module:
    """A model for the classic MIL benchmarks (166/230-dim instance vectors).

    Attention models follow Ilse et al.: fc-256, fc-128, fc-64 (ReLU, dropout after each),
    attention with L = 64, fc-1. The baselines follow Wang et al.'s released code: the same
    256-128-64 stack with one dropout(0.5) after the last layer (mi-Net, MI-Net), a dropout and
    pooled head after every layer (DS), or a 128-128-128 stack with summed pooled outputs (RC).
    """
    check_model_key(name)
    if name in ATTENTION_KEYS:
        return EmbeddingMIL(MLPEncoder(in_dim, (256, 128, 64), dropout=attention_dropout),
                            make_pool(name, 64, att_dim=64))
    if name == "mi-net-ds":
        return DeepSupervisedMINet(in_dim, (256, 128, 64), pool="max", dropout=0.5)
    if name == "mi-net-rc":
        return ResidualMINet(in_dim, 128, 3, pool="max", dropout=0.5)
    level, pool = name.split("-")
    encoder = MLPEncoder(in_dim, (256, 128, 64), dropout=0.5, dropout_after=[2])
    return EmbeddingMIL(encoder, make_pool(pool, 64)) if level == "embedding" else InstanceMIL(encoder, pool)
