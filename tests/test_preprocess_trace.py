"""Stage 1 from recorded traffic: data_preprocess/scripts/preprocess_trace.py (pars.data.traces)."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset

from pars.common.prompts import CHAT, COMPLETIONS
from pars.data import traces
from pars.data.pairs import make_pairs
from pars.data.preprocess import dataset_main
from pars.data.readers import length_unit_beside, load_pairs, load_rows
from pars.gateway import prompts as gateway_prompts

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "data_preprocess" / "scripts" / "preprocess_trace.py"
T0 = 1_780_000_000.0


def gw(prompt, tokens, time=T0, **kw):
    """A gateway record (the fields the gateway writes; only some matter here)."""
    return {"time": time, "path": "/v1/chat/completions", "model": kw.pop("model", "m1"), "prompt": prompt,
            "prompt_sha256": "ab" * 32, "prompt_tokens": 7, "completion_tokens": tokens,
            "finish_reason": kw.pop("finish_reason", "stop"), "censored": kw.pop("censored", False), "score": 0.5,
            "priority": 3, "priority_source": "ranker", "max_tokens": 512, "status": kw.pop("status", 200),
            "stream": False, "latency_s": 1.2, "ranker_id": "r1", **kw}


def filler(n=30, start=0):
    """Distinct prompts seen once each, so that a split has rows on both sides."""
    rng = random.Random(start)
    return [gw(f"filler {start + i}", rng.randint(1, 500), T0 + i) for i in range(n)]


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def run(tmp_path, *args, records=None, name="out"):
    out = tmp_path / name
    argv = ["--output-dir", str(out), *args]
    if records is not None:
        argv = ["--records", str(write_jsonl(tmp_path / f"{name}.jsonl", records)), *argv]
    assert traces.main(argv) == 0
    return out


def outputs(out: Path, t=0.2):
    return (load_rows(out / "train_data.json"), load_rows(out / "val_data.json"),
            load_pairs(out / f"train_pairs_length_diff_{t}.json"), load_pairs(out / f"val_pairs_length_diff_{t}.json"),
            json.loads((out / "dataset_info.json").read_text(encoding="utf-8")))


def by_prompt(out: Path):
    train, val, *_ = outputs(out)
    return {r["prompt"]: r for r in train + val}


def test_repeated_prompt_is_one_row_at_its_median(tmp_path):
    records = [gw("a", 10), gw("b", 10), gw("a", 30), gw("b", 15), gw("a", 20), *filler()]
    rows = by_prompt(run(tmp_path, records=records))
    assert (rows["a"]["answer_length"], rows["a"]["count"]) == (20, 3)
    assert (rows["b"]["answer_length"], rows["b"]["count"]) == (12.5, 2)
    assert len(rows) == 32 and all(r["count"] == 1 for p, r in rows.items() if p.startswith("filler"))
    info = outputs(tmp_path / "out")[4]
    assert info["prompts"] == 32 and info["prompts_seen_more_than_once"] == 2 and info["records_used"] == 35


def test_censored_left_out_by_default_kept_with_flag(tmp_path, capsys):
    records = [gw("c", 100, finish_reason="length"), gw("c", 10), gw("d", 512, censored=True), *filler()]
    rows = by_prompt(run(tmp_path, records=records))
    assert (rows["c"]["answer_length"], rows["c"]["count"]) == (10, 1) and "d" not in rows
    info = outputs(tmp_path / "out")[4]
    assert info["censored"] == {"records": 2, "kept": False} and info["records_used"] == 31
    assert "censored (cut off at max_tokens): 2, left out" in capsys.readouterr().out
    rows = by_prompt(run(tmp_path, "--keep-censored", records=records, name="kept"))
    assert (rows["c"]["answer_length"], rows["c"]["count"]) == (55, 2) and rows["d"]["answer_length"] == 512


def test_time_split_val_is_the_most_recent(tmp_path):
    rng = random.Random(1)
    records = [gw(f"p{i}", rng.randint(1, 400), T0 + rng.uniform(0, 1000)) for i in range(40)]
    records.append(gw("p3", 50, T0 + 5000))  # p3 seen again last: its latest record puts it in val
    out = run(tmp_path, "--split", "time", "--val-fraction", "0.2", records=records)
    train, val, _, _, info = outputs(out)
    latest = {}
    for r in records:
        latest[r["prompt"]] = max(latest.get(r["prompt"], 0), r["time"])
    ranked = sorted(latest, key=latest.get)
    assert len(val) == math.ceil(0.2 * 40) == 8
    assert [r["prompt"] for r in val] == ranked[-8:] and [r["prompt"] for r in train] == ranked[:-8]
    assert "p3" in {r["prompt"] for r in val}
    cut = info["split"]["val_from_time"]
    assert cut == latest[ranked[-8]]
    assert all(r["time"] < cut for r in records if r["prompt"] in {x["prompt"] for x in train})
    assert [r["task_id"] for r in val] == list(range(8))


def test_time_split_needs_times(tmp_path):
    records = [gw("x", 5, time=None), *filler()]
    proc = script(tmp_path, "--records", str(write_jsonl(tmp_path / "r.jsonl", records)), "--split", "time")
    assert proc.returncode == 2 and "1 of 31 prompts have a record without a time" in proc.stderr


def test_random_split_is_seeded_as_the_datasets_split(tmp_path):
    records = filler(50)
    train, val, tp, vp, info = outputs(run(tmp_path, records=records))
    rows = [{"prompt": r["prompt"], "answer_length": r["completion_tokens"]} for r in records]
    split = Dataset.from_list(rows).train_test_split(test_size=0.1, seed=42)
    assert [(r["prompt"], r["answer_length"]) for r in train] == [(r["prompt"], r["answer_length"])
                                                                  for r in split["train"]]
    assert [r["prompt"] for r in val] == split["test"]["prompt"] and len(val) == 5
    assert tp == make_pairs(train, 10, 0.2, 42) and vp == make_pairs(val, 10, 0.2, 43)
    assert info["split"] == {"how": "random", "test_size": 0.1, "seed": 42}
    again = outputs(run(tmp_path, records=records, name="again"))
    other = outputs(run(tmp_path, "--seed", "7", records=records, name="other"))
    assert again[:4] == (train, val, tp, vp) and other[1] != val


def test_gateway_records_skip_errors_and_hash_only_prompts(tmp_path, capsys):
    records = [gw("ok", 40), gw("fail", 0, status=500), gw(None, 30), gw("nolen", None), gw("  ", 9),
               gw("left", 3, complete=False), gw(None, 8, prompt_sha256=None), gw("two", 80, choices=2),
               gw("one", 20, choices=1), *filler()]
    rows = by_prompt(run(tmp_path, records=records))
    assert set(rows) == {"ok", "one"} | {f"filler {i}" for i in range(30)}  # "ok": written before `choices`
    assert all(r["answer_content"] == "" for r in rows.values())  # no text in gateway records, kept anyway
    info = outputs(tmp_path / "out")[4]
    assert info["records_skipped"] == {"error response (status not 200)": 1, "prompt kept as a hash only": 1,
                                       "no prompt text": 2, "no completion_tokens": 1, "incomplete answer": 1,
                                       "several choices (n > 1): usage sums them": 1}
    assert "no prompt text 2" in capsys.readouterr().out


def chat(text, **kw):
    return {"model": "gpt-x", "messages": [{"role": "system", "content": "be brief"},
                                           {"role": "user", "content": text}], **kw}


def completion_body(tokens, *, finish="stop", text="answer", created=T0, n=1, chat_shape=True):
    choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
              if chat_shape else {"index": 0, "text": text, "finish_reason": finish})
    return {"id": "x", "object": "chat.completion", "created": created, "model": "gpt-x-2025",
            "choices": [choice] * n, "usage": {"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": 9}}


def test_openai_batch_input_and_output_joined_by_custom_id(tmp_path):
    inputs = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": chat(f"q{i}")}
              for i in range(30)]
    inputs += [
        {"custom_id": "parts", "method": "POST", "url": "/v1/chat/completions",
         "body": {"messages": [{"role": "user", "content": [{"type": "text", "text": "look"},
                                                           {"type": "image_url", "image_url": {"url": "x"}},
                                                           {"type": "text", "text": "here"}]}]}},
        {"custom_id": "comp", "method": "POST", "url": "/v1/completions", "body": {"prompt": ["first", "second"]}},
        {"custom_id": "unanswered", "method": "POST", "url": "/v1/chat/completions", "body": chat("never")},
        {"custom_id": "many", "method": "POST", "url": "/v1/chat/completions", "body": chat("n2")},
        {"custom_id": "failed", "method": "POST", "url": "/v1/chat/completions", "body": chat("bad")},
    ]
    ok = lambda cid, body: {"id": "b", "custom_id": cid, "error": None,  # noqa: E731
                            "response": {"status_code": 200, "request_id": "q", "body": body}}
    outputs_ = [ok(f"r{i}", completion_body(10 + 7 * i, text=f"ans {i}", created=T0 + i)) for i in range(30)]
    outputs_ += [
        ok("r0", completion_body(20, text="ans 0 again")),  # r0 asked twice: median 15 of 10 and 20
        ok("parts", completion_body(33)),
        ok("comp", completion_body(44, chat_shape=False, text="done")),
        ok("many", completion_body(50, n=2)),
        {"id": "b", "custom_id": "failed", "response": {"status_code": 429, "body": {"error": {"message": "x"}}},
         "error": None},
        ok("orphan", completion_body(5)),
        ok("r1", completion_body(999, finish="length")),
    ]
    files = [write_jsonl(tmp_path / "batch_output.jsonl", outputs_),
             write_jsonl(tmp_path / "batch_input.jsonl", inputs)]
    out = run(tmp_path, "--records", *map(str, files))
    rows = by_prompt(out)
    assert rows["q0"]["answer_length"] == 15 and rows["q0"]["count"] == 2
    assert rows["q0"]["answer_content"] in ("ans 0", "ans 0 again")
    assert rows["q1"]["answer_length"] == 17 and rows["q1"]["answer_content"] == "ans 1"  # censored left out
    assert rows["look\nhere"]["answer_length"] == 33
    assert rows["first"]["answer_length"] == 44 and rows["first"]["answer_content"] == "done"
    assert not {"never", "n2", "bad", "be brief"} & set(rows)
    info = outputs(out)[4]
    assert info["records_read"] == {"openai-batch": len(inputs) + len(outputs_)}
    assert info["records_skipped"] == {"batch request without an output line": 1, "error response (status not 200)": 1,
                                       "several choices (n > 1): usage sums them": 1,
                                       "batch output without its input line": 1}
    assert info["censored"]["records"] == 1 and info["length_unit"] == "completion tokens of gpt-x-2025"
    assert set(info["files"].values()) == {"openai-batch"}


def test_batch_custom_id_naming_two_requests_is_one_line(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"custom_id": "r1", "url": "/v1/chat/completions", "body": chat("x")}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"custom_id": "r1", "url": "/v1/chat/completions", "body": chat("y")}])
    proc = script(tmp_path, "--records", str(a), str(b))
    assert proc.returncode == 2 and "custom_id 'r1' names two different requests" in proc.stderr


def test_request_response_lines(tmp_path):
    lines = [{"time": T0 + i, "request": {"url": "http://proxy:8000/v1/chat/completions", "body": chat(f"q{i}")},
              "response": {"status_code": 200, "body": completion_body(5 * i + 1)}} for i in range(30)]
    lines += [
        {"request": chat("bare"), "response": completion_body(12, created=T0 + 99)},  # bodies only
        {"timestamp": "2026-06-01T00:00:00Z",
         "request": {"path": "/v1/completions", "body": json.dumps({"prompt": "str"})},
         "response": {"status": 200, "body": json.dumps(completion_body(8, chat_shape=False))}},  # logged as strings
        {"time": (T0 + 200) * 1000, "request": chat("ms"), "response": completion_body(3)},  # milliseconds
        {"request": chat("err"), "response": {"status_code": 500, "body": {"error": "boom"}}},
        {"request": chat("stream"), "response": {"status_code": 200, "body": {"choices": []}}},  # no usage
    ]
    out = run(tmp_path, "--split", "time", records=lines)
    rows = by_prompt(out)
    assert rows["bare"]["answer_length"] == 12 and rows["str"]["answer_length"] == 8
    assert rows["q2"]["answer_length"] == 11
    assert not {"err", "stream"} & set(rows)
    train, val, *_, info = outputs(out)
    # times: the line's time, else the response's created; an ISO-8601 time reads as UTC (2026-06-01 > T0)
    assert [r["prompt"] for r in val] == ["q29", "bare", "ms", "str"] and len(train) == 29
    assert info["records_read"] == {"request-response": 35}
    assert info["records_skipped"] == {"error response (status not 200)": 1, "no completion_tokens": 1}


def test_directory_of_gateway_files_and_mixed_formats(tmp_path):
    d = tmp_path / "records"
    d.mkdir()
    write_jsonl(d / "2026-01-02.jsonl", [gw("late", 9, T0 + 10), *filler(15, 100)])
    write_jsonl(d / "2026-01-01.jsonl", [gw("late", 3, T0), *filler(15, 200)])
    (d / "notes.txt").write_text("not records", encoding="utf-8")
    rr = write_jsonl(tmp_path / "proxy.jsonl", [{"request": chat("proxied"), "response": completion_body(4)}])
    out = run(tmp_path, "--records", str(d), str(rr), str(d / "2026-01-02.jsonl"))  # a file named twice: once
    rows = by_prompt(out)
    assert rows["late"]["answer_length"] == 6 and "proxied" in rows and len(rows) == 32
    info = outputs(out)[4]
    assert list(info["files"]) == [str(d / "2026-01-01.jsonl"), str(d / "2026-01-02.jsonl"), str(rr)]
    assert info["records_read"] == {"gateway": 32, "request-response": 1}
    assert info["length_unit"] == "completion tokens"  # m1 and gpt-x-2025: no single model
    assert info["models"] == ["gpt-x-2025", "m1"]


def test_model_flag_keeps_one_model(tmp_path):
    records = [*filler(), *[gw(f"other {i}", 5, model="m2") for i in range(5)]]
    out = run(tmp_path, "--model", "m1", records=records)
    assert len(by_prompt(out)) == 30
    info = outputs(out)[4]
    assert info["records_skipped"] == {"other model (--model)": 5} and info["length_unit"] == "completion tokens of m1"


def test_written_files_are_what_the_trainer_reads(tmp_path):
    out = run(tmp_path, records=filler(40))
    train, val, tp, vp, info = outputs(out)  # load_rows / load_pairs validate every item
    assert length_unit_beside(out / "train_pairs_length_diff_0.2.json") == "completion tokens of m1"
    assert all(r["answer_content"] == "" and isinstance(r["answer_length"], int) for r in train + val)
    assert set(train[0]) == {"task_id", "prompt", "answer_content", "answer_length", "count"}
    assert tp and vp and info["train"] == {"rows": 36, "pairs": len(tp)}


def test_the_trainer_trains_on_trace_output(tmp_path, tiny_model_dir):
    """In-batch pairing reads train_data.json itself: rows with answer_content "" and half-token medians train,
    and the ranker records the rows' unit."""
    from pars.train import loop as train

    out = run(tmp_path, records=[*filler(60), gw("filler 1", 7), gw("filler 2", 9)])
    assert any(isinstance(r["answer_length"], float) for r in outputs(out)[0] + outputs(out)[1])
    assert train.main(["--train-file", str(out / "train_pairs_length_diff_0.2.json"), "--val-file",
                       str(out / "val_pairs_length_diff_0.2.json"), "--model-name", str(tiny_model_dir),
                       "--pairing", "in-batch", "--batch-size", "8", "--num-epochs", "1", "--max-steps", "2",
                       "--device", "cpu", "--output-dir", str(tmp_path / "run")]) == 0
    config = json.loads((tmp_path / "run" / "ranker_config.json").read_text(encoding="utf-8"))
    assert config["length_unit"] == "completion tokens of m1"


