"""Prometheus metrics of the service (one registry per app) and the middleware that counts requests."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pars.common.watchdog import LoopMetrics

ENDPOINTS = frozenset({"/", "/score", "/score_batch", "/compare", "/compare_batch", "/health", "/ready",
                       "/metrics", "/docs", "/openapi.json", "/admin/reload"})
RELOAD_OUTCOMES = ("ok", "failed", "busy")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("pars_requests_total", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.errors = Counter("pars_request_errors_total", "HTTP requests answered with status >= 400",
                              ["endpoint", "status"], registry=r)
        self.latency = Histogram("pars_request_duration_seconds", "HTTP request latency", ["endpoint"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.prompts = Counter("pars_prompts_scored_total", "prompts scored", registry=r)
        self.queue_depth = Gauge("pars_queue_depth_prompts", "prompts waiting for the model", registry=r)
        self.queue_wait = Histogram("pars_queue_wait_seconds", "time a request waits before its forward pass",
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("pars_batch_size_prompts", "prompts per forward pass",
                                    buckets=_SIZE_BUCKETS, registry=r)
        self.batch_tokens = Histogram("pars_batch_tokens", "padded tokens per forward pass",
                                      buckets=_TOKEN_BUCKETS, registry=r)
        self.batch_real_tokens = Counter("pars_batch_real_tokens_total", "non-padding tokens run through the model",
                                         registry=r)
        self.batch_padded_tokens = Counter("pars_batch_padded_tokens_total", "tokens run through the model, "
                                           "padding included", registry=r)
        self.inference = Histogram("pars_inference_seconds", "time of one forward pass",
                                   buckets=_LATENCY_BUCKETS, registry=r)
        self.ready = Gauge("pars_ready", "1 once the model is loaded and warmed up", registry=r)
        self.forward_overhead_tokens = Gauge(
            "pars_forward_overhead_tokens", "fixed cost of one forward pass in padded tokens (measured at warm-up "
            "unless PREDICTOR_FORWARD_OVERHEAD_TOKENS is set): the padding a split must save", registry=r)
        self.heap_trim = Histogram("pars_heap_trim_seconds", "time of one malloc_trim (PREDICTOR_HEAP_TRIM_INTERVAL_S)",
                                   buckets=_LATENCY_BUCKETS, registry=r)
        self.prompts_changed = Counter("pars_prompts_changed_total", "prompts scored after a change that makes them "
                                       "scoreable: cut to PREDICTOR_MAX_PROMPT_CHARS, or lone surrogates replaced",
                                       ["change"], registry=r)
        self.rounds = Counter("pars_batch_rounds_total", "rounds of the dynamic batcher, by whether the round held "
                              "a gathering window open (PREDICTOR_MAX_WAIT_MS on an idle model) or went at once",
                              ["gathering"], registry=r)
        self.ranker = Info("pars_ranker", "the ranker in use: its identity (ranker_id, a content hash), path, "
                           "settings (model, pooling, truncation, max_length, dtype, backend) and where its config "
                           "came from; replaced on a reload", registry=r)
        self.reloads = Counter("pars_ranker_reloads_total", "ranker reloads (POST /admin/reload, SIGHUP) by outcome: "
                               "ok (swapped in), failed (refused; the ranker in use kept serving), busy (another "
                               "reload was in progress)", ["outcome"], registry=r)
        for outcome in RELOAD_OUTCOMES:  # shown at 0 from the start, so a rate() sees the first one
            self.reloads.labels(outcome)
        self.loop = LoopMetrics(r, "pars")

    def observe_forward(self, prompts: int, padded_tokens: int, real_tokens: int, seconds: float) -> None:
        self.prompts.inc(prompts)
        self.batch_size.observe(prompts)
        self.batch_tokens.observe(padded_tokens)
        self.batch_padded_tokens.inc(padded_tokens)
        self.batch_real_tokens.inc(real_tokens)
        self.inference.observe(seconds)


class RequestMetrics:
    """ASGI middleware: count every HTTP request (auth and validation failures included) by endpoint."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            if status >= 400:
                self.metrics.errors.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
