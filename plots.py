"""Figures of the commands (matplotlib's Agg canvas directly: no pyplot, no global backend state; matplotlib is
imported only when a figure is drawn)."""
import numpy as np


def _figure(w, h):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    return fig


def plot_confusion(png, classes, cm):
    """testing.py's confusion matrix of a categorical model: counts, rows the true class, shaded by row share."""
    k = len(classes)
    fig = _figure(1.2 + 0.6 * k, 1.0 + 0.6 * k)
    ax = fig.subplots()
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)  # (k, k) recall per true class
    ax.imshow(share, cmap='Blues', vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, int(cm[i, j]), ha='center', va='center', fontsize=8, color='w' if share[i, j] > 0.6 else 'k')
    ax.set_xticks(range(k), classes)
    ax.set_yticks(range(k), classes)
    ax.set_xlabel('predicted')
    ax.set_ylabel('true')
    fig.tight_layout()
    fig.savefig(png, dpi=100)
