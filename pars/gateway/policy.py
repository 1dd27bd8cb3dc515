"""What priority a completions/chat request goes upstream with, and why.

Rule for a client's own top-level `priority` (GATEWAY_CLIENT_PRIORITY):
  respect  (default) an integer priority is kept as sent and the prompt is not scored;
  override the gateway's priority replaces it;
  offset   the client's integer is added to the gateway's priority (units: milliseconds of arrival time,
           so -5000 moves a request ahead as if it had arrived 5 s earlier).
A `priority` that is not an integer is forwarded untouched under every rule but override, so vLLM answers
it as it would without the gateway. A body that is not a JSON object is forwarded untouched.

The gateway's own priorities are wall-clock milliseconds (about 1.7e12, pars/gateway/priority.py), so a
respected client priority of an ordinary size (0, 10, -5) goes ahead of every scored request, as the
client asked for; offset is the rule for moving a request within the gateway's order.

A score is placed among recent scores of the same ranker only: when the scorer's `ranker_id` changes (the
predictor loaded another ranker; pars/gateway/scorers.py), both quantile windows start afresh, and callbacks
registered with `on_ranker_change` (the live ranking quality) hear of it. A score computed by a ranker that
is no longer the scorer's current one when it arrives falls back (reason "ranker_changed").

The text scored is the prompt made scoreable by pars.common.text.scoreable (its head and tail when long,
lone surrogates replaced): one odd prompt must not fail the /score_batch call it shares with others. The
body forwarded upstream is the client's, unchanged but for `priority`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from pars.common.text import scoreable
from pars.gateway.body import ParsedBody, parse_object, with_members
from pars.gateway.deadline import ScoreDeadline
from pars.gateway.health import HealthTracker
from pars.gateway.observability import GatewayMetrics
from pars.gateway.priority import NEUTRAL_QUANTILE, PriorityClock, QuantileWindow
from pars.gateway.prompts import prompt_text, requested_tokens
from pars.gateway.scorers import Scorer
from pars.gateway.settings import GatewaySettings

log = logging.getLogger("pars.gateway")
FALLBACK_LOG_EVERY_S = 10.0  # an outage under load would otherwise log a line per request

# Sources of a request's priority, sent back in x-pars-priority-source and counted in the metrics.
SCORED, CLIENT, FALLBACK, UNSCORABLE, UNSCORED, UNPARSED = (
    "scored", "client", "fallback", "unscorable", "unscored", "unparsed")


@dataclass
class Assignment:
    body: bytes  # what goes upstream
    priority: int | None  # the request's priority upstream; None: left to vLLM (default 0) or unreadable
    source: str
    score_ms: float  # time spent getting the score, fallbacks included; 0 when none was asked for
    parsed: ParsedBody | None = None  # the client's body; None when it is not a JSON object
    members: dict[str, str] = field(default_factory=dict)  # top-level members the gateway set (JSON literals)
    score: float | None = None  # the ranker's score (max_tokens: the request's); None when not scored
    quantile: float | None = None  # the quantile the priority was computed from; None when not scored
    ranker_id: str | None = None  # the ranker that computed `score`


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def scorable_text(text: str, max_chars: int) -> str:
    """The prompt as scored: the ranker reads its start, or start and end under PREDICTOR_TRUNCATION=middle,
    so its first and last max_chars/2 characters, lone surrogates replaced (pars.common.text.scoreable)."""
    return scoreable(text, max_chars, keep_tail=True)[0]


class Prioritizer:
    def __init__(self, settings: GatewaySettings, scorer: Scorer | None, metrics: GatewayMetrics,
                 clock: PriorityClock | None = None) -> None:
        self.settings = settings
        self.scorer = scorer
        self.metrics = metrics
        self.window = QuantileWindow(settings.quantile_window)
        self.lengths = QuantileWindow(settings.quantile_window)  # prompt lengths, for prompt_length_weight
        self.clock = clock if clock is not None else PriorityClock(settings.fairness_window_s)
        self.deadline = ScoreDeadline(settings.predictor_timeout_ms / 1000, settings.predictor_timeout_max_ms / 1000)
        self.health = HealthTracker()
        self.ranker_id: str | None = None  # the ranker of the scores in the windows
        self._ranker_seen = False
        self._on_ranker_change: list[Callable[[str | None], None]] = []
        metrics.predictor_timeout.set(self.deadline.base_s)
        self._fallback_log: dict[str, tuple[float, int]] = {}  # reason -> (last logged, unlogged since)

    async def assign(self, path: str, raw: bytes, arrival_ms: float) -> Assignment:
        parsed = parse_object(raw)
        if parsed is None:
            return self._done(Assignment(raw, None, UNPARSED, 0.0))
        rule = self.settings.client_priority
        has_client = "priority" in parsed.value
        client = parsed.value.get("priority")
        if has_client and (rule == "respect" or (rule == "offset" and not _is_int(client))):
            return self._done(Assignment(raw, client if _is_int(client) else None, CLIENT, 0.0, parsed))
        if self.settings.scorer == "max_tokens":
            q, source, score_ms, scored = self._oracle_quantile(requested_tokens(path, parsed.value))
        else:
            q, source, score_ms, scored = await self._quantile(prompt_text(path, parsed.value))
        priority = self.clock.priority(arrival_ms, q)
        if has_client and rule == "offset":
            priority += client
        members = {"priority": str(int(priority))}
        score, ranker_id = scored if scored is not None else (None, None)
        return self._done(Assignment(with_members(parsed, members), priority, source, score_ms, parsed, members,
                                     score, q if scored is not None else None, ranker_id))

    def _done(self, assignment: Assignment) -> Assignment:
        self.metrics.requests.labels(assignment.source).inc()
        return assignment

    def on_ranker_change(self, callback: Callable[[str | None], None]) -> None:
        """`callback(new_ranker_id)` whenever the windows start afresh for another ranker."""
        self._on_ranker_change.append(callback)

    def _ranker_is(self, ranker_id: str | None) -> None:
        """The ranker of the score about to join the window: another one than before empties the windows."""
        if ranker_id == self.ranker_id:
            self._ranker_seen = True
            return
        if self._ranker_seen:
            self.metrics.ranker_changes.inc()
            log.info("ranker changed (%s -> %s): the quantile windows start afresh", self.ranker_id, ranker_id)
        self.window = QuantileWindow(self.settings.quantile_window)
        self.lengths = QuantileWindow(self.settings.quantile_window)
        self.ranker_id, self._ranker_seen = ranker_id, True
        for callback in self._on_ranker_change:
            callback(ranker_id)

    async def _tagged_score(self, text: str) -> tuple[float, str | None]:
        """The score and its ranker's id: from the scorer's score_tagged where it has one (the remote scorer),
        else its ranker_id as the score arrives (an in-process ranker swaps between awaits, not during)."""
        tagged = getattr(self.scorer, "score_tagged", None)
        if tagged is not None:
            return await tagged(text)
        value = await self.scorer.score(text)
        return value, getattr(self.scorer, "ranker_id", None)

    async def _quantile(self, text: str | None) -> tuple[float, str, float, tuple[float, str | None] | None]:
        """(quantile, source, score_ms, (score, ranker_id) when scored)."""
        if self.scorer is None:
            return NEUTRAL_QUANTILE, UNSCORED, 0.0, None
        if text is None:
            return NEUTRAL_QUANTILE, UNSCORABLE, 0.0, None
        started = time.perf_counter()
        reason = detail = None
        try:
            score, ranker_id = await self.deadline.wait(
                self._tagged_score(scorable_text(text, self.settings.max_prompt_chars)))
            if not math.isfinite(score):
                reason = "bad_score"
            elif ranker_id != getattr(self.scorer, "ranker_id", ranker_id):
                reason = "ranker_changed"  # computed by the ranker just replaced: not on the window's scale
        except (asyncio.TimeoutError, httpx.TimeoutException) as exc:
            reason, detail = "timeout", exc
        except httpx.TransportError as exc:
            reason, detail = "unreachable", exc
        except Exception as exc:  # noqa: BLE001 - any predictor failure: the request goes on, neutral
            reason, detail = "error", exc
        seconds = time.perf_counter() - started
        self.metrics.score_seconds.observe(seconds)
        self.metrics.predictor_timeout.set(self.deadline.last_s)
        self.health.record(reason, detail)
        if reason is not None:
            self.metrics.fallbacks.labels(reason).inc()
            self._log_fallback(reason, detail, seconds)
            return NEUTRAL_QUANTILE, FALLBACK, seconds * 1000, None
        self._ranker_is(ranker_id)
        return self._blend(self.window.observe(score), text), SCORED, seconds * 1000, (score, ranker_id)

    def _oracle_quantile(self, tokens: int | None) -> tuple[float, str, float, tuple[float, None] | None]:
        """GATEWAY_SCORER=max_tokens: the quantile of the request's own answer-length cap among recent ones."""
        if tokens is None:
            return NEUTRAL_QUANTILE, UNSCORABLE, 0.0, None
        return self.window.observe(float(tokens)), SCORED, 0.0, (float(tokens), None)

    def _blend(self, q_score: float, text: str) -> float:
        """The score's quantile, moved toward the prompt length's by GATEWAY_PROMPT_LENGTH_WEIGHT."""
        w = self.settings.prompt_length_weight
        if not w:
            return q_score
        return (q_score + w * self.lengths.observe(len(text))) / (1 + w)

    def _log_fallback(self, reason: str, exc: BaseException | None, seconds: float) -> None:
        """One line for the first fallback of a reason, then at most one per FALLBACK_LOG_EVERY_S with the
        count since: enough to date an outage from the log without flooding it."""
        now = time.monotonic()
        last, unlogged = self._fallback_log.get(reason, (-math.inf, 0))
        if now - last < FALLBACK_LOG_EVERY_S:
            self._fallback_log[reason] = (last, unlogged + 1)
            return
        what = type(exc).__name__ if exc is not None else "non-finite score"
        message = f" {exc}" if exc is not None and str(exc) else ""
        log.warning("predictor fallback (%s after %.0f ms): %s%s; %d more since the last such line",
                    reason, seconds * 1000, what, message, unlogged)
        self._fallback_log[reason] = (now, 0)
