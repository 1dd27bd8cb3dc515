"""Recording (pars/gateway/record.py) and reading answers' usage (pars/gateway/usage.py): through HTTP between a
client and a stand-in vLLM on loopback, and the recorder and SSE reader alone.

Nothing waits on a clock: records are read after the gateway has shut down (its recorder writes what is queued
first), or polled for with a generous deadline.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import stat
import threading
import time
from pathlib import Path

import httpx
import pytest
from serving_helpers import free_port, gateway_factory, serve, serve_stand_in
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from pars.gateway import record as record_module
from pars.gateway.app import create_app
from pars.gateway.observability import GatewayMetrics
from pars.gateway.outcome import RequestOutcome
from pars.gateway.prompts import requested_choices
from pars.gateway.record import Recorder, record_of
from pars.gateway.settings import GatewaySettings
from pars.gateway.usage import SseReader, Usage, usage_literal

FINGERPRINT = "vllm-0.0-test1234"
FIELDS = {"time", "path", "model", "prompt", "prompt_sha256", "prompt_chars", "prompt_tokens", "completion_tokens",
          "finish_reason", "censored", "score", "priority", "priority_source", "max_tokens", "choices", "status",
          "stream", "latency_s", "ranker_id"}


class VllmLike:
    """Stands in for vLLM's OpenAI server: the answer to a prompt is `lengths[prompt]` tokens (default: its
    length in characters), cut at max_tokens (finish_reason "length"). Streams are written as vLLM writes them:
    compact JSON, `system_fingerprint` on the terminal chunk unless a usage chunk follows (then on that)."""

    def __init__(self) -> None:
        self.lengths: dict[str, int] = {}
        self.received: list[dict] = []
        self.split_events = False  # write each event in two pieces, cut mid-JSON
        self.hold: threading.Event | None = None  # streams stop after their first event until this is set
        self.app = Starlette(routes=[Route("/v1/completions", self.handle, methods=["POST"]),
                                     Route("/v1/chat/completions", self.handle, methods=["POST"])])

    async def handle(self, request: Request) -> Response:
        body = json.loads(await request.body())
        self.received.append({"body": body, "headers": dict(request.headers)})
        chat = request.url.path.endswith("/chat/completions")
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        tokens = self.lengths.get(prompt, len(prompt)) if isinstance(prompt, str) else 3
        cap = body.get("max_tokens")
        finish = "length" if cap is not None and tokens >= cap else "stop"
        tokens = min(tokens, cap) if cap is not None else tokens
        usage = {"prompt_tokens": 7, "total_tokens": 7 + tokens, "completion_tokens": tokens}
        if body.get("stream"):
            return StreamingResponse(self.events(body, tokens, finish, usage), media_type="text/event-stream")
        return JSONResponse({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": body.get("model"),
                             "choices": [{"index": 0, "text": "x" * tokens, "finish_reason": finish}],
                             "usage": usage, "system_fingerprint": FINGERPRINT})

    async def events(self, body: dict, tokens: int, finish: str, usage: dict):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        head = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": body.get("model")}

        def event(obj: dict) -> bytes:
            return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n".encode()

        chunks = [event({**head, "choices": [{"index": 0, "text": "x", "finish_reason": None}]})
                  for _ in range(min(tokens, 3))]
        terminal = {**head, "choices": [{"index": 0, "text": "", "finish_reason": finish}]}
        if not include_usage:
            terminal["system_fingerprint"] = FINGERPRINT
        chunks.append(event(terminal))
        if include_usage:
            chunks.append(event({**head, "choices": [], "usage": usage, "system_fingerprint": FINGERPRINT}))
        chunks.append(b"data: [DONE]\n\n")
        for i, chunk in enumerate(chunks):
            if self.split_events:
                yield chunk[:9]
                await asyncio.sleep(0)
                yield chunk[9:]
            else:
                yield chunk
            if i == 0 and self.hold is not None:
                await asyncio.to_thread(self.hold.wait, 30)


class Predictor:
    """/score_batch: score = prompt length in characters; answers carry x-pars-ranker-id when `ranker_id` is set."""

    def __init__(self) -> None:
        self.ranker_id: str | None = "ranker-a"
        self.app = Starlette(routes=[Route("/score_batch", self.score_batch, methods=["POST"])])

    async def score_batch(self, request: Request) -> Response:
        prompts = (await request.json())["prompts"]
        headers = {"x-pars-ranker-id": self.ranker_id} if self.ranker_id else {}
        return JSONResponse({"scores": [float(len(p)) for p in prompts]}, headers=headers)


@pytest.fixture(scope="module")
def upstream():
    with serve_stand_in(VllmLike()) as stand_in:
        yield stand_in


@pytest.fixture(scope="module")
def predictor():
    with serve_stand_in(Predictor()) as stand_in:
        yield stand_in


@pytest.fixture()
def gateway(upstream, predictor):
    upstream.lengths.clear()
    upstream.split_events, upstream.hold = False, None
    return gateway_factory(upstream, predictor)


def records(directory: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(directory.glob("*.jsonl"))
            for line in path.read_text().splitlines()]


def wait_until(condition, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def stream_bytes(url: str, path: str, body: dict) -> bytes:
    with httpx.stream("POST", url + path, json=body, timeout=30) as r:
        assert r.status_code == 200
        return b"".join(r.iter_raw())


# ---------------------------------------------------------------- records through HTTP


def test_a_non_streamed_answer_is_recorded_with_its_usage(gateway, tmp_path):
    directory = tmp_path / "records"
    with gateway(record_dir=str(directory)) as url:
        reply = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "hello there", "max_tokens": 50})
        chat = httpx.post(url + "/v1/chat/completions", json={"model": "tiny", "max_tokens": 4, "n": 2, "messages": [
            {"role": "system", "content": "be brief"}, {"role": "user", "content": "a long question"}]})
    assert reply.status_code == chat.status_code == 200
    assert reply.json()["usage"]["completion_tokens"] == 11  # relayed as is
    first, second = records(directory)
    assert set(first) >= FIELDS and set(second) >= FIELDS
    assert first["path"] == "/v1/completions" and first["model"] == "tiny" and first["prompt"] == "hello there"
    assert first["prompt_sha256"] == hashlib.sha256(b"hello there").hexdigest() and first["prompt_chars"] == 11
    assert (first["prompt_tokens"], first["completion_tokens"], first["finish_reason"]) == (7, 11, "stop")
    assert first["censored"] is False and first["score"] == 11.0 and first["priority_source"] == "scored"
    assert first["priority"] == int(reply.headers["x-pars-priority"]) and first["max_tokens"] == 50
    assert first["status"] == 200 and first["stream"] is False and first["complete"] is True
    assert first["ranker_id"] == "ranker-a" and first["latency_s"] > 0 and first["choices"] == 1
    assert abs(first["time"] - time.time()) < 600
    # the chat prompt is what the ranker scored: the last user message; cut at max_tokens: censored
    assert second["prompt"] == "a long question" and second["path"] == "/v1/chat/completions"
    assert (second["completion_tokens"], second["finish_reason"], second["censored"]) == (4, "length", True)
    assert second["choices"] == 2  # n=2: its usage sums both answers; stage 1 leaves it out
    files = list(directory.glob("*.jsonl"))
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


@pytest.mark.parametrize("asked", [False, True], ids=["usage-not-asked", "usage-asked"])
@pytest.mark.parametrize("split", [False, True], ids=["whole-events", "split-events"])
def test_a_stream_reaches_the_client_byte_for_byte_as_without_recording(gateway, upstream, tmp_path, asked, split):
    """Not asked: the gateway asks upstream for the usage chunk and takes it out (and puts vLLM's fingerprint
    back on the terminal chunk); asked: the client's own usage chunk goes through and is read."""
    upstream.split_events = split
    body = {"model": "tiny", "prompt": "tell me a story", "stream": True, "max_tokens": 100}
    if asked:
        body["stream_options"] = {"include_usage": True}
    with gateway(live_window=0) as plain_url:  # answers not read at all
        plain = stream_bytes(plain_url, "/v1/completions", body)
    assert upstream.received[-1]["body"].get("stream_options") == body.get("stream_options")
    directory = tmp_path / "records"
    with gateway(record_dir=str(directory)) as url:
        recorded = stream_bytes(url, "/v1/completions", body)
        sent = upstream.received[-1]
    assert recorded == plain
    assert (b'"usage"' in plain) == asked and FINGERPRINT.encode() in plain
    assert sent["body"]["stream_options"] == {"include_usage": True}
    assert (sent["headers"]["accept-encoding"] == "identity") != asked  # an answer to strip comes uncompressed
    (rec,) = records(directory)
    assert (rec["completion_tokens"], rec["prompt_tokens"], rec["finish_reason"]) == (15, 7, "stop")
    assert rec["stream"] is True and rec["complete"] is True and rec["censored"] is False


