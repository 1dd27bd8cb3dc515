"""Memory of a long-running server: freed heap given back to the OS, so a CPU server's RSS stays flat, and the
objects alive once it is ready kept out of the garbage collector's full passes.

Forward passes of ever-changing shapes allocate and free large activation buffers. glibc's malloc
raises its mmap threshold after such buffers are freed (up to 32 MiB), so later ones come from the
heap, and the heap fragments: freed pages stay resident. A 30-minute soak grew RSS by 47 % that way.
Measured on the MiniLM ranker (benchmarks/heap_bench.py, 150 random batches, medians of 2): glibc as is
grows 352 MiB; a fixed 64 KiB mmap threshold 33 MiB but 1.36x the time (page faults); malloc_trim(0) at
most once a second 58 MiB for 1.12x the time (trimmed pages are faulted in again). A longer
PREDICTOR_HEAP_TRIM_INTERVAL_S trades memory back for speed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from collections.abc import Callable


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


class HeapTrimmer:
    """Calls malloc_trim(0) at most once per `interval_s` (0 or less: never); cheap to call often."""

    def __init__(self, interval_s: float) -> None:
        self._trim = _load_malloc_trim() if interval_s > 0 else None
        self.interval_s = interval_s
        self._last = time.monotonic()
        self.trims = 0

    @property
    def enabled(self) -> bool:
        return self._trim is not None

    def due(self, intervals: float = 1.0) -> bool:
        """At least `intervals` intervals since the last trim."""
        return self._trim is not None and time.monotonic() - self._last >= self.interval_s * intervals

    def maybe_trim(self) -> bool:
        if not self.due():
            return False
        self._trim(0)
        self._last = time.monotonic()
        self.trims += 1
        return True


def freeze_long_lived() -> int:
    """Move every object alive now (the ranker, the tokenizer, torch's and the libraries' modules) to the
    collector's permanent generation, as vLLM does once its engine is up; returns how many are frozen.

    Why: a full (generation 2) collection walks every tracked object, and a loaded ranker brings millions.
    Mid-traffic one stopped the service for 207 ms here (MiniLM, 8 clients), every request in flight waiting:
    most of /score's p99. Called when the service is ready and again after each reload (the new ranker's
    objects); an old ranker's memory is still freed by reference counting once its last pass is done."""
    gc.freeze()
    return gc.get_freeze_count()
