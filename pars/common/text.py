"""Making any prompt scoreable: cut to a character cap, and lone surrogates replaced.

One odd prompt must never fail the others scored beside it (a scheduler calling /score_batch every step
would lose the whole step). JSON may carry lone surrogates ("\\ud800"), which no tokenizer can take; a
prompt of millions of characters would take the tokenizer seconds although the ranker reads only its
first (and, with middle truncation, last) few hundred tokens. Both are repaired here, before tokenizing,
by the service and the gateway alike.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


def replace_surrogates(text: str) -> str:
    """`text` with every unpaired surrogate replaced by U+FFFD (paired ones, as a JSON decoder may leave
    them, joined into their character): always encodable as UTF-8."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def cut_chars(text: str, max_chars: int, keep_tail: bool) -> str:
    """At most `max_chars` characters: the first ones, or (`keep_tail`) the first and the last half each,
    which is what the ranker reads of a long prompt under head or middle truncation."""
    if len(text) <= max_chars:
        return text
    if not keep_tail:
        return text[:max_chars]
    head = (max_chars + 1) // 2
    return text[:head] + text[len(text) - (max_chars - head):]


def scoreable(text: str, max_chars: int, keep_tail: bool) -> tuple[str, bool]:
    """The prompt as the ranker may read it, and whether it had to be changed to be (cut or repaired)."""
    fixed = replace_surrogates(cut_chars(text, max_chars, keep_tail))
    return fixed, fixed is not text
