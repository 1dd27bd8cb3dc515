"""Stage 1 from recorded traffic (`preprocess_trace.py`, `pars-preprocess trace`).

Records of finished requests -> one row per distinct prompt text, answer_length = the median of its
completion_tokens (the served model's own tokens, which is what the scheduler waits on) -> split (random as
the datasets' scripts split, or by time) -> the project's pairs -> the same four files and dataset_info.json.

Rows from traffic usually carry no answer text: answer_content is "" then, by design. They never pass the
datasets' "empty answer" filter (sources.output_row) nor --length-tokenizer's recount (token_lengths), both of
which would drop them; the trainer and evaluator read only prompt and answer_length (readers.load_rows).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tqdm.auto import tqdm

from pars.common.errors import PARSError
from pars.common.jsonio import write_json_files_atomic
from pars.common.prompts import CHAT, COMPLETIONS, prompt_text
from pars.data.pairs import make_pairs, pair_file_name
from pars.data.preprocess import add_split_pair_flags, check_split_pair_args
from pars.data.readers import DATASET_INFO

GATEWAY, BATCH, REQRESP = "gateway", "openai-batch", "request-response"
FORMATS = (GATEWAY, BATCH, REQRESP)


@dataclass
class Observation:
    """One finished request: its prompt, completion tokens, and what else the record says."""
    prompt: str
    tokens: int
    time: float | None
    censored: bool  # cut off at max_tokens: the true length is longer
    model: str | None
    text: str | None = None  # the answer, when the record has it


@dataclass
class ReadStats:
    files: dict[str, str] = field(default_factory=dict)  # path -> format
    records: Counter = field(default_factory=Counter)  # format -> records read
    skipped: Counter = field(default_factory=Counter)  # reason -> records


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _time(value: Any) -> float | None:
    """Unix seconds, from a number (past 1e11: milliseconds) or a numeric/ISO-8601 string (naive ISO: UTC)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            try:
                t = datetime.fromisoformat(value.strip())
            except ValueError:
                return None
            return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return None
    value = value / 1000 if abs(value) >= 1e11 else value
    return float(value) if abs(value) < 1e11 else None


def _json_body(value: Any) -> Any:
    """A body logged as a JSON string is read as its object."""
    try:
        return json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return None


