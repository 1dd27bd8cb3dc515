"""A watchdog for the event loop, shared by the predictor service and the gateway.

Twice in issue 6's live runs the predictor service answered neither /score_batch nor /ready for ~55 s.
/ready touches no model state, so the whole process had stopped, and nothing in its log said where. This
watchdog is there to catch the next one: an asyncio task re-arms `faulthandler.dump_traceback_later` a few
times per timeout. If the loop does not come back to re-arm it within the timeout, faulthandler's own C
thread, which needs neither the GIL nor the loop, writes every thread's Python stack to stderr, again every
timeout while the stall lasts. When the loop runs again the task logs one line and counts the stall.
Between stalls it records how late each tick ran (the loop's lag) as a Prometheus histogram.

`faulthandler.dump_traceback_later` is one per process: a second watchdog in the same process (two apps
in one test) takes it over from the first.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import sys
import time
from typing import TextIO

from prometheus_client import CollectorRegistry, Counter, Histogram

log = logging.getLogger("pars.watchdog")

_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TICKS_PER_TIMEOUT = 4


def dump_target(file: TextIO | None) -> TextIO | None:
    """`file`, else stderr, else the process's original stderr: the first with a file descriptor, which
    faulthandler writes to directly (an in-memory stream, such as a captured stderr, has none)."""
    for candidate in (file, sys.stderr, sys.__stderr__):
        try:
            if candidate is not None and candidate.fileno() >= 0:
                return candidate
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
            continue
    return None


class LoopMetrics:
    """The watchdog's Prometheus metrics, in an app's own registry (`prefix`: pars or pars_gateway)."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.lag = Histogram(f"{prefix}_event_loop_lag_seconds", "how late the watchdog's tick ran (time the "
                             "event loop could not run it)", buckets=_LAG_BUCKETS, registry=registry)
        self.stalls = Counter(f"{prefix}_event_loop_stalls_total", "times the event loop did not run for "
                              "the stall timeout (thread stacks were written to stderr)", registry=registry)


class StallWatchdog:
    """Dumps all threads' stacks when the event loop has not run for `timeout_s` (0: off)."""

    def __init__(self, timeout_s: float, metrics: LoopMetrics, who: str, file: TextIO | None = None) -> None:
        self.timeout_s = timeout_s
        self.tick_s = timeout_s / TICKS_PER_TIMEOUT
        self.who = who
        self.file = file
        self.metrics = metrics
        self.longest_stall_s = 0.0
        self._dump_to: TextIO | None = None
        self._task: asyncio.Task | None = None

    @property
    def enabled(self) -> bool:
        return self.timeout_s > 0

    def _arm(self) -> None:
        if self._dump_to is not None:
            faulthandler.dump_traceback_later(self.timeout_s, repeat=True, file=self._dump_to)

    def start(self) -> None:
        """Inside the running loop (a lifespan)."""
        if self.enabled and self._task is None:
            self._dump_to = dump_target(self.file)
            if self._dump_to is None:
                log.warning("%s: neither the given file nor stderr is a real file, so a stalled event loop "
                            "is counted but its stacks are not written", self.who)
            self._arm()
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"{self.who} watchdog")

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(self.tick_s)
            gap = time.monotonic() - started
            if gap >= self.timeout_s:
                # When the whole process was stopped (SIGSTOP, starved of CPU), the loop and faulthandler's
                # thread wake together, and re-arming now would cancel the dump that is due: let it run first.
                await asyncio.sleep(self.tick_s)
            self._arm()
            self.metrics.lag.observe(max(0.0, gap - self.tick_s))
            if gap >= self.timeout_s:
                self.metrics.stalls.inc()
                self.longest_stall_s = max(self.longest_stall_s, gap)
                log.warning("%s: the event loop did not run for %.1f s (over %g s); every thread's stack was "
                            "written to stderr while it lasted", self.who, gap, self.timeout_s)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        if self._dump_to is not None:
            faulthandler.cancel_dump_traceback_later()
