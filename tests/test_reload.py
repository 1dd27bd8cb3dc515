"""Reloading the ranker without downtime (pars/serving/reload.py): POST /admin/reload, SIGHUP, and the gateway's
in-process scorer. Tiny encoders built here; no timing assertions (where a reload must still be running when
something else happens, a gate holds its warm-up)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import torch
from serving_helpers import PROMPTS, serve, start_server, wait_ready
from transformers import AutoTokenizer

from pars.model.checkpoint import load_ranker, save_checkpoint
from pars.model.ranker import PairwiseRanker
from pars.model.ranker_config import RankerConfig, read_ranker_config
from pars.model.scoring import PromptScorer
from pars.serving.app import create_app
from pars.serving.engine import InferenceEngine
from pars.serving.observability import Metrics
from pars.serving.reload import RANKER_ID_HEADER, RankerHolder, ReloadError, ranker_id
from pars.serving.settings import Settings

KEY = "s3cret"


def make_checkpoint(directory: Path, encoder: Path, seed: int, config: RankerConfig | None = None) -> Path:
    """A ranker on the tiny encoder with a seeded head (and, given one, its ranker_config.json beside it)."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    pooling = config.pooling if config is not None else "pooler"
    save_checkpoint(PairwiseRanker.from_pretrained(str(encoder), pooling), directory / "best_model.pt")
    if config is not None:
        config.save(directory)
    return directory / "best_model.pt"


@pytest.fixture(scope="module")
def other(tiny_model_dir, tmp_path_factory) -> Path:
    """A second bare checkpoint: the same encoder and settings, another head."""
    return make_checkpoint(tmp_path_factory.mktemp("other"), tiny_model_dir, seed=23)


@pytest.fixture(scope="module")
def configured(tiny_model_dir, tmp_path_factory) -> Path:
    """A checkpoint scored otherwise: mean pooling, middle cut at 8 tokens (tokenized unlike the first)."""
    config = RankerConfig(model_name=str(tiny_model_dir), pooling="mean", truncation="middle", max_length=8)
    return make_checkpoint(tmp_path_factory.mktemp("configured"), tiny_model_dir, seed=11, config=config)


