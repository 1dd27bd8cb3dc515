"""Reading stage 1's row and pair files: validated item by item, streamed, one clear line on bad input.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pars.common.errors import PARSError
from pars.common.jsonio import read_json


def check_pair(item: Any, i: int, what: str, path: str | os.PathLike[str]) -> None:
    """{prompt_A: str, prompt_B: str, label: 0|1}, or a PARSError naming the item."""
    if not isinstance(item, dict):
        raise PARSError(f"{what} {path}: item {i} is not an object")
    for key in ("prompt_A", "prompt_B", "label"):
        if key not in item:
            raise PARSError(f"{what} {path}: item {i} has no {key!r} (needs prompt_A, prompt_B, label)")
    if not isinstance(item["prompt_A"], str) or not isinstance(item["prompt_B"], str):
        raise PARSError(f"{what} {path}: item {i}: prompt_A and prompt_B must be strings")
    if item["label"] not in (0, 1) or isinstance(item["label"], bool):
        raise PARSError(f"{what} {path}: item {i}: label must be 0 or 1, got {item['label']!r}")


def load_pairs(path: str | os.PathLike[str], what: str = "pair file") -> list[dict[str, Any]]:
    """A non-empty list of {prompt_A: str, prompt_B: str, label: 0|1}; anything else is a PARSError."""
    data = read_json(path, what)
    if not isinstance(data, list):
        raise PARSError(f"{what} {path} must hold a JSON list of pairs, found {type(data).__name__}")
    if not data:
        raise PARSError(f"{what} {path} holds no pairs")
    for i, item in enumerate(data):
        check_pair(item, i, what, path)
    return data


def iter_json_list(path: str | os.PathLike[str], what: str, chunk_chars: int = 1 << 20) -> Iterator[Any]:
    """The items of a JSON list file one at a time, reading it in chunks: memory holds one chunk and one
    item, not the whole document (a pair file of 100k pairs is 220 MB of text and ~2 GB parsed).
    A file whose top level is not a list is read whole, for read_json's and the caller's usual errors."""
    path = Path(path)
    decoder = json.JSONDecoder()

    def invalid(msg: str, at: int) -> PARSError:
        return PARSError(f"{what} is not valid JSON (truncated or corrupt?): {path} near character {at}: {msg}")

    try:
        f = path.open("r", encoding="utf-8")
    except OSError:
        yield from _whole_list(path, what)  # read_json words the error (not found, a directory, ...)
        return
    with f:
        buf, pos, base, eof = "", 0, 0, False

        def fill() -> bool:
            nonlocal buf, pos, base, eof
            more = "" if eof else f.read(chunk_chars)
            eof = eof or not more
            base += pos
            buf, pos = buf[pos:] + more, 0
            return bool(more)

        def skip_ws() -> str:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf) or not fill():
                    return buf[pos] if pos < len(buf) else ""

        try:
            if skip_ws() != "[":
                f.close()
                yield from _whole_list(path, what)
                return
            pos += 1
            if skip_ws() == "]":
                return
            while True:
                while True:  # decode one item, reading on while it runs past the buffer
                    try:
                        item, end = decoder.raw_decode(buf, pos)
                        if end < len(buf) or eof:
                            break
                    except json.JSONDecodeError as exc:
                        if eof:
                            raise invalid(exc.msg, base + exc.pos) from None
                    fill()
                pos = end
                yield item
                sep = skip_ws()
                if sep == "]":
                    pos += 1
                    if skip_ws():
                        raise invalid("extra data after the list", base + pos)
                    return
                if sep != ",":
                    raise invalid("expected ',' or ']'", base + pos)
                pos += 1
                skip_ws()
        except UnicodeDecodeError as exc:
            raise PARSError(f"{what} is not UTF-8 text: {path} (byte {exc.start})") from None


def _whole_list(path: Path, what: str) -> Iterator[Any]:
    data = read_json(path, what)
    if not isinstance(data, list):
        raise PARSError(f"{what} {path} must hold a JSON list of pairs, found {type(data).__name__}")
    yield from data


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


# Written by preprocessing beside its row and pair files: what the rows are, how answer_length is counted.
DATASET_INFO = "dataset_info.json"


def length_unit_beside(data_file: str | os.PathLike[str]) -> str | None:
    """answer_length's unit, from the dataset_info.json beside a row or pair file; None when not recorded."""
    try:
        info = json.loads((Path(data_file).parent / DATASET_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    unit = info.get("length_unit") if isinstance(info, dict) else None
    return unit if isinstance(unit, str) else None
