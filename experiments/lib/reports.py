"""How the tools present numbers: the one number formatter, markdown table heads, and figures for their PNGs
(drawn with pars.common.figures, never pyplot)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from matplotlib.figure import Figure

from pars.common.figures import new_figure


def fmt(x: float | None, digits: int = 2, signed: bool = False, missing: str = "") -> str:
    """A number for a table: `digits` decimals, with its sign when `signed`; `missing` for None, NaN or inf."""
    if x is None or not math.isfinite(x):
        return missing
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def fmt_ci(ci: Sequence[float] | None, digits: int = 2, signed: bool = False, missing: str = "") -> str:
    """An interval as [lo, hi], each end by fmt; `missing` without one."""
    return missing if not ci else f"[{fmt(ci[0], digits, signed)}, {fmt(ci[1], digits, signed)}]"


def md_head(columns: Sequence[str]) -> str:
    """The head of a markdown table: its column names, then the rule under them."""
    return "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns)


def tight_figure(width: float, height: float) -> Figure:
    """A figure to be laid out by fig.tight_layout() rather than pars.common.figures' constrained layout: the
    panels of these tools' PNGs stay where they were drawn before."""
    fig = new_figure(width, height)
    fig.set_layout_engine("none")
    return fig
