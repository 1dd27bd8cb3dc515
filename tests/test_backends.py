"""The ONNX Runtime backend: same scores as torch (fp32), batching-invariant, cached by content, served."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import torch
from serving_helpers import PROMPTS, start_server, wait_ready
from transformers import AutoTokenizer

from pars.common.errors import PARSError
from pars.model.backends import GRAPH_FILE, cache_key, load_onnx_ranker
from pars.model.checkpoint import load_ranker, save_checkpoint
from pars.model.ranker import PairwiseRanker
from pars.model.scoring import PromptScorer

pytest.importorskip("onnxruntime")

@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


def test_fp32_graph_scores_equal_torch_and_do_not_depend_on_batch_mates(tiny_model_dir, checkpoint, tokenizer,
                                                                        onnx_cache, direct):
    ranker = load_onnx_ranker(str(tiny_model_dir), checkpoint, "onnx", onnx_cache, threads=1, log=lambda _: None)
    scorer = PromptScorer(ranker, tokenizer, max_length=128, device="cpu")
    together = scorer.score(PROMPTS)
    np.testing.assert_allclose(together, direct.score(PROMPTS), atol=1e-5)
    alone = [scorer.score([p])[0] for p in PROMPTS]
    np.testing.assert_allclose(together, alone, atol=1e-5)
    ids = scorer.encode(PROMPTS)
    np.testing.assert_allclose(scorer.score_ids(ids[::-1]), together[::-1], atol=1e-5)
    spinning = load_onnx_ranker(str(tiny_model_dir), checkpoint, "onnx", onnx_cache, threads=2, spin=True,
                                log=lambda _: None)
    np.testing.assert_allclose(PromptScorer(spinning, tokenizer, max_length=128, device="cpu").score(PROMPTS),
                               together, atol=1e-5)


def test_int8_graph_is_smaller_and_close_to_fp32(tiny_model_dir, checkpoint, tokenizer, onnx_cache, direct):
    ranker = load_onnx_ranker(str(tiny_model_dir), checkpoint, "onnx-int8", onnx_cache, threads=1,
                              log=lambda _: None)
    scores = PromptScorer(ranker, tokenizer, max_length=128, device="cpu").score(PROMPTS)
    # The tiny random model's scores differ by ~1e-3 between prompts, below int8's noise, so its ranking
    # says nothing; the values must still be the fp32 ones up to quantization error (ranking on a trained
    # model is measured in benchmarks/backend_bench.py).
    np.testing.assert_allclose(scores, direct.score(PROMPTS), atol=0.02)
    fp32 = onnx_cache / cache_key(str(tiny_model_dir), checkpoint, "onnx") / GRAPH_FILE
    assert ranker.graph.stat().st_size < fp32.stat().st_size


def test_export_is_cached_by_checkpoint_content(tiny_model_dir, tmp_path):
    messages: list[str] = []
    torch.manual_seed(3)
    ckpt = tmp_path / "a.pt"
    save_checkpoint(PairwiseRanker.from_pretrained(str(tiny_model_dir)), ckpt)
    first = load_onnx_ranker(str(tiny_model_dir), ckpt, "onnx", tmp_path / "cache", log=messages.append)
    again = load_onnx_ranker(str(tiny_model_dir), ckpt, "onnx", tmp_path / "cache", log=messages.append)
    assert len(messages) == 1 and first.graph == again.graph  # the second load reused the export

    model = load_ranker(str(tiny_model_dir), ckpt)
    with torch.no_grad():
        model.fc.bias.add_(1.0)
    save_checkpoint(model, ckpt)  # same path, new weights: a new export, not the stale graph
    changed = load_onnx_ranker(str(tiny_model_dir), ckpt, "onnx", tmp_path / "cache", log=messages.append)
    assert len(messages) == 2 and changed.graph != first.graph
    ids = torch.tensor([[2, 10, 3]]), torch.ones(1, 3, dtype=torch.long)
    assert changed.score(*ids).item() == pytest.approx(first.score(*ids).item() + 1.0, abs=1e-5)


def test_unknown_backend_and_bad_checkpoint_are_one_line_errors(tiny_model_dir, tmp_path):
    with pytest.raises(PARSError, match="not an ONNX backend"):
        load_onnx_ranker(str(tiny_model_dir), None, "tensorrt", tmp_path)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(PARSError, match="bad.pt"):
        load_onnx_ranker(str(tiny_model_dir), bad, "onnx", tmp_path / "cache", log=lambda _: None)


def test_service_on_the_onnx_backend_answers_torch_scores(tiny_model_dir, checkpoint, onnx_cache, direct):
    proc, url = start_server({"PREDICTOR_MODEL_PATH": str(checkpoint), "PREDICTOR_MODEL_NAME": str(tiny_model_dir),
                              "PREDICTOR_DEVICE": "cpu", "PREDICTOR_NUM_THREADS": "1",
                              "PREDICTOR_BACKEND": "onnx", "PREDICTOR_ONNX_CACHE_DIR": str(onnx_cache),
                              "PREDICTOR_ONNX_SPIN": "1"})
    try:
        wait_ready(proc, url)
        got = httpx.post(url + "/score_batch", json={"prompts": PROMPTS}, timeout=30).json()["scores"]
        np.testing.assert_allclose(got, direct.score(PROMPTS), atol=1e-5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_backend_bench_compares_half_precision_with_fp32(tiny_model_dir, checkpoint, tmp_path):
    from benchmarks import backend_bench as bb
    data = tmp_path / "val_data.json"
    data.write_text(json.dumps([{"prompt": p, "answer_length": 10 * (i + 1)} for i, p in enumerate(PROMPTS)]))
    out = tmp_path / "bb"
    bb.main(["--checkpoint", str(checkpoint), "--model-name", str(tiny_model_dir), "--data", str(data),
             "--backends", "torch,torch-bfloat16", "--repeats", "1", "--batch1-prompts", "2", "--threads", "1",
             "--out", str(out)])
    rows = {r["backend"]: r for r in json.loads(out.with_suffix(".json").read_text())["results"]}
    assert rows["torch"]["max_abs_diff_vs_torch_fp32"] == 0.0
    assert 0.0 < rows["torch-bfloat16"]["max_abs_diff_vs_torch_fp32"] < 0.05  # bf16 rounding, nothing worse
    with pytest.raises(SystemExit):
        bb.main(["--checkpoint", str(checkpoint), "--data", str(data), "--backends", "torch-fp8"])
    with pytest.raises(SystemExit):
        bb.main(["--checkpoint", str(checkpoint), "--data", str(data), "--backends", "onnx", "--device", "cuda"])
    with pytest.raises(SystemExit):  # float16 on CPU: refused before any work
        bb.main(["--checkpoint", str(checkpoint), "--data", str(data), "--backends", "torch,torch-float16"])
