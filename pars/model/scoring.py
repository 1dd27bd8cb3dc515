"""Scoring prompts with a ranker: tokenization, batching and the forward pass in one place.

Used by the service, the evaluator and training-time evaluation so that every score in the
project comes from the same code path.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
from transformers import PreTrainedTokenizerBase

from pars.common.errors import PARSError
from pars.model import precision
from pars.model.checkpoint import load_ranker
from pars.model.ranker import PairwiseRanker, load_tokenizer
from pars.model.ranker_config import RankerConfig, resolve
from pars.model.truncation import check_truncation, encode_prompts


def resolve_device(device: str | None) -> torch.device:
    """'auto' (or None): cuda when available, else cpu; otherwise the named device, checked."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise PARSError(f"device {device!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise PARSError(f"device {device!r}: CUDA is not available on this machine")
    return resolved


class Ranker(Protocol):
    """What inference needs of a model: a PairwiseRanker, or the ONNX Runtime one (pars.backends)."""

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...


def pad_ids(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token-id lists to the longest: (input_ids, attention_mask), as the tokenizer pads."""
    longest = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), longest), dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = torch.as_tensor(x, dtype=torch.long)
        attention_mask[row, : len(x)] = 1
    return input_ids, attention_mask


class PromptScorer:
    """Scores prompts; a higher score means a longer expected response.

    Thread-safe: concurrent callers take turns on the model, one at a time unless `set_concurrency` says
    otherwise (interleaved multi-threaded passes on the same cores only slow each other down; the service
    runs PREDICTOR_INFERENCE_WORKERS passes of fewer threads each).
    """

    def __init__(
        self,
        model: PairwiseRanker | Ranker,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int = 128,
        device: str | torch.device | None = None,
        truncation: str = "head",
    ) -> None:
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.model = model.to(self.device).eval() if isinstance(model, torch.nn.Module) else model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.truncation = check_truncation(truncation)
        pad = tokenizer.pad_token_id
        self.pad_id = 0 if pad is None else int(pad)
        self._slots = threading.BoundedSemaphore(1)
        self.autocast_dtype: torch.dtype | None = None
        self.dtype = torch.float32  # what the passes compute in (set_dtype)
        self.config: RankerConfig | None = None  # the settings it was loaded with, when loaded from a checkpoint

    @classmethod
    def from_checkpoint(cls, checkpoint: str, device: str | torch.device | None = None, **given) -> PromptScorer:
        """A checkpoint (or exported directory) scored as its ranker config says, float32; settings given (not
        None) on top, a contradiction refused (pars/model/ranker_config.py)."""
        config = resolve(checkpoint, given, name=lambda key: "--" + key.replace("_", "-"))
        tokenizer = load_tokenizer(checkpoint if Path(checkpoint).is_dir() else config.model_name)
        scorer = cls(load_ranker(config.model_name, checkpoint, config.pooling), tokenizer,
                     max_length=config.max_length, device=device, truncation=config.truncation)
        scorer.config = config
        return scorer

    def set_dtype(self, dtype: torch.dtype) -> None:
        """Score in `dtype`, once per scorer (float32 is the loaded state). On CUDA the weights are cast. On CPU
        only bfloat16 is offered, as autocast: layer norms, softmax and embeddings stay float32 and the matmuls
        run in bfloat16, which made batches 2.7x faster on a CPU with AMX
        (benchmarks/results/backend_bench_bf16_cpu.json). Casting every weight instead makes every op bfloat16,
        and was 13x slower here (backend_bench_dtype_cpu.json). The linear layers' weights are cast once here,
        to what autocast would cast them to on every pass (the same scores): that per-pass cast of the whole
        encoder was most of a lone prompt's pass (17 ms of which 7.5 here, MiniLM). Scores return as float32."""
        if dtype == self.dtype:
            return
        if self.dtype != torch.float32 or dtype == torch.float32:
            raise PARSError(f"a scorer's precision is set once; this one already scores in {self.dtype} "
                            "(load the ranker again for another)")
        if not isinstance(self.model, torch.nn.Module):
            raise PARSError(f"{dtype} scoring needs the torch backend")
        if self.device.type == "cuda":
            self.model.to(dtype)
        elif self.device.type == "cpu" and dtype == torch.bfloat16:
            self.autocast_dtype = dtype
            for module in self.model.modules():
                if isinstance(module, torch.nn.Linear):
                    module.to(dtype)
        else:
            raise PARSError(f"{str(dtype).removeprefix('torch.')} scoring needs a CUDA device (this one is "
                            f"{self.device}); on CPU use float32 or bfloat16")
        self.dtype = dtype

    def set_concurrency(self, passes: int) -> None:
        """Let `passes` forward passes run at once from different threads (the model is only read in them):
        for a caller that bounds its own concurrency, as the service's inference engine does."""
        self._slots = threading.BoundedSemaphore(passes)

    def tokenize(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Pad to the longest prompt of the call, truncate at max_length."""
        if self.truncation != "head":
            input_ids, attention_mask = pad_ids(self.encode(prompts), self.pad_id)
            return {"input_ids": input_ids, "attention_mask": attention_mask}
        enc = self.tokenizer(
            list(prompts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    @torch.inference_mode()
    def _forward(self, batch: dict[str, torch.Tensor]) -> list[float]:
        input_ids = batch["input_ids"].to(self.device, non_blocking=True)
        attention_mask = batch["attention_mask"].to(self.device, non_blocking=True)
        with precision.autocast(self.autocast_dtype, self.device):
            return self.model.score(input_ids, attention_mask).float().cpu().tolist()

    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids per prompt, truncated at max_length (pars/model/truncation.py), unpadded."""
        return encode_prompts(self.tokenizer, prompts, self.max_length, self.truncation)

    def score_ids(self, ids: Sequence[Sequence[int]]) -> list[float]:
        """Token-id lists (from `encode`) padded together, in one forward pass."""
        if not ids:
            return []
        input_ids, attention_mask = pad_ids(ids, self.pad_id)
        with self._slots:
            return self._forward({"input_ids": input_ids, "attention_mask": attention_mask})

    def score(self, prompts: Sequence[str]) -> list[float]:
        """All prompts in one forward pass, as the original service does per request."""
        if not prompts:
            return []
        batch = self.tokenize(prompts)
        with self._slots:
            return self._forward(batch)

    def score_many(self, prompts: Sequence[str], batch_size: int = 64, progress: bool = False) -> list[float]:
        """Many prompts in length-sorted batches (little padding), returned in input order."""
        if not prompts:
            return []
        lengths = [len(ids) for ids in self.encode(prompts)]
        order = sorted(range(len(prompts)), key=lengths.__getitem__)
        scores = [0.0] * len(prompts)
        starts = range(0, len(order), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="Scoring", unit="batch", leave=False)
        for start in starts:
            idx = order[start : start + batch_size]
            for i, s in zip(idx, self.score([prompts[i] for i in idx]), strict=True):
                scores[i] = s
        return scores
