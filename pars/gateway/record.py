"""Recording finished requests (GATEWAY_RECORD_DIR): one JSON line each, the next ranker's training data.

Each completions/chat request that finishes becomes one line (`record_of`) in a `*.jsonl` file of the
directory. The request never waits for it: the outcome goes into a bounded queue (put_nowait: a full queue
drops the record and counts it) and a writer thread turns outcomes into lines, in batches (the JSON encoding
and the prompt's hash happen there too, off the event loop). A file that passes GATEWAY_RECORD_MAX_FILE_MB is
closed and the next one started; names sort by time (UTC) and carry the process id, so gateways sharing a
directory never write one file. Files are created 0600 (prompts are users' words), the directory 0700 when
the gateway creates it.

A directory that is full or unwritable costs records, never requests: a failed write is cut back from its
file (no half line is left for readers) and its records counted as dropped (write_error); the writer then
drops what arrives for RETRY_S before it tries a new file. pars_gateway_records_written_total and
pars_gateway_records_dropped_total{reason} say how much of the traffic the files hold.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from pars.gateway.observability import GatewayMetrics
from pars.gateway.outcome import RequestOutcome

log = logging.getLogger("pars.gateway")

BATCH = 256  # records per write at most
RETRY_S = 1.0  # after a failed write, records are dropped this long before a new file is tried
ERROR_LOG_EVERY_S = 60.0
QUEUE_FULL, WRITE_ERROR = "queue_full", "write_error"


def record_of(outcome: RequestOutcome, prompts: str) -> dict[str, Any]:
    """The JSON record of an outcome; `prompts`: text (keep the prompt) or hash (only its SHA-256)."""
    text = outcome.prompt
    usage = outcome.usage
    return {
        "time": round(outcome.time, 3),
        "path": outcome.path,
        "model": outcome.model,
        "prompt": text if prompts == "text" else None,
        # surrogatepass: a lone surrogate (JSON allows it) still hashes, as the same code point every time
        "prompt_sha256": hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest() if text is not None
        else None,
        "prompt_chars": len(text) if text is not None else None,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "finish_reason": usage.finish_reason,
        "censored": outcome.censored,
        "score": outcome.score,
        "quantile": round(outcome.quantile, 6) if outcome.quantile is not None else None,
        "priority": outcome.priority,
        "priority_source": outcome.priority_source,
        "max_tokens": outcome.max_tokens,
        "choices": outcome.choices,  # above 1, completion_tokens sums several answers: not one answer's length
        "status": outcome.status,
        "complete": outcome.complete,
        "stream": outcome.stream,
        "latency_s": round(outcome.latency_s, 6),
        "ranker_id": outcome.ranker_id,
    }


class Recorder:
    """The queue and its writer thread. `write` is os.write unless a test stands in a failing disk."""

    def __init__(self, directory: str, prompts: str, max_file_bytes: int, queue_size: int,
                 metrics: GatewayMetrics, write: Callable[[int, bytes], int] = os.write) -> None:
        self.directory = directory
        self.prompts = prompts
        self.max_file_bytes = max_file_bytes
        self.metrics = metrics
        self._write = write
        self._queue: queue.Queue[RequestOutcome] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pars-gateway-recorder", daemon=True)
        self._fd: int | None = None
        self._size = 0
        self._files = 0
        self.path: str | None = None  # the file being written
        self.last_error: str | None = None
        self._retry_at = 0.0
        self._error_logged_at = -ERROR_LOG_EVERY_S

    def start(self) -> None:
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        except OSError as exc:  # requests go on; the writer keeps trying, and counts what it loses
            self._error(exc)
        self._thread.start()

    def submit(self, outcome: RequestOutcome) -> None:
        """An outcome consumer: never blocks; a full queue drops the record."""
        try:
            self._queue.put_nowait(outcome)
        except queue.Full:
            self.metrics.records_dropped.labels(QUEUE_FULL).inc()

    def close(self, timeout_s: float = 10.0) -> None:
        """Writes what is queued, then stops (a writer stuck on a dead disk is left behind: it is a daemon)."""
        self._stop.set()
        self._thread.join(timeout_s)

    def status(self) -> dict[str, Any]:
        return {"dir": self.directory, "prompts": self.prompts, "file": self.path,
                "queued": self._queue.qsize(), "last_error": self.last_error}

    def _run(self) -> None:
        while True:
            try:
                batch = [self._queue.get(timeout=0.2)]
            except queue.Empty:
                if self._stop.is_set():
                    break
                continue
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._write_batch(batch)
            except Exception as exc:  # noqa: BLE001 - the thread must live on: a bug costs records, not recording
                self.metrics.records_dropped.labels(WRITE_ERROR).inc(len(batch))
                self._error(exc)
        self._close_file()

    def _write_batch(self, batch: list[RequestOutcome]) -> None:
        if time.monotonic() < self._retry_at:
            self.metrics.records_dropped.labels(WRITE_ERROR).inc(len(batch))
            return
        lines = [(json.dumps(record_of(o, self.prompts)) + "\n").encode() for o in batch]
        chunk: list[bytes] = []
        size = 0
        for i, line in enumerate(lines):
            # A file ends before the line that would take it past the size (a longer line gets a file alone).
            if self._size + size > 0 and self._size + size + len(line) > self.max_file_bytes:
                if chunk and not self._flush(chunk):
                    self.metrics.records_dropped.labels(WRITE_ERROR).inc(len(lines) - i)
                    return
                self._close_file()
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._flush(chunk)

    def _flush(self, lines: list[bytes]) -> bool:
        """Appends whole lines to the current file (opening one if needed); False when that failed."""
        data = b"".join(lines)
        start = None
        try:
            if self._fd is None:
                self._open_file()
            start = self._size
            view = memoryview(data)
            while view:
                view = view[self._write(self._fd, view):]
        except OSError as exc:
            if self._fd is not None and start is not None:
                try:
                    os.ftruncate(self._fd, start)  # no half line left behind
                except OSError:
                    pass
            self._close_file()
            self.metrics.records_dropped.labels(WRITE_ERROR).inc(len(lines))
            self._retry_at = time.monotonic() + RETRY_S
            self._error(exc)
            return False
        self._size += len(data)
        self.metrics.records_written.inc(len(lines))
        return True

    def _open_file(self) -> None:
        self._close_file()
        self._files += 1
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path = os.path.join(self.directory, f"requests-{stamp}-{os.getpid()}-{self._files:04d}.jsonl")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        self._fd = os.open(path, flags, 0o600)
        self._size = 0
        self.path = path

    def _close_file(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        self._size = 0

    def _error(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        if now - self._error_logged_at >= ERROR_LOG_EVERY_S:
            self._error_logged_at = now
            log.warning("recording to %s failed, records are being dropped: %s", self.directory, self.last_error)
