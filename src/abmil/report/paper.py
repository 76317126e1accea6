"""Published numbers of Ilse, Tomczak & Welling (ICML 2018), as data, with which of them are confirmed.

Source: "Attention-based Deep Multiple Instance Learning", ICML 2018, PMLR 80:2127-2136,
https://proceedings.mlr.press/v80/ilse18a.html (arXiv 1802.04712v4, https://arxiv.org/abs/1802.04712),
Tables 1-3. Transcribed from ``shared/paper/results.md``; the paper's own PDF was never read.

What independent copies confirm (results.md, "Update, 2026-12"; :data:`PAPER_CONFIRMATIONS` holds it per cell, and
:func:`paper_confirmation` / :func:`paper_sources` look it up): [A] Shi et al. (AAAI 2020) reprint every Table 1
mean; [B] a reading note made from the arXiv v4 PDF confirms the Attention row of Table 1 (means and ±), the
Gated-Attention means of Table 1, and the accuracy and AUC means of all six models in Tables 2-3. Still unconfirmed:
every other ± (MI-Kernel's may not exist in the paper: [A] prints N/A), and the precision, recall and F-score means
of Tables 2-3. Of MNIST-bags only Attention's AUC 0.768 (mean bag size 10, 50 training bags) has a source ([S1], a
user quoting the paper). The ± is most likely a standard error over the 5 repetitions: [A]'s standard deviations are
√5 times it in 39 of 40 checkable baseline cells, and [B] reads it as one. A few means are also quoted by
low-reliability secondary sources (:data:`SECONDARY_SUPPORT`). Use unconfirmed cells as provisional targets only.

Keys: (dataset, model_key) -> (mean, std or None). ``None`` std = the paper prints "N/A" (mi-SVM, MI-SVM).
Model keys are this package's names where we reproduce the method (e.g. ``"instance-max"`` = the paper's row
"mi-Net"); the other baselines of Table 1 get display-only keys (``"mi-svm"``, ``"mi-svm-bag"`` = MI-SVM, ...).
"""
from __future__ import annotations

__all__ = [
    "DATASET_LABELS",
    "HISTOLOGY_METRICS",
    "HISTOLOGY_MODEL_LABELS",
    "HISTOLOGY_ROWS",
    "METRIC_LABELS",
    "MODEL_LABELS",
    "PAPER_MNIST_BAGS",
    "PAPER_CONFIRMATIONS",
    "PAPER_NUMBERS_CONFIRMED",
    "PAPER_SOURCES",
    "PAPER_RESULTS",
    "PAPER_TABLE1",
    "PAPER_TABLE2",
    "PAPER_TABLE3",
    "PAPER_URL",
    "REPRODUCED_TABLE1",
    "SECONDARY_SUPPORT",
    "TABLE1_DATASETS",
    "TABLE1_ROWS",
    "canonical_dataset",
    "canonical_experiment",
    "paper_confirmation",
    "paper_mnist_bags_confirmation",
    "paper_mnist_bags_value",
    "paper_sources",
    "paper_value",
]

PAPER_URL = "https://proceedings.mlr.press/v80/ilse18a.html"
ARXIV_URL = "https://arxiv.org/abs/1802.04712"
# True only once every cell below is confirmed; which ones are: :data:`PAPER_CONFIRMATIONS`.
PAPER_NUMBERS_CONFIRMED = False

# Table 1 row order as printed; our key -> the paper's row name.
MODEL_LABELS: dict[str, str] = {
    "mi-svm": "mi-SVM",
    "mi-svm-bag": "MI-SVM",  # bag-level SVM; the paper's name differs from mi-SVM only in case
    "mi-kernel": "MI-Kernel",
    "em-dd": "EM-DD",
    "mi-graph": "mi-Graph",
    "mivlad": "miVLAD",
    "mifv": "miFV",
    "instance-max": "mi-Net",
    "embedding-max": "MI-Net",
    "mi-net-ds": "MI-Net with DS",
    "mi-net-rc": "MI-Net with RC",
    "attention": "Attention",
    "gated": "Gated-Attention",
    # Tables 2-3 (histology) and the MNIST-bags figures name the max/mean baselines this way.
    "instance-mean": "Instance+mean",
    "embedding-mean": "Embedding+mean",
}
TABLE1_ROWS: tuple[str, ...] = (
    "mi-svm", "mi-svm-bag", "mi-kernel", "em-dd", "mi-graph", "mivlad", "mifv",
    "instance-max", "embedding-max", "mi-net-ds", "mi-net-rc", "attention", "gated",
)
# The Table 1 rows this package trains; the rest are shown as paper-only.
REPRODUCED_TABLE1: frozenset[str] = frozenset(
    {"instance-max", "embedding-max", "mi-net-ds", "mi-net-rc", "attention", "gated"}
)
HISTOLOGY_ROWS: tuple[str, ...] = (
    "instance-max", "instance-mean", "embedding-max", "embedding-mean", "attention", "gated",
)
# Tables 2-3 label the max baselines differently from Table 1.
HISTOLOGY_MODEL_LABELS: dict[str, str] = {
    **MODEL_LABELS, "instance-max": "Instance+max", "embedding-max": "Embedding+max"
}

