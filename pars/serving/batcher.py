"""The queue in front of the model worker: a dynamic batcher, or one pass per request.

`DynamicBatcher` takes everything queued when an inference worker frees up (up to a prompt count and a
token budget), so batches form while a pass runs, as TEI's do, and a request reaching an idle model goes
at once (PREDICTOR_MAX_WAIT_MS > 0 makes an idle model wait that long for company), then scores it:
length-sorted, split into padding-light sub-batches, one forward pass per sub-batch on the inference
thread. `PerRequestRunner` is the original behaviour (one forward pass per request, the prompts of
a request padded together) behind the same interface, so one server can measure both.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field

from pars.model.scoring import PromptScorer
from pars.serving.engine import InferenceEngine
from pars.serving.observability import Metrics
from pars.serving.settings import Settings

log = logging.getLogger("pars.serving")


def _log_crash(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the batcher stopped on an error; requests will time out", exc_info=task.exception())


class QueueFullError(Exception):
    """The queue holds as many prompts as it may: the caller should retry later (HTTP 429)."""


class ShuttingDownError(Exception):
    """The service is stopping and takes no new work (HTTP 503)."""


@dataclass
class _Item:
    ids: list[list[int]]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def tokens(self) -> int:
        return sum(len(x) for x in self.ids)


class _Admission:
    """Counts prompts waiting for the model, for the bounded queue (429) and the depth gauge."""

    def __init__(self, limit: int, metrics: Metrics) -> None:
        self.limit = limit
        self.metrics = metrics
        self.waiting = 0
        self.accepting = True

    def admit(self, n: int) -> None:
        if not self.accepting:
            raise ShuttingDownError("the service is shutting down")
        if self.waiting + n > self.limit and self.waiting > 0:
            raise QueueFullError(f"queue full ({self.waiting} prompts waiting, limit {self.limit}); retry later")
        self.waiting += n
        # inc/dec rather than set: during a reload two runners (the old ranker's and the new one's) share it
        self.metrics.queue_depth.inc(n)

    def release(self, n: int) -> None:
        self.waiting -= n
        self.metrics.queue_depth.dec(n)


class DynamicBatcher:
    """Gathers concurrent requests into shared forward passes; `score` is the only entry point."""

    def __init__(self, engine: InferenceEngine, metrics: Metrics, max_batch_size: int, max_batch_tokens: int,
                 max_wait_s: float, max_queue_prompts: int) -> None:
        self.engine = engine
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.admission = _Admission(max_queue_prompts, metrics)
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._carry: _Item | None = None
        self._worker: asyncio.Task | None = None
        self.rounds = {True: 0, False: 0}  # rounds by whether they held a gathering window open

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="pars-batcher")
        self._worker.add_done_callback(_log_crash)

    async def score(self, ids: list[list[int]]) -> list[float]:
        if not ids:
            return []
        self.admission.admit(len(ids))
        item = _Item(ids, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(item)
        return await item.future

    async def close(self) -> None:
        """Stop taking work, finish everything already queued, then stop the worker."""
        self.admission.accepting = False
        if self._worker is not None:
            self._queue.put_nowait(None)
            await self._worker

    async def _next(self, timeout: float | None) -> _Item | None:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        if timeout is None:
            return await self._queue.get()
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            pass
        if timeout <= 0:
            raise asyncio.TimeoutError
        return await asyncio.wait_for(self._queue.get(), timeout)

    async def _gather(self, first: _Item, wait: bool) -> tuple[list[_Item], bool]:
        """Items for one round, and whether the stop sentinel was met. `wait`: hold the round open for
        max_wait_s for company; otherwise take only what is queued already."""
        loop = asyncio.get_running_loop()
        items, prompts, tokens = [first], len(first.ids), first.tokens
        deadline = loop.time() + (self.max_wait_s if wait else 0.0)
        while prompts < self.max_batch_size and tokens < self.max_batch_tokens:
            try:
                item = await self._next(deadline - loop.time())
            except asyncio.TimeoutError:
                break
            if item is None:
                return items, True
            if item.future.done():  # its request timed out or went away while waiting
                self.admission.release(len(item.ids))
                continue
            if prompts + len(item.ids) > self.max_batch_size or tokens + item.tokens > self.max_batch_tokens:
                self._carry = item  # first in the next round
                break
            items.append(item)
            prompts += len(item.ids)
            tokens += item.tokens
        return items, False

    async def _run(self) -> None:
        # A round is gathered only once an inference worker is free, so that while all are busy, arrivals
        # pile up into the next round. close() queues the sentinel after every admitted item, so reaching
        # it means all is gathered; the rounds still running are awaited.
        free = asyncio.Semaphore(self.engine.workers)
        running: set[asyncio.Task] = set()
        try:
            while True:
                await free.acquire()
                # Work that queued up while the workers were busy goes at once: the gathering window is there
                # to let an idle model wait for company, and with a backlog it would only idle the model (at 8
                # clients it cost about a tenth of the model's time, one window per round).
                backlog = self._carry is not None or not self._queue.empty()
                first = await self._next(None)
                if first is None:
                    return
                if first.future.done():
                    self.admission.release(len(first.ids))
                    free.release()
                    continue
                wait = not backlog and self.max_wait_s > 0
                self.rounds[wait] += 1
                self.metrics.rounds.labels("waited" if wait else "none").inc()
                items, met_sentinel = await self._gather(first, wait=wait)
                task = asyncio.get_running_loop().create_task(self._process(items), name="pars-batch")
                running.add(task)
                task.add_done_callback(running.discard)
                task.add_done_callback(lambda _: free.release())
                task.add_done_callback(_log_crash)
                if met_sentinel:  # read only when nothing was carried over: the queue is drained
                    return
        finally:
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    async def _process(self, items: list[_Item]) -> None:
        now = time.perf_counter()
        live = []
        for item in items:
            self.admission.release(len(item.ids))
            if not item.future.done():
                self.metrics.queue_wait.observe(now - item.enqueued)
                live.append(item)
        if not live:
            return
        flat = [ids for item in live for ids in item.ids]
        try:
            scores = await self.engine.run(self.engine.score_ids, flat)
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request
            for item in live:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        offset = 0
        for item in live:
            part = scores[offset : offset + len(item.ids)]
            offset += len(item.ids)
            if not item.future.done():
                item.future.set_result(part)


class PerRequestRunner:
    """One forward pass per request on the inference thread (no batching across requests)."""

    def __init__(self, engine: InferenceEngine, metrics: Metrics, max_queue_prompts: int) -> None:
        self.engine = engine
        self.metrics = metrics
        self.admission = _Admission(max_queue_prompts, metrics)
        self._inflight: set[asyncio.Future] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def score(self, ids: list[list[int]]) -> list[float]:
        if not ids:
            return []
        self.admission.admit(len(ids))
        enqueued = time.perf_counter()
        abandoned = threading.Event()

        def job() -> list[float]:
            self.admission_release_threadsafe(len(ids))
            if abandoned.is_set():  # the request timed out while waiting for the thread
                return []
            self.metrics.queue_wait.observe(time.perf_counter() - enqueued)
            return self.engine.score_as_one_batch(ids)

        future = asyncio.ensure_future(self.engine.run(job))
        self._inflight.add(future)
        future.add_done_callback(self._inflight.discard)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            abandoned.set()
            raise

    def admission_release_threadsafe(self, n: int) -> None:
        self._loop.call_soon_threadsafe(self.admission.release, n)

    async def close(self) -> None:
        self.admission.accepting = False
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)


def build_runner(scorer: PromptScorer, settings: Settings, metrics: Metrics,
                 batching: bool | None = None) -> tuple[InferenceEngine, DynamicBatcher | PerRequestRunner]:
    """The engine and the runner the settings ask for (the service's and the gateway's, alike); the
    runner still has to be started inside the event loop."""
    s = settings
    engine = InferenceEngine(scorer, metrics, s.max_batch_size, s.max_batch_tokens, s.forward_overhead_tokens,
                             heap_trim_interval_s=s.heap_trim_interval_s, workers=s.inference_workers)
    if s.batching if batching is None else batching:
        return engine, DynamicBatcher(engine, metrics, s.max_batch_size, s.max_batch_tokens, s.max_wait_ms / 1000,
                                      s.max_queue_prompts)
    return engine, PerRequestRunner(engine, metrics, s.max_queue_prompts)
