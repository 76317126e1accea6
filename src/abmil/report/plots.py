"""Figures as PNG files: MNIST-bags AUC curves (the paper's Figures 1-3) and one bag's attention.

matplotlib with the Agg backend (no display needed); every PNG is written atomically.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from abmil.io import atomic_open
from abmil.report import paper
from abmil.report.results import ResultRow


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 150) -> None:
    """Write ``fig`` to ``path`` as a PNG, atomically, and close it."""
    plt = _pyplot()
    try:
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)


def plot_mnist_bags(rows: Sequence[ResultRow], path: str | os.PathLike, metric: str = "auc") -> None:
    """Test AUC vs number of training bags: one panel per mean bag size, one line per model with ± error bars.

    ``rows``: MNIST-bags result rows (extras ``bag_mean``, ``train_bags``). The paper's few known points are drawn
    as open markers.
    """
    plt = _pyplot()
    rows = [r for r in rows if r.metric == metric]
    means = sorted({int(r.extra["bag_mean"]) for r in rows})
    if not means:
        raise ValueError(f"no {metric!r} rows to plot")
    models = list(dict.fromkeys(m for m in paper.HISTOLOGY_ROWS if any(r.model == m for r in rows)))
    models += [m for m in dict.fromkeys(r.model for r in rows) if m not in models]
    fig, axes = plt.subplots(1, len(means), figsize=(4.6 * len(means), 4.6), squeeze=False, sharex=True, sharey=True)
    colours = plt.get_cmap("tab10")
    for ax, bag_mean in zip(axes[0], means):
        for j, m in enumerate(models):
            mine = sorted((int(r.extra["train_bags"]), r) for r in rows
                          if r.model == m and int(r.extra["bag_mean"]) == bag_mean)
            if not mine:
                continue
            x = [n for n, _ in mine]
            y = [r.mean for _, r in mine]
            err = [r.std or 0.0 for _, r in mine]
            ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=3, color=colours(j),
                        label=paper.HISTOLOGY_MODEL_LABELS.get(m, m))
            for n, r in mine:
                if r.paper_mean is not None:
                    ax.plot([n], [r.paper_mean], marker="D", mfc="none", color=colours(j), ms=7)
        ax.set_title(f"mean bag size {bag_mean}")
        ax.set_xlabel("number of training bags")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"test {paper.METRIC_LABELS.get(metric, metric)}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        h, l = ax.get_legend_handles_labels()
        handles += [a for a, b in zip(h, l) if b not in labels]
        labels += [b for b in l if b not in labels]
    if any(r.paper_mean is not None for r in rows):
        handles.append(plt.Line2D([], [], marker="D", mfc="none", color="grey", ls="none"))
        labels.append("paper (secondary source)")
    ncol = min(len(labels), 4)
    legend_rows = -(-len(labels) // ncol)
    # room under the axes' labels for the legend's rows, so that neither covers the other
    fig.subplots_adjust(bottom=0.2 + 0.065 * legend_rows, top=0.84, wspace=0.08)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, bbox_to_anchor=(0.5, 0.0), frameon=False)
    for ax in axes[0]:
        ax.set_ylim(top=min(ax.get_ylim()[1], 1.02))  # AUC ends at 1: a ± bar beyond it is clipped
    fig.suptitle("MNIST-bags: test AUC (mean ± sd over repetitions)")
    save_figure(fig, path)


def plot_bag_attention(images: np.ndarray, scores: np.ndarray, is_target: np.ndarray, path: str | os.PathLike, *,
                       title: str, score_name: str = "attention") -> None:
    """One bag's digits in a row with each instance's score written under it, as the paper's figure shows them.

    ``images`` ``(n, 28, 28)`` uint8 or float; ``scores`` ``(n,)``; ``is_target`` ``(n,)`` bool: target digits
    get a red frame. The highest score is printed in bold.
    """
    plt = _pyplot()
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(max(1.05 * n, 4.0), 1.9), squeeze=False)
    top = int(np.argmax(scores))
    for k, ax in enumerate(axes[0]):
        ax.imshow(images[k], cmap="gray_r")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor("red" if is_target[k] else "0.75")
            spine.set_linewidth(2.5 if is_target[k] else 0.8)
        ax.set_xlabel(f"{scores[k]:.3f}", fontsize=9, fontweight="bold" if k == top else "normal")
    fig.suptitle(f"{title}\n{score_name} under each instance; red frame: a 9", fontsize=10)
    save_figure(fig, path)
