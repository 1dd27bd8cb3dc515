"""Training curves (loss, val accuracy, val Kendall's tau per epoch) from the trainer's metrics.json.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pars.common.errors import PARSError
from pars.common.figures import new_figure, save_png
from pars.common.jsonio import read_json

HISTORY_KEYS = ("epoch", "train_loss", "val_loss", "val_accuracy")


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
    fig = new_figure(10, 4)
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
