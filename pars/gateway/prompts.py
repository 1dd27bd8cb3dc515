"""The text to score in an OpenAI completions or chat request, or None when there is none to score."""

from __future__ import annotations

from typing import Any

from pars.common.prompts import CHAT, COMPLETIONS, chat_text, completion_text, prompt_text

__all__ = ["CHAT", "COMPLETIONS", "SCORED_PATHS", "chat_text", "completion_text", "prompt_text", "requested_choices",
           "requested_tokens"]

SCORED_PATHS = frozenset({COMPLETIONS, CHAT})


def requested_tokens(path: str, body: dict[str, Any]) -> int | None:
    """The answer length the request asks for at most: `max_tokens`, or chat's `max_completion_tokens`."""
    if path not in SCORED_PATHS:
        return None
    for key in ("max_completion_tokens", "max_tokens") if path == CHAT else ("max_tokens",):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def requested_choices(path: str, body: dict[str, Any]) -> int:
    """How many answers the request asks for: `n` per prompt, times the prompts of a completions request given
    several. The usage of an answer with several sums their tokens, so it is no one answer's length."""
    n = body.get("n")
    per_prompt = n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
    prompt = body.get("prompt")
    prompts = len(prompt) if path == COMPLETIONS and isinstance(prompt, list) and prompt and isinstance(
        prompt[0], str | list) else 1
    return per_prompt * prompts
