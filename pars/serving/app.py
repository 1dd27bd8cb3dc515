"""The predictor service: an app factory whose lifespan loads the model once.

Every scoring endpoint goes through one runner: the dynamic batcher (default), which scores the prompts
of concurrent requests together on a dedicated inference thread, or, with PREDICTOR_BATCHING=off, one
forward pass per request on that same thread. Tokenization runs on its own thread, off the event loop.
The ranker, its engine and its runner belong to a `RankerHolder` (pars/serving/reload.py), which swaps in
a new ranker on POST /admin/reload or SIGHUP without stopping the service.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated

import torch
from fastapi import Body, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from pars import __version__
from pars.common.errors import PARSError
from pars.common.startup import OneLineStartupErrors
from pars.common.text import replace_surrogates, scoreable
from pars.common.watchdog import StallWatchdog
from pars.serving.batcher import QueueFullError, ShuttingDownError
from pars.serving.limits import BodyLimits
from pars.serving.memory import freeze_long_lived
from pars.serving.observability import Metrics, RequestMetrics
from pars.serving.reload import RANKER_ID_HEADER, Generation, RankerHolder, ReloadError
from pars.serving.schemas import (
    CompareBatchRequest,
    CompareBatchResponse,
    CompareRequest,
    CompareResponse,
    ErrorResponse,
    HealthResponse,
    RankerSettings,
    ReadyResponse,
    ReloadRequest,
    ReloadResponse,
    RootResponse,
    ScoreBatchRequest,
    ScoreBatchResponse,
    ScoreRequest,
    ScoreResponse,
)
from pars.serving.settings import Settings

log = logging.getLogger("pars.serving")

OPEN_PATHS = frozenset({"/health", "/ready"})  # answered without the API key (liveness/readiness probes)
PRIORITY_BOUND = 2**31 - 1


def compare(prompt_a: str, prompt_b: str, score_a: float, score_b: float) -> CompareResponse:
    prompt_a, prompt_b = replace_surrogates(prompt_a), replace_surrogates(prompt_b)  # JSON-encodable as UTF-8
    return CompareResponse(prompt_a=prompt_a, prompt_b=prompt_b, score_a=score_a, score_b=score_b,
                           winner="prompt_a" if score_a > score_b else "prompt_b")


def priority_of(score: float, scale: float) -> int:
    """vLLM `priority` (lower is served earlier): a fixed affine map of the score, the same in every
    request, so a longer predicted response gets a larger number. Clipped to int32."""
    return max(-PRIORITY_BOUND, min(PRIORITY_BOUND, round(score * scale)))


class ServiceError(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


def error_response(status: int, error: str, message: str, detail: list | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse(error=error, message=message, detail=detail).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers)


_HTTP_ERROR_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                     413: "too_large", 429: "queue_full", 503: "unavailable", 504: "timeout"}

# The error answers of the scoring endpoints, in the OpenAPI schema (so schema-driven clients and the fuzz
# campaign know them); every one has the ErrorResponse body.
SCORING_ERRORS: dict[int | str, dict] = {
    status: {"model": ErrorResponse, "description": description} for status, description in {
        400: "body is not UTF-8 or not parseable", 401: "missing or wrong API key", 408: "body not received in time",
        413: "body or prompt count over its limit", 422: "invalid request", 429: "queue full",
        503: "shutting down", 504: "not scored in time"}.items()
}
RELOAD_ERRORS: dict[int | str, dict] = {
    status: {"model": ErrorResponse, "description": description} for status, description in {
        400: "body is not UTF-8 or not parseable", 401: "missing or wrong API key", 408: "body not received in time",
        413: "body over PREDICTOR_MAX_BODY_BYTES",
        403: "reload is off (no PREDICTOR_API_KEY, PREDICTOR_ADMIN_RELOAD unset)",
        409: "another reload is in progress", 422: "invalid body, or the new ranker failed to load or to warm up "
        "(`reload_failed`, the reason in `message`; the ranker in use keeps serving)", 503: "shutting down"}.items()
}


class BearerAuth:
    """ASGI middleware: with PREDICTOR_API_KEY set, every path but /health and /ready needs
    `Authorization: Bearer <key>` (compared in constant time); otherwise 401."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key: bytes | None = getattr(scope["app"].state, "api_key", None) if scope["type"] == "http" else None
        if key and scope["path"] not in OPEN_PATHS:
            header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            scheme, _, token = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), key):
                response = error_response(401, "unauthorized", "missing or wrong API key "
                                          "(send the header `Authorization: Bearer <PREDICTOR_API_KEY>`)",
                                          headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.status, app.state.status_message = "loading", "loading the model"

        def swapped(gen: Generation) -> None:
            if app.state.status == "failed":  # the start-up warm-up failed; the reloaded ranker passed its own
                app.state.status, app.state.status_message = "ready", "model loaded and warmed up"
                metrics.ready.set(1)

        try:
            s = settings if settings is not None else Settings()
            torch.set_num_threads(s.threads_per_worker())
            holder = RankerHolder(s, metrics, on_swap=swapped)
            await holder.start()
        except ValidationError as exc:
            err = exc.errors()[0]
            app.state.startup_error = f"bad setting PREDICTOR_{str(err['loc'][0]).upper()}: {err['msg']}"
            raise
        except PARSError as exc:
            app.state.startup_error = str(exc)
            raise
        app.state.settings = s
        app.state.holder = holder
        api_key = s.api_key.get_secret_value() if s.api_key is not None else ""
        app.state.api_key = api_key.encode() if api_key else None
        app.state.tokenizer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pars-tokenize")
        holder.reload_on_sighup()

        async def warm_up() -> None:
            if s.warmup:
                app.state.status, app.state.status_message = "warming_up", "warming up the model"
                try:
                    await holder.warm_up_current()
                except Exception as exc:  # noqa: BLE001 - reported by /ready, the service keeps trying requests
                    log.exception("warm-up failed")
                    app.state.status, app.state.status_message = "failed", f"warm-up failed: {exc}"
                    return
            freeze_long_lived()
            app.state.status, app.state.status_message = "ready", "model loaded and warmed up"
            metrics.ready.set(1)

        # In the background: the server answers /health (and /ready with 503) while it runs.
        warm_task = asyncio.get_running_loop().create_task(warm_up())
        watchdog = StallWatchdog(s.stall_dump_s, metrics.loop, "PARS predictor")
        watchdog.start()  # here, so that the finally below always stops it
        try:
            yield
        finally:
            # Uvicorn has stopped taking connections and let in-flight requests finish; finish
            # whatever is still queued, then stop the threads.
            app.state.status, app.state.status_message = "stopping", "shutting down"
            metrics.ready.set(0)
            await asyncio.gather(warm_task, return_exceptions=True)
            await holder.close()
            app.state.tokenizer_thread.shutdown(wait=True)
            await watchdog.stop()

    app = FastAPI(title="PARS prompt score predictor", version=__version__, lifespan=lifespan)
    app.state.status, app.state.status_message = "loading", "loading the model"
    app.add_middleware(BodyLimits)  # innermost middleware: a body is read only once the key was checked
    app.add_middleware(BearerAuth)
    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost: counts 401s too
    app.add_middleware(OneLineStartupErrors, who="PARS predictor")
    app.state.metrics = metrics

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Without the offending `input`: it may hold NaN/Infinity, which JSON cannot carry (that made a
        # 500), and echoing a large body back helps no one.
        errors = jsonable_encoder([{k: v for k, v in e.items() if k != "input"} for e in exc.errors()])
        first = errors[0] if errors else {}
        # a body's keys are the client's: escape what would break the one-line message (a key "\n")
        where = ".".join(str(p) for p in first.get("loc", ())).encode("unicode_escape").decode("ascii")
        message = f"invalid request: {where}: {first.get('msg', 'invalid')}" if first else "invalid request"
        return error_response(422, "invalid_request", message, detail=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, _HTTP_ERROR_CODES.get(exc.status_code, "error"), str(exc.detail),
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # Still logged with its traceback by Starlette; the client gets JSON like every other error.
        return error_response(500, "internal_error", "internal error; see the server log")

    async def scores_of(request: Request, response: Response, prompts: Sequence[str]) -> list[float]:
        """The limits, then tokenization (its own thread), then the runner, within the request timeout; all with
        the ranker in use when the request started, whose id goes into the answer's x-pars-ranker-id."""
        s: Settings = request.app.state.settings
        if len(prompts) > s.max_prompts_per_request:
            raise ServiceError(413, "too_many_prompts", f"{len(prompts)} prompts in one request; the limit is "
                               f"{s.max_prompts_per_request} (PREDICTOR_MAX_PROMPTS_PER_REQUEST)")
        holder: RankerHolder = request.app.state.holder
        with holder.use() as gen:  # tokenized and scored by one ranker, even if a reload swaps meanwhile
            response.headers[RANKER_ID_HEADER] = gen.ranker_id
            if not prompts:
                return []
            # One odd prompt never fails its neighbours: an over-long one is cut (what the ranker reads of it
            # stays), lone surrogates are replaced; both counted.
            keep_tail = gen.scorer.truncation == "middle"
            texts = []
            for p in prompts:
                text, changed = scoreable(p, s.max_prompt_chars, keep_tail)
                if changed:
                    metrics.prompts_changed.labels("cut" if len(p) > s.max_prompt_chars else "surrogates").inc()
                texts.append(text)

            async def tokenize_and_score() -> list[float]:
                ids = await asyncio.get_running_loop().run_in_executor(request.app.state.tokenizer_thread,
                                                                       gen.engine.encode, texts)
                return await gen.runner.score(ids)

            return await scored_in_time(tokenize_and_score(), s)

    async def scored_in_time(work, s: Settings) -> list[float]:
        try:
            return await asyncio.wait_for(work, s.request_timeout_s)
        except QueueFullError as exc:
            raise ServiceError(429, "queue_full", str(exc)) from None
        except ShuttingDownError as exc:
            raise ServiceError(503, "shutting_down", str(exc)) from None
        except asyncio.TimeoutError:
            raise ServiceError(504, "timeout", f"not scored within {s.request_timeout_s:g} s "
                               "(PREDICTOR_REQUEST_TIMEOUT_S); the service is overloaded") from None

    @app.get("/health", response_model=HealthResponse)
    async def health() -> HealthResponse:
        return HealthResponse(status="ok")

    @app.get("/ready", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
    async def ready(request: Request):
        body = ReadyResponse(status=request.app.state.status, message=request.app.state.status_message)
        return JSONResponse(body.model_dump(), status_code=200 if body.status == "ready" else 503)

    @app.get("/metrics", response_class=PlainTextResponse)  # documented as text, not JSON, in the OpenAPI schema
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_model=RootResponse)
    async def root(request: Request) -> RootResponse:
        s: Settings = request.app.state.settings
        gen: Generation = request.app.state.holder.current
        return RootResponse(message="Predictor score model is running.", model_path=gen.model_path,
                            ranker_id=gen.ranker_id, model_name=gen.config.model_name, device=str(gen.scorer.device),
                            dtype=gen.dtype_name, backend=s.backend, batching=s.batching,
                            ranker=RankerSettings.of(gen.config))

    @app.post("/admin/reload", response_model=ReloadResponse, responses=RELOAD_ERRORS)
    async def admin_reload(request: Request,
                           body: Annotated[ReloadRequest | None, Body()] = None) -> ReloadResponse:
        """Load a ranker (`model_path`, else the current path re-read) beside the one in use, warm it up and
        swap it in; refused with the reason while the old one keeps serving. pars/serving/reload.py."""
        s: Settings = request.app.state.settings
        if not s.reload_endpoint_on():
            # 403 rather than 404: the caller learns why and what to set (the schema shows the path anyway).
            raise ServiceError(403, "reload_off", "POST /admin/reload is off: set PREDICTOR_API_KEY (it then needs "
                               "the key) or PREDICTOR_ADMIN_RELOAD=true; SIGHUP reloads regardless")
        try:
            result = await request.app.state.holder.reload(body.model_path if body is not None else None)
        except ReloadError as exc:
            raise ServiceError(exc.status, exc.code, exc.message) from None
        gen = result.current
        return ReloadResponse(status="reloaded", ranker_id=gen.ranker_id, previous_ranker_id=result.previous_id,
                              model_path=gen.model_path, ranker=RankerSettings.of(gen.config),
                              seconds=round(result.seconds, 3))

    @app.post("/score", response_model=ScoreResponse, responses=SCORING_ERRORS)
    async def score(body: ScoreRequest, request: Request, response: Response) -> ScoreResponse:
        (value,) = await scores_of(request, response, [body.prompt])
        return ScoreResponse(prompt=replace_surrogates(body.prompt), score=value)

    @app.post("/score_batch", response_model=ScoreBatchResponse, response_model_exclude_none=True,
              responses=SCORING_ERRORS)
    async def score_batch(body: ScoreBatchRequest, request: Request, response: Response) -> ScoreBatchResponse:
        scores = await scores_of(request, response, body.prompts)
        priorities = None
        if body.return_score_priorities or body.return_priorities:
            scale = request.app.state.settings.priority_scale
            priorities = [priority_of(v, scale) for v in scores]
        earlier = priorities if body.return_priorities else None
        return ScoreBatchResponse(prompts=[replace_surrogates(p) for p in body.prompts], scores=scores,
                                  score_priorities=priorities, priorities=earlier)

    @app.post("/compare", response_model=CompareResponse, responses=SCORING_ERRORS)
    async def compare_one(body: CompareRequest, request: Request, response: Response) -> CompareResponse:
        score_a, score_b = await scores_of(request, response, [body.prompt_a, body.prompt_b])
        return compare(body.prompt_a, body.prompt_b, score_a, score_b)

    @app.post("/compare_batch", response_model=CompareBatchResponse, responses=SCORING_ERRORS)
    async def compare_batch(body: CompareBatchRequest, request: Request, response: Response) -> CompareBatchResponse:
        prompts = [p.prompt_a for p in body.pairs] + [p.prompt_b for p in body.pairs]
        scores = await scores_of(request, response, prompts)
        n = len(body.pairs)
        return CompareBatchResponse(
            results=[compare(p.prompt_a, p.prompt_b, scores[i], scores[n + i]) for i, p in enumerate(body.pairs)]
        )

    return app
