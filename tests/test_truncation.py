"""Middle truncation (pars/model/truncation.py): the same cut in training, evaluation, serving and the gateway."""

from __future__ import annotations

import json
import random

import pytest
from conftest import WORDS
from pydantic import ValidationError
from transformers import AutoTokenizer

from pars.common.errors import PARSError
from pars.data.pairs import make_pairs
from pars.eval import evaluate
from pars.gateway.policy import scorable_text
from pars.model.checkpoint import load_ranker
from pars.model.scoring import PromptScorer
from pars.model.truncation import cut_middle, encode_prompts
from pars.serving.engine import load_scorer
from pars.serving.settings import Settings
from pars.train import loop as train
from pars.train.pairdata import PairCollator, TokenTable

LONG_CUE, SHORT_CUE = "write a long detailed essay", "give a one word answer"
FILLER = [w for w in WORDS if w not in set(f"{LONG_CUE} {SHORT_CUE}".split())]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def words(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(FILLER) for _ in range(n))


def test_cut_middle_keeps_both_ends():
    ids = list(range(10))
    assert cut_middle(ids, 10) == ids and cut_middle(ids, 20) == ids
    assert cut_middle(ids, 5) == [0, 1, 2, 8, 9]
    assert cut_middle(ids, 4) == [0, 1, 8, 9]
    assert cut_middle(ids, 1) == [0] and cut_middle(ids, 0) == []


def test_head_is_the_tokenizers_own_truncation(tokenizer):
    prompts = [words(40, 1), "yes", words(5, 2)]
    assert encode_prompts(tokenizer, prompts, 16) == tokenizer(prompts, truncation=True, max_length=16)["input_ids"]


def test_middle_keeps_the_start_and_the_end(tokenizer):
    long = f"{words(30, 3)} {LONG_CUE}"
    short = words(5, 4)
    (cut, same) = encode_prompts(tokenizer, [long, short], 16, "middle")
    body = tokenizer(long, add_special_tokens=False)["input_ids"]
    assert len(cut) == 16
    assert cut == [tokenizer.cls_token_id, *body[:7], *body[-7:], tokenizer.sep_token_id]
    assert tokenizer.decode(cut[-6:-1]) == LONG_CUE  # the instruction after the material survives
    assert same == tokenizer(short)["input_ids"]  # short prompts are not touched


def test_unknown_truncation_is_a_clear_error(tokenizer):
    with pytest.raises(PARSError, match="head, middle"):
        encode_prompts(tokenizer, ["a"], 16, "tail")


def test_scorer_reads_the_end_only_under_middle(tiny_model_dir, checkpoint, tokenizer):
    stem = words(60, 5)
    prompts = [f"{stem} {LONG_CUE}", f"{stem} {SHORT_CUE}"]
    model = load_ranker(str(tiny_model_dir), checkpoint)
    head = PromptScorer(model, tokenizer, max_length=16, device="cpu")
    middle = PromptScorer(model, tokenizer, max_length=16, device="cpu", truncation="middle")
    a, b = head.score(prompts)
    assert a == b  # the same first 14 tokens
    c, d = middle.score(prompts)
    assert abs(c - d) > 1e-6  # a random tiny model: small, but far above float32 noise at this size
    # the two scoring paths (whole-call tokenize, and encode + score_ids as the service batches) agree
    assert middle.score_ids(middle.encode(prompts)) == pytest.approx([c, d], abs=1e-7)
    batch = middle.tokenize(prompts)
    assert batch["input_ids"].shape == (2, 16) and bool(batch["attention_mask"].all())


def test_training_tables_and_collator_cut_alike(tokenizer):
    prompts = [f"{words(30, 6)} {SHORT_CUE}", "yes", words(14, 7)]
    expected = encode_prompts(tokenizer, prompts, 16, "middle")
    table = TokenTable.build(tokenizer, prompts, 16, progress=False, truncation="middle")
    ids, mask = table.pad(range(len(prompts)))
    for row, want in enumerate(expected):
        assert ids[row, : len(want)].tolist() == want and int(mask[row].sum()) == len(want)
    batch = PairCollator(tokenizer, 16, "middle")([{"prompt_A": prompts[0], "prompt_B": prompts[1], "label": 1}])
    a_ids, a_mask = batch["input_ids"][0], batch["attention_mask"][0]
    assert a_ids.shape == (1, 16) and a_ids[0].tolist() == expected[0]
    b_ids, b_mask = batch["input_ids"][1], batch["attention_mask"][1]
    assert b_ids[0, : len(expected[1])].tolist() == expected[1] and int(b_mask.sum()) == len(expected[1])
    assert int(a_mask.sum()) == 16