@pytest.mark.parametrize("path, body, want", [
    (CHAT, chat("hi"), "hi"),
    (CHAT, {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                         {"role": "user", "content": [{"type": "text", "text": "c"}, {"text": "d"}]}]}, "c\nd"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, None),
    (CHAT, {"messages": "x"}, None), (CHAT, {"messages": []}, None), (CHAT, {"prompt": "p"}, None),
    (COMPLETIONS, {"prompt": "p"}, "p"), (COMPLETIONS, {"prompt": ["p", "q"]}, "p"),
    (COMPLETIONS, {"prompt": [1, 2]}, None), (COMPLETIONS, {"prompt": [[1]]}, None),
    (COMPLETIONS, {"prompt": []}, None), (COMPLETIONS, chat("hi"), None), ("/v1/embeddings", {"prompt": "p"}, None),
])
def test_the_prompt_trained_on_is_the_one_the_gateway_scores(path, body, want):
    # one rule (pars/common/prompts.py) for both: the last user message of a chat, a completion's (first) prompt
    assert traces.prompt_text(path, body) == gateway_prompts.prompt_text(path, body) == want


def script(tmp_path, *args):
    return subprocess.run([sys.executable, str(SCRIPT), "--output-dir", str(tmp_path / "o"), *args],
                          capture_output=True, text=True, timeout=120)


