"""--build-model: the random-weight Llama vLLM serves in the experiment, with a tokenizer trained on the
trace's own rows (nothing downloaded), and a rough timing of its decode step."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.lib.traces import answer_of

# A minimal chat template so /v1/chat/completions works too (the experiment itself uses /v1/completions).
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def build_model(out_dir: Path, rows: Sequence[dict], hidden_size: int = 512, layers: int = 4, heads: int = 8,
                kv_heads: int | None = None, intermediate_size: int = 1536, vocab_size: int = 8192,
                max_position: int = 2048, seed: int = 0) -> dict[str, Any]:
    """Save a random-weight Llama and a tokenizer trained on `rows` to `out_dir`; returns what was built.

    Random weights are enough: with ignore_eos and max_tokens vLLM's cost per request depends on the shapes,
    not on what the weights say. The tokenizer is trained locally (nothing downloaded) on the trace's own
    text, so token counts look like a real model's on this data."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator((t for r in rows for t in (r["prompt"], answer_of(r) or "")), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                        model_max_length=max_position)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out_dir)

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads or heads, max_position_embeddings=max_position,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    params = sum(p.numel() for p in model.parameters())

    # Loadable the way a server loads it, and runs: a failure here beats one in vLLM's start-up log.
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir)
    tok = AutoTokenizer.from_pretrained(out_dir)
    ids = tok("hello world", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = reloaded(ids).logits
    assert logits.shape[-1] == len(tokenizer)
    info = {"dir": str(out_dir), "params": params, "params_m": round(params / 1e6, 2), "vocab": len(tokenizer),
            "hidden_size": hidden_size, "layers": layers, "heads": heads, "kv_heads": kv_heads or heads,
            "intermediate_size": intermediate_size, "max_position": max_position, "seed": seed,
            "tokenizer_rows": len(rows)}
    (out_dir / "pars_build.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def time_decode_step(model_dir: Path, batch: int, steps: int = 16, context: int = 128) -> float:
    """Median ms of one decode step of `batch` sequences with transformers' eager model: a rough guide for
    sizing (vLLM's CPU kernels differ); check the real step time in vLLM's own log."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, context))
    times = []
    with torch.no_grad():
        out = model(ids, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        for _ in range(steps):
            started = time.perf_counter()
            out = model(nxt, past_key_values=past, use_cache=True)
            times.append((time.perf_counter() - started) * 1000)
            past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    return float(np.median(times))
