"""Gateway settings, read once from GATEWAY_* environment variables at start-up."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from pars.common.httpclient import KEEPALIVE_EXPIRY_S


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", protected_namespaces=())

    # Where requests go: the vLLM OpenAI server (`--scheduling-policy priority`).
    upstream_url: str = "http://127.0.0.1:8000"
    # None: no timeout while waiting for the upstream's next bytes. A queued request on a busy vLLM
    # can wait minutes before its first byte; a timeout here would turn that wait into an error.
    upstream_read_timeout_s: float | None = Field(default=None, gt=0)
    upstream_connect_timeout_s: float = Field(default=5.0, gt=0)
    # None: unlimited. A pool limit would queue requests inside the gateway, in arrival order, where
    # vLLM's priority scheduler cannot see them.
    upstream_max_connections: int | None = Field(default=None, ge=1)
    # Idle pooled connections to the upstream are dropped after this; keep it below the upstream's own
    # keep-alive timeout (vLLM: 5 s) or a request can race the server's close (pars/common/httpclient.py).
    upstream_keepalive_expiry_s: float = Field(default=KEEPALIVE_EXPIRY_S, gt=0)

    # How prompts are scored. remote: the predictor service's /score_batch; local: the ranker in this
    # process (configured by the service's own PREDICTOR_* variables); none: every request neutral
    # (priority = arrival time: FCFS through the gateway, for baselines); max_tokens: the request's own
    # max_tokens is its score, the oracle of experiments whose answers run to exactly max_tokens (vLLM's
    # ignore_eos, as `vllm bench serve --ignore-eos` sends each sample's length).
    scorer: Literal["remote", "local", "none", "max_tokens"] = "remote"
    predictor_url: str = "http://127.0.0.1:8001"
    predictor_api_key: SecretStr | None = None  # sent as `Authorization: Bearer <key>` to the predictor
    # A lone request whose score is not back within this goes upstream with the neutral priority.
    predictor_timeout_ms: float = Field(default=50.0, gt=0)
    # In a burst (other requests waiting for scores at the same time) the wait follows the predictor's
    # measured time for bursts that size, up to this (pars/gateway/deadline.py): the upstream queues a burst
    # anyway. At or below predictor_timeout_ms: a fixed timeout of predictor_timeout_ms, as before.
    predictor_timeout_max_ms: float = Field(default=500.0, gt=0)
    # remote: while a /score_batch call is in flight, gather new prompts this long for the next call
    gather_ms: float = Field(default=2.0, ge=0)
    max_batch_prompts: int = Field(default=64, ge=1)  # remote: prompts per /score_batch call
    # Only the start and end of a longer prompt are scored, half each (the ranker reads at most max_length
    # tokens of them anyway).
    max_prompt_chars: int = Field(default=8192, ge=1)

    # A client's own `priority` field: respect (kept, not scored), override (replaced by the gateway's),
    # offset (added to the gateway's: moves the request by that many milliseconds of arrival time).
    client_priority: Literal["respect", "override", "offset"] = "respect"

    # Starvation guard (pars/gateway/priority.py): priority = arrival_ms + round(W_ms * quantile).
    # Only requests arriving within W after a request can overtake it. 0: FCFS; large: shortest-first.
    fairness_window_s: float = Field(default=10.0, ge=0)
    quantile_window: int = Field(default=1000, ge=1)  # recent scores the quantile is taken among
    # Weight of the prompt's length quantile (characters, among recent prompts) beside the score's:
    # q = (q_score + w * q_length) / (1 + w), still in [0, 1], so the guard's bound holds. Puts long prompts
    # (long contexts) later; 0.5 changed nothing measurable against a real vLLM at 2x capacity (runs H and
    # H2 in docs/experiment-log.md). 0: the score alone. Applied to scored prompts only.
    prompt_length_weight: float = Field(default=0.0, ge=0)

    # Recording (pars/gateway/record.py): one JSON line per finished completions/chat request, in *.jsonl
    # files of this directory (created 0700 if missing; files 0600). None: off.
    record_dir: str | None = None
    # text: the prompt the ranker scored is kept (training data for the next ranker); hash: only its SHA-256
    # (monitoring without keeping what users wrote).
    record_prompts: Literal["text", "hash"] = "text"
    # A file is closed and the next one started once it passes this size.
    record_max_file_mb: float = Field(default=64.0, gt=0)
    # Records waiting for the writer thread; when full, new ones are dropped (and counted), never waited for.
    record_queue_size: int = Field(default=10_000, ge=1)
    # Streamed answers carry their token counts only in a final usage chunk the client must ask for
    # (stream_options.include_usage). When the client did not: ask for it upstream and take that chunk out of
    # what the client receives (pars/gateway/usage.py), so its stream is what it asked for. None: on while
    # recording, off otherwise (live ranking quality then sees streams only where clients ask for usage).
    record_stream_usage: bool | None = None

    # Live ranking quality (pars/gateway/live_quality.py): Kendall's tau of scores against the answer lengths
    # of the last this-many finished scored requests, on /gateway/metrics and /gateway/health. 0: off. Each
    # recomputation (on a read, when changed) compares every pair: some 30 ms of a core at 500, 0.9 s at 5,000.
    live_window: int = Field(default=500, ge=0, le=5000)

    # When the event loop has not run for this long, every thread's stack goes to stderr and
    # pars_gateway_event_loop_stalls_total counts it (pars/common/watchdog.py). 0: off.
    stall_dump_s: float = Field(default=5.0, ge=0)

    # Bind address of `python scripts/pars_gateway.py` (with uvicorn's CLI, use --host/--port).
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)

    def stream_usage(self) -> bool:
        """Whether streamed requests ask the upstream for their usage chunk (record_stream_usage, resolved)."""
        return self.record_dir is not None if self.record_stream_usage is None else self.record_stream_usage