TABLE1_DATASETS: tuple[str, ...] = ("musk1", "musk2", "fox", "tiger", "elephant")
DATASET_LABELS: dict[str, str] = {
    "musk1": "Musk1",
    "musk2": "Musk2",
    "fox": "Fox",
    "tiger": "Tiger",
    "elephant": "Elephant",
    "breast": "Breast Cancer",
    "colon": "Colon Cancer",
}
METRIC_LABELS: dict[str, str] = {
    "accuracy": "Accuracy",
    "precision": "Precision",
    "recall": "Recall",
    "f1": "F-score",
    "auc": "AUC",
    "instance_auc": "Instance AUC (attention or instance score vs the instance label)",
}
HISTOLOGY_METRICS: tuple[str, ...] = ("accuracy", "precision", "recall", "f1", "auc")

Cell = tuple[float, "float | None"]


def _grid(rows: dict[str, tuple[Cell, ...]], columns: tuple[str, ...]) -> dict[tuple[str, str], Cell]:
    """A printed table (row -> cells in column order) as {(row, column): cell}; strict zip catches a short row."""
    return {(row, col): cell for row, cells in rows.items() for col, cell in zip(columns, cells, strict=True)}


# Table 1: bag accuracy, mean ± (most likely the SE over the 5 repetitions) over 5 x 10-fold CV.
# Columns: musk1, musk2, fox, tiger, elephant.
PAPER_TABLE1: dict[tuple[str, str], Cell] = {
    (ds, model): cell
    for (model, ds), cell in _grid(
        {
            "mi-svm": ((0.874, None), (0.836, None), (0.582, None), (0.784, None), (0.822, None)),
            "mi-svm-bag": ((0.779, None), (0.843, None), (0.578, None), (0.840, None), (0.843, None)),
            "mi-kernel": ((0.880, 0.031), (0.893, 0.015), (0.603, 0.028), (0.842, 0.010), (0.843, 0.016)),
            "em-dd": ((0.849, 0.044), (0.869, 0.048), (0.609, 0.045), (0.730, 0.043), (0.771, 0.043)),
            "mi-graph": ((0.889, 0.033), (0.903, 0.039), (0.620, 0.044), (0.860, 0.037), (0.869, 0.035)),
            "mivlad": ((0.871, 0.043), (0.872, 0.042), (0.620, 0.044), (0.811, 0.039), (0.850, 0.036)),
            "mifv": ((0.909, 0.040), (0.884, 0.042), (0.621, 0.049), (0.813, 0.037), (0.852, 0.036)),
            "instance-max": ((0.889, 0.039), (0.858, 0.049), (0.613, 0.035), (0.824, 0.034), (0.858, 0.037)),
            "embedding-max": ((0.887, 0.041), (0.859, 0.046), (0.622, 0.038), (0.830, 0.032), (0.862, 0.034)),
            "mi-net-ds": ((0.894, 0.042), (0.874, 0.043), (0.630, 0.037), (0.845, 0.039), (0.872, 0.032)),
            "mi-net-rc": ((0.898, 0.043), (0.873, 0.044), (0.619, 0.047), (0.836, 0.037), (0.857, 0.040)),
            "attention": ((0.892, 0.040), (0.858, 0.048), (0.615, 0.043), (0.839, 0.022), (0.868, 0.022)),
            "gated": ((0.900, 0.050), (0.863, 0.042), (0.603, 0.029), (0.845, 0.018), (0.857, 0.027)),
        },
        TABLE1_DATASETS,
    ).items()
}