@pytest.fixture(scope="module")
def garbage(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("garbage") / "best_model.pt"
    path.write_bytes(b"not a checkpoint at all")
    return path


def direct_scores(encoder: Path, ckpt: Path, prompts: list[str] = PROMPTS) -> list[float]:
    """Each prompt scored alone in-process, with the settings its checkpoint records."""
    config = read_ranker_config(ckpt)
    scorer = PromptScorer(load_ranker(str(encoder), ckpt, config.pooling), AutoTokenizer.from_pretrained(str(encoder)),
                          max_length=config.max_length, device="cpu", truncation=config.truncation)
    return [scorer.score([p])[0] for p in prompts]


@pytest.fixture(scope="module")
def expected(tiny_model_dir, checkpoint, other, configured) -> dict[Path, list[float]]:
    scores = {ckpt: direct_scores(tiny_model_dir, ckpt) for ckpt in (checkpoint, other, configured)}
    assert scores[checkpoint] != pytest.approx(scores[other], abs=1e-3)  # the rankers tell apart
    return scores


def settings_for(tiny_model_dir: Path, ckpt: Path, **extra) -> Settings:
    extra = {"admin_reload": True, **extra}
    return Settings(model_path=str(ckpt), model_name=str(tiny_model_dir), device="cpu", num_threads=1,
                    forward_overhead_tokens=64, **extra)


@contextmanager
def serving(settings: Settings):
    """The service in a thread, once warmed up (a test that patches the warm-up patches the reload's alone)."""
    with serve(create_app(settings)) as url:
        wait_ready_in_thread(url)
        yield url


def wait_ready_in_thread(url: str) -> None:
    deadline = time.monotonic() + 60
    while httpx.get(url + "/ready").status_code != 200:
        assert time.monotonic() < deadline, httpx.get(url + "/ready").text
        time.sleep(0.05)


def score_batch(url: str, headers: dict[str, str] | None = None) -> tuple[str, list[float]]:
    r = httpx.post(url + "/score_batch", json={"prompts": PROMPTS}, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    return r.headers[RANKER_ID_HEADER], r.json()["scores"]


def reload(url: str, model_path: Path | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"model_path": str(model_path)} if model_path is not None else None
    return httpx.post(url + "/admin/reload", json=body, headers=headers, timeout=120)


def metric_line(url: str, name: str, headers: dict[str, str] | None = None) -> list[str]:
    text = httpx.get(url + "/metrics", headers=headers).text
    return [ln for ln in text.splitlines() if ln.startswith(name)]


def reloads(url: str, outcome: str, headers: dict[str, str] | None = None) -> float:
    (line,) = [ln for ln in metric_line(url, "pars_ranker_reloads_total", headers) if f'"{outcome}"' in ln]
    return float(line.rsplit(" ", 1)[1])


def assert_one_line_error(r: httpx.Response, status: int, error: str, *needles: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == error and "\n" not in body["message"]
    for needle in needles:
        assert needle in body["message"], body["message"]
    return body["message"]


# --- identity -----------------------------------------------------------------------------------------------


def test_ranker_id_is_the_content_and_the_config(checkpoint, other, tmp_path):
    config = read_ranker_config(checkpoint)
    copy = tmp_path / "copy.pt"
    shutil.copyfile(checkpoint, copy)
    assert re.fullmatch(r"[0-9a-f]{16}", ranker_id(str(checkpoint), config))
    assert ranker_id(str(copy), config) == ranker_id(str(checkpoint), config)  # the bytes, not the path
    assert ranker_id(str(other), config) != ranker_id(str(checkpoint), config)
    longer = RankerConfig(max_length=64)
    assert ranker_id(str(checkpoint), longer) != ranker_id(str(checkpoint), config)


# --- POST /admin/reload -------------------------------------------------------------------------------------


def test_reload_swaps_the_scores_and_the_identity(tiny_model_dir, checkpoint, configured, expected):
    with serving(settings_for(tiny_model_dir, checkpoint)) as url:
        root = httpx.get(url + "/").json()
        first = root["ranker_id"]
        assert root["model_path"] == str(checkpoint)
        rid, scores = score_batch(url)
        assert rid == first and scores == pytest.approx(expected[checkpoint], abs=1e-5)
        assert any(f'ranker_id="{first}"' in ln for ln in metric_line(url, "pars_ranker_info"))

        r = reload(url, configured)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "reloaded" and body["previous_ranker_id"] == first
        second = body["ranker_id"]
        assert second != first and body["model_path"] == str(configured)
        assert body["ranker"]["pooling"] == "mean" and body["ranker"]["max_length"] == 8

        root = httpx.get(url + "/").json()
        assert root["ranker_id"] == second and root["model_path"] == str(configured)
        assert root["ranker"]["truncation"] == "middle"
        # tokenized and scored as the new checkpoint says (middle cut at 8 tokens, mean pooling)
        rid, scores = score_batch(url)
        assert rid == second and scores == pytest.approx(expected[configured], abs=1e-5)
        one = httpx.post(url + "/score", json={"prompt": PROMPTS[0]})
        assert one.headers[RANKER_ID_HEADER] == second
        assert one.json()["score"] == pytest.approx(expected[configured][0], abs=1e-5)
        info = metric_line(url, "pars_ranker_info")
        assert len(info) == 1 and f'ranker_id="{second}"' in info[0] and 'pooling="mean"' in info[0]
        assert reloads(url, "ok") == 1 and reloads(url, "failed") == 0

        # without a body: the current path, re-read (the same bytes: the same identity)
        r = reload(url)
        assert r.status_code == 200 and r.json()["ranker_id"] == second
        assert r.json()["previous_ranker_id"] == second and reloads(url, "ok") == 2
        assert httpx.get(url + "/ready").json()["status"] == "ready"


def test_the_service_freezes_long_lived_objects_when_ready_and_after_each_reload(tiny_model_dir, checkpoint, other,
                                                                                monkeypatch):
    import pars.serving.app as service_app
    import pars.serving.reload as reload_module

    calls = []
    monkeypatch.setattr(service_app, "freeze_long_lived", lambda: calls.append("ready"))
    monkeypatch.setattr(reload_module, "freeze_long_lived", lambda: calls.append("ranker"))
    with serving(settings_for(tiny_model_dir, checkpoint)) as url:
        assert calls == ["ranker", "ready"]  # the ranker in use, then what the warm-up made
        assert reload(url, other).status_code == 200
        assert calls == ["ranker", "ready", "ranker"]
        assert reload(url, Path("/nonexistent/best_model.pt")).status_code != 200
        assert calls == ["ranker", "ready", "ranker"]  # a refused ranker is never frozen


@pytest.mark.parametrize("bad, reason", [("garbage", "corrupt"), ("missing", "checkpoint not found"),
                                         ("unfit", "does not fit this model"), ("text", "corrupt or truncated"),
                                         ("long", "File name too long")])
def test_a_broken_checkpoint_is_refused_and_the_old_ranker_keeps_serving(
        tiny_model_dir, checkpoint, garbage, expected, tmp_path, bad, reason):
    paths = {"garbage": garbage, "missing": tmp_path / "missing.pt", "unfit": tmp_path / "unfit.pt",
             "text": tmp_path / "text.pt", "long": tmp_path / ("x" * 5000)}
    torch.save({"fc.weight": torch.zeros(1, 999), "fc.bias": torch.zeros(1)}, paths["unfit"])
    paths["text"].write_text("root:x:0:0:root:/root:/bin/bash\n")  # torch.load fails deep inside: one line all the same
    with serving(settings_for(tiny_model_dir, checkpoint)) as url:
        first = httpx.get(url + "/").json()["ranker_id"]
        message = assert_one_line_error(reload(url, paths[bad]), 422, "reload_failed", reason, first)
        assert message.startswith(f"reload refused, still serving ranker {first}")
        root = httpx.get(url + "/").json()
        assert root["ranker_id"] == first and root["model_path"] == str(checkpoint)
        rid, scores = score_batch(url)
        assert rid == first and scores == pytest.approx(expected[checkpoint], abs=1e-5)
        assert reloads(url, "failed") == 1 and reloads(url, "ok") == 0
        assert httpx.get(url + "/ready").status_code == 200


def test_a_checkpoint_that_fails_its_warm_up_is_refused(tiny_model_dir, checkpoint, other, expected, monkeypatch):
    with serving(settings_for(tiny_model_dir, checkpoint)) as url:
        first = httpx.get(url + "/").json()["ranker_id"]

        def broken(self, rounds: int = 2) -> None:
            raise RuntimeError("the forward pass blew up\nsecond line")

        monkeypatch.setattr(InferenceEngine, "warm_up", broken)
        assert_one_line_error(reload(url, other), 422, "reload_failed", "RuntimeError: the forward pass blew up")
        rid, scores = score_batch(url)
        assert rid == first and scores == pytest.approx(expected[checkpoint], abs=1e-5)


def test_explicit_settings_still_apply_to_a_reload(tiny_model_dir, checkpoint, configured, other, expected):
    # PREDICTOR_POOLING=pooler given at start-up: the configured checkpoint (mean) contradicts it
    with serving(settings_for(tiny_model_dir, checkpoint, pooling="pooler", max_length=128)) as url:
        first = httpx.get(url + "/").json()["ranker_id"]
        assert_one_line_error(reload(url, configured), 422, "reload_failed", "PREDICTOR_POOLING=pooler")
        assert httpx.get(url + "/").json()["ranker_id"] == first
        r = reload(url, other)  # a bare checkpoint records nothing: the explicit settings are used
        assert r.status_code == 200 and r.json()["ranker"]["max_length"] == 128
        assert score_batch(url)[1] == pytest.approx(expected[other], abs=1e-5)


@pytest.mark.parametrize("extra, auth, status", [
    ({"admin_reload": None}, None, 403),  # no key and not enabled: off
    ({"admin_reload": False}, None, 403),
    ({"admin_reload": None, "api_key": KEY}, None, 401),  # a key: behind it
    ({"admin_reload": None, "api_key": KEY}, "Bearer nope", 401),
    ({"admin_reload": False, "api_key": KEY}, f"Bearer {KEY}", 403),  # turned off explicitly
    ({"admin_reload": None, "api_key": KEY}, f"Bearer {KEY}", 200),
    ({"admin_reload": True}, None, 200),  # enabled without a key, on purpose
])
def test_who_may_reload(tiny_model_dir, checkpoint, other, extra, auth, status):
    headers = {"Authorization": auth} if auth else None
    ok = {"Authorization": f"Bearer {KEY}"} if "api_key" in extra else None
    with serving(settings_for(tiny_model_dir, checkpoint, **extra)) as url:
        first = httpx.get(url + "/", headers=ok).json()["ranker_id"]
        r = reload(url, other, headers=headers)
        assert r.status_code == status, r.text
        if status == 403:
            assert_one_line_error(r, 403, "reload_off", "PREDICTOR_API_KEY", "PREDICTOR_ADMIN_RELOAD=true")
        now = httpx.get(url + "/", headers=ok).json()["ranker_id"]
        assert (now != first) if status == 200 else (now == first)


def test_a_body_that_is_not_a_reload_is_422(tiny_model_dir, checkpoint):
    with serving(settings_for(tiny_model_dir, checkpoint)) as url:
        r = httpx.post(url + "/admin/reload", json={"path": "x.pt"})  # misspelt: never a silent re-read
        assert r.status_code == 422 and r.json()["error"] == "invalid_request"
        assert httpx.post(url + "/admin/reload", json={"model_path": ""}).status_code == 422


class Gate:
    """Holds the next warm-up that starts (the new ranker's) until `open()`."""

    def __init__(self, monkeypatch) -> None:
        self.started, self.gate = threading.Event(), threading.Event()
        real = InferenceEngine.warm_up

        def gated(engine, rounds: int = 2) -> None:
            self.started.set()
            assert self.gate.wait(60)
            real(engine, rounds)

        monkeypatch.setattr(InferenceEngine, "warm_up", gated)

    def open(self) -> None:
        self.gate.set()


def test_one_reload_at_a_time_and_the_old_ranker_serves_meanwhile(tiny_model_dir, checkpoint, other, configured,
                                                                  expected, monkeypatch):
    with serving(settings_for(tiny_model_dir, checkpoint)) as url:
        first = httpx.get(url + "/").json()["ranker_id"]
        gate = Gate(monkeypatch)
        results: list[httpx.Response] = []
        thread = threading.Thread(target=lambda: results.append(reload(url, other)))
        thread.start()
        try:
            assert gate.started.wait(60)  # the first reload is warming its ranker up
            assert_one_line_error(reload(url, configured), 409, "reload_in_progress")
            rid, scores = score_batch(url)  # still the old ranker, answering
            assert rid == first and scores == pytest.approx(expected[checkpoint], abs=1e-5)
        finally:
            gate.open()
            thread.join(60)
        assert results[0].status_code == 200
        assert score_batch(url)[1] == pytest.approx(expected[other], abs=1e-5)
        assert reloads(url, "busy") == 1 and reloads(url, "ok") == 1


@pytest.mark.parametrize("batching", [True, False])
def test_requests_in_flight_during_a_reload_all_succeed(tiny_model_dir, checkpoint, configured, expected, batching):
    """Clients score without pause while the ranker is swapped for one that tokenizes otherwise: every answer is
    200 and scored wholly by the ranker its header names (never tokenized by one and scored by the other)."""
    by_id: dict[str, Path] = {}
    with serving(settings_for(tiny_model_dir, checkpoint, max_wait_ms=2.0, batching=batching)) as url:
        by_id[httpx.get(url + "/").json()["ranker_id"]] = checkpoint

        async def scenario() -> list[httpx.Response]:
            done = asyncio.Event()
            answers: list[httpx.Response] = []
            counts = [0] * 6

            async def client(i: int, http: httpx.AsyncClient) -> None:
                while not done.is_set() or counts[i] < 2:
                    answers.append(await http.post("/score_batch", json={"prompts": PROMPTS[i % 3:]}))
                    counts[i] += 1

            async with httpx.AsyncClient(base_url=url, timeout=60) as http:
                tasks = [asyncio.create_task(client(i, http)) for i in range(len(counts))]
                while min(counts) < 1:  # every client has been answered once by the old ranker
                    await asyncio.sleep(0.01)
                r = await http.post("/admin/reload", json={"model_path": str(configured)}, timeout=120)
                assert r.status_code == 200, r.text
                by_id[r.json()["ranker_id"]] = configured
                counts[:] = [0] * len(counts)  # and at least twice more, after the swap
                done.set()
                await asyncio.gather(*tasks)
            return answers

        answers = asyncio.run(scenario())
    assert [r.status_code for r in answers] == [200] * len(answers)
    assert {r.headers[RANKER_ID_HEADER] for r in answers} == set(by_id)  # both rankers answered
    for r in answers:
        prompts = r.json()["prompts"]
        want = expected[by_id[r.headers[RANKER_ID_HEADER]]][PROMPTS.index(prompts[0]):]
        assert r.json()["scores"] == pytest.approx(want, abs=1e-5)


def test_a_request_pinned_to_the_old_ranker_is_scored_by_it_before_it_retires(tiny_model_dir, checkpoint,
                                                                                configured, expected):
    async def scenario() -> None:
        holder = RankerHolder(settings_for(tiny_model_dir, checkpoint, warmup=False), Metrics())
        await holder.start()
        try:
            with holder.use() as old:
                ids = old.engine.encode(PROMPTS[:1])  # tokenized by the old ranker...
                task = asyncio.create_task(holder.reload(str(configured)))
                while holder.current is old:
                    await asyncio.sleep(0.01)
                assert not task.done()  # swapped, but the old ranker waits for this request
                (score,) = await old.runner.score(ids)  # ...and scored by it
                assert score == pytest.approx(expected[checkpoint][0], abs=1e-5)
            result = await task
            assert result.previous_id == old.ranker_id and holder.current.ranker_id == result.current.ranker_id
            with pytest.raises(Exception, match="shutting down"):  # retired: its runner takes no more work
                await old.runner.score(ids)
            with holder.use() as new:
                (score,) = await new.runner.score(new.engine.encode(PROMPTS[:1]))
            assert score == pytest.approx(expected[configured][0], abs=1e-5)
        finally:
            await holder.close()

    asyncio.run(scenario())


# --- SIGHUP -------------------------------------------------------------------------------------------------


def replace_file(source: Path, target: Path) -> None:
    """As a deployment should: written beside it, then renamed over it."""
    shutil.copyfile(source, target.with_suffix(".tmp"))
    os.replace(target.with_suffix(".tmp"), target)


def test_sighup_reloads_the_current_path(tiny_model_dir, checkpoint, other, garbage, expected, tmp_path):
    served = tmp_path / "best_model.pt"
    shutil.copyfile(checkpoint, served)
    proc, url = start_server({"PREDICTOR_MODEL_PATH": str(served), "PREDICTOR_MODEL_NAME": str(tiny_model_dir),
                              "PREDICTOR_DEVICE": "cpu", "PREDICTOR_NUM_THREADS": "1"})
    try:
        wait_ready(proc, url)
        first = httpx.get(url + "/").json()["ranker_id"]

        replace_file(garbage, served)  # a broken file: refused, the old ranker stays
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while reloads(url, "failed") < 1:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        assert httpx.get(url + "/").json()["ranker_id"] == first
        assert score_batch(url)[1] == pytest.approx(expected[checkpoint], abs=1e-5)

        replace_file(other, served)
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while (root := httpx.get(url + "/").json())["ranker_id"] == first:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        assert root["model_path"] == str(served)
        rid, scores = score_batch(url)
        assert rid == root["ranker_id"] and scores == pytest.approx(expected[other], abs=1e-5)
        assert reloads(url, "ok") == 1
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "Traceback" not in out
    # the refusal is logged in one line (a success shows in GET / and /metrics)
    assert len([ln for ln in out.splitlines() if "reload refused" in ln and "corrupt" in ln]) == 1


# --- the gateway's in-process scorer ------------------------------------------------------------------------


def test_the_local_scorer_reloads_the_same_way(tiny_model_dir, checkpoint, other, garbage, expected):
    from pars.gateway.local_scorer import LocalScorer

    async def scenario() -> None:
        scorer = LocalScorer(settings_for(tiny_model_dir, checkpoint, warmup=False))
        assert scorer.ranker_id is None  # not started
        await scorer.start()
        try:
            first = scorer.ranker_id
            assert await scorer.score(PROMPTS[0]) == pytest.approx(expected[checkpoint][0], abs=1e-5)
            value, tagged = await scorer.score_tagged(PROMPTS[1])
            assert tagged == first and value == pytest.approx(expected[checkpoint][1], abs=1e-5)
            second = await scorer.reload(str(other))
            assert second == scorer.ranker_id != first
            assert await scorer.score(PROMPTS[0]) == pytest.approx(expected[other][0], abs=1e-5)
            with pytest.raises(ReloadError, match="corrupt"):
                await scorer.reload(str(garbage))
            assert scorer.ranker_id == second
            assert await scorer.score(PROMPTS[1]) == pytest.approx(expected[other][1], abs=1e-5)
            # SIGHUP to this process (its main thread runs the loop, so the handler is set): the current path
            assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, signal.SIG_IGN, None)
            os.kill(os.getpid(), signal.SIGHUP)
            deadline = time.monotonic() + 60
            while scorer.holder.metrics.reloads.labels("ok")._value.get() < 2:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert scorer.ranker_id == second  # the same file, re-read
        finally:
            await scorer.close()
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL  # close() gave the signal back

    asyncio.run(scenario())
