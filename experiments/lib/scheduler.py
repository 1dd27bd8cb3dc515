"""A deterministic model of vLLM's priority scheduler (sched_sim.py runs it on drawn traces, e2e_replay.py on
the runs of a real experiment).

`slots` running requests at most; each engine step admits waiting requests by (priority, arrival) into free
slots, then every running request gains one token; a request leaves after its max_tokens tokens; no
preemption. A step takes base + per_seq x running + prefill x admitted prompt tokens (+ context x the tokens of
context of the running requests, when asked) milliseconds.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

# The default step: ~340 tokens/s at 8 sequences, what the 22M Llama sustained in runs A-D.
STEP_BASE_MS, STEP_PER_SEQ_MS = 6.0, 2.2


def full_batch_tokens_per_s(slots: int, base_ms: float = STEP_BASE_MS, per_seq_ms: float = STEP_PER_SEQ_MS) -> float:
    """The model's output tokens per second with every slot busy (and no prefill)."""
    return slots / ((base_ms + per_seq_ms * slots) / 1000.0)


def simulate(arrivals_s: Sequence[float], max_tokens: Sequence[int], prompt_tokens: Sequence[int],
             priorities: Sequence[float], slots: int, base_ms: float, per_seq_ms: float,
             prefill_ms_per_token: float, context_ms_per_token: float = 0.0) -> np.ndarray:
    """End-to-end latency (s) of every request under the model in the module docstring; with
    `context_ms_per_token`, each step also costs that much per token of context (prompt plus tokens made so
    far) of every running request: decoding attends over it."""
    n = len(arrivals_s)
    order = sorted(range(n), key=lambda i: arrivals_s[i])
    waiting: list[tuple[float, float, int]] = []
    running: dict[int, int] = {}  # request -> tokens left
    done = np.zeros(n)
    t = 0.0
    nxt = 0
    while nxt < n or waiting or running:
        if not waiting and not running:
            t = max(t, arrivals_s[order[nxt]])
        while nxt < n and arrivals_s[order[nxt]] <= t:
            i = order[nxt]
            heapq.heappush(waiting, (priorities[i], arrivals_s[i], i))
            nxt += 1
        admitted = 0
        while waiting and len(running) < slots:
            _, _, i = heapq.heappop(waiting)
            running[i] = max_tokens[i]
            admitted += prompt_tokens[i]
        context = (sum(prompt_tokens[i] + max_tokens[i] - left for i, left in running.items())
                   if context_ms_per_token else 0)
        t += (base_ms + per_seq_ms * len(running) + prefill_ms_per_token * admitted
              + context_ms_per_token * context) / 1000.0
        for i in list(running):
            running[i] -= 1
            if running[i] == 0:
                del running[i]
                done[i] = t - arrivals_s[i]
    return done
