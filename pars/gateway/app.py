"""The gateway app: POST /v1/completions and /v1/chat/completions get a `priority`; everything else
passes through. Its own endpoints live under /gateway/ so that vLLM's /health, /metrics, /docs and
/openapi.json stay reachable through it.

/gateway/health answers 200 with `"status": "ok"` or `"degraded"` and a `"reason"` (pars/gateway/health.py):
degraded means the predictor is unreachable or most recent requests fell back, while the gateway still
proxies every request; a non-2xx code would make a load balancer pull a gateway that serves fine.

Each completions/chat answer, once relayed, becomes a RequestOutcome (pars/gateway/outcome.py) for the
recorder (GATEWAY_RECORD_DIR, pars/gateway/record.py) and the live ranking quality (GATEWAY_LIVE_WINDOW,
pars/gateway/live_quality.py); with neither, answers are relayed without being read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pars.common.errors import PARSError
from pars.common.httpclient import pool_limits
from pars.common.startup import OneLineStartupErrors
from pars.common.watchdog import StallWatchdog
from pars.gateway.live_quality import LiveCollector, LiveQuality
from pars.gateway.observability import GatewayMetrics
from pars.gateway.outcome import Outcomes
from pars.gateway.policy import Prioritizer
from pars.gateway.priority import max_overtake_ms
from pars.gateway.prompts import SCORED_PATHS
from pars.gateway.proxy import forward, has_body
from pars.gateway.record import Recorder
from pars.gateway.scorers import RemoteScorer, make_scorer
from pars.gateway.settings import GatewaySettings
from pars.serving.memory import freeze_long_lived

log = logging.getLogger("pars.gateway")

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]  # HEAD comes with GET
PROBE_TIMEOUT_S = 0.5  # /gateway/health's check that an unreachable predictor is back


async def probe_predictor(scorer: RemoteScorer) -> bool:
    """Whether the predictor answers HTTP at all (its /health: no key needed, any status will do)."""
    try:
        await scorer.client.get("/health", timeout=PROBE_TIMEOUT_S)
    except httpx.HTTPError:
        return False
    return True


def create_app(settings: GatewaySettings | None = None, predictor_settings=None) -> Starlette:
    """`predictor_settings` (pars.serving.settings.Settings) configures GATEWAY_SCORER=local; None: read
    from the service's PREDICTOR_* variables."""
    metrics = GatewayMetrics()
    live_collector = LiveCollector(metrics.registry)  # its gauges appear once the lifespan gives it a window

    @asynccontextmanager
    async def lifespan(app: Starlette):
        try:
            s = settings if settings is not None else GatewaySettings()
            scorer = make_scorer(s, predictor_settings)
            if scorer is not None:
                await scorer.start()
        except ValidationError as exc:
            err = exc.errors()[0]
            prefix = "GATEWAY_" if exc.title == GatewaySettings.__name__ else "PREDICTOR_"  # local scorer's
            app.state.startup_error = f"bad setting {prefix}{str(err['loc'][0]).upper()}: {err['msg']}"
            raise
        except PARSError as exc:
            app.state.startup_error = str(exc)
            raise
        timeout = httpx.Timeout(s.upstream_read_timeout_s, connect=s.upstream_connect_timeout_s)
        limits = pool_limits(s.upstream_max_connections, 256, s.upstream_keepalive_expiry_s)
        app.state.upstream = httpx.AsyncClient(base_url=s.upstream_url, timeout=timeout, limits=limits)
        app.state.settings, app.state.scorer = s, scorer
        app.state.prioritizer = prioritizer = Prioritizer(s, scorer, metrics)
        app.state.outcomes = outcomes = Outcomes(s.stream_usage())
        app.state.live = app.state.recorder = None
        if s.live_window > 0:
            app.state.live = live = LiveQuality(s.live_window)
            outcomes.add(live.add)
            prioritizer.on_ranker_change(live.reset)
            live_collector.live = live
        if s.record_dir is not None:
            app.state.recorder = recorder = Recorder(s.record_dir, s.record_prompts,
                                                     int(s.record_max_file_mb * (1 << 20)), s.record_queue_size,
                                                     metrics)
            recorder.start()
            outcomes.add(recorder.submit)
        freeze_long_lived()  # what start-up made (a local scorer's ranker above all): out of full collections
        watchdog = StallWatchdog(s.stall_dump_s, metrics.loop, "PARS gateway")
        watchdog.start()
        try:
            yield
        finally:
            await watchdog.stop()
            await app.state.upstream.aclose()
            if scorer is not None:
                await scorer.close()
            if app.state.recorder is not None:
                await asyncio.to_thread(app.state.recorder.close)

    async def proxied(request: Request) -> Response:
        client: httpx.AsyncClient = request.app.state.upstream
        if request.method == "POST" and request.url.path in SCORED_PATHS:
            prioritizer: Prioritizer = request.app.state.prioritizer
            arrival_ms = prioritizer.clock.now_ms()
            started = time.perf_counter()
            raw = await request.body()
            a = await prioritizer.assign(request.url.path, raw, arrival_ms)
            headers = [(b"x-pars-priority-source", a.source.encode()),
                       (b"x-pars-score-ms", f"{a.score_ms:.3f}".encode())]
            if a.priority is not None:
                headers.append((b"x-pars-priority", str(a.priority).encode()))
            outcomes: Outcomes = request.app.state.outcomes
            body, watcher = outcomes.watch(request.url.path, a, arrival_ms / 1000, started)
            return await forward(client, request, body, keep_length=False, extra_headers=headers, watcher=watcher,
                                 on_unreachable=metrics.upstream_errors.inc)
        # Streamed through, length kept: a large upload is never held in the gateway.
        content = request.stream() if has_body(request) else None
        return await forward(client, request, content, keep_length=True, on_unreachable=metrics.upstream_errors.inc)

    async def health(request: Request) -> JSONResponse:
        s: GatewaySettings = request.app.state.settings
        p: Prioritizer = request.app.state.prioritizer
        scorer = request.app.state.scorer
        if p.health.unreachable() and isinstance(scorer, RemoteScorer) and await probe_predictor(scorer):
            p.health.reachable_again()
        status, reason = p.health.verdict()
        live: LiveQuality | None = request.app.state.live
        recorder: Recorder | None = request.app.state.recorder
        recording = None
        if recorder is not None:
            recording = {**recorder.status(), "written": metrics.records_written_count(),
                         "dropped": metrics.records_dropped_by_reason()}
        return JSONResponse({
            "status": status, **({"reason": reason} if reason else {}),
            "upstream": s.upstream_url, "scorer": s.scorer, "client_priority": s.client_priority,
            "fairness_window_s": s.fairness_window_s, "max_overtake_ms": max_overtake_ms(s.fairness_window_s),
            "prompt_length_weight": s.prompt_length_weight,
            "clock_ms": round(p.clock.now_ms()), "scores_in_window": len(p.window),
            "predictor_timeout_ms": round(p.deadline.last_s * 1000, 1),
            "predictor_timeout_now_ms": round(p.deadline.now_s() * 1000, 1),
            "predictor_timeout_base_ms": s.predictor_timeout_ms,
            "predictor_timeout_max_ms": p.deadline.max_s * 1000,
            "recent": p.health.recent(),
            "fallbacks": metrics.fallback_count(), "fallbacks_by_reason": metrics.fallbacks_by_reason(),
            "ranker_id": p.ranker_id, "ranker_changes": metrics.ranker_change_count(),
            "live": {"window": live.size, **(await live.refresh()).as_json()} if live is not None else None,
            "recording": recording,
        })

    async def prometheus_metrics(request: Request) -> Response:
        if request.app.state.live is not None:
            await request.app.state.live.refresh()  # the collector reads the snapshot this leaves
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(lifespan=lifespan, routes=[
        Route("/gateway/health", health, methods=["GET"]),
        Route("/gateway/metrics", prometheus_metrics, methods=["GET"]),
        Route("/{path:path}", proxied, methods=METHODS),
    ])
    app.add_middleware(OneLineStartupErrors, who="PARS gateway")
    app.state.metrics = metrics
    return app
