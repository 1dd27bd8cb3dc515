"""Request and response bodies; field names and meaning are those of the original release."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pars.model.ranker_config import RankerConfig


class ScoreRequest(BaseModel):
    prompt: str


class ScoreResponse(BaseModel):
    prompt: str
    score: float


class ScoreBatchRequest(BaseModel):
    prompts: list[str]
    # Also return `score_priorities`: integers for vLLM's `priority` field (lower is served earlier) on the
    # score scale, round(score * PREDICTOR_PRIORITY_SCALE). Not the gateway's arrival-clock priorities: the
    # two must not be mixed in one vLLM (predictor_serving/README.md, "Two priority scales").
    return_score_priorities: bool = False
    # The earlier name of return_score_priorities; answered under the earlier name `priorities` too.
    return_priorities: bool = False


class ScoreBatchResponse(BaseModel):
    prompts: list[str]
    scores: list[float]
    score_priorities: list[int] | None = None  # only when asked for: round(score * PREDICTOR_PRIORITY_SCALE)
    priorities: list[int] | None = None  # the same, only for the earlier flag return_priorities


class CompareRequest(BaseModel):
    prompt_a: str
    prompt_b: str


class CompareResponse(BaseModel):
    prompt_a: str
    prompt_b: str
    score_a: float
    score_b: float
    winner: Literal["prompt_a", "prompt_b"]  # the prompt with the higher score (longer response)


class CompareBatchRequest(BaseModel):
    pairs: list[CompareRequest]


class CompareBatchResponse(BaseModel):
    results: list[CompareResponse]


class RankerSettings(BaseModel):
    """How the ranker is scored: its config (pars/model/ranker_config.py) and where that came from."""

    model_name: str
    pooling: str
    truncation: str
    max_length: int
    length_unit: str | None = None
    loss: str | None = None
    config_source: str  # ranker_config.json's path, an older run's metrics.json, or none (original settings)

    @classmethod
    def of(cls, config: RankerConfig) -> RankerSettings:
        data = {k: v for k, v in config.to_dict().items() if k not in ("format", "version")}
        return cls(**data, config_source=config.source)


class RootResponse(BaseModel):
    message: str
    model_path: str  # the ranker in use (a reload may have changed it)
    ranker_id: str  # its identity: a hash of its checkpoint's bytes and config (pars/serving/reload.py)
    model_name: str
    device: str
    dtype: str  # what forward passes compute in (PREDICTOR_DTYPE, or the device's default)
    backend: str
    batching: bool
    ranker: RankerSettings


class ReloadRequest(BaseModel):
    """POST /admin/reload's optional body; without one, the current path is re-read from disk."""

    model_config = ConfigDict(extra="forbid")  # a misspelt field must not silently reload the current path

    model_path: str | None = Field(default=None, min_length=1)


class ReloadResponse(BaseModel):
    status: Literal["reloaded"]
    ranker_id: str
    previous_ranker_id: str
    model_path: str
    ranker: RankerSettings
    seconds: float  # loading, warming up and retiring the old ranker


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    status: Literal["ready", "loading", "warming_up", "failed", "stopping"]
    message: str


class ErrorResponse(BaseModel):
    """Body of every error answer (4xx/5xx)."""

    error: str  # short code: bad_request, unauthorized, too_large, queue_full, timeout, ...
    message: str  # one human-readable line
    detail: list | None = None  # validation errors (422), as FastAPI reports them
