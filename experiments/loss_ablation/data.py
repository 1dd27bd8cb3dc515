"""The data of each length unit, written once into the work dir and reused: train_data.json, val_data.json,
dataset_info.json (the unit, which training copies into each ranker's config) and stage 1's pair files at every δ.

`chars`: the rows as given (ShareGPT's answer_length in characters). `tokens`: the same rows with answer_length
recounted in the served model's tokenizer (pars.data.token_lengths, as stage 1's --length-tokenizer does; rows
whose answer has no token are dropped). With a tokenizer, served.json keeps each val row's prompt and answer
tokens, the lengths the scheduler model serves, whichever units are trained.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from experiments.loss_ablation.grid import pair_file
from pars.common.jsonio import read_json, write_json_atomic

UNITS = ("chars", "tokens")
MANIFEST = "prepared.json"
SERVED = "served.json"


def fingerprint(path: Path) -> dict[str, Any]:
    """A file as the manifest knows it: where, how big, when written (a changed input means new data)."""
    st = path.stat()
    return {"path": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def row_ids(rows: Sequence[dict]) -> list[str]:
    """Each row's id: its task_id (stage 1 writes distinct ones), else its position."""
    return [str(r.get("task_id", i)) for i, r in enumerate(rows)]


class Source:
    """The given train and val rows, read when first needed (a reused unit never reads them)."""

    def __init__(self, train: Path, val: Path) -> None:
        self.train, self.val = train, val
        self._rows: dict[str, list[dict]] | None = None

    def rows(self) -> dict[str, list[dict]]:
        if self._rows is None:
            from pars.data.readers import load_rows

            self._rows = {"train": load_rows(self.train, "--train-data"), "val": load_rows(self.val, "--val-data")}
        return self._rows

    def length_unit(self) -> str:
        """The given rows' unit, from the dataset_info.json beside them (stage 1's); 'chars' when none."""
        from pars.data.readers import length_unit_beside

        return length_unit_beside(self.train) or "chars"


def recount(rows: Sequence[dict], tokenizer: Any) -> tuple[list[dict], int]:
    """Copies of the rows with answer_length in the tokenizer's tokens of answer_content (no special tokens);
    rows with no answer token are dropped. Returns the rows and the number dropped."""
    from pars.data.token_lengths import recount_lengths

    copies = [dict(r) for r in rows]
    for r in copies:
        if not isinstance(r.get("answer_content"), str):
            raise ValueError(f"row {r.get('task_id')!r} has no answer_content to count tokens of")
    dropped = recount_lengths(copies, tokenizer)
    return copies, dropped


def served_tokens(rows: Sequence[dict], tokenizer: Any) -> dict[str, list[int]]:
    """{row id: [prompt tokens, answer tokens]} of recounted rows, counted as experiments/lib/traces.build_trace
    counts them: the prompt with the tokenizer's special tokens, the answer (answer_length here) without."""
    prompts = [len(ids) for ids in tokenizer([r["prompt"] for r in rows])["input_ids"]]
    return {i: [p, int(r["answer_length"])] for i, p, r in zip(row_ids(rows), prompts, rows, strict=True)}


