"""The text to score in an OpenAI completions or chat request, or None when there is none to score."""

from __future__ import annotations

from typing import Any

from pars.common.prompts import CHAT, COMPLETIONS, chat_text, completion_text, prompt_text

__all__ = ["CHAT", "COMPLETIONS", "SCORED_PATHS", "chat_text", "completion_text", "prompt_text", "requested_tokens"]

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