# Tables 2 (Breast Cancer, UCSB) and 3 (Colon Cancer, CRCHistoPhenotypes): (model, metric) -> cell.
# Columns: accuracy, precision, recall, f1, auc.
PAPER_TABLE2: dict[tuple[str, str], Cell] = _grid(
    {
        "instance-max": ((0.614, 0.020), (0.585, 0.03), (0.477, 0.087), (0.506, 0.054), (0.612, 0.026)),
        "instance-mean": ((0.672, 0.026), (0.672, 0.034), (0.515, 0.056), (0.577, 0.049), (0.719, 0.019)),
        "embedding-max": ((0.607, 0.015), (0.558, 0.013), (0.546, 0.070), (0.543, 0.042), (0.650, 0.013)),
        "embedding-mean": ((0.741, 0.023), (0.741, 0.023), (0.654, 0.054), (0.689, 0.034), (0.796, 0.012)),
        "attention": ((0.745, 0.018), (0.718, 0.021), (0.715, 0.046), (0.712, 0.032), (0.775, 0.016)),
        "gated": ((0.755, 0.016), (0.728, 0.016), (0.731, 0.042), (0.725, 0.023), (0.799, 0.020)),
    },
    HISTOLOGY_METRICS,
)
PAPER_TABLE3: dict[tuple[str, str], Cell] = _grid(
    {
        "instance-max": ((0.842, 0.021), (0.866, 0.017), (0.816, 0.031), (0.839, 0.023), (0.914, 0.010)),
        "instance-mean": ((0.772, 0.012), (0.821, 0.011), (0.710, 0.031), (0.759, 0.017), (0.866, 0.008)),
        "embedding-max": ((0.824, 0.015), (0.884, 0.014), (0.753, 0.020), (0.813, 0.017), (0.918, 0.010)),
        "embedding-mean": ((0.860, 0.014), (0.911, 0.011), (0.804, 0.027), (0.853, 0.016), (0.940, 0.010)),
        "attention": ((0.904, 0.011), (0.953, 0.014), (0.855, 0.017), (0.901, 0.011), (0.968, 0.009)),
        "gated": ((0.898, 0.020), (0.944, 0.016), (0.851, 0.035), (0.893, 0.022), (0.968, 0.010)),
    },
    HISTOLOGY_METRICS,
)

# One dict per experiment, keyed (dataset, model, metric). MNIST-bags has no usable cell yet (results.md: nearly
# all n/a, and its cells need the bag size and training-set size as keys too).
PAPER_RESULTS: dict[str, dict[tuple[str, str, str], Cell]] = {
    "benchmarks": {(ds, model, "accuracy"): cell for (ds, model), cell in PAPER_TABLE1.items()},
    "histology": {
        **{("breast", model, metric): cell for (model, metric), cell in PAPER_TABLE2.items()},
        **{("colon", model, metric): cell for (model, metric), cell in PAPER_TABLE3.items()},
    },
}

# Means that a secondary source also states (results.md [S3]); corroboration, not proof.
SECONDARY_SUPPORT: dict[tuple[str, str, str, str], str] = {
    ("histology", "breast", "instance-mean", "auc"): "S3",
    ("histology", "breast", "embedding-mean", "auc"): "S3",
    ("histology", "colon", "embedding-mean", "auc"): "S3",
    ("histology", "colon", "attention", "auc"): "S3",
}

#: The independent copies that confirm cells (results.md, "Update, 2026-12"), by the letters results.md uses.
PAPER_SOURCES: dict[str, str] = {
    "A": "Shi et al., Loss-based Attention for Deep MIL, AAAI 2020, Table 1 (xsshi2015/Loss-Attention)",
    "B": "a reading note from the arXiv v4 PDF (NatsuiroGinga/bilibili-note, "
         "wiki/papers/methodology/2018-Ilse-基于注意力的深度多示例学习.md)",
    "C": "rohban-lab/MILFormer train.py, settings citing the paper's supplement (no table cell)",
    "S1": "a user quoting the paper in AMLab-Amsterdam/AttentionDeepMIL issue 14",
}

#: Which part of which cell a source confirms: (experiment, models or None = all, metrics or None = all, part,
#: sources), part "mean" or "std" (the ±). Rules add up; a cell part no rule names is unconfirmed. Rules, not a
#: per-cell table, because the sources confirm whole rows and columns.
PAPER_CONFIRMATIONS: tuple[tuple[str, frozenset[str] | None, frozenset[str] | None, str, tuple[str, ...]], ...] = (
    ("benchmarks", None, frozenset({"accuracy"}), "mean", ("A",)),  # all 13 rows of Table 1
    ("benchmarks", frozenset({"attention", "gated"}), frozenset({"accuracy"}), "mean", ("B",)),
    ("benchmarks", frozenset({"attention"}), frozenset({"accuracy"}), "std", ("B",)),
    ("histology", None, frozenset({"accuracy", "auc"}), "mean", ("B",)),  # both tables, all six models
)

