"""Starting the predictor service under uvicorn on a free loopback port, for the serving tests; the
benchmark harnesses as modules; a stand-in /score_batch."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def load_benchmark(name: str):
    """benchmarks/<name>.py (a script, not a package) as a module, loaded once per test session."""
    if name not in sys.modules:
        if str(ROOT / "benchmarks") not in sys.path:  # as when run as a script: their shared _common module
            sys.path.insert(0, str(ROOT / "benchmarks"))
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up by name
        spec.loader.exec_module(module)
    return sys.modules[name]


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
