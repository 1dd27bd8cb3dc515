"""The exported Hugging Face directory scores exactly as the checkpoint does."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pars.common.errors import PARSError
from pars.model import export
from pars.model.checkpoint import is_exported_dir, load_ranker, save_checkpoint
from pars.model.ranker import PairwiseRanker
from pars.model.scoring import PromptScorer

PROMPTS = ["write a long detailed essay about rome", "yes", "give me python code for a proof please"]


def test_exported_logits_equal_checkpoint_scores(tiny_model_dir, tmp_path):
    torch.manual_seed(11)
    save_checkpoint(PairwiseRanker.from_pretrained(str(tiny_model_dir)), tmp_path / "best_model.pt")
    assert export.main(["--checkpoint", str(tmp_path / "best_model.pt"), "--model-name", str(tiny_model_dir),
                        "--output-dir", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "config.json").is_file() and (tmp_path / "hf" / "model.safetensors").is_file()

    want = PromptScorer(load_ranker(str(tiny_model_dir), tmp_path / "best_model.pt"),
                        AutoTokenizer.from_pretrained(str(tiny_model_dir))).score(PROMPTS)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert model.config.num_labels == 1
    enc = tokenizer(PROMPTS, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits.squeeze(-1).tolist()
    assert logits == pytest.approx(want, abs=1e-5)


def test_exported_directory_loads_as_the_ranker(tiny_model_dir, tmp_path):
    """load_ranker (what the service, the evaluator and export use) takes the exported directory as the
    checkpoint, or as the model name, and scores exactly as the .pt checkpoint."""
    from pars.serving.engine import load_scorer
    from pars.serving.settings import Settings

    torch.manual_seed(12)
    save_checkpoint(PairwiseRanker.from_pretrained(str(tiny_model_dir)), tmp_path / "best_model.pt")
    export.main(["--checkpoint", str(tmp_path / "best_model.pt"), "--model-name", str(tiny_model_dir),
                 "--output-dir", str(tmp_path / "hf")])
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    want = PromptScorer(load_ranker(str(tiny_model_dir), tmp_path / "best_model.pt"), tokenizer).score(PROMPTS)
    as_checkpoint = PromptScorer(load_ranker(str(tiny_model_dir), tmp_path / "hf"), tokenizer).score(PROMPTS)
    as_name = PromptScorer(load_ranker(str(tmp_path / "hf")), tokenizer).score(PROMPTS)
    assert as_checkpoint == pytest.approx(want, abs=1e-5) and as_name == pytest.approx(want, abs=1e-5)
    # the service's loader, pointed at the directory by PREDICTOR_MODEL_PATH / PREDICTOR_MODEL_NAME
    served = load_scorer(Settings(model_path=str(tmp_path / "hf"), model_name=str(tmp_path / "hf"), device="cpu"))
    assert served.score(PROMPTS) == pytest.approx(want, abs=1e-5)
    # a plain encoder directory is not an export: it still needs a checkpoint for the head
    assert not is_exported_dir(tiny_model_dir)


def test_directory_without_weights_is_one_clear_error(tiny_model_dir, tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    with pytest.raises(PARSError, match="model.safetensors"):
        load_ranker(str(tiny_model_dir), tmp_path / "hf")
