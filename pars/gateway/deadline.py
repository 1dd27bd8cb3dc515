"""How long a request may wait for its score: the base timeout alone, longer in a burst.

A fixed GATEWAY_PREDICTOR_TIMEOUT_MS fails exactly when PARS matters. A burst of 24-32 concurrent requests
shares one or two /score_batch calls; on a CPU predictor those take 100-300 ms, so every request of the
burst used to fall back to the neutral priority, and the queue that formed upstream was served FCFS. But a
burst means the upstream queues anyway: a request that waits 200 ms for its score there loses little, and
its score decides where it stands in a queue it will wait in for longer than that.

So the allowance depends on the burst a request is part of: the most requests waiting for a score at the
same time during its wait (itself included; the peak, since requests arriving after it can join its call).

  burst of 1 (a lone request):  GATEWAY_PREDICTOR_TIMEOUT_MS, as before; its added latency is unchanged.
  burst of n > 1:  clamp(K × the slowest recent wait of bursts of n's size class,
                         GATEWAY_PREDICTOR_TIMEOUT_MS, GATEWAY_PREDICTOR_TIMEOUT_MAX_MS)

Size classes are powers of two (2, 3-4, 5-8, 9-16, 17-32, ...); each remembers its last RECENT_WAITS waits.
A class with none yet is scaled from the nearest smaller class with some, linearly in the size (scoring n
prompts together takes at most about n times one: an overestimate, so the first burst of a size is not
cut short), else taken from the nearest larger class as is (no faster than that), else the cap. A request
that times out is remembered as having waited its whole allowance, so a class whose waits exceed it grows
by K per burst up to the cap; fast waits replace slow ones within RECENT_WAITS requests.

The bound: no request waits for its score longer than GATEWAY_PREDICTOR_TIMEOUT_MAX_MS (a value at or
below GATEWAY_PREDICTOR_TIMEOUT_MS makes the timeout fixed, the behaviour before), and a lone request no
longer than GATEWAY_PREDICTOR_TIMEOUT_MS. The price: a predictor that accepts connections but stops
answering costs each request of a burst, or of a steady load (whose waits overlap), up to the cap instead
of the base; /gateway/health then says "degraded". A predictor that is down costs nothing: the connection
is refused at once.

The wait is the caller's, around any scorer (remote or in-process): the deadline is re-read when it passes,
so a request whose burst grew meanwhile keeps waiting under the larger allowance.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
K = 1.5  # margin over the slowest recent wait: calls of one size class vary by some tens of percent
RECENT_WAITS = 32  # per size class: one burst of 32 replaces a class's memory


def size_class(burst: int) -> int:
    """0 for 1, 1 for 2, 2 for 3-4, 3 for 5-8, ...: the class's largest burst is 2**class."""
    return max(0, burst - 1).bit_length()


class _Waiter:
    __slots__ = ("burst",)

    def __init__(self, burst: int) -> None:
        self.burst = burst


class ScoreDeadline:
    """Waits on scores with the allowance above; `last_s` is the allowance of the latest wait to end."""

    def __init__(self, base_s: float, max_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.base_s = base_s
        self.max_s = max(base_s, max_s)
        self._clock = clock
        self._waiters: set[_Waiter] = set()
        self._recent: dict[int, deque[float]] = {}
        self.last_s = base_s

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def expected_s(self, burst: int) -> float | None:
        """The slowest recent wait of bursts of this size class, or the estimate above; None: nothing known."""
        c = size_class(burst)
        if self._recent.get(c):
            return max(self._recent[c])
        smaller = [k for k, waits in self._recent.items() if k < c and waits]
        if smaller:
            k = max(smaller)
            return max(self._recent[k]) * 2 ** (c - k)
        larger = [k for k, waits in self._recent.items() if k > c and waits]
        if larger:
            return max(self._recent[min(larger)])
        return None

    def allowance_s(self, burst: int) -> float:
        if burst <= 1 or self.max_s == self.base_s:
            return self.base_s
        expected = self.expected_s(burst)
        if expected is None:
            return self.max_s
        return min(self.max_s, max(self.base_s, K * expected))

    def now_s(self) -> float:
        """The allowance a request arriving now would start with."""
        return self.allowance_s(self.waiting + 1)

    def observe(self, burst: int, waited_s: float) -> None:
        self._recent.setdefault(size_class(burst), deque(maxlen=RECENT_WAITS)).append(waited_s)

    async def wait(self, awaitable: Awaitable[T]) -> T:
        """The awaitable's result, or asyncio.TimeoutError once the allowance has passed (the awaitable is
        then cancelled). Its own exceptions pass through and teach nothing about the predictor's speed."""
        task = asyncio.ensure_future(awaitable)
        me = _Waiter(0)
        self._waiters.add(me)
        for w in self._waiters:  # everyone waiting now is part of a burst at least this large
            w.burst = max(w.burst, len(self._waiters))
        started = self._clock()
        try:
            while True:
                allowed = self.allowance_s(me.burst)
                remaining = started + allowed - self._clock()
                if remaining <= 0:
                    break
                await asyncio.wait((task,), timeout=remaining)
                if task.done():
                    break
        finally:
            self._waiters.discard(me)
            if not task.done():
                task.cancel()
        self.last_s = allowed
        if not task.done() or task.cancelled():
            self.observe(me.burst, allowed)  # it took at least this long
            raise asyncio.TimeoutError(f"no score within {allowed * 1000:.0f} ms (burst of {me.burst})")
        if task.exception() is None:
            self.observe(me.burst, self._clock() - started)
        return task.result()
