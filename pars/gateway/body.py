"""Setting `priority` (and, when answers are read for their usage, `stream_options`) in a JSON request body
while every other byte stays as the client sent it.

Re-serializing the parsed body would change whitespace, key order of duplicates, number spellings
(1.0e3, 1.00) and escapes; the upstream must see what the client sent. So the top-level members are
located with the stdlib JSON scanner and only the members the gateway sets are written or replaced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

_DECODER = json.JSONDecoder()
_WS = " \t\n\r"


@dataclass
class ParsedBody:
    text: str
    value: dict[str, Any]
    open_brace: int  # index of the object's `{`
    members: list[tuple[str, int, int]]  # (key, value start, value end) of each top-level member


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def parse_object(raw: bytes) -> ParsedBody | None:
    """The body as a JSON object with the spans of its top-level values; None if it is not one
    (not UTF-8, not JSON, not an object): such a body is forwarded untouched for the upstream to judge."""
    try:
        text = raw.decode("utf-8")
        return _scan(text)
    except (UnicodeDecodeError, ValueError, IndexError, RecursionError):
        return None


def _scan(text: str) -> ParsedBody | None:
    """One pass of the stdlib scanner over the top level (values parsed as json.loads would, the last of
    duplicate keys winning); raises ValueError or IndexError on anything that is not one JSON object."""
    open_brace = _skip_ws(text, 0)
    if text[open_brace] != "{":
        return None
    value: dict[str, Any] = {}
    members: list[tuple[str, int, int]] = []
    pos = _skip_ws(text, open_brace + 1)
    if text[pos] != "}":
        while True:
            if text[pos] != '"':
                raise ValueError("expected a key")
            key, pos = json.decoder.scanstring(text, pos + 1)
            pos = _skip_ws(text, pos)
            if text[pos] != ":":
                raise ValueError("expected ':'")
            start = _skip_ws(text, pos + 1)
            value[key], end = _DECODER.raw_decode(text, start)
            members.append((key, start, end))
            pos = _skip_ws(text, end)
            if text[pos] == "}":
                break
            if text[pos] != ",":
                raise ValueError("expected ',' or '}'")
            pos = _skip_ws(text, pos + 1)
    if _skip_ws(text, pos + 1) != len(text):
        raise ValueError("extra data after the object")
    return ParsedBody(text, value, open_brace, members)


def with_priority(parsed: ParsedBody, priority: int) -> bytes:
    """The body with top-level `priority` set (with_members)."""
    return with_members(parsed, {"priority": str(int(priority))})


def with_members(parsed: ParsedBody, members: dict[str, str]) -> bytes:
    """The body with these top-level members set, each to its JSON literal: every existing top-level member
    of that key has its value replaced (with duplicates, JSON parsers keep the last; all are replaced so none
    survives), or, when there is none, `"key": literal` is inserted before the first member, in the order
    given. Every other byte stays as the client sent it."""
    text = parsed.text
    spans = sorted((s, e, members[k]) for k, s, e in parsed.members if k in members)
    present = {k for k, _, _ in parsed.members}
    inserted = "".join(f"{json.dumps(k)}: {v}, " for k, v in members.items() if k not in present)
    if inserted and not parsed.members:
        inserted = inserted[:-2]  # an empty object: no member follows
    at = parsed.open_brace + 1
    out, last = [text[:at], inserted], at
    for start, end, literal in spans:
        out += [text[last:start], literal]
        last = end
    out.append(text[last:])
    return "".join(out).encode("utf-8")
