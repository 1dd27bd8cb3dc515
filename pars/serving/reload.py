"""Reloading the ranker without downtime: `RankerHolder` owns the ranker in use and swaps in a new one.

A ranker in use is a `Generation`: its scorer, its inference engine and runner (the queue in front of the
engine), and its identity (`ranker_id`, a content hash). A request is tokenized by one ranker's tokenizer,
whose encoder, max_length and cut may differ from the next ranker's, so it must be scored by that same
ranker: a request pins the generation current when it starts (`RankerHolder.use`), tokenizes with its
engine and queues on its runner. Each generation has a runner of its own, so a batch never mixes the work
of two rankers.

A reload (POST /admin/reload, SIGHUP, the gateway's `LocalScorer.reload`) loads the new ranker off the event
loop, beside the old one, which keeps serving; warms it up on its own inference thread (a checkpoint that
fails to load or to run is refused, and the old ranker stays); then swaps `current`, between two requests'
starts: new requests go to the new ranker at once. The old generation is retired once every request pinned
to it has been answered: its runner finishes what is queued, its threads stop. One reload at a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from pars.common.errors import PARSError
from pars.model.ranker_config import RankerConfig
from pars.model.scoring import PromptScorer
from pars.serving.batcher import DynamicBatcher, PerRequestRunner, build_runner
from pars.serving.engine import InferenceEngine, load_scorer
from pars.serving.memory import freeze_long_lived
from pars.serving.observability import Metrics
from pars.serving.settings import Settings

log = logging.getLogger("pars.serving")

RANKER_ID_HEADER = "x-pars-ranker-id"  # on every scoring answer: the ranker that scored it
RANKER_ID_CHARS = 16
REASON_CHARS = 500  # a refused reload's reason is one line, cut at this


def _checkpoint_files(model_path: str) -> list[Path]:
    """The files a ranker's weights are read from: the checkpoint, or every file of an exported directory."""
    path = Path(model_path)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path] if path.is_file() else []


def _stat(files: list[Path]) -> list[tuple[str, int, int, int]]:
    out = []
    for f in files:
        st = f.stat()
        out.append((str(f), st.st_size, st.st_mtime_ns, st.st_ino))
    return out


def ranker_id(model_path: str, config: RankerConfig) -> str:
    """The ranker's identity: sha256 over its resolved config and its checkpoint's bytes (an exported
    directory: every file, with its relative name), first RANKER_ID_CHARS hex digits. The same bytes scored
    the same way have the same id wherever they lie; any change to the weights or the config changes it."""
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    root = Path(model_path)
    for f in _checkpoint_files(model_path):
        if root.is_dir():  # a file's place in an export is part of what is loaded
            digest.update(b"\0" + str(f.relative_to(root)).encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:RANKER_ID_CHARS]


def load_identified(settings: Settings) -> tuple[PromptScorer, str]:
    """The scorer (`load_scorer`) and its ranker_id, read from the same bytes: a checkpoint replaced while it
    was being read (a copy in place rather than a rename) is refused rather than given a wrong identity."""
    path = Path(settings.model_path)
    # A file is watched from before it is loaded; a directory's files once it has loaded as an export (so
    # that a path such as / is refused by the loader, never walked).
    before = _stat([path]) if path.is_file() else None
    scorer = load_scorer(settings)
    files = _checkpoint_files(settings.model_path)
    if before is None:
        before = _stat(files)
    rid = ranker_id(settings.model_path, scorer.config)
    if _stat(files) != before or _checkpoint_files(settings.model_path) != files:
        raise PARSError(f"{settings.model_path} changed on disk while it was loaded; reload once it is written "
                        "(replace a checkpoint by a rename, e.g. `mv new.pt best_model.pt`)")
    return scorer, rid


def one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= REASON_CHARS else line[: REASON_CHARS - 3] + "..."


@dataclass(eq=False)
class Generation:
    """One loaded ranker and the machinery that scores with it."""

    scorer: PromptScorer
    engine: InferenceEngine
    runner: DynamicBatcher | PerRequestRunner
    settings: Settings  # the service's settings, with this ranker's model_path
    ranker_id: str
    users: int = 0  # requests pinned to it (`RankerHolder.use`) and not yet answered
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set whenever users drops to 0

    @property
    def model_path(self) -> str:
        return self.settings.model_path

    @property
    def config(self) -> RankerConfig:
        return self.scorer.config

    @property
    def dtype_name(self) -> str:
        return str(self.scorer.dtype).removeprefix("torch.")


