"""Prompt scorers for the gateway: the predictor service over HTTP, the ranker in-process, or none.

Both real scorers share forward passes between concurrent arrivals: the remote one gathers prompts for
GATEWAY_GATHER_MS into one /score_batch call; the in-process one hands them to the service's own
DynamicBatcher. The caller bounds the wait (pars/gateway/deadline.py: GATEWAY_PREDICTOR_TIMEOUT_MS, longer
in a burst) and falls back on any error.

Ranker identity. Two rankers' scores are not on one scale, so the caller starts its quantile windows afresh
when the ranker changes. A scorer says which ranker it is in `ranker_id` (a content hash; None: unknown):
the remote one reads it from each /score_batch answer's x-pars-ranker-id header, and `score_tagged` gives
each score with the id of the ranker that computed it, so a score from a ranker just replaced is never
taken for one of its successor's.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import httpx

from pars.common.httpclient import pool_limits
from pars.gateway.settings import GatewaySettings

log = logging.getLogger("pars.gateway")


RANKER_ID_HEADER = "x-pars-ranker-id"


class Scorer(Protocol):
    async def start(self) -> None: ...

    async def score(self, text: str) -> float: ...

    async def close(self) -> None: ...


class ScorerError(Exception):
    """The predictor answered, but not with a score for this prompt."""


class RemoteScorer:
    """The predictor service's /score_batch; while a call is in flight, prompts that arrive within `gather_s`
    of the first share the next call (with none in flight, a prompt goes at once, with its loop turn's company).

    Calls are not serialized: while one is in flight the next group gathers, so a slow predictor delays
    only the requests waiting on it (and those fall back at their timeout)."""

    def __init__(self, url: str, timeout_s: float, gather_s: float, max_batch: int,
                 api_key: str | None = None, transport: httpx.AsyncBaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # The longest any caller may wait (pars/gateway/deadline.py): nobody waits on the answer longer than
        # that. Callers of one call may have different allowances: those that gave up leave it to the rest.
        self.client = httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout_s, transport=transport,
                                        limits=pool_limits(32, 32))
        self.gather_s = gather_s
        self.max_batch = max_batch
        self._pending: list[tuple[str, asyncio.Future[tuple[float, str | None]]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._calls: set[asyncio.Task] = set()
        self.calls_made = 0  # /score_batch calls, for tests and the health answer
        # The ranker of the answer to the latest-sent call answered so far: calls overlap, and an answer the
        # old ranker computed may arrive after one from its successor; it must not bring the old id back.
        self.ranker_id: str | None = None
        self._ranker_call = 0

    async def start(self) -> None:
        pass

    async def score(self, text: str) -> float:
        return (await self.score_tagged(text))[0]

    async def score_tagged(self, text: str) -> tuple[float, str | None]:
        """The score and the id of the ranker that computed it (its answer's x-pars-ranker-id)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[float, str | None]] = loop.create_future()
        self._pending.append((text, future))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            # Idle predictor: send on the next loop turn (still with everything that arrived in this one)
            # rather than wait out the gathering window alone. Busy: gather while the calls run.
            self._timer = loop.call_later(self.gather_s if self._calls else 0.0, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        batch = [(t, f) for t, f in batch if not f.done()]  # callers that gave up while gathering
        if batch:
            task = asyncio.get_running_loop().create_task(self._call(batch))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    async def _call(self, batch: list[tuple[str, asyncio.Future[tuple[float, str | None]]]]) -> None:
        self.calls_made += 1
        number = self.calls_made
        try:
            response = await self.client.post("/score_batch", json={"prompts": [t for t, _ in batch]})
            response.raise_for_status()
            scores = response.json()["scores"]
            if not isinstance(scores, list) or len(scores) != len(batch):
                raise ScorerError(f"/score_batch answered {len(scores)} scores for {len(batch)} prompts")
        except Exception as exc:  # noqa: BLE001 - every waiting request falls back on it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        ranker_id = response.headers.get(RANKER_ID_HEADER)
        if number >= self._ranker_call:
            self.ranker_id, self._ranker_call = ranker_id, number
        for (_, future), value in zip(batch, scores, strict=True):
            if not future.done():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    future.set_result((float(value), ranker_id))
                else:
                    future.set_exception(ScorerError(f"/score_batch answered a non-number score: {value!r}"))

    async def close(self) -> None:
        self._flush()
        if self._calls:
            await asyncio.gather(*self._calls, return_exceptions=True)
        await self.client.aclose()


def make_scorer(settings: GatewaySettings, predictor_settings=None) -> Scorer | None:
    """None for GATEWAY_SCORER=none (the caller then skips scoring, no fallback counted) and =max_tokens (the
    policy reads the request's own max_tokens)."""
    if settings.scorer == "remote":
        key = settings.predictor_api_key.get_secret_value() if settings.predictor_api_key else None
        longest_ms = max(settings.predictor_timeout_ms, settings.predictor_timeout_max_ms)
        return RemoteScorer(settings.predictor_url, longest_ms / 1000, settings.gather_ms / 1000,
                            settings.max_batch_prompts, api_key=key)
    if settings.scorer == "local":
        from pars.gateway.local_scorer import LocalScorer  # imports the model code only when asked for

        return LocalScorer(predictor_settings)
    return None
