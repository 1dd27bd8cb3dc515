"""PREDICTOR_DTYPE on CPU: bfloat16 is autocast (the linear layers' weights cast once, to what autocast casts
them to on every pass: the same scores; scores close to float32's), float16 is refused in one line; the
precision is set once; the service answers in bfloat16."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch
from serving_helpers import PROMPTS, start_server, wait_ready
from transformers import AutoTokenizer

from pars.common.errors import PARSError
from pars.model.checkpoint import load_ranker
from pars.model.scoring import PromptScorer


@pytest.fixture()
def scorer(tiny_model_dir, checkpoint) -> PromptScorer:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    return PromptScorer(load_ranker(str(tiny_model_dir), checkpoint), tokenizer, max_length=128, device="cpu")


def test_bfloat16_on_cpu_is_autocast_close_to_float32(scorer, direct, tiny_model_dir, checkpoint):
    scorer.set_dtype(torch.bfloat16)
    assert scorer.autocast_dtype == torch.bfloat16
    linear = {id(p) for m in scorer.model.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters()}
    assert linear and all(p.dtype == torch.bfloat16 for p in scorer.model.parameters() if id(p) in linear)
    rest = [p for p in scorer.model.parameters() if id(p) not in linear]
    assert rest and all(p.dtype == torch.float32 for p in rest)  # embeddings and layer norms stay float32
    got, ref = np.asarray(scorer.score(PROMPTS)), np.asarray(direct.score(PROMPTS))
    assert got.dtype == np.float64 and not np.array_equal(got, ref)  # autocast ran: bf16 rounding
    np.testing.assert_allclose(got, ref, atol=0.05)  # and nothing worse
    # Plain autocast over float32 weights (casting them on every pass) gives exactly these scores.
    per_pass = PromptScorer(load_ranker(str(tiny_model_dir), checkpoint),
                            AutoTokenizer.from_pretrained(str(tiny_model_dir)), max_length=128, device="cpu")
    per_pass.autocast_dtype = torch.bfloat16
    assert per_pass.score(PROMPTS) == scorer.score(PROMPTS)


def test_float32_is_a_no_op_and_float16_on_cpu_is_refused(scorer, direct):
    scorer.set_dtype(torch.float32)
    assert scorer.autocast_dtype is None and scorer.score(PROMPTS) == direct.score(PROMPTS)
    with pytest.raises(PARSError, match="needs a CUDA device"):
        scorer.set_dtype(torch.float16)
    scorer.set_dtype(torch.bfloat16)
    scorer.set_dtype(torch.bfloat16)  # the same again: a no-op
    with pytest.raises(PARSError, match="set once"):
        scorer.set_dtype(torch.float32)


def test_half_precision_needs_the_torch_backend(tiny_model_dir):
    class Graph:  # an ONNX-like ranker: no torch module to cast or autocast
        def score(self, input_ids, attention_mask):
            return torch.zeros(len(input_ids))

    plain = PromptScorer(Graph(), AutoTokenizer.from_pretrained(str(tiny_model_dir)), device="cpu")
    with pytest.raises(PARSError, match="torch backend"):
        plain.set_dtype(torch.bfloat16)


def test_service_in_bfloat16_on_cpu_answers_close_to_float32(tiny_model_dir, checkpoint, direct):
    proc, url = start_server({"PREDICTOR_MODEL_PATH": str(checkpoint), "PREDICTOR_MODEL_NAME": str(tiny_model_dir),
                              "PREDICTOR_DEVICE": "cpu", "PREDICTOR_NUM_THREADS": "1",
                              "PREDICTOR_DTYPE": "bfloat16"})
    try:
        wait_ready(proc, url)
        got = httpx.post(url + "/score_batch", json={"prompts": PROMPTS}, timeout=30).json()["scores"]
        np.testing.assert_allclose(got, direct.score(PROMPTS), atol=0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
