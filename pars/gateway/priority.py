"""From a score to vLLM's integer `priority` (lower is served earlier), with a starvation guard.

A request's priority is its arrival time in milliseconds of the wall clock (since the Unix epoch), plus
a bounded score term:

    priority = round(t_ms + W_ms * q),      q in [0, 1]

where q is the score's quantile among recent scores (0: the shortest predicted answer seen lately,
1: the longest; 0.5 when unknown). Quantiles make the term independent of the checkpoint's score
scale, and bounded, which is what the guard needs.

Bound. vLLM serves the waiting request with the lowest (priority, arrival). Request j can be served
before an earlier request i only if prio_j < prio_i. Since round() moves each side by at most 0.5,

    t_j + W q_j - 0.5  <=  prio_j  <  prio_i  <=  t_i + W q_i + 0.5   =>   t_j < t_i + W (q_i - q_j) + 1,

and q_i - q_j <= 1, so only requests arriving less than W + 1 ms after i can overtake it. Every
request arriving later gets a larger priority and queues behind i: i's extra wait over FCFS is at most
the service time of the work that arrives in a window of W (+1 ms) after it, never unbounded.
W = 0 is FCFS (by the gateway's arrival time); a W larger than any queueing delay is pure
shortest-predicted-first. GATEWAY_FAIRNESS_WINDOW_S sets W.

One scale for every gateway. The times t above are read from each gateway's own clock. Were they
measured from each process's start, two gateways in front of one vLLM would disagree by the difference
of their start times: unbounded. Read from the wall clock (time.time(), ms since 1970-01-01 UTC), they
disagree only by the hosts' clock skew s (NTP keeps it to milliseconds; two gateways on one host share
one clock, s = 0): with t'_i = t_i + e_i and |e_i - e_j| <= s, the derivation gives t_j < t_i + W + 1 + s,
so the bound across gateways is W + 1 ms + s. The Unix epoch rather than a project epoch: anyone can
read a priority as a date, and every host agrees on it without configuration. The numbers are large
(about 1.7e12, 41 bits): vLLM's `priority` is a Python int, and JSON carries them exactly.

In-process the clock never goes back: a wall-clock step backwards (an NTP correction) holds it at the
last value handed out until the wall clock passes it again; requests arriving meanwhile share that
arrival time (q, then arrival at vLLM, order them). A step back of d ms adds d to this gateway's
skew while it lasts; a step forward only makes later requests look later, which the bound allows.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left, bisect_right, insort
from collections import deque
from collections.abc import Callable

NEUTRAL_QUANTILE = 0.5


class QuantileWindow:
    """Mid-rank quantile of a score among the last `size` scores (a sorted copy kept beside the deque:
    O(size) per update, microseconds at the default 1,000)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._recent: deque[float] = deque()
        self._sorted: list[float] = []

    def __len__(self) -> int:
        return len(self._recent)

    def quantile(self, score: float) -> float:
        """Share of recent scores below `score`, ties counted half: 0.5 when the window is empty,
        so the first requests are neutral rather than extreme."""
        n = len(self._sorted)
        if n == 0:
            return NEUTRAL_QUANTILE
        below = bisect_left(self._sorted, score)
        equal = bisect_right(self._sorted, score) - below
        return (below + 0.5 * equal) / n

    def add(self, score: float) -> None:
        if len(self._recent) == self.size:
            old = self._recent.popleft()
            del self._sorted[bisect_left(self._sorted, old)]
        self._recent.append(score)
        insort(self._sorted, score)

    def observe(self, score: float) -> float:
        """The score's quantile against the scores before it, then the score joins the window."""
        q = self.quantile(score)
        self.add(score)
        return q


class PriorityClock:
    """priority = round(arrival_ms + window_ms * q), arrival in wall-clock ms (`clock`: seconds since the
    Unix epoch), never below a value handed out before."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.time) -> None:
        self.window_ms = window_s * 1000.0
        self._clock = clock
        self._last_ms = -math.inf

    def now_ms(self) -> float:
        now = self._clock() * 1000.0
        if now > self._last_ms:
            self._last_ms = now
        return self._last_ms

    def priority(self, arrival_ms: float, q: float) -> int:
        q = min(1.0, max(0.0, q))
        return round(arrival_ms + self.window_ms * q)


def max_overtake_ms(window_s: float, skew_ms: float = 0.0) -> float:
    """How long after a request another may arrive and still be served before it (the bound above), with
    gateways whose clocks differ by up to `skew_ms`."""
    return window_s * 1000.0 + 1.0 + skew_ms
