"""The traffic of the record and after phases: chat requests sent through a gateway in a closed loop (a fixed
number in flight, each asking for exactly its true answer's length: max_tokens = that length, ignore_eos,
temperature 0, no priority, so the gateway sets it). Not a latency measurement: it makes records."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from experiments.lib.traces import Request


def chat_body(model: str, req: Request) -> dict[str, Any]:
    """One request: the later turn as the only user message (the gateway scores the last user message)."""
    return {"model": model, "messages": [{"role": "user", "content": req.prompt}], "max_tokens": req.max_tokens,
            "ignore_eos": True, "temperature": 0.0}


async def _closed_loop(url: str, model: str, trace: Sequence[Request], concurrency: int, label: str,
                       progress_every: int) -> list[dict[str, Any]]:
    import httpx

    results: list[dict[str, Any]] = [{} for _ in trace]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(trace)):
        queue.put_nowait(i)
    started = time.monotonic()
    done = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            req = trace[i]
            sent = time.time()
            t0 = time.perf_counter()
            tokens, error, status = None, None, -1
            try:
                r = await client.post(url + "/v1/chat/completions", json=chat_body(model, req))
                status = r.status_code
                if status == 200:
                    tokens = (r.json().get("usage") or {}).get("completion_tokens")
                else:
                    error = f"HTTP {status}: {r.text[:200]}"
            except (httpx.HTTPError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            results[i] = {"id": req.id, "status": status, "expected": req.max_tokens, "completion_tokens": tokens,
                          "sent_at": sent, "latency_s": round(time.perf_counter() - t0, 4), "error": error}
            done += 1
            if done % progress_every == 0 or done == len(trace):
                elapsed = time.monotonic() - started
                print(f"{label}: {done}/{len(trace)} answered, {elapsed:.0f} s, about "
                      f"{elapsed / done * (len(trace) - done):.0f} s to go", flush=True)

    async with httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10.0),
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return results


def send(url: str, model: str, trace: Sequence[Request], concurrency: int, label: str,
         progress_every: int = 100) -> list[dict[str, Any]]:
    """Every request of the trace through `url`, `concurrency` at a time, in trace order; one result each."""
    return asyncio.run(_closed_loop(url, model, trace, concurrency, label, progress_every))


def check_sent(results: Sequence[dict[str, Any]], max_fail_fraction: float, what: str) -> dict[str, Any]:
    """How the requests went; SystemExit when more than `max_fail_fraction` of them failed or came back with
    another length than they asked for (their records would not carry the true lengths)."""
    failed = [r for r in results if r.get("status") != 200]
    wrong = [r for r in results if r.get("status") == 200 and r.get("completion_tokens") != r.get("expected")]
    out = {"sent": len(results), "ok": len(results) - len(failed) - len(wrong), "failed": len(failed),
           "wrong_length": len(wrong), "first_error": next((r["error"] for r in failed if r.get("error")), None),
           "first_wrong": ({k: wrong[0][k] for k in ("id", "expected", "completion_tokens")} if wrong else None)}
    if results and (len(failed) + len(wrong)) > max_fail_fraction * len(results):
        raise SystemExit(f"{what}: {len(failed)} of {len(results)} requests failed and {len(wrong)} came back with "
                         f"another length than asked (at most {max_fail_fraction:.0%} allowed); first error: "
                         f"{out['first_error']!r}, first wrong length: {out['first_wrong']}")
    return out
