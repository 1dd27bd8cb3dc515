"""pars/retrain: recorded traffic -> fine-tuned candidate -> judged -> reloaded only when better."""

from __future__ import annotations

import json
import random

import pytest
import torch
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pars.common.errors import PARSError
from pars.model.checkpoint import save_checkpoint
from pars.model.ranker import PairwiseRanker
from pars.model.ranker_config import RankerConfig
from pars.retrain import cycle
from tests.conftest import WORDS
from tests.serving_helpers import serve


def write_records(path, n: int, seed: int) -> None:
    """Gateway records whose answer length follows the prompt ('essay' prompts get long answers), in time order."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            long = rng.random() < 0.5
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10)))
            prompt = ("write a long detailed essay " if long else "give a one word answer ") + words + f" {i}"
            tokens = rng.randint(400, 900) if long else rng.randint(5, 60)
            f.write(json.dumps({"time": 1_765_000_000 + i, "path": "/v1/chat/completions", "model": "m",
                                "prompt": prompt, "prompt_tokens": 20, "completion_tokens": tokens,
                                "finish_reason": "stop", "censored": False, "status": 200, "stream": False,
                                "latency_s": 0.1, "priority_source": "scored"}) + "\n")


@pytest.fixture(scope="module")
def deployed(tiny_model_dir, tmp_path_factory):
    """An untrained ranker on the tiny encoder, as deployed: checkpoint and ranker_config.json."""
    torch.manual_seed(3)
    out = tmp_path_factory.mktemp("deployed")
    save_checkpoint(PairwiseRanker.from_pretrained(str(tiny_model_dir), "mean"), out / "best_model.pt")
    RankerConfig(model_name=str(tiny_model_dir), pooling="mean", max_length=32).save(out)
    return out / "best_model.pt"


class StandInPredictor:
    def __init__(self) -> None:
        self.reloads: list[dict] = []

    async def reload(self, request: Request) -> JSONResponse:
        self.reloads.append(await request.json())
        return JSONResponse({"status": "reloaded", "ranker_id": "new"})

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/admin/reload", self.reload, methods=["POST"])])


def args_for(records, deployed, out, *extra: str) -> list[str]:
    return ["--records", str(records), "--deployed", str(deployed), "--output-dir", str(out), "--device", "cpu",
            "--batch-size", "16", "--min-train-prompts", "50", "--min-val-prompts", "20", *extra]


def test_too_few_records_is_one_line(deployed, tmp_path):
    write_records(tmp_path / "r.jsonl", 40, 0)
    with pytest.raises(PARSError, match="too few records to judge") as err:
        cycle.main(args_for(tmp_path / "r.jsonl", deployed, tmp_path / "out", "--min-train-prompts", "500"))
    assert "\n" not in str(err.value)


def test_a_candidate_no_better_is_not_reloaded(deployed, tmp_path):
    write_records(tmp_path / "r.jsonl", 300, 1)
    predictor = StandInPredictor()
    with serve(predictor.app()) as url:
        # learning rate 0: the candidate is the deployed ranker, its difference 0 with a 0-wide interval
        assert cycle.main(args_for(tmp_path / "r.jsonl", deployed, tmp_path / "out", "--learning-rate", "0",
                                   "--predictor-url", url)) == 0
    decision = json.loads((tmp_path / "out" / "decision.json").read_text())
    assert decision["candidate_better"] is False and decision["tau_difference"]["difference"] == pytest.approx(0)
    assert predictor.reloads == [] and decision["action"].startswith("kept")


def test_a_better_candidate_is_reloaded(deployed, tmp_path):
    write_records(tmp_path / "r.jsonl", 600, 2)
    predictor = StandInPredictor()
    with serve(predictor.app()) as url:
        assert cycle.main(args_for(tmp_path / "r.jsonl", deployed, tmp_path / "out", "--num-epochs", "3",
                                   "--learning-rate", "1e-3", "--predictor-url", url)) == 0
    decision = json.loads((tmp_path / "out" / "decision.json").read_text())
    assert decision["candidate_better"] is True, decision
    assert decision["tau_difference"]["ci95_low"] > 0
    assert predictor.reloads == [{"model_path": str((tmp_path / "out" / "candidate" / "best_model.pt").resolve())}]
