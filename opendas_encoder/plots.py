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

    import textwrap

    plt = _pyplot()
    n = len(labels)
    size = max(5.0, 0.32 * n + 2)
    # constrained layout keeps the colour bar and the (wrapped) figure title apart: an axes title over the
    # matrix alone was cut by the colour bar and the figure's edge
    fig, ax = plt.subplots(figsize=(size + 0.6, size), layout="constrained")
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
    if title:
        fig.suptitle(textwrap.fill(title, width=int((size + 0.6) * 12)), fontsize=9)  # ~12 characters per inch at 9 pt
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


def loss_terms(log: List[dict]) -> Dict[str, np.ndarray]:
    """The weighted terms that add up to each logged loss (train_log.jsonl records), per iteration:
    ``{"step", "ce", "weighted triplet" (lambda x triplet), "consistency" (already weighted; zeros when the
    option is off), "total" (the logged loss), "lambda"}``. ``ce + weighted triplet + consistency`` is
    the total the optimizer stepped on."""
    def column(key):
        return np.array([float(r.get(key, 0.0) or 0.0) for r in log])

    lam = column("lambda")
    return {"step": column("step"), "ce": column("ce"), "weighted triplet": lam * column("triplet"),
            "consistency": column("consistency"), "total": column("loss"), "lambda": lam}


def plot_loss_curves(log: List[dict], path: str, title: str = "") -> str:
    """The loss terms per iteration (:func:`loss_terms`): CE, lambda x triplet and the consistency term
    drawn separately with their sum (thin), the triplet weight lambda on a second axis (its linear ramp
    over the text stage is what makes the sum climb, not a divergence), stages shaded and named."""
    plt = _pyplot()
    terms = loss_terms(log)
    steps = terms["step"]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    ax.plot(steps, terms["total"], "-", color="0.6", linewidth=0.8, label="total (sum of the terms)")
    ax.plot(steps, terms["ce"], "-", color="tab:blue", linewidth=1.2, label="cross-entropy")
    if terms["weighted triplet"].any():
        ax.plot(steps, terms["weighted triplet"], "-", color="tab:orange", linewidth=1.2, label="λ × triplet")
    if terms["consistency"].any():
        ax.plot(steps, terms["consistency"], "-", color="tab:green", linewidth=1.2, label="consistency (weighted)")
    stages = [r["stage"] for r in log]
    starts = [0] + [i for i in range(1, len(log)) if stages[i] != stages[i - 1]]
    for k, i in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(log)
        if k % 2:
            ax.axvspan(steps[i] - 0.5, steps[end - 1] + 0.5, color="0.93", zorder=0)
        ax.annotate(f"stage: {stages[i]}", (steps[i], 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12),
                    textcoords="offset points", fontsize=7, color="0.35")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss term")
    handles, labels = ax.get_legend_handles_labels()
    if terms["lambda"].any():
        lam_ax = ax.twinx()
        lam_ax.plot(steps, terms["lambda"], "--", color="tab:red", linewidth=1, label="λ (triplet weight, right)")
        lam_ax.set_ylabel("λ (triplet weight)", color="tab:red")
        lam_ax.tick_params(axis="y", colors="tab:red")
        lam_ax.set_ylim(bottom=0)
        h, lab = lam_ax.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(0.0, 0.92))
    ax.set_title(title, fontsize=9)
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
