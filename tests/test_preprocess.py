"""Stage 1 on rows shaped like each dataset's real schema, read through --data-files."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset

from pars.data import preprocess
from pars.data.pairs import make_pairs
from pars.data.sharegpt import ArrayReadStats, iter_complete_items

ROOT = Path(__file__).resolve().parents[1]
RNG = random.Random(0)


def text(n_words: int) -> str:
    return " ".join(RNG.choice(["alpha", "beta", "gamma", "delta", "x"]) for _ in range(n_words))


def alpaca_rows(n=60):
    rows = []
    for i in range(n):
        rows.append({
            "instruction": f"  Task {i}: {text(3)}  ",
            "input": RNG.choice(["", "   ", f" extra {i} "]),
            "output": "" if i % 17 == 5 else text(RNG.randint(1, 80)),
            "text": "unused",
        })
    return rows


def code_rows(n=60):
    return [{"instruction": "" if i % 13 == 3 else f"code {i} {text(2)}", "output": text(RNG.randint(1, 60))}
            for i in range(n)]


def lmsys_rows(n=120):
    rows = []
    for i in range(n):
        turn = RNG.choice([1, 1, 2])
        conv = [{"content": f"question {i}", "role": "user"},
                {"content": text(RNG.randint(1, 50)), "role": "assistant"}]
        if turn == 2:
            conv += [{"content": "more", "role": "user"}, {"content": text(5), "role": "assistant"}]
        rows.append({"conversation_id": str(i), "model": RNG.choice(["gpt-4", "vicuna-13b"]), "turn": turn,
                     "conversation": conv, "language": "English"})
    return rows


def sharegpt_items(n=60):
    items = []
    for i in range(n):
        first = "gpt" if i % 11 == 0 else "human"
        items.append({"id": f"c{i}", "conversations": [
            {"from": first, "value": f"prompt {i} {text(3)}"},
            {"from": "gpt" if first == "human" else "human", "value": text(RNG.randint(1, 60))},
            {"from": "human", "value": "follow-up"},
        ]})
    return items


def reference_rows(split_rows, rule):
    """Independent restatement of the normalization: task_id = index within the split."""
    out = []
    for idx, row in enumerate(split_rows):
        prompt, answer, length = rule(row)
        if prompt and answer:
            out.append({"task_id": idx, "prompt": prompt, "answer_content": answer, "answer_length": length})
    return out


def alpaca_rule(r):
    ins, extra = r["instruction"].strip(), r["input"].strip()
    prompt = f"{ins} {extra}".strip() if extra else ins
    return prompt, r["output"], len(r["output"].split())


def chars_rule(r):
    return r["instruction"], r["output"], len(r["output"])


def lmsys_rule(r):
    return r["conversation"][0]["content"], r["conversation"][-1]["content"], len(r["conversation"][-1]["content"])


def sharegpt_rule(r):
    return r["conversations"][0]["value"], r["conversations"][1]["value"], len(r["conversations"][1]["value"])


def expected_outputs(rows, rule, keep=None, seed=42, test_size=0.1, train_pairs=10, val_pairs=10, t=0.2):
    kept = [r for r in rows if keep is None or keep(r)]
    split = Dataset.from_list(kept).train_test_split(test_size=test_size, seed=seed)
    train = reference_rows(split["train"].to_list(), rule)
    val = reference_rows(split["test"].to_list(), rule)
    return train, val, make_pairs(train, train_pairs, t, seed), make_pairs(val, val_pairs, t, seed + 1)


def write(path: Path, rows, kind: str) -> Path:
    if kind == "json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif kind == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def read_outputs(out: Path, t=0.2):
    def load(name):
        return json.loads((out / name).read_text(encoding="utf-8"))
    return (load("train_data.json"), load("val_data.json"),
            load(f"train_pairs_length_diff_{t}.json"), load(f"val_pairs_length_diff_{t}.json"))


CASES = {
    "alpaca": (alpaca_rows, alpaca_rule, None, "json", (10, 10)),
    "code": (code_rows, chars_rule, None, "jsonl", (10, 10)),
    "math": (code_rows, chars_rule, None, "parquet", (10, 10)),
    "lmsys": (lmsys_rows, lmsys_rule, lambda r: r["model"] == "gpt-4" and r["turn"] == 1, "parquet", (50, 5)),
    "sharegpt": (sharegpt_items, sharegpt_rule,
                 lambda r: r["conversations"][0]["from"] == "human" and r["conversations"][1]["from"] == "gpt",
                 "json", (10, 10)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_outputs_equal_independent_rule(name, tmp_path, capsys):
    make, rule, keep, kind, (tp, vp) = CASES[name]
    rows = make()
    src = write(tmp_path / f"src.{kind}", rows, kind)
    out = tmp_path / "out"
    assert preprocess.main(name, ["--output-dir", str(out), "--data-files", str(src)]) == 0
    got = read_outputs(out)
    # ShareGPT keeps only the fields it uses; compare on those.
    if name == "sharegpt":
        rows = [{"id": r["id"], "conversations": r["conversations"][:2]} for r in rows]
    want = expected_outputs(rows, rule, keep, train_pairs=tp, val_pairs=vp)
    assert got == tuple(want)
    assert got[2] and got[3]
    printed = capsys.readouterr().out
    assert "rows kept" in printed and "pairs" in printed


def test_alpaca_prompt_joins_input_and_counts_words(tmp_path):
    rows = [{"instruction": " Translate ", "input": " hello world ", "output": "bonjour le monde"},
            {"instruction": "Say hi", "input": "", "output": "hi there"}] * 10
    src = write(tmp_path / "a.json", rows, "json")
    preprocess.main("alpaca", ["--output-dir", str(tmp_path / "o"), "--data-files", str(src)])
    train, val, _, _ = read_outputs(tmp_path / "o")
    by_prompt = {r["prompt"]: r["answer_length"] for r in train + val}
    assert by_prompt == {"Translate hello world": 3, "Say hi": 2}


def test_options_threshold_seed_and_counts(tmp_path):
    src = write(tmp_path / "c.jsonl", code_rows(50), "jsonl")
    out = tmp_path / "o"
    preprocess.main("code", ["--output-dir", str(out), "--data-files", str(src), "--seed", "7",
                             "--test-size", "0.2", "--similarity-threshold", "0.5",
                             "--train-num-pairs", "3", "--val-num-pairs", "2"])
    got = read_outputs(out, t=0.5)
    assert got == tuple(expected_outputs(_rows_from(src), chars_rule,
                                         seed=7, test_size=0.2, train_pairs=3, val_pairs=2, t=0.5))
    assert len(got[1]) == 10  # 20 % of 50 rows


def _rows_from(path: Path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def test_truncated_array_reader_keeps_complete_items():
    items = [{"id": i, "conversations": [{"from": "human", "value": "x" * i}]} for i in range(5)]
    data = json.dumps(items, indent=2).encode()
    cut = data[: data.index(b'"id": 4') + 3]  # cut inside the last element
    stats = ArrayReadStats()
    assert list(iter_complete_items(io.BytesIO(cut), stats)) == items[:4]
    assert stats.truncated and stats.items == 4
    stats = ArrayReadStats()
    assert list(iter_complete_items(io.BytesIO(data), stats)) == items
    assert not stats.truncated


def test_truncated_sharegpt_file_through_the_cli(tmp_path):
    items = sharegpt_items(40)
    data = json.dumps(items).encode()
    src = tmp_path / "sg.json"
    src.write_bytes(data[: len(data) - 40])
    preprocess.main("sharegpt", ["--output-dir", str(tmp_path / "o"), "--data-files", str(src)])
    train, val, _, _ = read_outputs(tmp_path / "o")
    complete = [i for i in items[:-1] if i["conversations"][0]["from"] == "human"]
    assert len(train) + len(val) == len(complete)


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "data_preprocess" / "scripts" / f"preprocess_{name}.py"),
                           *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "setup, expected",
    [
        (lambda d: write(d / "x.json", [{"instruction": "a", "answer": "b"}] * 20, "json"), "no column 'output'"),
        (lambda d: write(d / "x.json", [], "json"), "no rows"),
        (lambda d: d / "missing.json", "no such file"),
        (lambda d: (d / "bad.json").write_text("{not json") and d / "bad.json", "cannot read"),
    ],
    ids=["missing-column", "empty", "missing-file", "unreadable"],
)
def test_bad_input_one_line_error_and_no_outputs(tmp_path, setup, expected):
    src = setup(tmp_path)
    out = tmp_path / "out"
    proc = run_script("code_gpt4", "--output-dir", str(out), "--data-files", str(src))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and expected in lines[-1]
    assert "Traceback" not in proc.stderr
    assert not out.exists() or not any(out.iterdir())


def test_bad_threshold_is_one_line(tmp_path):
    src = write(tmp_path / "x.json", code_rows(20), "json")
    proc = run_script("math_gpt4", "--output-dir", str(tmp_path / "o"), "--data-files", str(src),
                      "--similarity-threshold", "1.5")
    assert proc.returncode == 2 and "threshold must be in [0, 1)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_hub_unreachable_is_one_line(tmp_path):
    env_proc = subprocess.run(
        [sys.executable, str(ROOT / "data_preprocess" / "scripts" / "preprocess_alpaca_gpt4.py"),
         "--output-dir", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=60,
        env={**__import__("os").environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"},
    )
    assert env_proc.returncode == 2
    assert "hub is unreachable" in env_proc.stderr and "preprocess_sharegpt.py" in env_proc.stderr
    assert "Traceback" not in env_proc.stderr


def test_help_explains():
    proc = run_script("lmsys_gpt4", "--help")
    assert proc.returncode == 0
    for flag in ("--output-dir", "--seed", "--test-size", "--similarity-threshold", "--train-num-pairs",
                 "--val-num-pairs", "--data-files", "--num-proc", "--length-tokenizer"):
        assert flag in proc.stdout
    assert "(default: 50)" in proc.stdout  # lmsys train pairs per row


def test_num_proc_gives_the_same_outputs(tmp_path):
    rows = lmsys_rows(80)
    src = write(tmp_path / "l.parquet", rows, "parquet")
    preprocess.main("lmsys", ["--output-dir", str(tmp_path / "one"), "--data-files", str(src)])
    preprocess.main("lmsys", ["--output-dir", str(tmp_path / "two"), "--data-files", str(src), "--num-proc", "2"])
    assert read_outputs(tmp_path / "one") == read_outputs(tmp_path / "two")


def multi_turn_items(n=80):
    """Conversations of 1-4 exchanges, some cut into parts `<id>_<n>` (a later part may start with gpt),
    some with an empty message."""
    items = []
    for i in range(n):
        parts = 1 + (i % 3 == 0)
        for part in range(parts):
            turns = [] if part == 0 else [{"from": "gpt", "value": f"tail {i}"}]
            for k in range(1 + i % 4):
                asked = "" if (i, k) == (7, 1) else f"ask {i}.{part}.{k} {text(2)}"
                turns += [{"from": "human", "value": asked}, {"from": "gpt", "value": text(RNG.randint(1, 60))}]
            items.append({"id": f"c{i}_{part * 5}", "conversations": turns})
    return items


def test_train_turns_all_keeps_val_and_takes_every_turn_outside_it(tmp_path):
    items = multi_turn_items()
    src = write(tmp_path / "sg.json", items, "json")
    preprocess.main("sharegpt", ["--output-dir", str(tmp_path / "first"), "--data-files", str(src)])
    preprocess.main("sharegpt", ["--output-dir", str(tmp_path / "all"), "--data-files", str(src),
                                 "--train-turns", "all"])
    first, every = read_outputs(tmp_path / "first"), read_outputs(tmp_path / "all")
    assert every[1] == first[1] and every[3] == first[3]  # the same val rows and val pairs
    # Independently: which items are val (their first turn), and every human -> gpt turn of the others,
    # leaving out all parts of a val conversation.
    val_prompts = {r["prompt"] for r in first[1]}
    val_convs = {it["id"].split("_")[0] for it in items if it["conversations"][0]["value"] in val_prompts
                 and it["conversations"][0]["from"] == "human"}
    want = [(t["value"], u["value"]) for it in items if it["id"].split("_")[0] not in val_convs
            for t, u in zip(it["conversations"], it["conversations"][1:], strict=False)
            if t["from"] == "human" and u["from"] == "gpt" and t["value"] and u["value"]]
    assert [(r["prompt"], r["answer_content"]) for r in every[0]] == want
    assert [r["answer_length"] for r in every[0]] == [len(a) for _, a in want]
    assert [r["task_id"] for r in every[0]] == list(range(len(want)))
    assert len(every[0]) > 2 * len(first[0])  # later turns are there
    assert not val_prompts & {p for p, _ in want}
    assert every[2] == make_pairs(every[0], 10, 0.2, 42)


def test_train_turns_flag_only_for_multi_turn_datasets():
    assert "--train-turns" in run_script("sharegpt", "--help").stdout
    proc = run_script("alpaca_gpt4", "--output-dir", "x", "--train-turns", "all")
    assert proc.returncode == 2 and "unrecognized arguments: --train-turns" in proc.stderr


def test_length_tokenizer_counts_answers_in_its_tokens(tmp_path, tiny_model_dir):
    """--length-tokenizer: answer_length is the answer's token count in that tokenizer (no special tokens),
    the split is the same as without it, and pairs follow the new lengths."""
    from transformers import AutoTokenizer

    rng = random.Random(3)
    # Characters and tokens disagree: a known word is one token per 4-6 characters, an unknown run of x's
    # is one token ([UNK]) however long it is.
    rows = [{"instruction": f"task {i}",
             "output": " ".join(rng.choice(["write", "essay", "python"]) for _ in range(rng.randint(1, 30)))
             if i % 2 else "x" * rng.randint(20, 400)} for i in range(60)]
    src = write(tmp_path / "c.jsonl", rows, "jsonl")
    preprocess.main("code", ["--output-dir", str(tmp_path / "chars"), "--data-files", str(src)])
    preprocess.main("code", ["--output-dir", str(tmp_path / "tok"), "--data-files", str(src),
                             "--length-tokenizer", str(tiny_model_dir)])
    chars, tok = read_outputs(tmp_path / "chars"), read_outputs(tmp_path / "tok")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for by_chars, by_tokens in ((chars[0], tok[0]), (chars[1], tok[1])):
        assert [(r["task_id"], r["prompt"], r["answer_content"]) for r in by_chars] == \
               [(r["task_id"], r["prompt"], r["answer_content"]) for r in by_tokens]
        assert [r["answer_length"] for r in by_chars] == [len(r["answer_content"]) for r in by_chars]
        want = [len(tokenizer(r["answer_content"], add_special_tokens=False)["input_ids"]) for r in by_tokens]
        assert [r["answer_length"] for r in by_tokens] == want
    assert any(len(r["answer_content"]) > 100 and r["answer_length"] == 1 for r in tok[0])
    assert tok[2] == make_pairs(tok[0], 10, 0.2, 42) and tok[3] == make_pairs(tok[1], 10, 0.2, 43)
    assert tok[2] != chars[2]


def test_bad_length_tokenizer_is_one_line_and_writes_nothing(tmp_path):
    src = write(tmp_path / "x.json", code_rows(20), "json")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "data_preprocess" / "scripts" / "preprocess_code_gpt4.py"),
         "--output-dir", str(tmp_path / "o"), "--data-files", str(src),
         "--length-tokenizer", str(tmp_path / "no-such-tokenizer")],
        capture_output=True, text=True, timeout=120, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "length tokenizer" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
