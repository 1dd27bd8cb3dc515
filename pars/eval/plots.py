"""The evaluator's figures: score against true length, and the checkpoint x dataset matrix of Kendall's tau.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from scipy import stats

from pars.common.errors import PARSError
from pars.common.figures import new_figure, save_png


def plot_score_vs_length(scores: Sequence[float], lengths: Sequence[float], out_png: str | os.PathLike[str],
                         title: str) -> Path:
    """Scatter of score against true length (log y) with the median length per score decile:
    a good ranker shows a rising median line."""
    if len(scores) != len(lengths):
        raise PARSError(f"plot: {len(scores)} scores but {len(lengths)} lengths")
    x = np.asarray(scores, dtype=float)
    y = np.maximum(np.asarray(lengths, dtype=float), 1.0)  # log scale: a 0-length answer drawn at 1
    fig = new_figure(7, 5)
    ax = fig.subplots()
    ax.scatter(x, y, s=8, alpha=0.4, rasterized=True, label="prompt")
    if len(x) >= 10 and np.ptp(x) > 0:
        medians, edges, _ = stats.binned_statistic(x, y, statistic="median", bins=10)
        centers = (edges[:-1] + edges[1:]) / 2
        ax.plot(centers, medians, color="C3", marker="o", label="median per score bin")
    ax.set_yscale("log")
    ax.set(xlabel="predicted score", ylabel="true answer length (chars, log)", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return save_png(fig, out_png)


MATRIX_TITLE = "Kendall's tau\n(checkpoint x dataset)"


def plot_matrix(matrix: Sequence[Sequence[float | None]], row_names: Sequence[str], col_names: Sequence[str],
                out_png: str | os.PathLike[str], title: str = MATRIX_TITLE) -> Path:
    """Heatmap with the value in each cell; colours centred on 0 so worse-than-chance shows up."""
    values = np.array([[math.nan if v is None else float(v) for v in row] for row in matrix], dtype=float)
    if values.shape != (len(row_names), len(col_names)):
        raise PARSError(f"plot: matrix is {values.shape[0]}x{values.shape[1] if values.ndim == 2 else 0}, "
                        f"names are {len(row_names)}x{len(col_names)}")
    finite = values[np.isfinite(values)]
    limit = max(float(np.abs(finite).max()) if finite.size else 1.0, 0.05)
    fig = new_figure(max(4.5, 2.5 + 1.2 * len(col_names)), max(3.0, 1.6 + 0.6 * len(row_names)))
    ax = fig.subplots()
    cmap = colormaps["RdBu_r"].with_extremes(bad="lightgrey")  # a missing value is not a tau of 0
    image = ax.imshow(values, cmap=cmap, vmin=-limit, vmax=limit, aspect="auto")
    fig.colorbar(image, ax=ax)
    ax.set_xticks(range(len(col_names)), labels=col_names, rotation=30, ha="right")
    ax.set_yticks(range(len(row_names)), labels=row_names)
    ax.set(xlabel="dataset", ylabel="checkpoint", title=title)
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, "n/a" if math.isnan(v) else f"{v:.3f}", ha="center", va="center",
                color="white" if abs(v) > 0.6 * limit else "black")
    return save_png(fig, out_png)