def bad_file(tmp_path, text: str) -> str:
    p = tmp_path / "bad.jsonl"
    p.write_text(text, encoding="utf-8")
    return str(p)


@pytest.mark.parametrize("setup, expected", [
    (lambda d: str(d / "missing.jsonl"), "no such file or directory"),
    (lambda d: (d / "empty").mkdir() or str(d / "empty"), "no *.jsonl file in the directory"),
    (lambda d: bad_file(d, json.dumps(gw("a", 1)) + "\n{oops\n" + json.dumps(gw("b", 2)) + "\n"),
     "bad.jsonl line 2 is not JSON"),
    (lambda d: bad_file(d, json.dumps(gw("a", 1)) + "\n[1, 2]\n"), "line 2 is not a JSON object (found list)"),
    (lambda d: bad_file(d, json.dumps({"foo": 1}) + "\n"), "cannot tell the format"),
    (lambda d: bad_file(d, "".join(json.dumps(gw(f"p{i}", 1, status=503)) + "\n" for i in range(3))),
     "no usable record in 1 file(s) (3 records; skipped: error response (status not 200) 3)"),
    (lambda d: bad_file(d, json.dumps(gw("a", 9, censored=True)) + "\n"), "all 1 usable records are censored"),
    (lambda d: bad_file(d, json.dumps(gw("a", 9)) + "\n"), "cannot split 1 prompts"),
], ids=["missing", "empty-dir", "not-json", "not-object", "unknown-format", "no-usable", "all-censored", "one-row"])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, setup, expected):
    proc = script(tmp_path, "--records", setup(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in proc.stderr
    assert expected in proc.stderr
    assert not (tmp_path / "o").exists()


def test_cut_off_last_line_is_skipped_and_counted(tmp_path):
    text = "".join(json.dumps(r) + "\n" for r in filler()) + json.dumps(gw("half", 3))[:40]
    out = run(tmp_path, "--records", bad_file(tmp_path, text))
    assert outputs(out)[4]["records_skipped"] == {"cut-off last line": 1}


def test_help_and_the_dispatcher(tmp_path, capsys):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for flag in ("--records", "--format", "--output-dir", "--seed", "--test-size", "--val-fraction", "--split",
                 "--keep-censored", "--model", "--similarity-threshold", "--train-num-pairs", "--val-num-pairs",
                 "median", "censored", "custom_id", "request-response", "completion tokens of <model>"):
        assert flag in proc.stdout
    assert dataset_main(["--help"]) == 0 and "trace" in capsys.readouterr().out
    records = write_jsonl(tmp_path / "r.jsonl", filler())
    assert dataset_main(["trace", "--records", str(records), "--output-dir", str(tmp_path / "d")]) == 0
    assert outputs(tmp_path / "d")[:4] == outputs(run(tmp_path, "--records", str(records)))[:4]