def test_chat_stream_with_other_stream_options_keeps_them(gateway, upstream, tmp_path):
    body = {"model": "tiny", "stream": True, "max_tokens": 2, "stream_options": {"include_usage": False},
            "messages": [{"role": "user", "content": "hi there"}]}
    with gateway(live_window=0) as plain_url:  # answers not read at all
        plain = stream_bytes(plain_url, "/v1/chat/completions", body)
    with gateway(record_dir=str(tmp_path)) as url:
        recorded = stream_bytes(url, "/v1/chat/completions", body)
    assert recorded == plain and upstream.received[-1]["body"]["stream_options"] == {"include_usage": True}
    (rec,) = records(tmp_path)
    assert (rec["completion_tokens"], rec["finish_reason"], rec["censored"]) == (2, "length", True)


def test_stream_usage_off_leaves_the_request_alone(gateway, upstream, tmp_path):
    body = {"model": "tiny", "prompt": "tell me a story", "stream": True}
    with gateway(record_dir=str(tmp_path), record_stream_usage=False) as url:
        stream_bytes(url, "/v1/completions", body)
    assert "stream_options" not in upstream.received[-1]["body"]
    (rec,) = records(tmp_path)
    assert rec["completion_tokens"] is None and rec["finish_reason"] == "stop" and rec["complete"] is True


