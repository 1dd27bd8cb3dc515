"""Memory of the CPU server (pars/serving/memory.py): heap trimming rate-limited and off the request's path; the
objects alive once the service is ready frozen out of the collector's full passes."""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest

from pars.serving import memory
from pars.serving.engine import InferenceEngine
from pars.serving.memory import HeapTrimmer
from pars.serving.observability import Metrics


def test_freezing_moves_the_live_objects_out_of_collections():
    gc.unfreeze()
    keep = [[i] for i in range(1000)]  # tracked containers alive now
    frozen = memory.freeze_long_lived()
    assert frozen >= len(keep) and gc.get_freeze_count() == frozen
    gc.unfreeze()
    assert gc.get_freeze_count() == 0


def test_glibc_malloc_trim_is_found_here():
    # The machines this project runs on use glibc; without it the trimmer would silently do nothing.
    assert memory._load_malloc_trim() is not None


def test_trimmer_is_rate_limited(monkeypatch):
    calls = []
    clock = [100.0]
    monkeypatch.setattr(memory, "_load_malloc_trim", lambda: calls.append)
    monkeypatch.setattr(memory.time, "monotonic", lambda: clock[0])
    trimmer = HeapTrimmer(interval_s=2.0)
    assert not trimmer.maybe_trim() and calls == []
    clock[0] += 2.0
    assert trimmer.due() and trimmer.maybe_trim() and calls == [0]
    assert not trimmer.maybe_trim()
    clock[0] += 1.0
    assert not trimmer.maybe_trim()
    clock[0] += 1.0
    assert trimmer.maybe_trim() and trimmer.trims == 2


def test_interval_zero_never_trims():
    trimmer = HeapTrimmer(interval_s=0.0)
    assert not trimmer.enabled and not trimmer.due() and not trimmer.maybe_trim()


@pytest.mark.parametrize("interval", [1e-9, 0.0])
def test_engine_trims_on_a_thread_of_its_own_after_the_job(direct, monkeypatch, interval):
    events: list[tuple[str, str]] = []

    def fake_trim(pad: int) -> int:
        events.append(("trim", threading.current_thread().name))
        return 1

    monkeypatch.setattr(memory, "_load_malloc_trim", lambda: fake_trim)
    engine = InferenceEngine(direct, Metrics(), max_batch_size=8, max_batch_tokens=4096,
                             heap_trim_interval_s=interval)

    def job() -> list[float]:
        events.append(("job", threading.current_thread().name))
        return engine.score_ids(engine.encode(["a prompt", "another, longer prompt"]))

    async def main() -> list[float]:
        return await engine.run(job)

    try:
        scores = asyncio.run(main())
    finally:
        engine.close()  # waits for the queued trim
    assert len(scores) == 2
    if interval == 0.0:
        assert [e for e, _ in events] == ["job"]
    else:
        assert [e for e, _ in events] == ["job", "trim"]
        # never on the inference thread, where it would delay the passes queued behind it
        assert events[0][1].startswith("pars-inference") and events[1][1].startswith("pars-heap-trim")


def test_a_slow_trim_is_timed_and_logged(direct, monkeypatch, caplog):
    # malloc_trim holds malloc's locks while it runs; a slow one must show in the metrics and the log.
    import time

    from pars.serving import engine

    monkeypatch.setattr(memory, "_load_malloc_trim", lambda: lambda pad: time.sleep(0.05) or 1)
    monkeypatch.setattr(engine, "SLOW_TRIM_S", 0.04)
    metrics = Metrics()
    engine = InferenceEngine(direct, metrics, max_batch_size=8, max_batch_tokens=4096, heap_trim_interval_s=1e-9)
    try:
        engine.trim_heap()
    finally:
        engine.close()
    assert metrics.registry.get_sample_value("pars_heap_trim_seconds_count") == 1.0
    assert metrics.registry.get_sample_value("pars_heap_trim_seconds_sum") >= 0.05
    assert "malloc_trim took" in caplog.text
