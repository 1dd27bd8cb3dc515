"""The exported Hugging Face directory scores exactly as the checkpoint does."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pars import export
from pars.model import PairwiseRanker, load_ranker, save_checkpoint
from pars.scoring import PromptScorer

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
