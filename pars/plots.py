"""PNG figures for training and evaluation.

Figures are built on matplotlib's object API with the Agg canvas, never pyplot: no global
backend state, no display needed, safe to call from any thread or a headless server.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats

from pars.errors import PARSError
from pars.jsonio import read_json

HISTORY_KEYS = ("epoch", "train_loss", "val_loss", "val_accuracy")


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, out_png: str | os.PathLike[str]) -> Path:
    """Write to a temporary file and rename, so a reader never sees half a PNG."""
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=120)
        os.replace(tmp, out)
    except OSError as exc:
        raise PARSError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out


def read_history(metrics_json_path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The trainer's metrics.json `history`, checked so a bad file gives one clear line."""
    data = read_json(metrics_json_path, "metrics file")
    history = data.get("history") if isinstance(data, dict) else None
    if not isinstance(history, list) or not history:
        raise PARSError(f"metrics file {metrics_json_path} has no non-empty 'history' list "
                        "(expected the trainer's metrics.json)")
    for i, entry in enumerate(history):
        if not isinstance(entry, dict):
            raise PARSError(f"metrics file {metrics_json_path}: history[{i}] is not an object")
        for key in HISTORY_KEYS:
            value = entry.get(key)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise PARSError(f"metrics file {metrics_json_path}: history[{i}] has no numeric {key!r}")
    return history


def plot_training_curves(metrics_json_path: str | os.PathLike[str], out_png: str | os.PathLike[str]) -> Path:
    """Losses on the left, val accuracy (and Kendall's tau when recorded) on the right, per epoch."""
    history = read_history(metrics_json_path)
    epochs = [h["epoch"] for h in history]
    fig = _new_figure(10, 4)
    loss_ax, metric_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train loss")
    loss_ax.plot(epochs, [h["val_loss"] for h in history], marker="o", label="val loss")
    loss_ax.set(xlabel="epoch", ylabel="margin ranking loss", title="Loss")
    metric_ax.plot(epochs, [h["val_accuracy"] for h in history], marker="o", label="val pairwise accuracy")
    taus = [h.get("val_kendall_tau") for h in history]
    if any(isinstance(t, int | float) for t in taus):
        metric_ax.plot(epochs, [t if isinstance(t, int | float) else math.nan for t in taus], marker="s",
                       label="val Kendall's tau")
    metric_ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    metric_ax.set(xlabel="epoch", ylabel="metric", title="Validation")
    for ax in (loss_ax, metric_ax):
        ax.grid(alpha=0.3)
        ax.legend()
        if len(epochs) <= 20:
            ax.set_xticks(epochs)
    return save_png(fig, out_png)


def plot_score_vs_length(scores: Sequence[float], lengths: Sequence[float], out_png: str | os.PathLike[str],
                         title: str) -> Path:
    """Scatter of score against true length (log y) with the median length per score decile:
    a good ranker shows a rising median line."""
    if len(scores) != len(lengths):
        raise PARSError(f"plot: {len(scores)} scores but {len(lengths)} lengths")
    x = np.asarray(scores, dtype=float)
    y = np.maximum(np.asarray(lengths, dtype=float), 1.0)  # log scale: a 0-length answer drawn at 1
    fig = _new_figure(7, 5)
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
    fig = _new_figure(max(4.5, 2.5 + 1.2 * len(col_names)), max(3.0, 1.6 + 0.6 * len(row_names)))
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


def main(argv: Sequence[str] | None = None) -> int:
    """CLI of predictor_train/scripts/plot_training_curves.py."""
    p = argparse.ArgumentParser(description="Plot loss, val accuracy and val Kendall's tau per epoch "
                                            "from the trainer's metrics.json.")
    p.add_argument("--metrics", required=True, help="metrics.json written by train_pairwise_bert.py.")
    p.add_argument("--output", default=None,
                   help="PNG to write (default: training_curves.png beside --metrics).")
    args = p.parse_args(argv)
    out = Path(args.output) if args.output else Path(args.metrics).with_name("training_curves.png")
    print(f"Saved training curves to {plot_training_curves(args.metrics, out)}")
    return 0
