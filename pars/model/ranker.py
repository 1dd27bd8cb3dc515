"""The ranker: a pretrained encoder and `Linear(hidden, 1)` on its pooled output.

Attribute names (`encoder`, `fc`) and therefore checkpoint keys (`encoder.*`, `fc.weight`,
`fc.bias`) are those of the original release, so checkpoints move both ways unchanged.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from pars.common.errors import PARSError
from pars.common.hub import load_pretrained

# How the encoder's output becomes one vector per prompt. `pooler`: the original release's pooler output
# (the CLS hidden state when the encoder has no pooler). `mean`: the mean of the hidden states of the real
# (unpadded) tokens, which is what sentence-transformers encoders such as all-MiniLM-L6-v2 were trained
# to pool; their pooler layer was left untouched by that training. Pooling has no weights of its own, so
# checkpoint keys are the same either way; a ranker must be scored with the pooling it was trained with.
POOLINGS = ("pooler", "mean")


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise PARSError(f"unknown pooling {pooling!r} (use {' or '.join(POOLINGS)})")
    return pooling


def expected_bucket(logits: torch.Tensor) -> torch.Tensor:
    """A classification ranker's score: sum_k softmax(logits)_k * k, in [0, K - 1]. Monotone in what the head
    believes about the length, and smooth, so near-ties still order."""
    probs = torch.softmax(logits.float(), dim=-1)
    return probs @ torch.arange(logits.shape[-1], dtype=probs.dtype, device=probs.device)


class PairwiseRanker(nn.Module):
    """score(prompt) = fc(pooled encoder output): the pooler output (CLS hidden state when there is no
    pooler) by default, or the masked mean of the token states with pooling="mean". A head of
    `num_classes` > 1 outputs (--loss classification: one per length bucket) scores the expected bucket."""

    def __init__(self, encoder: PreTrainedModel, pooling: str = "pooler", num_classes: int = 1) -> None:
        super().__init__()
        self.encoder = encoder
        self.fc = nn.Linear(encoder.config.hidden_size, num_classes)
        self.pooling = check_pooling(pooling)

    @classmethod
    def from_pretrained(cls, model_name: str, pooling: str = "pooler", num_classes: int = 1) -> PairwiseRanker:
        """Encoder weights from a hub id, a local directory or the offline alias; fc fresh."""
        return cls(load_pretrained(AutoModel, model_name, what="encoder"), pooling, num_classes)

    @property
    def num_classes(self) -> int:
        return self.fc.out_features

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        if self.pooling == "mean":
            hidden = outputs.last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        pooled = getattr(outputs, "pooler_output", None)
        if pooled is not None:
            return pooled
        return outputs.last_hidden_state[:, 0]

    def head(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """fc's outputs, (batch, num_classes): what the classification loss trains."""
        return self.fc(self.encode(input_ids, attention_mask))

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.head(input_ids, attention_mask)
        return out.squeeze(-1) if out.shape[-1] == 1 else expected_bucket(out)

    def forward(
        self,
        input_ids_A: torch.Tensor,
        attention_mask_A: torch.Tensor,
        input_ids_B: torch.Tensor,
        attention_mask_B: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.score(input_ids_A, attention_mask_A), self.score(input_ids_B, attention_mask_B)


def load_tokenizer(model_name: str) -> PreTrainedTokenizerBase:
    return load_pretrained(AutoTokenizer, model_name, what="tokenizer")
