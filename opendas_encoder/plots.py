"""Plots a person would rather look at: confusion matrices, t-SNE of text embeddings, loss curves.

matplotlib (Agg backend, PNG files), scikit-learn's ``ConfusionMatrixDisplay`` and t-SNE, and
``tabulate`` for Markdown tables; imported lazily.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str], path: str, title: str = "",
                   novel: Sequence[str] = ()) -> str:
    """Row-normalised confusion matrix (rows = ground truth) by scikit-learn's ``ConfusionMatrixDisplay``;
    novel class labels drawn in red; cell values written up to 30 classes."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _pyplot()
    n = len(labels)
    size = max(5.0, 0.32 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay.from_predictions(
        list(y_true), list(y_pred), labels=list(labels), normalize="true", ax=ax, cmap="Blues",
        include_values=n <= 30, values_format=".2f", xticks_rotation="vertical", colorbar=True,
        im_kw={"vmin": 0.0, "vmax": 1.0}, text_kw={"fontsize": 6})
    novel = set(novel)
    for tick in list(ax.get_xticklabels()) + list(ax.get_yticklabels()):
        tick.set_fontsize(7)
        if tick.get_text() in novel:
            tick.set_color("tab:red")
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_text_tsne(embeddings: Dict[str, np.ndarray], names: Sequence[str], novel: Sequence[str], path: str,
                   title: str = "", seed: int = 0) -> str:
    """t-SNE of class-name text embeddings, one panel per encoder (paper Appendix G).

    embeddings: {panel title: (C, D) array}, rows aligned with ``names``; base points blue, novel red.
    """
    from sklearn.manifold import TSNE

    plt = _pyplot()
    panels = list(embeddings.items())
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 6))
    axes = np.atleast_1d(axes)
    novel = set(novel)
    colours = ["tab:red" if n in novel else "tab:blue" for n in names]
    for ax, (panel, emb) in zip(axes, panels):
        emb = np.asarray(emb, dtype=np.float64)
        perplexity = float(max(2, min(30, (len(names) - 1) // 3)))
        xy = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(emb)
        ax.scatter(xy[:, 0], xy[:, 1], c=colours, s=18)
        for (x, y), name in zip(xy, names):
            ax.annotate(name, (x, y), fontsize=6, alpha=0.8)
        ax.set_title(panel, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title + "  (blue: base, red: novel)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_loss_curves(log: List[dict], path: str, title: str = "") -> str:
    """Loss, CE and triplet terms per iteration from a training log (train_log.jsonl records)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in log]
    for key, style in (("loss", "-"), ("ce", "--"), ("triplet", ":")):
        values = [r.get(key, np.nan) for r in log]
        if any(v for v in values):
            ax.plot(steps, values, style, label=key, linewidth=1)
    boundaries = [r["step"] for a, r in zip(log, log[1:]) if a["stage"] != r["stage"]]
    for b in boundaries:
        ax.axvline(b, color="grey", linewidth=0.8)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_table(rows: List[List[str]], header: List[str]) -> str:
    """A Markdown (GitHub) table of string cells, by ``tabulate``."""
    from tabulate import tabulate

    return tabulate(rows, headers=header, tablefmt="github", disable_numparse=True)


def metric_cell(value: float, baseline: Optional[float] = None, spread: Optional[float] = None) -> str:
    """'71.9' / '71.9 (+6.0)' / '71.9 ± 0.4 (+6.0)'."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    s = f"{value:.1f}"
    if spread is not None and not np.isnan(spread):
        s += f" ± {spread:.1f}"
    if baseline is not None and not np.isnan(baseline):
        s += f" ({value - baseline:+.1f})"
    return s
