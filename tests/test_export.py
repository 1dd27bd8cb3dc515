"""Export: every ranker the trainer can produce loads with a standard library's standard class and scores
exactly as the checkpoint does, or is refused in one line."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DistilBertConfig, DistilBertModel

from pars.common.errors import PARSError, run_cli
from pars.model import export
from pars.model.checkpoint import is_exported_dir, load_ranker, save_checkpoint
from pars.model.ranker import PairwiseRanker
from pars.model.ranker_config import RankerConfig, read_ranker_config
from pars.model.scoring import PromptScorer

MAX_LENGTH = 8  # below the longest prompt's token count, so the cut is tested
PROMPTS = ["write a long detailed essay about rome", "yes",
           "give me python code for a proof please and explain the history of rome step by step", "a poem"]


def trained(tmp_path, model_dir, pooling: str = "pooler", seed: int = 11, **config) -> tuple[str, list[float]]:
    """A checkpoint with its ranker_config.json, as training leaves it, and its scores by PromptScorer."""
    run = tmp_path / "run"
    run.mkdir(parents=True)
    torch.manual_seed(seed)
    save_checkpoint(PairwiseRanker.from_pretrained(str(model_dir), pooling), run / "best_model.pt")
    config = RankerConfig(**{"model_name": str(model_dir), "pooling": pooling, "max_length": MAX_LENGTH, **config})
    config.save(run)
    scorer = PromptScorer(load_ranker(str(model_dir), run / "best_model.pt", pooling),
                          AutoTokenizer.from_pretrained(str(model_dir)), max_length=config.max_length, device="cpu")
    return str(run / "best_model.pt"), scorer.score(PROMPTS)


def sequence_classification_scores(out) -> list[float]:
    """The few lines a user writes (the exporter prints them)."""
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        return model(**tokenizer(PROMPTS, truncation=True, padding=True, return_tensors="pt")).logits[:, 0].tolist()


@pytest.fixture(scope="module")
def tiny_distilbert_dir(tiny_model_dir, tmp_path_factory):
    """An encoder without a pooler (DistilBERT), the tiny BERT's tokenizer."""
    path = tmp_path_factory.mktemp("tiny-distilbert")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_model_dir / name).is_file():
            shutil.copy(tiny_model_dir / name, path / name)
    torch.manual_seed(3)
    vocab = len((tiny_model_dir / "vocab.txt").read_text().splitlines())
    DistilBertModel(DistilBertConfig(vocab_size=vocab, dim=32, n_layers=1, n_heads=2, hidden_dim=64,
                                     max_position_embeddings=128)).save_pretrained(path)
    return path


def test_pooler_ranker_exports_as_sequence_classification(tiny_model_dir, tmp_path, capsys):
    checkpoint, want = trained(tmp_path, tiny_model_dir)
    out = tmp_path / "hf"
    assert export.main(["--checkpoint", checkpoint, "--output-dir", str(out)]) == 0  # settings from its config
    assert sequence_classification_scores(out) == pytest.approx(want, abs=1e-5)
    assert AutoTokenizer.from_pretrained(out).model_max_length == MAX_LENGTH
    assert read_ranker_config(out) == read_ranker_config(checkpoint)
    printed = capsys.readouterr().out
    assert "AutoModelForSequenceClassification" in printed and "logits[:, 0]" in printed


def test_mean_ranker_exports_as_sentence_transformers(tiny_model_dir, tmp_path, capsys):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    checkpoint, want = trained(tmp_path, tiny_model_dir, pooling="mean")
    out = tmp_path / "st"
    assert export.main(["--checkpoint", checkpoint, "--output-dir", str(out)]) == 0
    assert "sentence-transformers" in capsys.readouterr().out
    scores = sentence_transformers.SentenceTransformer(str(out), device="cpu").encode(PROMPTS)
    assert scores.shape == (len(PROMPTS), 1)
    np.testing.assert_allclose(scores[:, 0], want, atol=1e-5)
    for name in ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json", "2_Dense/config.json",
                 "2_Dense/model.safetensors", "config.json", "model.safetensors", "ranker_config.json"):
        assert (out / name).is_file(), name
    assert read_ranker_config(out) == read_ranker_config(checkpoint)


def test_exported_directories_load_as_the_ranker(tiny_model_dir, tmp_path):
    """load_ranker (what the service, the evaluator and export use) takes either export as the checkpoint
    and scores exactly as the .pt checkpoint; the service needs only PREDICTOR_MODEL_PATH."""
    from pars.serving.engine import load_scorer
    from pars.serving.settings import Settings

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    for pooling in ("pooler", "mean"):
        checkpoint, want = trained(tmp_path / pooling, tiny_model_dir, pooling=pooling)
        out = tmp_path / pooling / "export"
        export.main(["--checkpoint", checkpoint, "--output-dir", str(out)])
        assert is_exported_dir(out)
        ranker = load_ranker(str(tiny_model_dir), out, pooling)
        assert ranker.pooling == pooling
        assert PromptScorer(ranker, tokenizer, max_length=MAX_LENGTH).score(PROMPTS) == pytest.approx(want, abs=1e-5)
        other = "pooler" if pooling == "mean" else "mean"
        with pytest.raises(PARSError, match=f"pools with '{pooling}'"):
            load_ranker(str(tiny_model_dir), out, other)
        served = load_scorer(Settings(model_path=str(out), device="cpu"))  # its ranker_config.json says the rest
        assert served.score(PROMPTS) == pytest.approx(want, abs=1e-5)
        # and as the model name, with no checkpoint
        as_name = PromptScorer(load_ranker(str(out), pooling=pooling), tokenizer, max_length=MAX_LENGTH)
        assert as_name.score(PROMPTS) == pytest.approx(want, abs=1e-5)
    # a plain encoder directory is not an export: it still needs a checkpoint for the head
    assert not is_exported_dir(tiny_model_dir)


