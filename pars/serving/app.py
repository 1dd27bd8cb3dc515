"""The predictor service: an app factory whose lifespan loads the model once.

Scores are computed off the event loop (a worker thread) by the shared PromptScorer.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pars import __version__
from pars.errors import PARSError
from pars.model import load_ranker, load_tokenizer
from pars.scoring import PromptScorer
from pars.serving.schemas import (
    CompareBatchRequest,
    CompareBatchResponse,
    CompareRequest,
    CompareResponse,
    RootResponse,
    ScoreBatchRequest,
    ScoreBatchResponse,
    ScoreRequest,
    ScoreResponse,
)
from pars.serving.settings import Settings


def load_scorer(settings: Settings) -> PromptScorer:
    tokenizer = load_tokenizer(settings.model_name)
    model = load_ranker(settings.model_name, settings.model_path)
    return PromptScorer(model, tokenizer, max_length=settings.max_length, device=settings.device)


def compare(prompt_a: str, prompt_b: str, score_a: float, score_b: float) -> CompareResponse:
    return CompareResponse(prompt_a=prompt_a, prompt_b=prompt_b, score_a=score_a, score_b=score_b,
                           winner="prompt_a" if score_a > score_b else "prompt_b")


class OneLineStartupErrors:
    """ASGI middleware: when start-up fails on a PARSError, uvicorn prints its one-line reason
    instead of a traceback (it logs the lifespan failure message as is)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_reason(message: Message) -> None:
            reason = getattr(scope["app"].state, "startup_error", None)
            if message["type"] == "lifespan.startup.failed" and reason:
                message = {**message, "message": f"PARS predictor cannot start: {reason}"}
            await send(message)

        await self.app(scope, receive, send_reason)


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            s = settings if settings is not None else Settings()
            scorer = await run_in_threadpool(load_scorer, s)
        except ValidationError as exc:
            err = exc.errors()[0]
            app.state.startup_error = f"bad setting PREDICTOR_{str(err['loc'][0]).upper()}: {err['msg']}"
            raise
        except PARSError as exc:
            app.state.startup_error = str(exc)
            raise
        app.state.settings = s
        app.state.scorer = scorer
        yield

    app = FastAPI(title="PARS prompt score predictor", version=__version__, lifespan=lifespan)
    app.add_middleware(OneLineStartupErrors)

    def scorer_of(request: Request) -> PromptScorer:
        return request.app.state.scorer

    @app.get("/", response_model=RootResponse)
    async def root(request: Request) -> RootResponse:
        s: Settings = request.app.state.settings
        return RootResponse(message="Predictor score model is running.", model_path=s.model_path,
                            model_name=s.model_name, device=str(scorer_of(request).device))

    @app.post("/score", response_model=ScoreResponse)
    async def score(body: ScoreRequest, request: Request) -> ScoreResponse:
        (value,) = await run_in_threadpool(scorer_of(request).score, [body.prompt])
        return ScoreResponse(prompt=body.prompt, score=value)

    @app.post("/score_batch", response_model=ScoreBatchResponse)
    async def score_batch(body: ScoreBatchRequest, request: Request) -> ScoreBatchResponse:
        scores = await run_in_threadpool(scorer_of(request).score, body.prompts)
        return ScoreBatchResponse(prompts=body.prompts, scores=scores)

    @app.post("/compare", response_model=CompareResponse)
    async def compare_one(body: CompareRequest, request: Request) -> CompareResponse:
        score_a, score_b = await run_in_threadpool(scorer_of(request).score, [body.prompt_a, body.prompt_b])
        return compare(body.prompt_a, body.prompt_b, score_a, score_b)

    @app.post("/compare_batch", response_model=CompareBatchResponse)
    async def compare_batch(body: CompareBatchRequest, request: Request) -> CompareBatchResponse:
        # All 2N prompts in one forward pass.
        prompts = [p.prompt_a for p in body.pairs] + [p.prompt_b for p in body.pairs]
        scores = await run_in_threadpool(scorer_of(request).score, prompts)
        n = len(body.pairs)
        return CompareBatchResponse(
            results=[compare(p.prompt_a, p.prompt_b, scores[i], scores[n + i]) for i, p in enumerate(body.pairs)]
        )

    return app