def _request_prompt(url: Any, body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    path = urlparse(url).path.rstrip("/") if isinstance(url, str) else (
        CHAT if "messages" in body else COMPLETIONS if "prompt" in body else "")
    text = prompt_text(path, body)
    return text if text and text.strip() else None


def _response(body: Any, status: Any) -> tuple | str:
    """(tokens, censored, time, model, text) from an OpenAI completions/chat response, or why not."""
    body = _json_body(body)
    if (status is not None and status != 200) or not isinstance(body, dict) or body.get("error"):
        return "error response (status not 200)"
    choices = body.get("choices") if isinstance(body.get("choices"), list) else []
    if len(choices) > 1:
        return "several choices (n > 1): usage sums them"
    usage = body.get("usage")
    tokens = _count(usage.get("completion_tokens")) if isinstance(usage, dict) else None
    if tokens is None:
        return "no completion_tokens"
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = choice.get("message")
    text = message.get("content") if isinstance(message, dict) else choice.get("text")
    return (tokens, choice.get("finish_reason") == "length", _time(body.get("created")), _str(body.get("model")),
            text if isinstance(text, str) else None)


def _from_gateway(obj: dict[str, Any]) -> Observation | str:
    if obj.get("status") != 200:
        return "error response (status not 200)"
    if obj.get("complete") is False:  # the client left, or the upstream broke off: the length is unknown
        return "incomplete answer"
    if _count(obj.get("choices")) not in (None, 0, 1):  # records written before the field was added have none
        return "several choices (n > 1): usage sums them"
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return "prompt kept as a hash only" if prompt is None and obj.get("prompt_sha256") else "no prompt text"
    tokens = _count(obj.get("completion_tokens"))
    if tokens is None:
        return "no completion_tokens"
    censored = obj.get("censored") is True or obj.get("finish_reason") == "length"
    return Observation(prompt, tokens, _time(obj.get("time")), censored, _str(obj.get("model")))


def _from_request_response(obj: dict[str, Any]) -> Observation | str:
    req, resp = _json_body(obj.get("request")), _json_body(obj.get("response"))
    if isinstance(req, dict) and isinstance(_json_body(req.get("body")), dict):
        url, body = req.get("url", req.get("path")), _json_body(req.get("body"))
    else:
        url, body = None, req
    prompt = _request_prompt(url, body)
    if isinstance(resp, dict) and "body" in resp:
        got = _response(resp["body"], resp.get("status_code", resp.get("status")))
    else:
        got = _response(resp, None)
    if isinstance(got, str):
        return got
    if prompt is None:
        return "no prompt text"
    tokens, censored, created, model, text = got
    when = next((t for t in (_time(obj.get("time")), _time(obj.get("timestamp")), created) if t is not None), None)
    return Observation(prompt, tokens, when, censored, model or _str(body.get("model")), text)


def detect_format(obj: dict[str, Any]) -> str | None:
    if "custom_id" in obj and ("response" in obj or "body" in obj or "url" in obj):
        return BATCH
    if "request" in obj and "response" in obj:
        return REQRESP
    if "completion_tokens" in obj and ("prompt" in obj or "prompt_sha256" in obj or "status" in obj):
        return GATEWAY
    return None


def record_files(paths: Sequence[str]) -> list[Path]:
    """The files named, a directory standing for all its *.jsonl (sorted)."""
    files: list[Path] = []
    for name in paths:
        p = Path(name)
        if p.is_dir():
            found = sorted(q for q in p.glob("*.jsonl") if q.is_file())
            if not found:
                raise PARSError(f"--records: no *.jsonl file in the directory {p}")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise PARSError(f"--records: no such file or directory: {p}")
    unique = {f.resolve(): f for f in reversed(files)}  # a file named twice (itself and its directory): once
    return [f for f in files if unique.get(f.resolve()) is f]


def _objects(path: Path, stats: ReadStats) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSON-lines file. A line that is not JSON, or not an object, is an error, but for
    a last line without its newline (a writer stopped mid-line), which is skipped and counted."""
    try:
        f = path.open("rb")
        size = path.stat().st_size
    except OSError as exc:
        raise PARSError(f"cannot read {path}: {exc.strerror or exc}") from None
    with f, tqdm(total=size, unit="B", unit_scale=True, desc=f"Reading {path.name}", leave=False) as bar:
        for lineno, raw in enumerate(f, 1):
            bar.update(len(raw))
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError as exc:
                if not raw.endswith(b"\n"):
                    stats.skipped["cut-off last line"] += 1
                    continue
                reason = f"byte {exc.start} is not UTF-8" if isinstance(exc, UnicodeDecodeError) else exc.msg
                raise PARSError(f"{path} line {lineno} is not JSON ({reason})") from None
            if not isinstance(obj, dict):
                raise PARSError(f"{path} line {lineno} is not a JSON object (found {type(obj).__name__})")
            yield obj


def read_records(paths: Sequence[str], fmt: str = "auto", model: str | None = None
                 ) -> tuple[list[Observation], ReadStats]:
    """Every usable observation, in reading order (files in the order given, directories sorted)."""
    stats = ReadStats()
    observations: list[Observation] = []
    batch_inputs: dict[str, tuple[str | None, Path]] = {}
    batch_outputs: list[tuple[str, tuple | str]] = []
    for path in record_files(paths):
        kind = None if fmt == "auto" else fmt
        for obj in _objects(path, stats):
            if kind is None:
                kind = detect_format(obj)
                if kind is None:
                    raise PARSError(f"cannot tell the format of {path} (first record's keys: "
                                    f"{', '.join(list(obj)[:8])}); pass --format {' | '.join(FORMATS)}")
            stats.records[kind] += 1
            if kind == BATCH:
                cid = obj.get("custom_id")
                if not isinstance(cid, str):
                    stats.skipped["no custom_id"] += 1
                    continue
                if "response" in obj or "error" in obj:  # an output line
                    resp = obj.get("response")
                    got = _response(resp.get("body"), resp.get("status_code")) if isinstance(resp, dict) \
                        else "error response (status not 200)"
                    batch_outputs.append((cid, got))
                    continue
                prompt = _request_prompt(obj.get("url"), obj.get("body"))
                if cid in batch_inputs and batch_inputs[cid][0] != prompt:
                    raise PARSError(f"custom_id {cid!r} names two different requests ({batch_inputs[cid][1]} and "
                                    f"{path}): give one batch's input and output files per run")
                batch_inputs[cid] = (prompt, path)
                continue
            got = _from_gateway(obj) if kind == GATEWAY else _from_request_response(obj)
            if isinstance(got, str):
                stats.skipped[got] += 1
            else:
                observations.append(got)
        stats.files[str(path)] = kind or "empty"
    answered = set()
    for cid, got in batch_outputs:
        answered.add(cid)
        prompt = batch_inputs.get(cid, (None,))[0]
        if isinstance(got, str) or cid not in batch_inputs or prompt is None:
            stats.skipped[got if isinstance(got, str) else "no prompt text" if cid in batch_inputs
                          else "batch output without its input line"] += 1
            continue
        tokens, censored, created, name, text = got
        observations.append(Observation(prompt, tokens, created, censored, name, text))
    stats.skipped["batch request without an output line"] += len(batch_inputs.keys() - answered)
    if model is not None:
        stats.skipped["other model (--model)"] += sum(o.model != model for o in observations)
        observations = [o for o in observations if o.model == model]
    stats.skipped = +stats.skipped  # drop zero counts
    return observations, stats


def aggregate(observations: Sequence[Observation], keep_censored: bool) -> tuple[list[dict[str, Any]], int]:
    """One row per distinct prompt (in order of first appearance): the median of its kept completion tokens and
    how many there were; the answer text, when known, of the kept one nearest the median. Also the number of
    censored observations left out."""
    groups: dict[str, list[Observation]] = {}
    censored_out = 0
    for o in observations:
        if o.censored and not keep_censored:
            censored_out += 1
            continue
        groups.setdefault(o.prompt, []).append(o)
    rows = []
    for prompt, obs in groups.items():
        median = statistics.median(o.tokens for o in obs)
        median = int(median) if float(median).is_integer() else float(median)
        with_text = [o for o in obs if o.text is not None]
        nearest = min(with_text, key=lambda o: abs(o.tokens - median)) if with_text else None
        times = [o.time for o in obs if o.time is not None]
        rows.append({"prompt": prompt, "answer_content": nearest.text if nearest else "", "answer_length": median,
                     "count": len(obs), "_last": max(times) if len(times) == len(obs) else None,
                     "_models": {o.model for o in obs}})
    return rows, censored_out


def split_rows(rows: list[dict[str, Any]], how: str, test_size: float, seed: int
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float | None]:
    """(train, val, time of the cut). random: datasets' train_test_split(test_size, seed), as the datasets'
    scripts split. time: val = the most recent ceil(test_size * n) prompts by their latest occurrence, so every
    observation behind a train row predates the cut, as for a ranker trained then."""
    if how == "time":
        undated = sum(r["_last"] is None for r in rows)
        if undated:
            raise PARSError(f"--split time: {undated} of {len(rows)} prompts have a record without a time; "
                            "use --split random")
        n_val = math.ceil(test_size * len(rows))
        if not 0 < n_val < len(rows):
            raise PARSError(f"cannot split {len(rows)} prompts with --test-size {test_size}")
        order = sorted(range(len(rows)), key=lambda i: (rows[i]["_last"], i))
        cut = len(rows) - n_val
        return [rows[i] for i in order[:cut]], [rows[i] for i in order[cut:]], rows[order[cut]]["_last"]
    from datasets import Dataset

    try:
        split = Dataset.from_dict({"i": list(range(len(rows)))}).train_test_split(test_size=test_size, seed=seed)
    except ValueError as exc:
        raise PARSError(f"cannot split {len(rows)} prompts with --test-size {test_size}: "
                        f"{str(exc).splitlines()[0][:200]}") from None
    return [rows[i] for i in split["train"]["i"]], [rows[i] for i in split["test"]["i"]], None


def build_parser() -> argparse.ArgumentParser:
    class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
        pass

    parser = argparse.ArgumentParser(
        formatter_class=Formatter,
        description=__doc__.split("\n\n")[1] + """

Writes train_data.json, val_data.json, train/val_pairs_length_diff_<t>.json and dataset_info.json (its
length_unit: "completion tokens of <model>" when all records used name one model, else "completion tokens").

Inputs, JSON lines, the format told from each file's first record (or --format):
  gateway           the gateway's records, one per finished request: rows with status 200, a prompt text and
                    completion_tokens are used (records that keep only prompt_sha256 cannot be trained on)
  openai-batch      OpenAI Batch API files: the input file ({custom_id, url, body}) and the output file
                    ({custom_id, response: {status_code, body}}), joined by custom_id; give both
  request-response  {"request": {...}, "response": {...}} per line (a logging proxy); request is the body,
                    or {url|path, body}; response is the body, or {status_code, body}; the time is the
                    line's time/timestamp, else the response's created
The prompt is taken as the gateway scores it: the last user message of a chat, the prompt of a completion.

Rules: the same prompt text seen several times is one row, answer_length = the median of its completion
tokens, count = how many. A censored record (finish_reason "length", or censored true) is cut off at
max_tokens, its true length unknown: left out unless --keep-censored (kept at its recorded length). A record
with n > 1 choices is skipped (usage sums the choices). Skipped records are counted by reason; a missing file,
a line that is not JSON or not an object, or no usable record is one error line (exit 2).""",
    )
    parser.add_argument("--records", nargs="+", required=True, metavar="PATH",
                        help="Record files (JSON lines), or directories: all their *.jsonl, sorted.")
    parser.add_argument("--format", choices=["auto", *FORMATS], default="auto",
                        help="The records' format; auto: told from each file's first record.")
    add_split_pair_flags(parser)
    parser.add_argument("--val-fraction", type=float, dest="test_size", default=argparse.SUPPRESS, metavar="F",
                        help="The same as --test-size: the validation share of the prompts.")
    parser.add_argument("--split", choices=["random", "time"], default="random",
                        help="random: seeded, as the datasets' scripts split. time: val = the most recent "
                             "share of the prompts, ordered by their latest record, so that all of train's "
                             "records come before the cut (a ranker trained then, judged on what came after).")
    parser.add_argument("--keep-censored", action="store_true",
                        help="Keep records cut off at max_tokens, at their recorded (too short) length.")
    parser.add_argument("--model", default=None, metavar="NAME",
                        help="Use only records of this model: token counts of different models' tokenizers "
                             "do not compare.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_split_pair_args(args)
    observations, stats = read_records(args.records, args.format, args.model)
    read = sum(stats.records.values())
    skipped = ", ".join(f"{reason} {n}" for reason, n in stats.skipped.most_common()) or "none"
    if not observations:
        raise PARSError(f"trace: no usable record in {len(stats.files)} file(s) ({read} records; skipped: {skipped})")
    rows, censored_out = aggregate(observations, args.keep_censored)
    if not rows:
        raise PARSError(f"trace: all {censored_out} usable records are censored (finish_reason 'length'); "
                        "--keep-censored keeps them at their recorded length")
    train, val, cut = split_rows(rows, args.split, args.test_size, args.seed)
    models = set().union(*(r["_models"] for r in rows))
    unit = f"completion tokens of {next(iter(models))}" if len(models) == 1 and None not in models \
        else "completion tokens"
    for part in (train, val):
        part[:] = [{"task_id": i, "prompt": r["prompt"], "answer_content": r["answer_content"],
                    "answer_length": r["answer_length"], "count": r["count"]} for i, r in enumerate(part)]
    train_pairs = make_pairs(train, args.train_num_pairs, args.similarity_threshold, args.seed, desc="Train pairs")
    val_pairs = make_pairs(val, args.val_num_pairs, args.similarity_threshold, args.seed + 1, desc="Val pairs")
    censored = sum(o.censored for o in observations)
    summary = {
        "dataset": "trace",
        "files": stats.files,
        "records_read": dict(stats.records),
        "records_skipped": dict(stats.skipped),
        "records_used": len(observations) - censored_out,
        "censored": {"records": censored, "kept": bool(args.keep_censored)},
        "prompts": len(rows),
        "prompts_seen_more_than_once": sum(r["count"] > 1 for r in rows),  # answer_length: their median
        "length_unit": unit,
        "models": sorted(m for m in models if m is not None),
        "split": {"how": args.split, "test_size": args.test_size, "seed": args.seed,
                  **({"val_from_time": cut} if cut is not None else {})},
        "train": {"rows": len(train), "pairs": len(train_pairs)},
        "val": {"rows": len(val), "pairs": len(val_pairs)},
    }
    out = Path(args.output_dir)
    files = {
        out / "train_data.json": train,
        out / "val_data.json": val,
        out / pair_file_name("train", args.similarity_threshold): train_pairs,
        out / pair_file_name("val", args.similarity_threshold): val_pairs,
        out / DATASET_INFO: summary,
    }
    write_json_files_atomic(files)
    formats = ", ".join(f"{k} {n}" for k, n in stats.records.items())
    lines = [f"trace: {read} records in {len(stats.files)} file(s) ({formats}); {summary['records_used']} used; "
             f"skipped: {skipped}",
             f"  censored (cut off at max_tokens): {censored}, "
             + ("kept at their recorded length" if args.keep_censored else "left out (--keep-censored keeps them)"),
             f"  {len(rows)} prompts, {summary['prompts_seen_more_than_once']} seen more than once (answer_length: "
             f"their median); answer_length in {unit}"]
    if len(models) > 1:
        lines.append(f"  note: records of several models ({', '.join(sorted(map(str, models)))}): their tokens "
                     "do not compare; --model NAME keeps one")
    if cut is not None:
        lines.append(f"  split by time: val = the prompts last seen at or after "
                     f"{datetime.fromtimestamp(cut, UTC).isoformat(timespec='seconds')}")
    lines += [f"  {name:5s}: {len(part)} rows, {len(pairs)} pairs"
              for name, part, pairs in (("train", train, train_pairs), ("val", val, val_pairs))]
    print("\n".join([*lines, *(f"Saved: {path}" for path in files)]))
    return 0
