"""What a checkpoint was trained with, read from the metrics.json that training writes beside it.

A checkpoint is a plain state_dict (the original release's format), so it cannot carry how prompts were cut
and pooled; scoring it otherwise gives plausible but worse scores, silently. Where train_pairwise_bert.py's
metrics.json sits beside the checkpoint, these settings are checked against the ones a scorer is given.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# Settings that change a checkpoint's scores and that training records (older runs lack the later ones).
CHECKED = ("max_length", "truncation", "pooling")


def trained_settings(checkpoint: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The CHECKED settings in the metrics.json beside `checkpoint`; {} when there is none or it is unreadable."""
    if checkpoint is None:
        return {}
    path = Path(checkpoint)
    metrics = (path if path.is_dir() else path.parent) / "metrics.json"
    try:
        data = json.loads(metrics.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: data[k] for k in CHECKED if data.get(k) is not None}


def mismatches(checkpoint: str | os.PathLike[str] | None, **given: Any) -> list[tuple[str, Any, Any]]:
    """(setting, trained with, given here) for each setting given here that differs from the checkpoint's."""
    trained = trained_settings(checkpoint)
    return [(k, trained[k], v) for k, v in given.items() if k in trained and trained[k] != v]
