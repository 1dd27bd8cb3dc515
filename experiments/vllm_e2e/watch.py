"""The predictor's /ready polled from a thread during a run, so that a stall of the predictor itself is dated
and told apart from the gateway's own failures."""

from __future__ import annotations

import time

import numpy as np


class PredictorWatch:
    """Polls the predictor's /ready from a thread during one run. Run E lost its predictor for the last 15 s
    of one run (45 fallbacks, every one at the 1 s timeout) with nothing in any log; this says whether the
    predictor itself stopped answering, and when."""

    SLOW_MS = 500.0

    def __init__(self, url: str | None, interval_s: float = 0.5) -> None:
        import threading

        self.url, self.interval_s = url, interval_s
        self.polls: list[tuple[float, float | None, str | None]] = []  # (s from start, ms or None, error)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="predictor-watch", daemon=True)

    def __enter__(self) -> PredictorWatch:
        if self.url:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        import httpx

        start = time.perf_counter()
        with httpx.Client(base_url=self.url, timeout=5.0) as client:
            while not self._stop.is_set():
                t = time.perf_counter()
                try:
                    ok = client.get("/ready").status_code == 200
                    self.polls.append((t - start, (time.perf_counter() - t) * 1000, None if ok else "not ready"))
                except httpx.HTTPError as exc:
                    self.polls.append((t - start, None, type(exc).__name__))
                self._stop.wait(max(0.0, self.interval_s - (time.perf_counter() - t)))

    def summary(self) -> dict | None:
        if not self.url:
            return None
        ms = [m for _, m, e in self.polls if m is not None and e is None]
        bad = [[round(t, 2), None if m is None else round(m, 1), e] for t, m, e in self.polls
               if e is not None or m is None or m > self.SLOW_MS]
        return {"polls": len(self.polls), "p50_ms": float(np.median(ms)) if ms else None,
                "max_ms": max(ms) if ms else None, "slow_or_failed": bad}
