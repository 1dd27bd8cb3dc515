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


class ScoreBatchResponse(BaseModel):
    prompts: list[str]
    scores: list[float]


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