def test_hash_mode_keeps_no_prompt_text(gateway, tmp_path):
    with gateway(record_dir=str(tmp_path), record_prompts="hash") as url:
        assert httpx.post(url + "/v1/completions", json={"prompt": "secret words"}).status_code == 200
    (rec,) = records(tmp_path)
    assert rec["prompt"] is None and rec["prompt_sha256"] == hashlib.sha256(b"secret words").hexdigest()
    assert "secret" not in next(tmp_path.glob("*.jsonl")).read_text()


def test_files_rotate_by_size_and_every_line_is_whole(gateway, tmp_path):
    with gateway(record_dir=str(tmp_path), record_max_file_mb=1500 / (1 << 20)) as url:
        for i in range(12):
            assert httpx.post(url + "/v1/completions", json={"prompt": f"prompt {i} " + "w" * 200}).status_code == 200
    files = sorted(tmp_path.glob("*.jsonl"))
    assert len(files) >= 3 and all(f.stat().st_size <= 1500 for f in files)
    assert sorted(r["prompt"] for r in records(tmp_path)) == sorted(f"prompt {i} " + "w" * 200 for i in range(12))


def test_an_unwritable_directory_never_fails_a_request(gateway, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with gateway(record_dir=str(blocker / "records")) as url:
        for i in range(3):
            assert httpx.post(url + "/v1/completions", json={"prompt": f"p{i}"}).status_code == 200
        wait_until(lambda: httpx.get(url + "/gateway/health").json()["recording"]["dropped"].get("write_error") == 3,
                   "3 records dropped")
        health = httpx.get(url + "/gateway/health").json()
        metrics = httpx.get(url + "/gateway/metrics").text
    assert health["recording"]["written"] == 0 and "NotADirectoryError" in health["recording"]["last_error"]
    assert 'pars_gateway_records_dropped_total{reason="write_error"} 3.0' in metrics


def test_upstream_down_and_client_gone_are_recorded(predictor, upstream, tmp_path):
    settings = GatewaySettings(upstream_url=f"http://127.0.0.1:{free_port()}", predictor_url=predictor.url,
                               record_dir=str(tmp_path / "down"))
    with serve(create_app(settings)) as url:
        assert httpx.post(url + "/v1/completions", json={"prompt": "hi"}).status_code == 502
    (down,) = records(tmp_path / "down")
    assert down["status"] == 502 and down["completion_tokens"] is None

    upstream.hold = threading.Event()
    settings = GatewaySettings(upstream_url=upstream.url, predictor_url=predictor.url, gather_ms=0,
                               record_dir=str(tmp_path / "gone"))
    try:
        with serve(create_app(settings)) as url:
            with httpx.stream("POST", url + "/v1/completions", json={"prompt": "a story", "stream": True}) as r:
                next(r.iter_raw())  # the first event, then the client leaves
            wait_until(lambda: records(tmp_path / "gone"), "the record of the request the client left")
    finally:
        upstream.hold.set()
        upstream.hold = None
    (gone,) = records(tmp_path / "gone")
    assert gone["complete"] is False and gone["status"] == 200 and gone["completion_tokens"] is None


# ---------------------------------------------------------------- the recorder alone


def outcome(i: int = 0, **fields) -> RequestOutcome:
    values = {"time": 1.7e9, "path": "/v1/completions", "model": "m", "prompt": f"prompt {i}", "score": float(i),
              "quantile": 0.5, "priority": 10 + i, "priority_source": "scored", "ranker_id": "r", "max_tokens": None,
              "choices": 1, "stream": False, "status": 200, "complete": True, "latency_s": 0.1,
              "usage": Usage(5, 10 + i, "stop"), **fields}
    return RequestOutcome(**values)


def test_record_of_the_format():
    rec = record_of(outcome(3, prompt="caf\u00e9 \ud800", usage=Usage(5, 64, "length")), "text")
    assert set(rec) >= FIELDS and rec["censored"] is True and rec["completion_tokens"] == 64
    assert rec["prompt_chars"] == 6 and json.loads(json.dumps(rec))["prompt"] == "caf\u00e9 \ud800"
    hashed = record_of(outcome(3, prompt="x"), "hash")
    assert hashed["prompt"] is None and hashed["prompt_sha256"] == hashlib.sha256(b"x").hexdigest()
    assert record_of(outcome(prompt=None), "text")["prompt_sha256"] is None
    assert rec["choices"] == 1 and record_of(outcome(choices=4), "text")["choices"] == 4


@pytest.mark.parametrize(("path", "body", "want"), [
    ("/v1/completions", {"prompt": "a"}, 1),
    ("/v1/completions", {"prompt": "a", "n": 3}, 3),
    ("/v1/completions", {"prompt": ["a", "b"], "n": 2}, 4),  # every prompt gets n answers
    ("/v1/completions", {"prompt": [[1, 2], [3]]}, 2),
    ("/v1/completions", {"prompt": [1, 2, 3]}, 1),  # one prompt of token ids
    ("/v1/chat/completions", {"messages": [], "n": 2}, 2),
    ("/v1/chat/completions", {"messages": [], "n": True}, 1),
    ("/v1/chat/completions", {"messages": [], "n": "2"}, 1),  # not a count: the upstream refuses it
])
def test_requested_choices(path, body, want):
    assert requested_choices(path, body) == want


def test_a_full_disk_cuts_back_the_failed_write_and_counts_the_loss(tmp_path, monkeypatch):
    monkeypatch.setattr(record_module, "RETRY_S", 0.0)
    full = threading.Event()

    def write(fd: int, data) -> int:
        if full.is_set():  # a partial write, then the disk is full
            os.write(fd, bytes(data[:5]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)

    metrics = GatewayMetrics()
    recorder = Recorder(str(tmp_path), "text", 1 << 20, 100, metrics, write=write)
    recorder.start()
    recorder.submit(outcome(0))
    wait_until(lambda: metrics.records_written_count() == 1, "the first record")
    full.set()
    recorder.submit(outcome(1))
    wait_until(lambda: metrics.records_dropped_by_reason().get("write_error") == 1, "the lost record")
    full.clear()
    recorder.submit(outcome(2))
    recorder.close()
    assert metrics.records_written_count() == 2 and "No space left" in recorder.status()["last_error"]
    assert [r["prompt"] for r in records(tmp_path)] == ["prompt 0", "prompt 2"]  # no half line left behind


def test_a_full_queue_drops_instead_of_waiting(tmp_path):
    release, writing = threading.Event(), threading.Event()

    def slow_write(fd: int, data) -> int:
        writing.set()
        release.wait(30)
        return os.write(fd, data)

    metrics = GatewayMetrics()
    recorder = Recorder(str(tmp_path), "text", 1 << 20, 2, metrics, write=slow_write)
    recorder.start()
    recorder.submit(outcome(0))
    writing.wait(30)  # the writer holds record 0; the queue holds 2 more
    for i in range(1, 6):
        recorder.submit(outcome(i))
    assert metrics.records_dropped_by_reason() == {"queue_full": 3}
    release.set()
    recorder.close()
    assert metrics.records_written_count() == 3 and len(records(tmp_path)) == 3


# ---------------------------------------------------------------- reading usage


def vllm_stream(include_usage: bool) -> bytes:
    head = '"id":"c","object":"chat.completion.chunk","created":1,"model":"m"'
    terminal = f'{{{head},"choices":[{{"index":0,"delta":{{}},"finish_reason":"length"}}]'
    events = [f'data: {{{head},"choices":[{{"index":0,"delta":{{"content":"a"}},"finish_reason":null}}]}}\n\n',
              terminal + ("}\n\n" if include_usage else f',"system_fingerprint":"{FINGERPRINT}"}}\n\n')]
    if include_usage:
        events.append(f'data: {{{head},"choices":[],"usage":{{"prompt_tokens":3,"completion_tokens":9,'
                      f'"total_tokens":12}},"system_fingerprint":"{FINGERPRINT}"}}\n\n')
    events[1] = "data: " + events[1]
    return "".join(events + ["data: [DONE]\n\n"]).encode()


@pytest.mark.parametrize("piece", [1, 7, 1000])
def test_sse_reader_strips_the_usage_chunk_wherever_the_bytes_are_cut(piece):
    upstream, wanted = vllm_stream(include_usage=True), vllm_stream(include_usage=False)
    reader = SseReader(strip=True)
    out = b"".join(reader.feed(upstream[i:i + piece]) for i in range(0, len(upstream), piece)) + reader.flush()
    assert out == wanted and reader.result() == Usage(3, 9, "length")
    observer = SseReader(strip=False)
    relayed = b"".join(observer.feed(upstream[i:i + piece]) for i in range(0, len(upstream), piece))
    assert relayed + observer.flush() == upstream and observer.result() == Usage(3, 9, "length")


def test_sse_reader_with_crlf_events_and_an_unfinished_tail():
    reader = SseReader(strip=True)
    out = reader.feed(b'data: {"choices":[],"usage":{"completion_tokens":4}}\r\n\r\ndata: {"partial"')
    assert out == b"" and reader.flush() == b'data: {"partial"' and reader.result().completion_tokens == 4


def test_usage_literal_asks_only_where_it_changes_nothing_else():
    assert usage_literal("/v1/completions", {"prompt": "x", "stream": True}) == '{"include_usage": true}'
    assert json.loads(usage_literal("/v1/chat/completions", {"stream": True, "stream_options": {"x": 1}})) == {
        "x": 1, "include_usage": True}
    for body in ({"prompt": "x"}, {"prompt": "x", "stream": True, "stream_options": {"include_usage": True}},
                 {"prompt": "x", "stream": True, "stream_options": {"continuous_usage_stats": True}},
                 {"prompt": "x", "stream": True, "n": 2}, {"prompt": ["a", "b"], "stream": True},
                 {"prompt": "x", "stream": True, "stream_options": "bad"}):
        assert usage_literal("/v1/completions", body) is None, body
