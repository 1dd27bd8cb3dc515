"""Pair files as training data: validation of their contents, a Dataset and a collate."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from pars.errors import PARSError
from pars.jsonio import read_json


def load_pairs(path: str | os.PathLike[str], what: str = "pair file") -> list[dict[str, Any]]:
    """A non-empty list of {prompt_A: str, prompt_B: str, label: 0|1}; anything else is a PARSError."""
    data = read_json(path, what)
    if not isinstance(data, list):
        raise PARSError(f"{what} {path} must hold a JSON list of pairs, found {type(data).__name__}")
    if not data:
        raise PARSError(f"{what} {path} holds no pairs")
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise PARSError(f"{what} {path}: item {i} is not an object")
        for key in ("prompt_A", "prompt_B", "label"):
            if key not in item:
                raise PARSError(f"{what} {path}: item {i} has no {key!r} (needs prompt_A, prompt_B, label)")
        if not isinstance(item["prompt_A"], str) or not isinstance(item["prompt_B"], str):
            raise PARSError(f"{what} {path}: item {i}: prompt_A and prompt_B must be strings")
        if item["label"] not in (0, 1) or isinstance(item["label"], bool):
            raise PARSError(f"{what} {path}: item {i}: label must be 0 or 1, got {item['label']!r}")
    return data


def load_rows(path: str | os.PathLike[str], what: str = "data file") -> list[dict[str, Any]]:
    """Rows of train_data.json / val_data.json: each needs prompt (str) and answer_length (number)."""
    data = read_json(path, what)
    if not isinstance(data, list) or not data:
        raise PARSError(f"{what} {path} must hold a non-empty JSON list of rows")
    for i, row in enumerate(data):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise PARSError(f"{what} {path}: row {i} has no string 'prompt'")
        length = row.get("answer_length")
        if not isinstance(length, int | float) or isinstance(length, bool):
            raise PARSError(f"{what} {path}: row {i} has no numeric 'answer_length'")
    return data


def subsample(items: list[Any], limit: int | None, seed: int) -> list[Any]:
    """A seeded random subset of at most `limit` items, in their original order."""
    if limit is None or limit >= len(items):
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


class ListDataset(Dataset):
    """Pairs or rows held in memory; the collator turns a batch of them into tensors."""

    def __init__(self, items: Sequence[dict[str, Any]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        return self.items[idx]


class PairCollator:
    """Tokenizes a batch of pairs; A and B are each padded to their own longest prompt (at most
    max_length), which gives the same scores as padding to max_length with far less compute."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids_a, mask_a = self._encode([p["prompt_A"] for p in batch])
        ids_b, mask_b = self._encode([p["prompt_B"] for p in batch])
        return {
            "input_ids_A": ids_a,
            "attention_mask_A": mask_a,
            "input_ids_B": ids_b,
            "attention_mask_B": mask_b,
            "labels": torch.tensor([float(p["label"]) for p in batch], dtype=torch.float32),
        }


class RowCollator:
    """For in-batch pairing: tokenizes a batch of rows (prompt, answer_length), padded to its longest."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer([r["prompt"] for r in batch], padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "lengths": torch.tensor([float(r["answer_length"]) for r in batch], dtype=torch.float32),
        }


def in_batch_pairs(lengths: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every pair (i < j) of a batch whose relative length difference passes the threshold.

    Returns index tensors (i, j) and the MarginRankingLoss target (+1 when row i is longer), so the
    same loss as the pair files applies to all of the batch's usable pairs at once.
    """
    i, j = torch.triu_indices(len(lengths), len(lengths), offset=1, device=lengths.device)
    la, lb = lengths[i], lengths[j]
    longest = torch.maximum(la, lb)
    diff = torch.where(longest > 0, (la - lb).abs() / longest.clamp(min=1e-12), torch.zeros_like(la))
    keep = diff >= threshold
    return i[keep], j[keep], torch.where(la[keep] > lb[keep], 1.0, -1.0)