def test_sentence_transformers_directory_that_is_not_the_ranker_is_refused(tiny_model_dir, tmp_path):
    checkpoint, _ = trained(tmp_path, tiny_model_dir, pooling="mean")
    export.main(["--checkpoint", checkpoint, "--output-dir", str(tmp_path / "st")])
    dense = tmp_path / "st" / "2_Dense" / "config.json"
    dense.write_text(dense.read_text().replace("torch.nn.modules.linear.Identity", "torch.nn.modules.activation.Tanh"))
    with pytest.raises(PARSError, match="not a ranker export"):
        load_ranker(str(tiny_model_dir), tmp_path / "st", "mean")


def test_bare_checkpoint_exports_with_the_original_settings(tiny_model_dir, tmp_path):
    """A .pt of the original release records nothing: pooler, head, 128 tokens, the encoder from the flag."""
    torch.manual_seed(12)
    save_checkpoint(PairwiseRanker.from_pretrained(str(tiny_model_dir)), tmp_path / "best_model.pt")
    out = tmp_path / "hf"
    assert export.main(["--checkpoint", str(tmp_path / "best_model.pt"), "--model-name", str(tiny_model_dir),
                        "--output-dir", str(out)]) == 0
    want = PromptScorer(load_ranker(str(tiny_model_dir), tmp_path / "best_model.pt"),
                        AutoTokenizer.from_pretrained(str(tiny_model_dir)), max_length=128).score(PROMPTS)
    assert sequence_classification_scores(out) == pytest.approx(want, abs=1e-5)
    config = read_ranker_config(out)
    assert (config.model_name, config.pooling, config.truncation, config.max_length) == \
        (str(tiny_model_dir), "pooler", "head", 128)


def test_middle_truncation_is_refused_in_one_line(tiny_model_dir, tmp_path, capsys):
    checkpoint, _ = trained(tmp_path, tiny_model_dir, truncation="middle")
    capsys.readouterr()  # transformers' progress bars of the set-up
    with pytest.raises(SystemExit) as exit_info:
        run_cli(export.main, ["--checkpoint", checkpoint, "--output-dir", str(tmp_path / "hf")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "'middle'" in err and "pars service" in err
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("flag", [["--pooling", "pooler"], ["--max-length", "16"], ["--truncation", "middle"]])
def test_a_flag_contradicting_the_checkpoint_is_refused(tiny_model_dir, tmp_path, flag):
    checkpoint, _ = trained(tmp_path, tiny_model_dir, pooling="mean")
    with pytest.raises(PARSError, match=f"but {flag[0]}={flag[1]} was given"):
        export.main(["--checkpoint", checkpoint, *flag, "--output-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_encoder_without_pooler_exports_only_mean_pooled(tiny_distilbert_dir, tmp_path):
    """No standard head reads a CLS hidden state alone; the sentence-transformers layout fits any encoder."""
    checkpoint, _ = trained(tmp_path / "cls", tiny_distilbert_dir)
    with pytest.raises(PARSError, match="'distilbert' is not one"):
        export.main(["--checkpoint", checkpoint, "--output-dir", str(tmp_path / "cls" / "out")])
    assert not (tmp_path / "cls" / "out").exists()
    sentence_transformers = pytest.importorskip("sentence_transformers")
    checkpoint, want = trained(tmp_path / "mean", tiny_distilbert_dir, pooling="mean")
    export.main(["--checkpoint", checkpoint, "--output-dir", str(tmp_path / "mean" / "out")])
    scores = sentence_transformers.SentenceTransformer(str(tmp_path / "mean" / "out"), device="cpu").encode(PROMPTS)
    np.testing.assert_allclose(scores[:, 0], want, atol=1e-5)


def test_output_directory_must_be_new_or_empty(tiny_model_dir, tmp_path):
    checkpoint, _ = trained(tmp_path, tiny_model_dir)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "modules.json").write_text("[]")  # e.g. an earlier export of the other layout
    with pytest.raises(PARSError, match="not empty"):
        export.main(["--checkpoint", checkpoint, "--output-dir", str(tmp_path / "out")])


def test_directory_without_weights_is_one_clear_error(tiny_model_dir, tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    with pytest.raises(PARSError, match="model.safetensors"):
        load_ranker(str(tiny_model_dir), tmp_path / "hf")
