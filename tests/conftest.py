"""Shared fixtures: a tiny BERT built here (no downloads) and tiny pair data."""

from __future__ import annotations

import gc
import inspect
import json
import os
import random
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

# Served scores are compared with float32 ones computed in-process, so the servers the tests start (in this
# process and as subprocesses) score in float32; the device default (bfloat16 on CPUs with AMX) has tests of its
# own, which unset this (tests/test_ranker_config.py).
os.environ["PREDICTOR_DTYPE"] = "float32"



@pytest.fixture(autouse=True)
def _unfreeze_gc():
    """A service started in this process freezes the collector's long-lived objects once ready
    (pars/serving/memory.py); a test session starts many, so each test leaves the collector as it found it."""
    yield
    gc.unfreeze()


WORDS = (
    "write explain list summarize a an the short long essay story poem code python function "
    "about history of rome math proof detailed brief one word answer yes no please give me "
    "step by steps many few and with in for to is what how why"
).split()


def make_tiny_model_dir(path: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT with a pooler and a WordPiece vocab, saved as an HF directory."""
    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS))]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # transformers 5 takes the vocabulary itself (`vocab=`); 4.x took `vocab_file=`.
    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:
        tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    else:
        tokenizer = BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True)
    assert "[UNK]" not in tokenizer.tokenize("write a long essay")
    tokenizer.save_pretrained(path)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-bert"))


def make_rows(n: int, seed: int) -> list[dict]:
    """Rows whose answer length follows the prompt ('long' prompts get long answers)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        long = rng.random() < 0.5
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
        prompt = ("write a long detailed essay " if long else "give a one word answer ") + prompt
        length = rng.randint(400, 900) if long else rng.randint(5, 60)
        rows.append({"task_id": i, "prompt": prompt, "answer_content": "x" * length, "answer_length": length})
    return rows


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """train/val pair files and val_data.json for the tiny model, made with the project's pairing rule."""
    from pars.data.pairs import make_pairs

    out = tmp_path_factory.mktemp("tiny-data")
    train_rows, val_rows = make_rows(60, 1), make_rows(20, 2)
    files = {
        "train_data.json": train_rows,
        "val_data.json": val_rows,
        "train_pairs_length_diff_0.2.json": make_pairs(train_rows, 4, 0.2, 42),
        "val_pairs_length_diff_0.2.json": make_pairs(val_rows, 4, 0.2, 43),
    }
    for name, data in files.items():
        (out / name).write_text(json.dumps(data), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def checkpoint(tiny_model_dir, tmp_path_factory) -> Path:
    """A ranker checkpoint (tiny encoder, seeded fc) for the serving tests."""
    from pars.model.checkpoint import save_checkpoint
    from pars.model.ranker import PairwiseRanker

    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("ckpt") / "best_model.pt"
    save_checkpoint(PairwiseRanker.from_pretrained(str(tiny_model_dir)), path)
    return path


@pytest.fixture(scope="module")
def direct(tiny_model_dir, checkpoint):
    """The same checkpoint scored in-process: what the service's answers must equal."""
    from transformers import AutoTokenizer

    from pars.model.checkpoint import load_ranker
    from pars.model.scoring import PromptScorer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    return PromptScorer(load_ranker(str(tiny_model_dir), checkpoint), tokenizer, max_length=128, device="cpu")
