"""The model registry: every named model of the package, with what it can do, built from the composable parts.

    create_model("gated", family="benchmark", in_dim=166)
    create_model("gated", family="slide", in_dim=1024, n_classes=3)
    create_model("transmil", family="slide", in_dim=1024)

A model is a *key* (the rows of the paper's tables, one table below) built for a *family* (the experiment's
instance encoder and sizes). Model keys are shared by every experiment family, the estimator and the CLI:

    attention       embedding-level, attention pooling          (Ilse et al.)
    gated           embedding-level, gated attention pooling    (Ilse et al.)
    embedding-max   MI-Net: embedding-level, max pooling        (Wang et al. 2018)   slides, estimator: ``max``
    embedding-mean  embedding-level, mean pooling                                    slides, estimator: ``mean``
    instance-max    mi-Net: instance scores, max pooling        (Wang et al. 2018)
    instance-mean   instance scores, mean pooling
    mi-net-ds       MI-Net with deep supervision                (Wang et al. 2018)
    mi-net-rc       MI-Net with residual connections            (Wang et al. 2018)
    clam-sb         CLAM single branch: gated attention + instance clustering loss   (Lu et al. 2021)
    transmil        TransMIL: Nyström self-attention, PPEG, class token              (Shao et al. 2021)
    linear-probe    logistic regression on the mean instance (scikit-learn, C on inner folds)

Each row of :data:`MODELS` declares its capabilities (:class:`ModelSpec`): which families build it, what its
per-instance scores are, whether several bags can be packed into one pass, whether a giant bag can be pooled in
chunks and streamed, the tasks it can learn, whether the loop trains it. The loop, predict and heatmap ask these
(:func:`model_spec`) instead of testing module types.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from .chunked import DEFAULT_CHUNK_SIZE
from .encoders import MLPEncoder
from .init import keras_init_
from .lenet import LeNetEncoder
from .models import DeepSupervisedMINet, EmbeddingMIL, InstanceMIL, ResidualMINet
from .pooling import make_pool


@dataclass(frozen=True)
class ModelSpec:
    """One model key and what it can do.

    Attributes:
        title: the paper's name of the row.
        level: ``embedding`` pools instance embeddings, ``instance`` pools instance probabilities, ``ds``/``rc`` are
            MI-Net's deep-supervision and residual variants, ``transformer`` (TransMIL), ``probe`` (linear probe).
        pooling: the pooling of :func:`~abmil.nn.pooling.make_pool` (None: the model has its own).
        families: the families (:data:`FAMILIES`) that build it.
        aliases: other names of the key (the slides' and the estimator's ``mean`` / ``max``).
        instance_scores: what :meth:`~abmil.nn.models.MILOutput.instance_scores` holds: ``"attention"`` (softmax
            weights of attention pooling, ``z = Σ a_k h_k``), ``"probability"`` (instance probabilities),
            ``"cls-attention"`` (TransMIL's class-token attention row, not a convex weighting) or None.
        packed: several bags can share one forward pass (packed with a ``bag_index``); False: one dense bag per
            pass (the loop then packs nothing).
        chunked: a giant bag is pooled in chunks in training and streamed from disk at prediction
            (:mod:`abmil.nn.chunked`); False: a bag is forwarded whole.
        tasks: the tasks (:data:`abmil.tasks.TASKS` names) it can learn; None: every task.
        binary: two classes only.
        trained: ``"loop"`` (:func:`abmil.train.loop.train_loop`) or ``"fitted"`` (closed form by scikit-learn,
            :meth:`~abmil.nn.probe.LinearProbe.fit_bags`).
        slide: the ``slide`` family's builder ``(in_dim, n_out, *, hidden, att_dim, dropout, chunk_size)``.
    """

    title: str
    level: str
    pooling: str | None
    families: tuple[str, ...]
    aliases: tuple[str, ...] = ()
    instance_scores: str | None = None
    packed: bool = True
    chunked: bool = False
    tasks: tuple[str, ...] | None = None
    binary: bool = False
    trained: str = "loop"
    slide: Callable[..., nn.Module] | None = None

    def supports(self, task: str) -> bool:
        """Whether the model can learn ``task`` (a name of :data:`abmil.tasks.TASKS`)."""
        return self.tasks is None or task in self.tasks


def _slide_encoder(in_dim: int, hidden: int, dropout: float) -> MLPEncoder:
    """f of every slide model: Linear(in_dim, hidden) + ReLU + dropout (CLAM's first layer)."""
    return MLPEncoder(in_dim, (hidden,), dropout=dropout)


def _slide_attention(pooling: str) -> Callable[..., nn.Module]:
    def build(in_dim: int, n_out: int, *, hidden: int, att_dim: int, dropout: float, chunk_size: int) -> nn.Module:
        return EmbeddingMIL(_slide_encoder(in_dim, hidden, dropout), make_pool(pooling, hidden, att_dim=att_dim),
                            n_out=n_out, chunk_size=chunk_size)
    return build


def _slide_embedding(pooling: str) -> Callable[..., nn.Module]:
    def build(in_dim: int, n_out: int, *, hidden: int, att_dim: int, dropout: float, chunk_size: int) -> nn.Module:
        return EmbeddingMIL(_slide_encoder(in_dim, hidden, dropout), make_pool(pooling, hidden), n_out=n_out)
    return build


def _slide_instance(pooling: str) -> Callable[..., nn.Module]:
    def build(in_dim: int, n_out: int, *, hidden: int, att_dim: int, dropout: float, chunk_size: int) -> nn.Module:
        return InstanceMIL(_slide_encoder(in_dim, hidden, dropout), pooling)
    return build


def _slide_clam(in_dim: int, n_out: int, *, hidden: int, att_dim: int, dropout: float, chunk_size: int) -> nn.Module:
    from .clam import ClamSB

    return ClamSB(_slide_encoder(in_dim, hidden, dropout), att_dim, n_out=n_out, chunk_size=chunk_size)


def _slide_transmil(in_dim: int, n_out: int, *, hidden: int, att_dim: int, dropout: float, chunk_size: int
                    ) -> nn.Module:
    from .transmil import TransMIL

    return TransMIL(_slide_encoder(in_dim, hidden, dropout), n_out=n_out)


def _slide_probe(in_dim: int, n_out: int, *, hidden: int, att_dim: int, dropout: float, chunk_size: int
                 ) -> nn.Module:
    from .probe import LinearProbe

    return LinearProbe(in_dim, n_out)


_PAPER = ("benchmark", "mnist-bags", "histology")

#: The one table of model keys. The first eight are the paper's benchmark rows (:data:`MODEL_KEYS`), in order.
MODELS: dict[str, ModelSpec] = {
    "attention": ModelSpec("Attention", "embedding", "attention", (*_PAPER, "slide", "estimator"),
                           instance_scores="attention", chunked=True, slide=_slide_attention("attention")),
    "gated": ModelSpec("Gated-Attention", "embedding", "gated", (*_PAPER, "slide", "estimator"),
                       instance_scores="attention", chunked=True, slide=_slide_attention("gated")),
    "embedding-max": ModelSpec("MI-Net / Embedding+max", "embedding", "max", (*_PAPER, "slide", "estimator"),
                               aliases=("max",), slide=_slide_embedding("max")),
    "embedding-mean": ModelSpec("Embedding+mean", "embedding", "mean", (*_PAPER, "slide", "estimator"),
                                aliases=("mean",), slide=_slide_embedding("mean")),
    "instance-max": ModelSpec("mi-Net / Instance+max", "instance", "max", (*_PAPER, "slide"),
                              instance_scores="probability", tasks=("classification",), binary=True,
                              slide=_slide_instance("max")),
    "instance-mean": ModelSpec("Instance+mean", "instance", "mean", (*_PAPER, "slide"),
                               instance_scores="probability", tasks=("classification",), binary=True,
                               slide=_slide_instance("mean")),
    "mi-net-ds": ModelSpec("MI-Net with DS", "ds", "max", ("benchmark",), tasks=("classification",), binary=True),
    "mi-net-rc": ModelSpec("MI-Net with RC", "rc", "max", ("benchmark",), tasks=("classification",), binary=True),
    "clam-sb": ModelSpec("CLAM-SB", "embedding", "gated", ("slide",), instance_scores="attention", chunked=True,
                         tasks=("classification",), slide=_slide_clam),
    "transmil": ModelSpec("TransMIL", "transformer", None, ("slide",), instance_scores="cls-attention",
                          packed=False, slide=_slide_transmil),
    "linear-probe": ModelSpec("Linear probe (mean instance)", "probe", "mean", ("slide",),
                              tasks=("classification",), trained="fitted", slide=_slide_probe),
}
_ALIASES = {alias: key for key, spec in MODELS.items() for alias in spec.aliases}


def family_keys(family: str) -> tuple[str, ...]:
    """The names ``family`` builds, in table order, each by its first alias where it has one (``mean``)."""
    return tuple((spec.aliases or (key,))[0] for key, spec in MODELS.items() if family in spec.families)


def resolve_key(name: str) -> str:
    """The key of ``name`` (a key or an alias)."""
    key = _ALIASES.get(name, name)
    if key not in MODELS:
        names = [*MODELS, *_ALIASES]
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(names)}")
    return key


def model_spec(name: str) -> ModelSpec:
    """The capabilities of the model ``name`` (a key or an alias)."""
    return MODELS[resolve_key(name)]


MODEL_KEYS = tuple(k for k, spec in MODELS.items() if "benchmark" in spec.families)
ATTENTION_KEYS = tuple(k for k, spec in MODELS.items() if spec.pooling in ("attention", "gated")
                       and spec.level == "embedding" and "benchmark" in spec.families)


def check_model_key(name: str) -> str:
    """``name`` if it is one of the paper's benchmark keys (:data:`MODEL_KEYS`), else ValueError."""
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
        return keras_init_(DeepSupervisedMINet(in_dim, (256, 128, 64), pooling="max", dropout=0.5))
    if name == "mi-net-rc":
        return keras_init_(ResidualMINet(in_dim, 128, 3, pooling="max", dropout=0.5))
    level, pooling = MODELS[name].level, MODELS[name].pooling
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
    level, pooling = MODELS[name].level, MODELS[name].pooling
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


#: The names a slide model can have (``abmil train --pooling``).
SLIDE_KEYS = family_keys("slide")


def slide_model(name: str, in_dim: int, n_classes: int = 2, *, hidden: int = 512, att_dim: int = 256,
                dropout: float = 0.25, chunk_size: int = DEFAULT_CHUNK_SIZE, n_out: int | None = None,
                task: str | None = None) -> nn.Module:
    """Whole-slide MIL on patch features, CLAM-sized (Lu et al. 2021), binary or multi-class.

        x (n, in_dim) → Linear(in_dim, hidden) + ReLU + dropout       (f, an MLPEncoder)
                      → the pooling of ``name`` (attention: hidden → att_dim → 1; see :data:`MODELS`)
                      → Linear(hidden, n_out)                           (g)

    ``n_out`` is 1 for two classes (sigmoid, the paper's clamped Bernoulli likelihood) and ``n_classes`` otherwise
    (softmax, cross-entropy). Attention models forward a slide alone in bounded memory (``chunk_size``,
    :func:`abmil.nn.chunked.attention_pool_bag`); several small slides can be packed with a ``bag_index`` where
    the model's :attr:`ModelSpec.packed` allows. ``n_out``: the outputs of another head instead (survival: a hazard
    per time bin, or one log hazard ratio; regression: one value; :meth:`abmil.tasks.base.Task.n_out`), of
    ``task`` (checked against the model's :attr:`ModelSpec.tasks`).
    """
    spec = model_spec(name)
    if spec.slide is None:
        raise ValueError(f"unknown slide model {name!r}: expected one of {', '.join(SLIDE_KEYS)}")
    if n_out is None and n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    if in_dim < 1 or hidden < 1 or att_dim < 1:
        raise ValueError("in_dim, hidden and att_dim must be >= 1")
    task = task or ("classification" if n_out is None else None)
    if task is not None and not spec.supports(task) or (task is None and spec.tasks is not None):
        raise ValueError(f"--pooling {name} is for the {' and '.join(spec.tasks)} task(s), not {task or 'this one'}")
    if spec.binary and n_out is None and n_classes != 2:
        raise ValueError(f"--pooling {name} is for two classes, the data have {n_classes}")
    return spec.slide(in_dim, n_out if n_out is not None else (1 if n_classes == 2 else n_classes), hidden=hidden,
                      att_dim=att_dim, dropout=dropout, chunk_size=chunk_size)


def estimator_model(name: str, in_dim: int, hidden: tuple[int, ...] = (256, 128, 64), *, dropout: float = 0.0,
                    att_dim: int = 128) -> EmbeddingMIL:
    """The scikit-learn estimator's model (:class:`abmil.AttentionMILClassifier`): an MLP encoder of ``hidden``
    layers (ReLU, ``dropout`` after each), the pooling of ``name`` (attention L = ``att_dim``), fc-1."""
    pooling = model_spec(name).pooling
    return EmbeddingMIL(MLPEncoder(in_dim, hidden, dropout=dropout), make_pool(pooling, hidden[-1], att_dim=att_dim))


#: The families: how a model key becomes a network for one kind of data.
FAMILIES: dict[str, Callable[..., nn.Module]] = {
    "benchmark": benchmark_model,
    "mnist-bags": mnist_bags_model,
    "histology": histology_model,
    "slide": slide_model,
    "estimator": estimator_model,
}


def create_model(name: str, *, family: str = "benchmark", **kwargs: Any) -> nn.Module:
    """The model ``name`` (a key of :data:`MODELS` or an alias) built for ``family`` (a key of :data:`FAMILIES`),
    with the family builder's keyword arguments (``in_dim`` for ``benchmark`` and ``slide``, ``patch_size`` for
    ``histology``...). Initialise under ``torch.manual_seed`` for reproducible weights."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}: expected one of {', '.join(FAMILIES)}")
    key = resolve_key(name)
    if family not in MODELS[key].families:
        raise ValueError(f"unknown {family} model {name!r}: expected one of {', '.join(family_keys(family))}")
    return FAMILIES[family](key, **kwargs)
