"""An answer's token counts and finish reason, read as the answer is relayed: from a JSON body, or from an
SSE stream; and asking a streamed request for its usage without the client seeing the difference.

A streamed answer carries its token counts only in a final usage-only chunk (`"choices": []`, `"usage": {...}`),
sent when the request has `stream_options.include_usage`. When the client did not ask for it, the gateway may
(GATEWAY_RECORD_STREAM_USAGE): `usage_literal` is the `stream_options` it sends upstream instead, and
`SseReader(strip=True)` takes the usage chunk out of what the client receives. Taking it out is not quite
enough in front of vLLM: vLLM stamps `system_fingerprint` on a stream's terminal chunk (the one with a
finish_reason) only when no usage chunk follows, and on the usage chunk otherwise
(vllm/entrypoints/openai/*/serving.py). So a terminal chunk is held until the next event arrives (the usage
chunk: vLLM sends it right after) and gets the usage chunk's fingerprint back as its last member, where vLLM
puts it, so the client's bytes are those it gets without the gateway asking.

Only whole events are held, and only while stripping: an SSE client acts on an event at its blank line, so
holding an event's first bytes until its last have come delays nothing it could see.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pars.gateway.prompts import requested_choices

# A non-streamed body longer than this is relayed without being read: its usage is then unknown. Answers
# are some kilobytes (a 32k-token one some 150 KB); parsing one of megabytes (logprobs) would hold the event
# loop for milliseconds.
MAX_JSON_BYTES = 2 << 20
# An SSE event longer than this stops the reading of that stream (relayed as is from then on).
MAX_EVENT_BYTES = 1 << 20
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
# Only events that may carry usage or a finish reason are parsed: a token chunk has `"finish_reason":null`.
_INTERESTING = re.compile(rb'"(?:usage"\s*:\s*\{|finish_reason"\s*:\s*")')


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None  # of choices[0] (index 0)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _first_finish(obj: dict[str, Any]) -> str | None:
    choices = obj.get("choices")
    if not isinstance(choices, list):
        return None
    for choice in choices:
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            reason = choice.get("finish_reason")
            return reason if isinstance(reason, str) else None
    return None


def _usage_counts(obj: dict[str, Any]) -> tuple[int | None, int | None] | None:
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        return None
    return _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))


def usage_literal(path: str, body: dict[str, Any]) -> str | None:
    """The `stream_options` JSON to send upstream so that a streamed answer ends with its usage chunk, or None
    where the gateway should not ask: not streamed, the client asked already (the chunk is then its own), or
    asking would change more than that chunk: continuous_usage_stats (usage in every chunk), several choices
    (n > 1, or several completions prompts: their terminal chunks are not followed by the usage chunk), or a
    stream_options that is not an object (left for the upstream to refuse)."""
    if body.get("stream") is not True or body.get("n", 1) not in (1, None) or requested_choices(path, body) > 1:
        return None
    options = body.get("stream_options")
    if options is None:
        return '{"include_usage": true}'
    if not isinstance(options, dict) or options.get("include_usage") or options.get("continuous_usage_stats"):
        return None
    return json.dumps({**options, "include_usage": True})


class JsonReader:
    """A JSON answer's usage: the body is kept as it goes by (up to MAX_JSON_BYTES) and read at its end."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> bytes:
        self._size += len(chunk)
        if self._size <= MAX_JSON_BYTES:
            self._parts.append(chunk)
        else:
            self._parts.clear()
        return chunk

    def flush(self) -> bytes:
        return b""

    def result(self) -> Usage:
        if not self._parts or self._size > MAX_JSON_BYTES:
            return Usage()
        try:
            obj = json.loads(b"".join(self._parts))
        except (ValueError, RecursionError):
            return Usage()
        if not isinstance(obj, dict):
            return Usage()
        prompt, completion = _usage_counts(obj) or (None, None)
        return Usage(prompt, completion, _first_finish(obj))


def _event_json(event: bytes) -> dict[str, Any] | None:
    """The JSON object of an event's data lines, or None (a comment, [DONE], anything else)."""
    lines = event.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    data = [ln[5:].removeprefix(b" ") for ln in lines if ln.startswith(b"data:")]
    if not data:
        return None
    try:
        obj = json.loads(b"\n".join(data))
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _with_fingerprint(event: bytes, fingerprint: str) -> bytes:
    """A terminal chunk with `system_fingerprint` as its last member, as vLLM writes it (compact JSON)."""
    end = event.rfind(b"}")
    return event[:end] + b',"system_fingerprint":' + json.dumps(fingerprint).encode() + event[end:]


class SseReader:
    """An SSE answer's usage (from its usage chunk) and choice 0's finish reason, read event by event. With
    `strip`, the usage-only chunks are taken out of the relayed bytes (see the module's docstring)."""

    def __init__(self, strip: bool) -> None:
        self.strip = strip
        self._buffer = bytearray()  # bytes after the last whole event
        self._scanned = 0  # of _buffer, already searched for an event's end
        self._held: list[bytes] = []  # stripping: terminal chunks waiting for the next event
        self._gave_up = False
        self._prompt_tokens: int | None = None
        self._completion_tokens: int | None = None
        self._finish: str | None = None

    def feed(self, chunk: bytes) -> bytes:
        if self._gave_up:
            return chunk
        self._buffer += chunk
        out: list[bytes] = []
        while (match := _EVENT_END.search(self._buffer, max(0, self._scanned - 3))) is not None:
            event = bytes(self._buffer[: match.end()])
            del self._buffer[: match.end()]
            self._scanned = 0
            out.append(self._event(event))
        self._scanned = len(self._buffer)
        if len(self._buffer) > MAX_EVENT_BYTES:  # not SSE as expected: stop reading, relay everything
            self._gave_up = True
            out += [*self._held, bytes(self._buffer)] if self.strip else []
            self._held, self._buffer = [], bytearray()
        if not self.strip:
            return chunk
        return b"".join(out)

    def flush(self) -> bytes:
        """What is still held when the upstream's answer ends (stripping: an unfinished last event)."""
        if not self.strip or self._gave_up:
            return b""
        out = b"".join(self._held) + bytes(self._buffer)
        self._held, self._buffer = [], bytearray()
        return out

    def result(self) -> Usage:
        return Usage(self._prompt_tokens, self._completion_tokens, self._finish)

    def _event(self, event: bytes) -> bytes:
        """Reads one whole event; returns the bytes to relay now (stripping; ignored otherwise)."""
        obj = _event_json(event) if _INTERESTING.search(event) else None
        finish = _first_finish(obj) if obj is not None else None
        if finish is not None:
            self._finish = finish
        counts = _usage_counts(obj) if obj is not None else None
        if counts is not None:
            self._prompt_tokens, self._completion_tokens = counts
        if not self.strip:
            return b""
        held, self._held = self._held, []
        if counts is not None and obj.get("choices") == []:  # the usage chunk the gateway asked for
            fingerprint = obj.get("system_fingerprint")
            if isinstance(fingerprint, str):
                held = [_with_fingerprint(e, fingerprint) for e in held]
            return b"".join(held)
        if obj is not None and isinstance(obj.get("choices"), list) and "system_fingerprint" not in obj and any(
                isinstance(c, dict) and c.get("finish_reason") is not None for c in obj["choices"]):
            self._held.append(event)  # a terminal chunk: the usage chunk may bring its fingerprint
            return b"".join(held)
        return b"".join(held) + event
