"""The replayed trace: ShareGPT rows drawn by seed, their token counts in the served model's tokenizer, and
Poisson arrivals that every policy, repeat and rate share."""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pars.common.jsonio import read_json


@dataclass
class Request:
    id: str
    prompt: str
    prompt_tokens: int
    answer_tokens: int  # the true answer's length in tokens, uncapped
    max_tokens: int  # what the request asks for: answer_tokens capped


def answer_of(row: dict) -> str | None:
    """The reference answer: data_preprocess writes `answer_content`; older rows say `answer`."""
    value = row.get("answer_content", row.get("answer"))
    return value if isinstance(value, str) else None


def prompt_rows(path: str | os.PathLike[str]) -> list[dict]:
    """The rows of a val_data.json a trace can use: a non-empty prompt and a reference answer (the others are
    left out, not errors). Their answer_length is not read: the trace counts tokens in the served model's
    tokenizer."""
    rows = read_json(path, "data file")
    return [r for r in rows if isinstance(r.get("prompt"), str) and r["prompt"].strip() and answer_of(r)]


def build_trace(rows: Sequence[dict], tokenizer: Any, n: int, seed: int, cap: int, max_model_len: int,
                min_tokens: int = 1) -> tuple[list[Request], dict[str, int]]:
    """`n` rows drawn with `seed`, each with its token counts; rows that cannot fit the model's context
    (prompt + max_tokens > max_model_len) are left out, and counted, rather than truncated."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    trace: list[Request] = []
    skipped = Counter()
    for i in order:
        if len(trace) == n:
            break
        row = rows[i]
        prompt_tokens = len(tokenizer(row["prompt"])["input_ids"])
        answer_tokens = len(tokenizer(answer_of(row), add_special_tokens=False)["input_ids"])
        max_tokens = max(min_tokens, min(cap, answer_tokens))
        if prompt_tokens + max_tokens > max_model_len:
            skipped["too_long_for_context"] += 1
            continue
        trace.append(Request(str(row.get("task_id", i)), row["prompt"], prompt_tokens, answer_tokens, max_tokens))
    if len(trace) < n:
        raise SystemExit(f"only {len(trace)} usable rows for --num-requests {n}")
    return trace, dict(skipped)


def unit_gaps(n: int, seed: int) -> np.ndarray:
    """Inter-arrival gaps of a rate-1 Poisson process; divided by a rate they give that rate's arrivals,
    so all rates share one pattern (and one seed)."""
    return np.random.default_rng(seed).exponential(1.0, size=n)


def arrivals_at(gaps: np.ndarray, rate: float) -> list[float]:
    """Arrival offsets in seconds; the first request goes at 0."""
    times = np.concatenate([[0.0], np.cumsum(gaps[1:])]) / rate
    return [round(float(t), 6) for t in times]


def digest(values: Sequence[Any]) -> str:
    """A short fingerprint of a list (the trace's row ids, a rate's arrivals), recorded with every run."""
    return hashlib.sha256(json.dumps(list(values)).encode()).hexdigest()[:16]