@pytest.fixture(scope="module")
def cue_at_end_data(tmp_path_factory):
    """Rows whose answer length is told only by the prompt's last words, after 30 words of filler."""
    out = tmp_path_factory.mktemp("cue-at-end")
    rng = random.Random(11)

    def rows(n: int, seed: int) -> list[dict]:
        made = []
        for i in range(n):
            long = rng.random() < 0.5
            length = rng.randint(400, 900) if long else rng.randint(5, 60)
            prompt = f"{words(30, seed * 1000 + i)} {LONG_CUE if long else SHORT_CUE}"
            made.append({"task_id": i, "prompt": prompt, "answer_content": "x" * length, "answer_length": length})
        return made

    train_rows, val_rows = rows(60, 1), rows(20, 2)
    for name, data in {"train_data.json": train_rows, "val_data.json": val_rows,
                       "train_pairs_length_diff_0.2.json": make_pairs(train_rows, 4, 0.2, 42),
                       "val_pairs_length_diff_0.2.json": make_pairs(val_rows, 4, 0.2, 43)}.items():
        (out / name).write_text(json.dumps(data), encoding="utf-8")
    return out


@pytest.mark.parametrize("truncation", ["head", "middle"])
def test_training_with_middle_truncation_sees_an_instruction_at_the_end(tiny_model_dir, cue_at_end_data, tmp_path,
                                                                        truncation):
    out = tmp_path / truncation
    args = ["--train-file", str(cue_at_end_data / "train_pairs_length_diff_0.2.json"),
            "--val-file", str(cue_at_end_data / "val_pairs_length_diff_0.2.json"), "--output-dir", str(out),
            "--model-name", str(tiny_model_dir), "--batch-size", "16", "--num-epochs", "6",
            "--learning-rate", "1e-3", "--device", "cpu", "--max-length", "16", "--pairing", "in-batch",
            "--truncation", truncation]
    assert train.main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["truncation"] == truncation
    if truncation == "middle":
        assert metrics["best_val_accuracy"] > 0.75
    else:  # the first 14 tokens are filler: nothing to learn from
        assert metrics["best_val_accuracy"] < 0.7


def test_evaluate_scores_one_checkpoint_under_both(tiny_model_dir, checkpoint, tiny_data, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert evaluate.main(["--checkpoint", str(checkpoint), str(checkpoint), "--model-name", str(tiny_model_dir),
                          "--truncation", "head", "middle", "--val-data", str(tiny_data / "val_data.json"),
                          "--device", "cpu", "--max-length", "8", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    names = [c["name"] for c in report["inputs"]["checkpoints"]]
    assert [c["truncation"] for c in report["inputs"]["checkpoints"]] == ["head", "middle"]
    assert names[1] == f"{names[0]}+middle"
    with pytest.raises(PARSError, match="--truncation"):
        evaluate.main(["--checkpoint", str(checkpoint), "--model-name", str(tiny_model_dir), "--truncation",
                       "head", "middle", "--val-data", str(tiny_data / "val_data.json"), "--device", "cpu"])


def test_service_settings_carry_the_truncation(tiny_model_dir, checkpoint, monkeypatch):
    monkeypatch.setenv("PREDICTOR_TRUNCATION", "middle")
    settings = Settings(model_path=str(checkpoint), model_name=str(tiny_model_dir), device="cpu")
    assert settings.truncation == "middle"
    assert load_scorer(settings).truncation == "middle"
    monkeypatch.setenv("PREDICTOR_TRUNCATION", "tail")
    with pytest.raises(ValidationError):
        Settings()


def test_gateway_keeps_the_start_and_end_of_a_long_prompt():
    text = "A" * 50 + "B" * 100 + "C" * 50
    assert scorable_text(text, 100) == "A" * 50 + "C" * 50
    assert scorable_text(text, 101) == "A" * 50 + "B" + "C" * 50
    assert scorable_text("short", 100) == "short"

