"""The text of an OpenAI completions or chat request that the ranker scores: one rule for the gateway (which
scores it) and stage 1 from recorded traffic (which trains on it), so a ranker learns from what it is asked."""

from __future__ import annotations

from typing import Any

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"


def completion_text(body: dict[str, Any]) -> str | None:
    """`prompt` as a string; a list of strings is several prompts in one request: scored by its first.
    Token ids (a list of ints, or of lists) carry no text the ranker can read: None."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        return prompt[0]
    return None


def _content_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # parts: text, images, audio...; only the text parts are read
        texts = [p["text"] for p in content
                 if isinstance(p, dict) and p.get("type", "text") == "text" and isinstance(p.get("text"), str)]
        return "\n".join(texts) if texts else None
    return None


def chat_text(body: dict[str, Any]) -> str | None:
    """The last `user` message: what the user asked now, as the ranker was trained on (single-turn
    prompts). System prompts and earlier turns are left out."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _content_text(message.get("content"))
    return None


def prompt_text(path: str, body: dict[str, Any]) -> str | None:
    if path == COMPLETIONS:
        return completion_text(body)
    if path == CHAT:
        return chat_text(body)
    return None
