"""Request and response bodies; field names and meaning are those of the original release."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class ScoreRequest(BaseModel):
    prompt: str


class ScoreResponse(BaseModel):
    prompt: str
    score: float


class ScoreBatchRequest(BaseModel):
    prompts: list[str]
    # Also return `priorities`, integers for vLLM's `priority` field (lower is served earlier).
    return_priorities: bool = False


class ScoreBatchResponse(BaseModel):
    prompts: list[str]
    scores: list[float]
    priorities: list[int] | None = None  # only when asked for: round(score * PREDICTOR_PRIORITY_SCALE)


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


class RootResponse(BaseModel):
    message: str
    model_path: str
    model_name: str
    device: str


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
