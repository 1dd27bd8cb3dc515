"""Whether the gateway is doing its job: `ok`, or `degraded` with a reason, for /gateway/health.

A gateway whose predictor is gone still proxies every request (neutral priorities, FCFS), so it stays
healthy as a proxy and /gateway/health answers 200 either way: a load balancer must not pull a gateway
that serves fine. What it reports is whether PARS is working, read from the requests that asked for a
score (scored or fell back; client priorities, unparsed and unscorable bodies say nothing about it):

  degraded  the latest of them found the predictor unreachable (connection refused, DNS, reset), or
            more than half of the last RECENT fell back (timeouts, errors, bad scores);
  ok        otherwise, also before any such request.

The verdict follows the requests, so it changes with traffic. Without traffic the one thing checked
afresh is reachability: while the verdict rests on an unreachable predictor, the app probes it (any HTTP
answer counts) and, when it answers, forgets the fallbacks the outage caused.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable

RECENT = 20
UNREACHABLE = "unreachable"


class HealthTracker:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._recent: deque[str | None] = deque(maxlen=RECENT)  # fallback reason, None when scored
        self._last_error = ""
        self._last_at = 0.0

    def record(self, reason: str | None, detail: BaseException | None = None) -> None:
        """One request that asked for a score: None when it got one, else why it fell back."""
        self._recent.append(reason)
        self._last_at = self._clock()
        if reason is not None and detail is not None:
            self._last_error = type(detail).__name__ + (f": {detail}" if str(detail) else "")
        elif reason is not None:
            self._last_error = reason

    def unreachable(self) -> bool:
        return bool(self._recent) and self._recent[-1] == UNREACHABLE

    def reachable_again(self) -> None:
        """The predictor answered a probe: the fallbacks of the outage no longer describe it."""
        self._recent = deque((r for r in self._recent if r != UNREACHABLE), maxlen=RECENT)

    def verdict(self) -> tuple[str, str | None]:
        """("ok", None) or ("degraded", reason)."""
        n = len(self._recent)
        reasons = Counter(r for r in self._recent if r is not None)
        fallbacks = sum(reasons.values())
        ago = f"the latest {self._clock() - self._last_at:.0f} s ago"
        share = f"{fallbacks} of the last {n} scored-path requests fell back ({ago})"
        if self.unreachable():
            return "degraded", f"predictor unreachable ({self._last_error}); {share}"
        if fallbacks * 2 > n:
            by_reason = ", ".join(f"{r}: {c}" for r, c in reasons.most_common())
            return "degraded", f"{share}: {by_reason}; last: {self._last_error}"
        return "ok", None

    def recent(self) -> dict[str, int]:
        return {"requests": len(self._recent), "fallbacks": sum(r is not None for r in self._recent)}
