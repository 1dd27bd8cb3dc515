"""Answer lengths counted in an LLM's own tokens (stage 1's --length-tokenizer).

The scheduler waits on decode steps, one per generated token of the model being served, so the length
that ranks jobs is the answer's token count in that model's tokenizer. The original release counts
characters (words for alpaca), which ranks the same way only where characters per token are constant; they
are not: prose, code and non-Latin scripts differ by several times.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tqdm.auto import tqdm


def load_length_tokenizer(name: str):
    """A tokenizer by hub id or local directory; a clear one-line error when it cannot be had."""
    from transformers import AutoTokenizer

    from pars.common.hub import load_pretrained

    return load_pretrained(AutoTokenizer, name, what="length tokenizer")


def count_tokens(tokenizer, texts: Sequence[str], batch_size: int = 256, desc: str | None = None) -> list[int]:
    """Tokens per text, without special tokens (BOS/EOS are not generated answer tokens)."""
    counts: list[int] = []
    starts: Iterable[int] = range(0, len(texts), batch_size)
    if desc:
        starts = tqdm(starts, desc=desc, unit="batch")
    for start in starts:
        batch = list(texts[start : start + batch_size])
        ids = tokenizer(batch, add_special_tokens=False)["input_ids"]
        counts.extend(len(x) for x in ids)
    return counts


def recount_lengths(rows: list[dict], tokenizer, desc: str | None = None) -> int:
    """Set each row's answer_length to its answer's token count, in place; rows whose answer has no token
    at all are dropped (they cannot be ranked). Returns the number dropped."""
    counts = count_tokens(tokenizer, [r["answer_content"] for r in rows], desc=desc)
    kept = []
    for row, n in zip(rows, counts, strict=True):
        if n > 0:
            row["answer_length"] = n
            kept.append(row)
    dropped = len(rows) - len(kept)
    rows[:] = kept
    return dropped

