"""Starting the predictor service under uvicorn on a free loopback port, for the serving tests; a stand-in
/score_batch."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pars.common.processes import free_port

ROOT = Path(__file__).resolve().parents[1]

# Prompts of mixed lengths, for scoring tests (batched with strangers, alone, over HTTP).
PROMPTS = [
    "write a long detailed essay about the history of rome",
    "yes",
    "give me python code for a proof",
    "explain why",
    "list many steps for a short story about math with a poem and code and a detailed proof of one answer",
    "no",
    "summarize the history",
    "what is a function in python and how do i write one with many steps",
]


class ServerProcess(subprocess.Popen):
    """The server, its output going to a temporary file rather than a pipe: a pipe holds 64 KiB, and a
    server whose log pipe is full blocks on its next log line, event loop and all. `stdout.read()` gives
    the output so far; `communicate()` waits for the exit and gives all of it."""

    def communicate(self, input=None, timeout=None):
        self.wait(timeout)
        return self.stdout.read(), None


def start_server(env: dict[str, str]) -> tuple[ServerProcess, str]:
    port = free_port()
    log = tempfile.TemporaryFile("w+", encoding="utf-8")  # the server keeps its own handle
    proc = ServerProcess(
        [sys.executable, "-m", "uvicorn", "scripts.serve_predictor_score:app", "--host", "127.0.0.1",
         "--port", str(port)],
        cwd=ROOT / "predictor_serving", env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
    )
    # A second handle of the same file, with its own offset: reads see what the server wrote so far.
    proc.stdout = open(f"/proc/self/fd/{log.fileno()}", encoding="utf-8", errors="replace")
    log.close()
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = 90.0) -> None:
    """Until /ready answers 200 (model loaded and warmed up); fails if the server exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early:\n{proc.stdout.read()}")
        try:
            if httpx.get(url + "/ready", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become ready")


@contextmanager
def running_server(env: dict[str, str]):
    """The service started with `env` and ready, as its URL; stopped afterwards, and then its log must hold no
    unhandled error (one the client saw only as a 4xx is still a finding)."""
    proc, url = start_server(env)
    try:
        wait_ready(proc, url)
        yield url
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "Exception in ASGI application" not in out, out[-3000:]


@contextmanager
def serve(app):
    """`app` under uvicorn on a free loopback port, in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise AssertionError("server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def serve_stand_in(stand_in):
    """A stand-in server (an object with a Starlette `app`) under `serve`; its `url` set, for the tests to use."""
    with serve(stand_in.app) as url:
        stand_in.url = url
        yield stand_in


def gateway_factory(upstream, predictor, **defaults):
    """A context-manager factory: a gateway in front of the stand-ins, with a 5 s predictor timeout, no gathering,
    `defaults`, then each call's overrides; yields its base URL."""
    from pars.gateway.app import create_app
    from pars.gateway.settings import GatewaySettings

    @contextmanager
    def make(**overrides):
        values = {"upstream_url": upstream.url, "predictor_url": predictor.url, "predictor_timeout_ms": 5000,
                  "gather_ms": 0, **defaults, **overrides}
        with serve(create_app(GatewaySettings(**values))) as url:
            yield url

    return make


class StandInPredictor:
    """/score_batch: long-answer prompts (they say 'essay') score high, like a perfect ranker (`inverted`:
    low, like the worst one)."""

    def __init__(self, ready_delay_s: float = 0.0, inverted: bool = False) -> None:
        self.ready_delay_s = ready_delay_s
        self.inverted = inverted
        self.app = Starlette(routes=[Route("/score_batch", self.score_batch, methods=["POST"]),
                                     Route("/ready", self.ready, methods=["GET"])])

    async def ready(self, request: Request) -> Response:
        await asyncio.sleep(self.ready_delay_s)
        return JSONResponse({"status": "ready"})

    async def score_batch(self, request: Request) -> Response:
        prompts = (await request.json())["prompts"]
        return JSONResponse({"scores": [(10.0 if "essay" in p else 0.0) * (-1 if self.inverted else 1)
                                        for p in prompts]})
