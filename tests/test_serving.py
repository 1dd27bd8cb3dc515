"""Stage 3 through real HTTP on loopback: uvicorn is started by the test."""

from __future__ import annotations

import re

import httpx
import pytest
import torch
from serving_helpers import running_server, start_server

PROMPTS = ["write a long detailed essay about the history of rome", "yes", "give me python code for a proof"]


@pytest.fixture(scope="module")
def server(tiny_model_dir, checkpoint):
    with running_server({"PREDICTOR_MODEL_PATH": str(checkpoint), "PREDICTOR_MODEL_NAME": str(tiny_model_dir),
                         "PREDICTOR_MAX_LENGTH": "128", "PREDICTOR_DEVICE": "cpu"}) as url:
        yield url


def test_root(server, checkpoint, tiny_model_dir):
    body = httpx.get(server + "/").json()
    # its identity, a content hash (tests/test_reload.py), is also on every scoring answer
    ranker_id = body.pop("ranker_id")
    assert re.fullmatch(r"[0-9a-f]{16}", ranker_id)
    assert httpx.post(server + "/score", json={"prompt": "yes"}).headers["x-pars-ranker-id"] == ranker_id
    # a bare checkpoint (no ranker_config.json): the original release's settings, the encoder as given
    assert body == {"message": "Predictor score model is running.", "model_path": str(checkpoint),
                    "model_name": str(tiny_model_dir), "device": "cpu", "dtype": "float32", "backend": "torch",
                    "batching": True,
                    "ranker": {"model_name": str(tiny_model_dir), "pooling": "pooler", "truncation": "head",
                               "max_length": 128, "length_unit": None, "loss": None,
                               "config_source": "none (the original release's settings)"}}


def test_score_equals_direct_model_score(server, direct):
    for prompt in PROMPTS:
        body = httpx.post(server + "/score", json={"prompt": prompt}).json()
        assert body["prompt"] == prompt
        assert body["score"] == pytest.approx(direct.score([prompt])[0], abs=1e-5)


def test_score_batch(server, direct):
    body = httpx.post(server + "/score_batch", json={"prompts": PROMPTS}).json()
    assert body["prompts"] == PROMPTS
    assert body["scores"] == pytest.approx(direct.score(PROMPTS), abs=1e-5)
    # batched with others, a prompt scores as it does alone
    alone = httpx.post(server + "/score", json={"prompt": PROMPTS[1]}).json()["score"]
    assert body["scores"][1] == pytest.approx(alone, abs=1e-5)


def test_empty_batch_is_empty(server):
    assert httpx.post(server + "/score_batch", json={"prompts": []}).json() == {"prompts": [], "scores": []}
    assert httpx.post(server + "/compare_batch", json={"pairs": []}).json() == {"results": []}


def test_compare_winner_is_higher_score(server, direct):
    a, b = PROMPTS[0], PROMPTS[1]
    body = httpx.post(server + "/compare", json={"prompt_a": a, "prompt_b": b}).json()
    sa, sb = direct.score([a, b])
    assert body["score_a"] == pytest.approx(sa, abs=1e-5) and body["score_b"] == pytest.approx(sb, abs=1e-5)
    assert body["winner"] == ("prompt_a" if sa > sb else "prompt_b")
    assert set(body) == {"prompt_a", "prompt_b", "score_a", "score_b", "winner"}


def test_compare_batch(server, direct):
    pairs = [{"prompt_a": PROMPTS[0], "prompt_b": PROMPTS[1]}, {"prompt_a": PROMPTS[1], "prompt_b": PROMPTS[2]}]
    results = httpx.post(server + "/compare_batch", json={"pairs": pairs}).json()["results"]
    assert len(results) == 2
    for pair, r in zip(pairs, results, strict=True):
        sa, sb = direct.score([pair["prompt_a"], pair["prompt_b"]])
        assert r["prompt_a"] == pair["prompt_a"] and r["prompt_b"] == pair["prompt_b"]
        assert r["score_a"] == pytest.approx(sa, abs=1e-5) and r["score_b"] == pytest.approx(sb, abs=1e-5)
        assert r["winner"] == ("prompt_a" if r["score_a"] > r["score_b"] else "prompt_b")


def test_wrong_types_are_422(server):
    assert httpx.post(server + "/score", json={"prompt": 5}).status_code == 422
    assert httpx.post(server + "/score_batch", json={"prompts": "not a list"}).status_code == 422
    assert httpx.post(server + "/score", content=b"{not json", headers={"content-type": "application/json"}
                      ).status_code == 422


@pytest.mark.parametrize("make_bad, reason", [
    (lambda d: d / "missing.pt", "checkpoint not found"),
    (lambda d: (d / "garbage.pt").write_bytes(b"not a checkpoint") and d / "garbage.pt", "corrupt"),
])
def test_bad_checkpoint_stops_startup_with_one_line(tiny_model_dir, tmp_path, make_bad, reason):
    proc, _ = start_server({"PREDICTOR_MODEL_PATH": str(make_bad(tmp_path)),
                            "PREDICTOR_MODEL_NAME": str(tiny_model_dir), "PREDICTOR_DEVICE": "cpu"})
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode != 0
    assert "Traceback" not in out
    lines = [ln for ln in out.splitlines() if "PARS predictor cannot start" in ln]
    assert len(lines) == 1 and reason in lines[0]


def test_incompatible_checkpoint_stops_startup(tiny_model_dir, tmp_path):
    torch.save({"fc.weight": torch.zeros(1, 999), "fc.bias": torch.zeros(1)}, tmp_path / "other.pt")
    proc, _ = start_server({"PREDICTOR_MODEL_PATH": str(tmp_path / "other.pt"),
                            "PREDICTOR_MODEL_NAME": str(tiny_model_dir), "PREDICTOR_DEVICE": "cpu"})
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode != 0 and "Traceback" not in out
    assert "does not fit this model" in out
