"""The model registry: every named model of the package, built from the composable parts.

    create_model("gated", family="benchmark", in_dim=166)
    create_model("gated", family="slide", in_dim=1024, n_classes=3)

A model is a *key* (the rows of the paper's tables, one table below) built for a *family* (the experiment's
instance encoder and sizes). Model keys are shared by every experiment family and by the CLI:

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

from collections.abc import Callable
from typing import Any

from torch import nn

from .chunked import DEFAULT_CHUNK_SIZE
from .encoders import MLPEncoder
from .init import keras_init_
from .lenet import LeNetEncoder
from .models import DeepSupervisedMINet, EmbeddingMIL, InstanceMIL, ResidualMINet
from .pooling import make_pool

#: The one table of model keys: key -> (paper's name, level, pooling). Level ``embedding`` pools instance embeddings,
#: ``instance`` pools instance probabilities, ``ds``/``rc`` are MI-Net's deep-supervision and residual variants.
MODELS: dict[str, tuple[str, str, str]] = {
    "attention": ("Attention", "embedding", "attention"),
    "gated": ("Gated-Attention", "embedding", "gated"),
    "embedding-max": ("MI-Net / Embedding+max", "embedding", "max"),
    "embedding-mean": ("Embedding+mean", "embedding", "mean"),
    "instance-max": ("mi-Net / Instance+max", "instance", "max"),
    "instance-mean": ("Instance+mean", "instance", "mean"),
    "mi-net-ds": ("MI-Net with DS", "ds", "max"),
    "mi-net-rc": ("MI-Net with RC", "rc", "max"),
}
MODEL_KEYS = tuple(MODELS)
ATTENTION_KEYS = tuple(k for k, (_, level, pooling) in MODELS.items() if pooling in ("attention", "gated"))


def check_model_key(name: str) -> str:
    if name not in MODELS:
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
        return keras_init_(DeepSupervisedMINet(in_dim, (256, 128, 64), pooling="max", dropout=0.5))
    if name == "mi-net-rc":
        return keras_init_(ResidualMINet(in_dim, 128, 3, pooling="max", dropout=0.5))
    _, level, pooling = MODELS[name]
    encoder = MLPEncoder(in_dim, (256, 128, 64), dropout=0.5, dropout_after=[2])
    model = EmbeddingMIL(encoder, make_pool(pooling, 64)) if level == "embedding" else InstanceMIL(encoder, pooling)
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
    _, level, pooling = MODELS[name]
    if level == "embedding":
        return EmbeddingMIL(encoder, make_pool(pooling, encoder.out_dim, att_dim=128))
    return InstanceMIL(encoder, pooling)


def histology_model(name: str, patch_size: int, *, dropout: float | None = None,
                    stain_normalize: bool = False) -> nn.Module:
    """A model for the histopathology experiments (Tables 2-3): the patch CNN (512-d embeddings), then the pooling.

    ``name``: one of :data:`MNIST_BAGS_KEYS` (the six rows of Tables 2-3: instance/embedding x max/mean, attention,
    gated). ``patch_size``: 32 (breast, UCSB) or 27 (colon, Warwick); any size >= 10 builds. Attention models use
    L = 128 (docs/protocols.md section 4); Instance+ models score each patch with a fc-1 head and pool the
    probabilities.
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


#: Poolings a slide model can use: giant bags are pooled in chunks, which attention pooling allows.
SLIDE_KEYS = ATTENTION_KEYS


def slide_model(name: str, in_dim: int, n_classes: int = 2, *, hidden: int = 512, att_dim: int = 256,
                dropout: float = 0.25, chunk_size: int = DEFAULT_CHUNK_SIZE, n_out: int | None = None) -> EmbeddingMIL:
    """Whole-slide attention MIL on patch features, CLAM-sized (Lu et al. 2021), binary or multi-class.

        x (n, in_dim) → Linear(in_dim, hidden) + ReLU + dropout       (f, an MLPEncoder)
                      → attention pooling, plain or gated (hidden → att_dim → 1)
                      → Linear(hidden, n_out)                           (g)

    ``n_out`` is 1 for two classes (sigmoid, the paper's clamped Bernoulli likelihood) and ``n_classes`` otherwise
    (softmax, cross-entropy). A slide forwarded alone is pooled in bounded memory (``chunk_size``,
    :func:`abmil.nn.chunked.attention_pool_bag`); several small slides can be packed with a ``bag_index``.
    ``n_out``: the outputs of another head instead (survival: a hazard per time bin, or one log hazard ratio;
    regression: one value; :class:`abmil.slides.outcomes.Head`).
    """
    if name not in SLIDE_KEYS:
        raise ValueError(f"unknown slide model {name!r}: expected one of {', '.join(SLIDE_KEYS)}")
    if n_out is None and n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    if in_dim < 1 or hidden < 1 or att_dim < 1:
        raise ValueError("in_dim, hidden and att_dim must be >= 1")
    encoder = MLPEncoder(in_dim, (hidden,), dropout=dropout)
    return EmbeddingMIL(encoder, make_pool(MODELS[name][2], hidden, att_dim=att_dim),
                        n_out=n_out if n_out is not None else (1 if n_classes == 2 else n_classes),
                        chunk_size=chunk_size)


#: The families: how a model key becomes a network for one kind of data.
FAMILIES: dict[str, Callable[..., nn.Module]] = {
    "benchmark": benchmark_model,
    "mnist-bags": mnist_bags_model,
    "histology": histology_model,
    "slide": slide_model,
}


def create_model(name: str, *, family: str = "benchmark", **kwargs: Any) -> nn.Module:
    """The model ``name`` (a key of :data:`MODELS`) built for ``family`` (a key of :data:`FAMILIES`), with the
    family builder's keyword arguments (``in_dim`` for ``benchmark`` and ``slide``, ``patch_size`` for
    ``histology``...). Initialise under ``torch.manual_seed`` for reproducible weights."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}: expected one of {', '.join(FAMILIES)}")
    check_model_key(name)
    return FAMILIES[family](name, **kwargs)
