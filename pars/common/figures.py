"""PNG figures on matplotlib's object API with the Agg canvas, never pyplot: no global backend state, no
display needed, safe to call from any thread or a headless server.
"""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pars.common.errors import PARSError


def new_figure(width: float, height: float) -> Figure:
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
