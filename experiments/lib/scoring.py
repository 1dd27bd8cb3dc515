"""A trained ranker scoring prompts offline, as the experiments do outside the predictor service: on the CPU,
fp32, with the ranker's own settings (its ranker_config.json) for those not given."""

from __future__ import annotations

from typing import Any


def cpu_scorer(encoder: str | None, checkpoint: str, max_length: int | None = None, truncation: str | None = None,
               pooling: str | None = None) -> Any:
    """A pars.model.scoring.PromptScorer of `checkpoint`; settings not given (None) as its ranker config says
    (else the original release's: bert-base-uncased, 128 tokens, head truncation, pooler output). A given one
    that contradicts the config is a PARSError."""
    from pars.model.scoring import PromptScorer  # here: the harness's other jobs never need torch

    return PromptScorer.from_checkpoint(checkpoint, "cpu", model_name=encoder, max_length=max_length,
                                        truncation=truncation, pooling=pooling)
