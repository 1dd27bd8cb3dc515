"""What a ranker checkpoint needs to be scored right, carried beside it as `ranker_config.json`.

A checkpoint is a plain state_dict (the original release's format, so it moves both ways unchanged); it
cannot say which encoder it sits on, how prompts were cut and how the encoder's tokens were pooled. Scored
otherwise it gives plausible but wrong scores, silently. So training writes this small file beside
best_model.pt / last_model.pt (as a `from_pretrained` directory carries its config.json), and everything
that loads a ranker (the service, the gateway's local scorer, the evaluator, the exporter, the experiments)
reads it: pointing at the checkpoint is enough.

Where it comes from, in order: `ranker_config.json` beside the checkpoint (or inside an exported
directory); else the metrics.json of a run trained before it existed (the settings it recorded); else
nothing, as for a bare `.pt` of the original release, which is scored with the original's settings
(ORIGINAL). A setting given explicitly (an environment variable, a flag) that contradicts a recorded one
stops with one line; one that the checkpoint does not record is used as given.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pars.common.errors import PARSError
from pars.common.jsonio import write_json_atomic
from pars.model.ranker import check_pooling
from pars.model.truncation import check_truncation

CONFIG_NAME = "ranker_config.json"
FORMAT = "pars-ranker"
VERSION = 1

# The settings that change a checkpoint's scores: a contradiction in one of these stops start-up.
SCORE_SETTINGS = ("model_name", "pooling", "truncation", "max_length")

# How the original release trains and serves (train_pairwise_bert.py and serve_predictor_score.py defaults).
ORIGINAL: dict[str, Any] = {"model_name": "bert-base-uncased", "pooling": "pooler", "truncation": "head",
                            "max_length": 128}


@dataclass(frozen=True)
class RankerConfig:
    """The settings a ranker is scored with; `recorded` names those its files state (the rest are the
    original release's), `source` says which file they came from."""

    model_name: str = ORIGINAL["model_name"]  # the encoder: hub id, local directory or the offline alias
    pooling: str = ORIGINAL["pooling"]
    truncation: str = ORIGINAL["truncation"]
    max_length: int = ORIGINAL["max_length"]
    # What a higher score means: a longer answer, counted in this unit (preprocess's answer_length).
    length_unit: str | None = None
    loss: str | None = None  # how it was trained (margin: the original's pairwise margin ranking loss)
    recorded: frozenset[str] = field(default=frozenset(), compare=False)
    source: str = field(default="none (the original release's settings)", compare=False)

    def __post_init__(self) -> None:
        check_pooling(self.pooling)
        check_truncation(self.truncation)
        if not isinstance(self.max_length, int) or isinstance(self.max_length, bool) or self.max_length < 1:
            raise PARSError(f"max_length must be a positive integer, not {self.max_length!r} ({self.source})")

    def to_dict(self) -> dict[str, Any]:
        """What the file holds (and what GET / shows): the settings, the format and its version."""
        data = {k: v for k, v in asdict(self).items() if k not in ("recorded", "source")}
        return {"format": FORMAT, "version": VERSION, **data}

    def save(self, directory: str | os.PathLike[str]) -> Path:
        path = Path(directory) / CONFIG_NAME
        write_json_atomic(self.to_dict(), path)
        return path


def config_dir(checkpoint: str | os.PathLike[str]) -> Path:
    path = Path(checkpoint)
    return path if path.is_dir() else path.parent


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise PARSError(f"{path} is unreadable ({exc}); fix or delete it") from None
    if not isinstance(data, dict):
        raise PARSError(f"{path} is not a JSON object")
    return data


def _known(data: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(RankerConfig)} - {"recorded", "source"}
    return {k: v for k, v in data.items() if k in names and v is not None}


def read_ranker_config(checkpoint: str | os.PathLike[str] | None) -> RankerConfig:
    """The config of `checkpoint` (a .pt file or an exported directory): from ranker_config.json, else from
    an older run's metrics.json, else the original release's settings with nothing recorded."""
    if checkpoint is None:
        return RankerConfig()
    directory = config_dir(checkpoint)
    data = _read_json(directory / CONFIG_NAME)
    if data is not None:
        if data.get("format") != FORMAT:
            raise PARSError(f"{directory / CONFIG_NAME} is not a PARS ranker config (format {data.get('format')!r})")
        if not isinstance(data.get("version"), int) or data["version"] > VERSION:
            raise PARSError(f"{directory / CONFIG_NAME} has version {data.get('version')!r}; this release reads "
                            f"up to {VERSION} (upgrade pars)")
        known = _known(data)
        return RankerConfig(**known, recorded=frozenset(known) & set(SCORE_SETTINGS),
                            source=str(directory / CONFIG_NAME))
    try:
        metrics = _read_json(directory / "metrics.json")
    except PARSError:
        metrics = None  # a damaged training log is not the checkpoint's config: fall back as if absent
    if metrics is not None:
        known = {k: v for k, v in _known(metrics).items() if k in SCORE_SETTINGS}
        if known:
            return RankerConfig(**known, recorded=frozenset(known), source=str(directory / "metrics.json"))
    return RankerConfig()


def resolve(checkpoint: str | os.PathLike[str] | None, given: Mapping[str, Any],
            name: Callable[[str], str] = lambda key: key) -> RankerConfig:
    """The config a scorer uses: the checkpoint's, with each setting given explicitly (not None) on top.

    A given setting that contradicts one the checkpoint records raises PARSError in one line; `name` turns
    a setting into what the user typed (PREDICTOR_POOLING, --pooling)."""
    config = read_ranker_config(checkpoint)
    given = {k: v for k, v in given.items() if v is not None}
    for key, value in given.items():
        if key in config.recorded and getattr(config, key) != value:
            raise PARSError(f"{checkpoint} was trained with {key}={getattr(config, key)} ({config.source}) but "
                            f"{name(key)}={value} was given; leave {name(key)} unset (the checkpoint's own is used)")
    return replace(config, **given)


def for_training(resume_from: str | os.PathLike[str] | None, given: Mapping[str, Any],
                 name: Callable[[str], str] = lambda key: key) -> RankerConfig:
    """The settings a training run uses: fine-tuning (--resume-from) continues the ranker's own, with the flags
    given on top (a contradiction is a one-line PARSError); a fresh run takes the flags over the original's."""
    if resume_from is None:
        return replace(RankerConfig(), **{k: v for k, v in given.items() if v is not None})
    return resolve(resume_from, given, name)

