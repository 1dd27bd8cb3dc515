"""What became of one completions/chat request, known once its answer has been relayed: a `RequestOutcome`.

The proxy knows the bytes, the policy knows the score; neither should know who wants the outcome. So the app
asks `Outcomes.watch` for a `Watcher` when it forwards a request; the proxy feeds it the answer's status,
headers and bytes (pars/gateway/proxy.py) and tells it when the answer has ended, however it ended; the
watcher then hands one `RequestOutcome` to every consumer: the recorder (pars/gateway/record.py) and the live
ranking quality (pars/gateway/live_quality.py). A consumer runs on the event loop, so it must be quick (an
append, a put_nowait), and its failure is logged, never the request's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from pars.gateway.body import with_members
from pars.gateway.policy import Assignment
from pars.gateway.prompts import prompt_text, requested_choices, requested_tokens
from pars.gateway.usage import JsonReader, SseReader, Usage, usage_literal

log = logging.getLogger("pars.gateway")


@dataclass(frozen=True)
class RequestOutcome:
    time: float  # arrival at the gateway, seconds since the Unix epoch
    path: str
    model: str | None
    prompt: str | None  # the text the ranker scores (pars.gateway.prompts.prompt_text); None: none to score
    score: float | None  # the ranker's raw score (GATEWAY_SCORER=max_tokens: the request's max_tokens)
    quantile: float | None  # the score's quantile in the window when it was scored
    priority: int | None
    priority_source: str
    ranker_id: str | None  # the ranker that computed `score`
    max_tokens: int | None
    choices: int  # answers asked for (n, times a completions request's prompts); above 1 usage sums them
    stream: bool
    status: int  # the answer's HTTP status (502: the gateway's own, upstream unreachable)
    complete: bool  # the answer was relayed to its end (False: the client left, or the upstream broke off)
    latency_s: float  # from arrival to the answer's end
    usage: Usage

    @property
    def censored(self) -> bool:
        """Cut at max_tokens: the answer would have been at least completion_tokens long."""
        return self.usage.finish_reason == "length"

    @property
    def answer_tokens(self) -> int | None:
        """The one answer's length in tokens, or None: unknown, or several answers (usage sums them)."""
        return self.usage.completion_tokens if self.choices == 1 else None


Consumer = Callable[[RequestOutcome], None]


class Watcher:
    """One request's answer as the proxy relays it (the proxy's RelayWatcher)."""

    def __init__(self, outcomes: Outcomes, path: str, assignment: Assignment, arrival_s: float,
                 started: float, strip_usage: bool) -> None:
        self._outcomes = outcomes
        self._path = path
        self._assignment = assignment
        self._arrival_s = arrival_s
        self._started = started  # time.perf_counter() at arrival
        self.strip_usage = strip_usage  # the gateway asked for the usage chunk: the client must not see it
        self._reader: JsonReader | SseReader | None = None
        self._done = False

    def response_started(self, status: int, headers: httpx.Headers) -> None:
        if headers.get("content-encoding", "identity").lower() != "identity":
            return  # compressed: not read (a stream whose usage chunk the gateway takes out is asked uncompressed)
        if headers.get("content-type", "").startswith("text/event-stream"):
            self._reader = SseReader(strip=self.strip_usage)
        else:
            self._reader = JsonReader()

    def chunk(self, data: bytes) -> bytes:
        """The bytes to relay for this chunk of the upstream's answer."""
        if self._reader is None:
            return data
        try:
            return self._reader.feed(data)
        except Exception:  # noqa: BLE001 - a reading bug must not cost the answer: relay as is from here
            log.exception("reading an answer's usage failed; relayed as is from here")
            held = self._reader.flush() if isinstance(self._reader, SseReader) else b""
            self._reader = None
            return held + data if self.strip_usage else data

    def flush(self) -> bytes:
        """Bytes still held when the upstream's answer ends."""
        return self._reader.flush() if self._reader is not None else b""

    def finished(self, status: int, complete: bool) -> None:
        """The answer has ended (or failed, or the client left): publish the outcome, once."""
        if self._done:
            return
        self._done = True
        try:
            self._outcomes.publish(self._outcome(status, complete))
        except Exception:  # noqa: BLE001 - never the request's failure
            log.exception("building a request's outcome failed")

    def _outcome(self, status: int, complete: bool) -> RequestOutcome:
        a = self._assignment
        body = a.parsed.value if a.parsed is not None else {}
        model = body.get("model")
        usage = Usage()
        if self._reader is not None and complete:
            usage = self._reader.result()
        return RequestOutcome(
            time=self._arrival_s, path=self._path, model=model if isinstance(model, str) else None,
            prompt=prompt_text(self._path, body), score=a.score, quantile=a.quantile, priority=a.priority,
            priority_source=a.source, ranker_id=a.ranker_id, max_tokens=requested_tokens(self._path, body),
            choices=requested_choices(self._path, body), stream=body.get("stream") is True, status=status,
            complete=complete, latency_s=time.perf_counter() - self._started, usage=usage)


class Outcomes:
    """The consumers of request outcomes; with none, nothing is read and nothing changes."""

    def __init__(self, stream_usage: bool) -> None:
        self.stream_usage = stream_usage  # GATEWAY_RECORD_STREAM_USAGE, resolved
        self._consumers: list[Consumer] = []

    def add(self, consumer: Consumer) -> None:
        self._consumers.append(consumer)

    def watch(self, path: str, assignment: Assignment, arrival_s: float,
              started: float) -> tuple[bytes, Watcher | None]:
        """The body to send upstream (the assignment's, asking for a usage chunk where the client did not and
        GATEWAY_RECORD_STREAM_USAGE allows) and the watcher of its answer (None: nobody wants outcomes)."""
        if not self._consumers:
            return assignment.body, None
        body, parsed = assignment.body, assignment.parsed
        literal = usage_literal(path, parsed.value) if self.stream_usage and parsed is not None else None
        if literal is not None:
            body = with_members(parsed, {**assignment.members, "stream_options": literal})
        return body, Watcher(self, path, assignment, arrival_s, started, strip_usage=literal is not None)

    def publish(self, outcome: RequestOutcome) -> None:
        for consumer in self._consumers:
            try:
                consumer(outcome)
            except Exception:  # noqa: BLE001 - one consumer's bug must not starve the others
                log.exception("a request-outcome consumer failed")
