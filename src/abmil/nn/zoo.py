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
from .init import keras_init_
from .lenet import LeNetEncoder
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
    pooled head after every layer (DS), or a 128-128-128 stack with summed pooled outputs (RC), initialised as
    Keras initialises them (:func:`abmil.nn.init.keras_init_`).
    """
    check_model_key(name)
    if name in ATTENTION_KEYS:
        return EmbeddingMIL(MLPEncoder(in_dim, (256, 128, 64), dropout=attention_dropout),
                            make_pool(name, 64, att_dim=64))
    if name == "mi-net-ds":
        return keras_init_(DeepSupervisedMINet(in_dim, (256, 128, 64), pool="max", dropout=0.5))
    if name == "mi-net-rc":
        return keras_init_(ResidualMINet(in_dim, 128, 3, pool="max", dropout=0.5))
    level, pool = name.split("-")
    encoder = MLPEncoder(in_dim, (256, 128, 64), dropout=0.5, dropout_after=[2])
    model = EmbeddingMIL(encoder, make_pool(pool, 64)) if level == "embedding" else InstanceMIL(encoder, pool)
    return keras_init_(model)


#: The MNIST-bags rows of the paper's figures (instance/embedding x max/mean, attention, gated attention).
MNIST_BAGS_KEYS = ("instance-max", "instance-mean", "embedding-max", "embedding-mean", "attention", "gated")


def mnist_bags_model(name: str) -> nn.Module:
    """A model for MNIST-bags: the reference code's LeNet-5 variant (500-d embeddings), then the pooling.

    Attention models use L = 128 (reference ``model.py``); the max/mean baselines pool the 500-d embeddings
    (Embedding+) or the per-instance probabilities of a fc-1 head (Instance+). No dropout, as in the reference.
    """
    if name not in MNIST_BAGS_KEYS:
        raise ValueError(f"unknown MNIST-bags model {name!r}: expected one of {', '.join(MNIST_BAGS_KEYS)}")
    return _six_model(name, LeNetEncoder())


def _six_model(name: str, encoder: nn.Module) -> nn.Module:
    """One of the six rows of the MNIST-bags figures and Tables 2-3 on ``encoder`` (attention L = 128)."""
    level, _, pool = name.partition("-")
    if name in ATTENTION_KEYS:
        return EmbeddingMIL(encoder, make_pool(name, encoder.out_dim, att_dim=128))
    if level == "embedding":
        return EmbeddingMIL(encoder, make_pool(pool, encoder.out_dim))
    return InstanceMIL(encoder, pool)


def histology_model(name: str, patch_size: int, *, dropout: float | None = None,
                    stain_normalize: bool = False) -> nn.Module:
    """A model for the histopathology experiments (Tables 2-3): the patch CNN (512-d embeddings), then the pooling.

    ``name``: one of :data:`MNIST_BAGS_KEYS` (the six rows of Tables 2-3: instance/embedding x max/mean, attention,
    gated). ``patch_size``: 32 (breast, UCSB) or 27 (colon, Warwick); any size >= 10 builds. Attention models use
    L = 128 (protocols.md section 4); Instance+ models score each patch with a fc-1 head and pool the probabilities.
    ``dropout``: the patch CNN's rate (default :data:`abmil.nn.patch_cnn.PATCH_CNN_DROPOUT`). ``stain_normalize``:
    Reinhard-normalise every patch's colours first (:class:`abmil.nn.stain_norm.ReinhardNormalize`, gmum's
    ``HistoNormalize``; not part of the paper's known protocol). The weights' names are the same either way.
    """
    from .patch_cnn import PATCH_CNN_DROPOUT, PatchCNN
    from .stain_norm import ReinhardNormalize

    if name not in MNIST_BAGS_KEYS:
        raise ValueError(f"unknown histology model {name!r}: expected one of {', '.join(MNIST_BAGS_KEYS)}")
    preprocess = ReinhardNormalize() if stain_normalize else None
    return _six_model(name, PatchCNN(patch_size, PATCH_CNN_DROPOUT if dropout is None else dropout, preprocess))
