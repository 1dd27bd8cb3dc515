"""A trained ranker scoring prompts offline, as the experiments do outside the predictor service: on the CPU,
fp32, with the service's defaults for the settings a ranker does not give."""

from __future__ import annotations

from typing import Any


def cpu_scorer(encoder: str, checkpoint: str, max_length: int | None = None, truncation: str | None = None,
               pooling: str | None = None) -> Any:
    """A pars.model.scoring.PromptScorer of `checkpoint` on top of `encoder`; unset settings as the service's
    (128 tokens, head truncation, pooler output)."""
    from pars.model.checkpoint import load_ranker
    from pars.model.ranker import load_tokenizer
    from pars.model.scoring import PromptScorer

    return PromptScorer(load_ranker(encoder, checkpoint, pooling or "pooler"), load_tokenizer(encoder),
                        max_length=max_length or 128, device="cpu", truncation=truncation or "head")