#: MNIST-bags test AUC, (mean bag size, training bags, model) -> (mean, ±). results.md: the appendix tables could not be
#: read; these two means are quoted by secondary sources only ([S1] issue #14 of the reference repository, [S2]).
PAPER_MNIST_BAGS: dict[tuple[int, int, str], Cell] = {
    (10, 50, "attention"): (0.768, None),
    (10, 50, "instance-max"): (0.553, None),
}


def paper_mnist_bags_value(bag_mean: int, train_bags: int, model: str) -> tuple[float | None, float | None]:
    """The paper's test AUC (mean, ±) at one MNIST-bags grid point, or ``(None, None)`` (almost everywhere)."""
    return PAPER_MNIST_BAGS.get((int(bag_mean), int(train_bags), model), (None, None))


def paper_mnist_bags_confirmation(bag_mean: int, train_bags: int, model: str) -> tuple[bool, bool]:
    """(mean confirmed, ± confirmed) at one MNIST-bags grid point: only Attention's 0.768 has a source ([S1])."""
    return (int(bag_mean), int(train_bags), model) == (10, 50, "attention"), False


_EXPERIMENT_ALIASES = {"table1": "benchmarks", "mil": "benchmarks", "breast": "histology", "colon": "histology"}
_DATASET_ALIASES = {
    "breast_cancer": "breast", "ucsb_breast_images": "breast",
    "colon_cancer": "colon", "colon_crc": "colon", "crc": "colon",
}
_METRIC_ALIASES = {"acc": "accuracy", "f_score": "f1", "fscore": "f1", "f-score": "f1", "roc_auc": "auc"}
_MODEL_ALIASES = {"gated-attention": "gated", "gated_attention": "gated"}


def canonical_experiment(experiment: str) -> str:
    """Map an experiment name or alias ("breast" -> "histology") to a key of :data:`PAPER_RESULTS`."""
    e = experiment.lower()
    return _EXPERIMENT_ALIASES.get(e, e)


def canonical_dataset(dataset: str) -> str:
    """Map a dataset alias ("colon_crc" -> "colon") to the name used here.

    Deliberately no alias for ``ucsb_breast``: that is the 708-d precomputed-feature benchmark, not Table 2's
    CNN-on-patches protocol, so the paper's numbers do not apply to it.
    """
    d = dataset.lower()
    return _DATASET_ALIASES.get(d, d)


def paper_value(experiment: str, dataset: str, model: str, metric: str) -> tuple[float | None, float | None]:
    """The paper's (mean, ±) for one cell, or ``(None, None)`` where the paper has none; see
    :func:`paper_confirmation` for which parts are confirmed.

    ``experiment``: "benchmarks" (Table 1, metric "accuracy") or "histology" (Tables 2-3; datasets "breast",
    "colon"; metrics accuracy, precision, recall, f1, auc). The ± is ``None`` where the paper prints "N/A".
    """
    return PAPER_RESULTS.get(canonical_experiment(experiment), {}).get(_cell_key(dataset, model, metric), (None, None))


def _cell_key(dataset: str, model: str, metric: str) -> tuple[str, str, str]:
    """(dataset, model, metric) with aliases resolved, as :data:`PAPER_RESULTS` keys them."""
    return (
        canonical_dataset(dataset),
        _MODEL_ALIASES.get(model.lower(), model.lower()),
        _METRIC_ALIASES.get(metric.lower(), metric.lower()),
    )


def paper_sources(experiment: str, dataset: str, model: str, metric: str) -> dict[str, tuple[str, ...]]:
    """{"mean": sources, "std": sources} confirming one cell's parts (keys of :data:`PAPER_SOURCES`); () = none.

    A part the paper does not print (no cell, or a ± of "N/A") has no source.
    """
    exp = canonical_experiment(experiment)
    _, m, x = key = _cell_key(dataset, model, metric)
    cell = PAPER_RESULTS.get(exp, {}).get(key)
    found: dict[str, tuple[str, ...]] = {"mean": (), "std": ()}
    if cell is None:
        return found
    for rule_exp, models, metrics, part, sources in PAPER_CONFIRMATIONS:
        if rule_exp == exp and (models is None or m in models) and (metrics is None or x in metrics):
            if part == "mean" or cell[1] is not None:
                found[part] += tuple(s for s in sources if s not in found[part])
    return found


def paper_confirmation(experiment: str, dataset: str, model: str, metric: str) -> tuple[bool, bool]:
    """(mean confirmed, ± confirmed) for one cell of Tables 1-3, by an independent copy (results.md, 2026-12).

    Both False where the paper has no such cell; the ± also where it prints "N/A".
    """
    src = paper_sources(experiment, dataset, model, metric)
    return bool(src["mean"]), bool(src["std"])
