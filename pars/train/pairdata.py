"""Training data as token-id tables: prompts tokenized once, pairs and rows indexed into them, collated
into padding-light passes.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from pars.common.errors import PARSError
from pars.data.readers import check_pair, iter_json_list, subsample
from pars.model.padding import plan_passes
from pars.model.truncation import check_truncation, encode_prompts


class ListDataset(Dataset):
    """Pairs or rows held in memory; the collator turns a batch of them into tensors."""

    def __init__(self, items: Sequence[dict[str, Any]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        return self.items[idx]


class PairCollator:
    """The original release's collate (`--batching original`): tokenizes a batch of pairs as it is drawn,
    A and B each padded to `max_length` tokens whatever the prompts' lengths, scored in two passes."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int, truncation: str = "head") -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.truncation = check_truncation(truncation)

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.truncation == "head":
            enc = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
        else:
            ids = encode_prompts(self.tokenizer, prompts, self.max_length, self.truncation)
            enc = self.tokenizer.pad({"input_ids": ids}, padding="max_length", max_length=self.max_length,
                                     return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        ids_a, mask_a = self._encode([p["prompt_A"] for p in batch])
        ids_b, mask_b = self._encode([p["prompt_B"] for p in batch])
        return {"input_ids": [ids_a, ids_b], "attention_mask": [mask_a, mask_b],
                "restore": torch.arange(2 * len(batch)),
                "labels": torch.tensor([float(p["label"]) for p in batch], dtype=torch.float32)}


# A batch's prompts are sorted by length and cut into at most MAX_PASSES forward passes; each cut beyond the
# first pass must save at least SPLIT_MIN_SAVED_TOKENS padded tokens: below that, the fixed cost of the extra
# pass (kernel launches, the pooler, Python) outweighs it. The cut itself is pars/model/padding.py's, as in serving.
SPLIT_MIN_SAVED_TOKENS = 64


MAX_PASSES = 4


class TokenTable:
    """Token ids of distinct prompts, stored once as one flat int32 array with offsets."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, pad_id: int, pad_left: bool = False) -> None:
        self.ids, self.offsets, self.pad_id, self.pad_left = ids, offsets, pad_id, pad_left
        self.lengths = np.diff(offsets).astype(np.int64)

    @classmethod
    def build(cls, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], max_length: int,
              chunk: int = 2048, progress: bool = True, truncation: str = "head") -> TokenTable:
        """Tokenize (with special tokens, truncated at max_length) exactly as the original collate does,
        only once per prompt."""
        from tqdm.auto import tqdm

        pieces: list[np.ndarray] = []
        lengths: list[int] = []
        for start in tqdm(range(0, len(prompts), chunk), desc="Tokenizing", unit="chunk", disable=not progress):
            for ids in encode_prompts(tokenizer, prompts[start : start + chunk], max_length, truncation):
                pieces.append(np.asarray(ids, dtype=np.int32))
                lengths.append(len(ids))
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return cls(ids, offsets, pad_id, pad_left=tokenizer.padding_side == "left")

    def __len__(self) -> int:
        return len(self.lengths)

    def pad(self, indices: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) of these prompts, padded to the longest of them."""
        width = int(self.lengths[indices].max()) if len(indices) else 0
        ids = np.full((len(indices), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(indices), width), dtype=np.int64)
        for row, k in enumerate(indices):
            seq = self.ids[self.offsets[k] : self.offsets[k + 1]]
            cols = slice(width - len(seq), width) if self.pad_left else slice(0, len(seq))
            ids[row, cols] = seq
            mask[row, cols] = 1
        return torch.from_numpy(ids), torch.from_numpy(mask)


def index_prompts(prompts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """(distinct prompts, index of each input prompt among them)."""
    position: dict[str, int] = {}
    idx = np.fromiter((position.setdefault(p, len(position)) for p in prompts), dtype=np.int32, count=len(prompts))
    return list(position), idx


class PairIndex:
    """Pairs as (prompt index A, prompt index B, label) arrays over one TokenTable."""

    def __init__(self, prompts: Sequence[str], a: np.ndarray, b: np.ndarray, labels: np.ndarray,
                 tokenizer: PreTrainedTokenizerBase, max_length: int, progress: bool = True,
                 truncation: str = "head") -> None:
        used = np.unique(np.concatenate([a, b]))  # prompts a subsample no longer references are not tokenized
        remap = np.full(len(prompts), -1, dtype=np.int32)
        remap[used] = np.arange(len(used), dtype=np.int32)
        self.table = TokenTable.build(tokenizer, [prompts[k] for k in used], max_length, progress=progress,
                                      truncation=truncation)
        self.a, self.b, self.labels = remap[a], remap[b], labels.astype(np.float32)

    @classmethod
    def from_pairs(cls, pairs: Sequence[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, max_length: int,
                   progress: bool = True, truncation: str = "head") -> PairIndex:
        distinct, idx = index_prompts([p[k] for p in pairs for k in ("prompt_A", "prompt_B")])
        labels = np.fromiter((p["label"] for p in pairs), dtype=np.float32, count=len(pairs))
        return cls(distinct, idx[0::2], idx[1::2], labels, tokenizer, max_length, progress, truncation)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], tokenizer: PreTrainedTokenizerBase, max_length: int,
                  limit: int | None = None, seed: int = 0, what: str = "train file",
                  progress: bool = True, truncation: str = "head") -> PairIndex:
        """Stream a pair file, checking each pair as load_pairs does and keeping only prompt indices and
        labels: memory grows with the distinct prompts, not with the pairs. `limit`/`seed` pick the same
        subset as subsample()."""
        from tqdm.auto import tqdm

        position: dict[str, int] = {}
        a, b, labels = array("i"), array("i"), array("b")
        for i, item in enumerate(tqdm(iter_json_list(path, what), desc="Reading pairs", unit=" pairs",
                                      disable=not progress)):
            check_pair(item, i, what, path)
            a.append(position.setdefault(item["prompt_A"], len(position)))
            b.append(position.setdefault(item["prompt_B"], len(position)))
            labels.append(item["label"])
        if not labels:
            raise PARSError(f"{what} {path} holds no pairs")
        keep = np.asarray(subsample(list(range(len(labels))), limit, seed), dtype=np.int64)
        arrays = (np.frombuffer(x, dtype=x.typecode)[keep] for x in (a, b, labels))
        return cls(list(position), *arrays, tokenizer, max_length, progress, truncation)

    def __len__(self) -> int:
        return len(self.labels)

    def group_lengths(self) -> np.ndarray:
        """Sort key of each pair for length-grouped batching: its longer prompt's tokens, then its shorter's.
        (On the ShareGPT pairs this pads 1.07 tokens per real token against 1.35 for ungrouped batches.)"""
        la, lb = self.table.lengths[self.a], self.table.lengths[self.b]
        return np.maximum(la, lb) * (int(self.table.lengths.max(initial=0)) + 1) + np.minimum(la, lb)

    def group_ids(self) -> np.ndarray:
        """Group of each pair for prompt-grouped batching: its prompt A. The pair files pair every row with up to
        ~10 partners as prompt A, so a batch of whole groups encodes ~1.1 prompts per pair instead of 2."""
        return self.a

    def group_key_lengths(self) -> np.ndarray:
        """Sort key for prompt-grouped batching: the token length of the pair's (shared) prompt A."""
        return self.table.lengths[self.a]


class RowIndex:
    """Rows of train_data.json (for in-batch pairing) as prompt indices and answer lengths."""

    def __init__(self, rows: Sequence[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, max_length: int,
                 progress: bool = True, truncation: str = "head") -> None:
        distinct, self.prompt = index_prompts([r["prompt"] for r in rows])
        self.table = TokenTable.build(tokenizer, distinct, max_length, progress=progress, truncation=truncation)
        self.answer_lengths = np.fromiter((r["answer_length"] for r in rows), dtype=np.float32, count=len(rows))

    def __len__(self) -> int:
        return len(self.answer_lengths)

    def group_lengths(self) -> np.ndarray:
        return self.table.lengths[self.prompt]


def split_sorted(lengths: np.ndarray, max_passes: int = MAX_PASSES,
                 overhead: int = SPLIT_MIN_SAVED_TOKENS) -> tuple[np.ndarray, list[np.ndarray]]:
    """Sort a batch's prompts by token length and cut it into the forward passes (at most `max_passes`) that
    pad the fewest tokens, each extra pass counted as `overhead` tokens more. Returns (position of each
    prompt in the concatenated passes, the prompt positions of each pass)."""
    order = np.argsort(lengths, kind="stable")
    spans = plan_passes(np.asarray(lengths)[order], overhead, max_passes=max_passes)
    passes = [order[start:end] for start, end in spans] if spans else [order]
    restore = np.empty(len(order), dtype=np.int64)
    restore[order] = np.arange(len(order))
    return restore, passes


def padded_batch(table: TokenTable, prompt_idx: np.ndarray) -> dict[str, Any]:
    """Forward passes for these prompts (length-sorted, each padded to its own longest) and `restore`,
    which maps the concatenated scores back to the order of `prompt_idx`."""
    restore, passes = split_sorted(table.lengths[prompt_idx])
    input_ids, attention_mask = zip(*(table.pad(prompt_idx[p]) for p in passes), strict=True)
    return {"input_ids": list(input_ids), "attention_mask": list(attention_mask),
            "restore": torch.from_numpy(restore)}


class FastPairCollator:
    """Collate of pair indices: the distinct A and B prompts of the batch as one set, so the shorter prompt of
    a pair is never padded to its partner's length; `restore` maps the scores to the 2n slots (A first)."""

    def __init__(self, index: PairIndex) -> None:
        self.index = index

    def __call__(self, batch: list[int]) -> dict[str, Any]:
        sel = np.asarray(batch, dtype=np.int64)
        # a prompt in several of the batch's pairs (a shared prompt A: see group_ids) is encoded once
        distinct, where = np.unique(np.concatenate([self.index.a[sel], self.index.b[sel]]), return_inverse=True)
        out = padded_batch(self.index.table, distinct)
        out["restore"] = out["restore"][torch.from_numpy(where)]
        out["labels"] = torch.from_numpy(self.index.labels[sel])
        return out


class FastRowCollator:
    """Collate of row indices for in-batch pairing: the rows' prompts and answer lengths."""

    def __init__(self, index: RowIndex) -> None:
        self.index = index

    def __call__(self, batch: list[int]) -> dict[str, Any]:
        sel = np.asarray(batch, dtype=np.int64)
        out = padded_batch(self.index.table, self.index.prompt[sel])
        out["lengths"] = torch.from_numpy(self.index.answer_lengths[sel])
        return out