def prepare_unit(unit: str, source: Source, unit_dir: Path, deltas: Sequence[float], pairs: dict[str, int],
                 tokenizer_name: str | None = None, tokenizer_loader: Callable[[], Any] | None = None,
                 say: Callable[[str], None] = print) -> dict[str, Any]:
    """The unit's files in unit_dir, made or reused; returns its manifest (with `fingerprint`: what the runs'
    signatures hold, so that new data means new runs). `pairs`: train / val pairs per prompt and the seed
    (train pairs drawn with it, val pairs with it + 1, as stage 1 does)."""
    inputs = {"train": fingerprint(source.train), "val": fingerprint(source.val), "unit": unit,
              "tokenizer": tokenizer_name if unit == "tokens" else None, "pairs": dict(pairs)}
    manifest_path = unit_dir / MANIFEST
    old = read_json(manifest_path, "manifest") if manifest_path.is_file() else None
    rows_ok = (old is not None and old.get("inputs") == inputs
               and all((unit_dir / f).is_file() for f in ("train_data.json", "val_data.json", "dataset_info.json")))
    manifest = old if rows_ok else {"inputs": inputs, "fingerprint": digest(inputs), "deltas": []}
    todo = [float(d) for d in deltas if not (rows_ok and float(d) in manifest["deltas"]
                                              and pair_file(unit_dir, "train", d).is_file()
                                              and pair_file(unit_dir, "val", d).is_file())]
    if rows_ok and not todo:
        say(f"data {unit}: reusing {unit_dir} ({manifest['rows']['train']} train, {manifest['rows']['val']} val "
            f"rows; pair files at δ {', '.join(f'{d:g}' for d in manifest['deltas'])})")
        return manifest
    unit_dir.mkdir(parents=True, exist_ok=True)
    if rows_ok:
        from pars.data.readers import load_rows

        rows = {s: load_rows(unit_dir / f"{s}_data.json", f"{s}_data.json") for s in ("train", "val")}
    else:
        rows = source.rows()
        dropped = {"train": 0, "val": 0}
        if unit == "tokens":
            tokenizer = tokenizer_loader()
            say(f"data {unit}: counting the answers' tokens in {tokenizer_name}")
            for split in ("train", "val"):
                rows[split], dropped[split] = recount(rows[split], tokenizer)
            length_unit = f"tokens of {tokenizer_name}"
        else:
            length_unit = source.length_unit()
        for split in ("train", "val"):
            write_json_atomic(rows[split], unit_dir / f"{split}_data.json", indent=None)
        write_json_atomic({"dataset": f"loss_ablation {unit}", "length_unit": length_unit,
                           "source": {"train": str(source.train), "val": str(source.val)}},
                          unit_dir / "dataset_info.json")
        manifest.update(rows={"train": len(rows["train"]), "val": len(rows["val"])}, dropped=dropped,
                        length_unit=length_unit, deltas=[])
    from pars.data.pairs import make_pairs

    for d in todo:
        for split, n, seed in (("train", pairs["train"], pairs["seed"]), ("val", pairs["val"], pairs["seed"] + 1)):
            made = make_pairs(rows[split], n, d, seed, desc=f"{unit} {split} pairs δ={d:g}")
            write_json_atomic(made, pair_file(unit_dir, split, d), indent=None)
            manifest.setdefault("pairs_made", {})[f"{split} {d:g}"] = len(made)
        manifest["deltas"] = sorted({*manifest["deltas"], d})
        write_json_atomic(manifest, manifest_path)
        say(f"data {unit}: pair files at δ={d:g} written")
    write_json_atomic(manifest, manifest_path)
    return manifest


def val_rows(unit_dir: Path) -> list[dict]:
    from pars.data.readers import load_rows

    return load_rows(unit_dir / "val_data.json", "val_data.json")


def prepare_served(path: Path, source: Source, tokenizer_name: str, tokenizer_loader: Callable[[], Any],
                   say: Callable[[str], None] = print) -> dict[str, list[int]]:
    """{val row id: [prompt tokens, answer tokens]} in the served model's tokenizer, the lengths the scheduler
    model serves (whatever the units trained), kept in `path` and reused while --val-data and the tokenizer are
    the same. Rows whose answer has no token are left out."""
    inputs = {"val": fingerprint(source.val), "tokenizer": tokenizer_name}
    if path.is_file():
        got = read_json(path, path.name)
        if got.get("inputs") == inputs:
            return got["rows"]
    from pars.data.readers import load_rows

    rows, _ = recount(load_rows(source.val, "--val-data"), tokenizer_loader())
    served = served_tokens(rows, tokenizer_loader())
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic({"inputs": inputs, "tokenizer": tokenizer_name, "rows": served}, path, indent=None)
    say(f"scheduler model: the val rows' prompt and answer tokens in {tokenizer_name} written to {path}")
    return served


def served_lengths(served: dict[str, list[int]] | None, tokenizer_name: str | None,
                   unit_dirs: dict[str, Path]) -> tuple[dict[str, list[int]], str]:
    """The lengths the scheduler model serves and what they are: the served model's tokens (prepare_served)
    when there is a tokenizer; without one, the first unit's own answer lengths (prompt tokens unknown: 0)."""
    if served is not None:
        return served, f"answer tokens of {tokenizer_name} (the served model's)"
    unit, where = next(iter(unit_dirs.items()))
    rows = val_rows(where)
    return ({i: [0, max(1, round(float(r["answer_length"])))] for i, r in zip(row_ids(rows), rows, strict=True)},
            f"the {unit} unit's own answer_length (no --length-tokenizer)")