class ReloadError(Exception):
    """A reload that did not happen (the ranker in use keeps serving); `status` and `code` for HTTP."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class ReloadResult:
    previous_id: str
    current: Generation
    seconds: float


class RankerHolder:
    """Owns the generation in use; `use()` pins it for one request, `reload()` swaps in a new one.

    `settings` are those given at start-up: every reload resolves the new checkpoint's ranker_config.json
    against them, so an explicit PREDICTOR_MODEL_NAME / POOLING / TRUNCATION / MAX_LENGTH that contradicts
    the new checkpoint refuses the reload (as it would stop start-up). Only model_path changes."""

    def __init__(self, settings: Settings, metrics: Metrics, batching: bool | None = None,
                 on_swap: Callable[[Generation], None] | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.batching = batching  # None: as the settings say (the gateway forces batching on)
        self.on_swap = on_swap  # called once a new generation is in use
        self._current: Generation | None = None
        # Held by the reload that runs, and by the start-up warm-up: at most two rankers in memory.
        self._lock = asyncio.Lock()
        self._reloads = 0  # reloads running or waiting for the lock
        self._closing = False
        self._signal_loop: asyncio.AbstractEventLoop | None = None
        self._signal_task: asyncio.Task | None = None
        self._signal_again = False

    @property
    def current(self) -> Generation:
        if self._current is None:
            raise RuntimeError("no ranker loaded yet: RankerHolder.start() first")
        return self._current

    async def start(self) -> Generation:
        """Load the first ranker (not warmed up: `warm_up_current`). A load failure is the PARSError itself."""
        self._current = await self._load(self.settings)
        self._publish(self._current)
        return self._current

    async def warm_up_current(self) -> None:
        """The start-up warm-up, under the reload lock (a reload asked for meanwhile waits for it)."""
        async with self._lock:
            gen = self.current
            if gen.settings.warmup:
                await gen.engine.run(gen.engine.warm_up)
                self.metrics.forward_overhead_tokens.set(gen.engine.overhead_tokens)

    @contextmanager
    def use(self) -> Iterator[Generation]:
        """The generation in use, pinned until the block ends: tokenize and score with it alone."""
        gen = self.current
        gen.users += 1
        gen.idle.clear()
        try:
            yield gen
        finally:
            gen.users -= 1
            if gen.users == 0:
                gen.idle.set()

    async def reload(self, model_path: str | None = None, wait: bool = False) -> ReloadResult:
        """Load `model_path` (None: the current path, re-read from disk) beside the ranker in use, warm it up,
        swap it in and retire the old one. ReloadError when refused; the old ranker then keeps serving.
        `wait`: queue behind a reload in progress rather than refuse it (409). The start-up warm-up is always
        waited for."""
        if self._closing:
            raise ReloadError(503, "shutting_down", "the service is shutting down")
        if self._reloads and not wait:
            self.metrics.reloads.labels("busy").inc()
            raise ReloadError(409, "reload_in_progress", "another reload is in progress; retry when it is done")
        self._reloads += 1
        try:
            return await self._reload_locked(model_path)
        finally:
            self._reloads -= 1

    async def _reload_locked(self, model_path: str | None) -> ReloadResult:
        async with self._lock:
            if self._closing:
                raise ReloadError(503, "shutting_down", "the service is shutting down")
            old = self.current
            path = old.model_path if model_path is None else model_path
            started = time.perf_counter()
            log.info("reloading the ranker from %s (serving %s meanwhile)", path, old.ranker_id)
            try:
                new = await self._prepare(self.settings.model_copy(update={"model_path": path}))
            except Exception as exc:  # noqa: BLE001 - refused with its reason; the old ranker keeps serving
                # 422 whatever failed: the ranker named cannot serve (a file that is no checkpoint can fail
                # deep inside torch.load with any error), and the service itself is unharmed.
                self.metrics.reloads.labels("failed").inc()
                if isinstance(exc, PARSError):
                    reason = str(exc)
                else:  # not one of the failures the loader words itself: the traceback goes to the log
                    log.error("reload of %s failed", path, exc_info=exc)
                    reason = f"{type(exc).__name__}: {exc}"
                message = one_line(f"reload refused, still serving ranker {old.ranker_id}: {reason}")
                log.warning("%s", message)
                raise ReloadError(422, "reload_failed", message) from None
            self._current = new  # from here on, new requests pin the new ranker
            self._publish(new)
            # Shielded: a caller that goes away now must not leave the old ranker's threads running.
            await asyncio.shield(self._retire(old))
            seconds = time.perf_counter() - started
            self.metrics.reloads.labels("ok").inc()
            log.info("ranker reloaded: %s (was %s) from %s in %.2f s", new.ranker_id, old.ranker_id, path, seconds)
            return ReloadResult(old.ranker_id, new, seconds)

    async def close(self) -> None:
        """Stop: a reload in progress ends first (a queued one is refused), then the ranker's runner finishes
        its queued work and its threads stop."""
        self._closing = True
        if self._signal_loop is not None:
            self._signal_loop.remove_signal_handler(signal.SIGHUP)
            self._signal_loop = None
        async with self._lock:
            if self._current is not None:
                # Not waiting for pinned requests: the server has let in-flight requests finish already, and a
                # straggler gets the runner's 503 (shutting down) as before.
                await self._retire(self._current, wait_for_users=False)
        if self._signal_task is not None:
            await asyncio.gather(self._signal_task, return_exceptions=True)

    # --- SIGHUP ------------------------------------------------------------------------------------------

    def reload_on_sighup(self) -> bool:
        """SIGHUP reloads the current path (as nginx reloads its config). Only from the main thread's event
        loop (a signal handler cannot be set elsewhere: an app under a test client or in a thread goes
        without); False where it was not installed. Removed by close()."""
        if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
            return False
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        except (RuntimeError, ValueError, NotImplementedError):
            return False
        self._signal_loop = loop
        return True

    def _on_sighup(self) -> None:
        # Signals are coalesced, never dropped: one that arrives while a reload from a signal runs asks for
        # one more after it, so the file as it is after the last signal is the one loaded.
        log.info("SIGHUP: reloading the ranker from %s (pid %d)", self.current.model_path, os.getpid())
        self._signal_again = True
        if self._signal_task is None or self._signal_task.done():
            self._signal_task = asyncio.get_running_loop().create_task(self._reload_from_signals(),
                                                                       name="pars-reload-sighup")

    async def _reload_from_signals(self) -> None:
        while self._signal_again and not self._closing:
            self._signal_again = False
            try:
                await self.reload(wait=True)
            except ReloadError:
                pass  # logged by reload(); the old ranker keeps serving

    # --- internals ---------------------------------------------------------------------------------------

    async def _load(self, settings: Settings) -> Generation:
        # Off the event loop: reading and hashing the checkpoint and building the model take seconds.
        scorer, rid = await run_in_threadpool(load_identified, settings)
        engine, runner = build_runner(scorer, settings, self.metrics, batching=self.batching)
        runner.start()
        return Generation(scorer, engine, runner, settings, rid)

    async def _prepare(self, settings: Settings) -> Generation:
        """A new generation, loaded and warmed on its own inference thread before it takes any request: the
        first requests after the swap must not pay for lazy set-up, and a ranker whose forward pass fails is
        refused here rather than by the requests."""
        gen = await self._load(settings)
        try:
            if settings.warmup:
                await gen.engine.run(gen.engine.warm_up)
            else:  # no warm-up asked for: one tiny pass still proves the ranker runs
                await gen.engine.run(gen.scorer.score_ids, [[gen.scorer.pad_id + 1]])
        except BaseException:
            await self._retire(gen, wait_for_users=False)
            raise
        return gen

    async def _retire(self, gen: Generation, wait_for_users: bool = True) -> None:
        """A generation no longer current: once its pinned requests are answered (each is bounded by the
        request timeout), its runner finishes the work queued on it, then its inference threads stop."""
        while wait_for_users and gen.users:
            await gen.idle.wait()
        await gen.runner.close()
        await run_in_threadpool(gen.engine.close)

    def _publish(self, gen: Generation) -> None:
        """The metrics that describe the ranker in use, then the owner's hook."""
        config = {k: v for k, v in gen.config.to_dict().items() if k not in ("format", "version")}
        self.metrics.ranker.info({**{k: str(v) for k, v in config.items()}, "config_source": gen.config.source,
                                  "dtype": gen.dtype_name, "backend": gen.settings.backend,
                                  "device": str(gen.scorer.device), "ranker_id": gen.ranker_id,
                                  "model_path": gen.model_path})
        # Each engine sets the gauge when built; the new one was built before the swap, so set it for the one in use.
        self.metrics.forward_overhead_tokens.set(gen.engine.overhead_tokens)
        freeze_long_lived()  # the new ranker's objects, out of the collector's full passes
        if self.on_swap is not None:
            self.on_swap(gen)
