"""The model worker: the ranker on dedicated inference threads, scoring token ids in padding-light passes.

Everything that touches the model runs there (`InferenceEngine.run`). The heap trim runs on a thread of its
own, between passes where it can, never in a request's way. `load_scorer` builds the ranker from the
service's settings and the checkpoint's own config.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from pars.common.errors import PARSError
from pars.model.backends import ONNX_BACKENDS, load_inference_model
from pars.model.padding import plan_passes
from pars.model.precision import DTYPES, inference_dtype
from pars.model.ranker import load_tokenizer
from pars.model.ranker_config import SCORE_SETTINGS, RankerConfig, resolve
from pars.model.scoring import PromptScorer, resolve_device
from pars.serving.memory import HeapTrimmer
from pars.serving.observability import Metrics
from pars.serving.settings import Settings

# Fixed cost of one forward pass, in padded-token equivalents: how many padded tokens splitting a
# batch in two must save to be worth a second pass (small matrix products run less efficiently).
# The warm-up measures it (`calibrate_overhead`); this is the value without a warm-up. Measured on the
# 2-core CPU here with MiniLM: 15-64 for torch, about 10 for ONNX Runtime fp32, 11-50 for its int8; on a
# GPU a pass costs the same over a wide range of shapes, so there it is in the thousands.
FORWARD_OVERHEAD_TOKENS = 64


# Calibration shapes: (prompts, tokens) pairs timed to fit  time = a + b * padded tokens.
_CALIBRATION_SHAPES = ((1, 32), (8, 32), (1, 64), (8, 64))


_CALIBRATION_MAX_TOKENS = 4096


log = logging.getLogger("pars.serving")


SLOW_TRIM_S = 0.5
HEAP_TRIM_OVERDUE = 10  # intervals a trim may wait for a pause between passes before it runs anyway


def overhead_from_timings(timings: Sequence[tuple[int, float]]) -> int:
    """Least-squares fit of  seconds = a + b * padded tokens  over (padded tokens, seconds) samples;
    the fixed cost a in tokens (a / b), clamped to [0, 4096] (a noisy fit can give a < 0 or b <= 0)."""
    x, y = np.asarray(timings, dtype=float).T
    if np.ptp(x) == 0:  # one size only: nothing to fit
        return FORWARD_OVERHEAD_TOKENS
    b, a = np.polyfit(x, y, 1)
    if b <= 0:  # a pass costs no more for more tokens: batch as much as possible
        return _CALIBRATION_MAX_TOKENS
    return int(round(min(max(a / b, 0.0), _CALIBRATION_MAX_TOKENS)))


class InferenceEngine:
    """The model on `workers` dedicated threads; everything that touches it runs there, at most `workers`
    calls at a time (the model is only read: torch in inference mode and ONNX Runtime sessions allow it)."""

    def __init__(self, scorer: PromptScorer, metrics: Metrics, max_batch_size: int, max_batch_tokens: int,
                 overhead_tokens: int | None = FORWARD_OVERHEAD_TOKENS, heap_trim_interval_s: float = 0.0,
                 workers: int = 1) -> None:
        self.scorer = scorer
        # None: measured by warm_up (until then, the default).
        self.calibrate = overhead_tokens is None
        self.overhead_tokens = FORWARD_OVERHEAD_TOKENS if overhead_tokens is None else overhead_tokens
        metrics.forward_overhead_tokens.set(self.overhead_tokens)
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.pad_id = scorer.pad_id
        self.workers = workers
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pars-inference")
        scorer.set_concurrency(workers)  # the executor bounds the passes; the scorer must not serialize them
        # Freed activation buffers otherwise stay resident (pars/serving/memory.py); CPU only: CUDA
        # tensors are not malloc's.
        self.heap = HeapTrimmer(heap_trim_interval_s if scorer.device.type == "cpu" else 0.0)
        # Its own thread: on the inference thread a trim delayed the passes queued behind it (once 1.79 s,
        # and 8 gateway requests fell back).
        self._trim_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pars-heap-trim")
        self._trimming = False
        self._busy = 0  # passes running or queued on the inference threads

    async def run(self, fn, *args):
        self._busy += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        finally:
            self._busy -= 1
            self._maybe_schedule_trim()

    def _maybe_schedule_trim(self) -> None:
        """A trim when due, at a moment no pass runs (it takes malloc's arena locks, which a pass allocating
        at the same time would wait on); under a load that never pauses, once it is HEAP_TRIM_OVERDUE
        intervals late, so memory stays bounded."""
        if self._trimming or not self.heap.due():
            return
        if self._busy and not self.heap.due(HEAP_TRIM_OVERDUE):
            return
        self._trimming = True
        self._trim_thread.submit(self.trim_heap)

    def trim_heap(self) -> None:
        """malloc_trim, timed (the heap-trim thread only)."""
        try:
            started = time.perf_counter()
            if self.heap.maybe_trim():
                took = time.perf_counter() - started
                self.metrics.heap_trim.observe(took)
                if took >= SLOW_TRIM_S:
                    log.warning("malloc_trim took %.2f s (PREDICTOR_HEAP_TRIM_INTERVAL_S=0 turns it off)", took)
        finally:
            self._trimming = False

    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids per prompt, truncated at max_length, unpadded (as PromptScorer.tokenize would)."""
        return self.scorer.encode(prompts)

    def _forward_padded(self, ids: Sequence[Sequence[int]]) -> list[float]:
        started = time.perf_counter()
        scores = self.scorer.score_ids(ids)
        self.metrics.observe_forward(len(ids), len(ids) * max(len(x) for x in ids), sum(len(x) for x in ids),
                                     time.perf_counter() - started)
        return scores

    def score_ids(self, ids: Sequence[Sequence[int]]) -> list[float]:
        """Length-sorted, padding-light sub-batches; scores in input order. Inference thread only."""
        if not ids:
            return []
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        lengths = [len(ids[i]) for i in order]
        scores = [0.0] * len(ids)
        for start, end in plan_passes(lengths, self.overhead_tokens, self.max_batch_size, self.max_batch_tokens):
            idx = order[start:end]
            for i, s in zip(idx, self._forward_padded([ids[i] for i in idx]), strict=True):
                scores[i] = s
        return scores

    def score_as_one_batch(self, ids: Sequence[Sequence[int]]) -> list[float]:
        """All prompts padded together in one forward pass (the original per-request behaviour)."""
        return self._forward_padded(ids) if ids else []

    def warm_up(self, rounds: int = 2) -> None:
        """A few passes of typical shapes, so the first real requests do not pay for lazy set-up."""
        long = max(1, min(self.scorer.max_length, 128))
        shapes = {(1, 16), (1, long), (min(8, self.max_batch_size), 64),
                  (max(1, min(self.max_batch_size, self.max_batch_tokens // long)), long)}
        for _ in range(rounds):
            for n, length in sorted(shapes):
                self._forward_padded([[self.pad_id + 1] * min(length, self.scorer.max_length)] * n)
        if self.calibrate:
            self.overhead_tokens = self.calibrate_overhead()
            self.metrics.forward_overhead_tokens.set(self.overhead_tokens)
            log.info("forward-pass overhead measured at %d padded tokens", self.overhead_tokens)

    def calibrate_overhead(self, repeats: int = 5) -> int:
        """The fixed cost of a forward pass in padded-token equivalents on this device, backend and model,
        from the medians of `repeats` timed passes of a few shapes (interleaved, so drifting load hits all)."""
        shapes = [(n, min(length, self.scorer.max_length)) for n, length in _CALIBRATION_SHAPES]
        times: dict[tuple[int, int], list[float]] = {shape: [] for shape in shapes}
        for _ in range(repeats):
            for n, length in shapes:
                ids = [[self.pad_id + 1] * length] * n
                started = time.perf_counter()
                self.scorer.score_ids(ids)  # not _forward_padded: calibration is not traffic in the metrics
                times[(n, length)].append(time.perf_counter() - started)
        medians = [(n * length, sorted(t)[len(t) // 2]) for (n, length), t in times.items()]
        return overhead_from_timings(medians)

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self._trim_thread.shutdown(wait=True)


def ranker_config(settings: Settings) -> RankerConfig:
    """The checkpoint's own config (ranker_config.json beside it), with the settings given explicitly on
    top; one that contradicts it is a PARSError naming the variable."""
    given = {key: getattr(settings, key) for key in SCORE_SETTINGS}
    return resolve(settings.model_path, given, name=lambda key: f"PREDICTOR_{key.upper()}")


def load_scorer(settings: Settings) -> PromptScorer:
    """The ranker as its config says (`scorer.config`), in the precision the settings and device call for."""
    config = ranker_config(settings)
    device = resolve_device(settings.device)
    dtype_name = inference_dtype(device, settings.backend) if settings.dtype == "auto" else settings.dtype
    dtype = DTYPES[dtype_name]
    if dtype == torch.float16 and device.type != "cuda":
        raise PARSError(f"PREDICTOR_DTYPE={settings.dtype} needs a CUDA device (this one is {device}); "
                        "use float32 or bfloat16 on CPU")
    # An exported directory carries its tokenizer (cut at the ranker's max length); a checkpoint uses its encoder's.
    tokenizer = load_tokenizer(settings.model_path if Path(settings.model_path).is_dir() else config.model_name)
    if settings.backend in ONNX_BACKENDS:
        if device.type != "cpu" or dtype != torch.float32:
            raise PARSError(f"PREDICTOR_BACKEND={settings.backend} runs on CPU in float32; "
                            f"use PREDICTOR_BACKEND=torch for {device} / {dtype_name}")
    model = load_inference_model(config.model_name, settings.model_path, settings.backend,
                                 settings.onnx_cache_dir, threads=settings.threads_per_worker(),
                                 spin=settings.onnx_spin, log=log.warning, pooling=config.pooling)
    scorer = PromptScorer(model, tokenizer, max_length=config.max_length, device=device,
                          truncation=config.truncation)
    scorer.set_dtype(dtype)
    scorer.config = config
    log.info("ranker %s: %s, %s pooling, %s truncation at %d tokens (%s); %s on %s", settings.model_path,
             config.model_name, config.pooling, config.truncation, config.max_length, config.source, dtype_name,
             device)
    return scorer
