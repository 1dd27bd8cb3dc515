"""A trained ranker scoring prompts offline, as the experiments do outside the predictor service: on the CPU,
fp32, with the ranker's own settings (its ranker_config.json) for those not given."""

from __future__ import annotations

from typing import Any


def cpu_scorer(encoder: str | None, checkpoint: str, max_length: int | None = None, truncation: str | None = None,
               pooling: str | None = None) -> Any:
    """A pars.model.scoring.PromptScorer of `checkpoint`; settings not given (None) as its ranker config says
    (else the original release's: bert-base-uncased, 128 tokens, head truncation, pooler output). A given one
    that contradicts the config is a PARSError."""
    from pars.model.checkpoint import load_ranker
    from pars.model.ranker import load_tokenizer
    from pars.model.ranker_config import resolve
    from pars.model.scoring import PromptScorer

    c = resolve(checkpoint, {"model_name": encoder, "max_length": max_length, "truncation": truncation,
                             "pooling": pooling})
    return PromptScorer(load_ranker(c.model_name, checkpoint, c.pooling), load_tokenizer(c.model_name),
                        max_length=c.max_length, device="cpu", truncation=c.truncation)
