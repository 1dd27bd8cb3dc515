"""Forwarding one request to the upstream and relaying its answer as it arrives (SSE included).

A `RelayWatcher` (pars/gateway/outcome.py) may see the answer go by: its status and headers, each chunk
(it returns the bytes to relay: the chunk itself, or less while it takes out a chunk the client did not ask
for), and its end, however it ends: relayed to the last byte, broken off, or the client gone.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Protocol

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

log = logging.getLogger("pars.gateway")

# Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection, not to the message; host and
# content-length are set again by the HTTP client for the new connection and (possibly changed) body;
# `expect: 100-continue` was answered by the gateway's own server, and httpx sends bodies without waiting.
_REQUEST_DROP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
                           b"trailer", b"trailers", b"transfer-encoding", b"upgrade", b"host", b"content-length",
                           b"expect"})
_RESPONSE_DROP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
                            b"trailer", b"trailers", b"transfer-encoding", b"upgrade"})


class RelayWatcher(Protocol):
    def response_started(self, status: int, headers: httpx.Headers) -> None: ...

    def chunk(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...

    def finished(self, status: int, complete: bool) -> None: ...


# The upstream answers a request whose usage chunk the gateway takes out uncompressed, so the chunk can be
# found: the client's accept-encoding is replaced (identity is always acceptable to it, RFC 9110 12.5.3).
_IDENTITY_ONLY = [(b"accept-encoding", b"identity")]


def _named_by_connection(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """Headers the sender declared hop-by-hop in its own `Connection` header."""
    return {name.strip().lower() for k, v in headers if k.lower() == b"connection" for name in v.split(b",")}


def request_headers(raw: list[tuple[bytes, bytes]], keep_length: bool,
                    also_drop: frozenset[bytes] = frozenset()) -> list[tuple[bytes, bytes]]:
    drop = _REQUEST_DROP | _named_by_connection(raw) | also_drop
    if keep_length:
        drop = drop - {b"content-length"}
    return [(k, v) for k, v in raw if k.lower() not in drop]


def has_body(request: Request) -> bool:
    headers = request.headers
    return "transfer-encoding" in headers or headers.get("content-length", "0") not in ("", "0")


def upstream_error(message: str) -> JSONResponse:
    """The gateway's own 502 (the upstream is down): OpenAI's error shape, so SDK clients report it."""
    return JSONResponse({"error": {"message": message, "type": "bad_gateway", "code": 502}}, status_code=502)


async def forward(client: httpx.AsyncClient, request: Request, content: bytes | AsyncIterator[bytes] | None,
                  keep_length: bool, extra_headers: list[tuple[bytes, bytes]] = (),
                  watcher: RelayWatcher | None = None,
                  on_unreachable: Callable[[], None] | None = None) -> Response:
    """Send the request upstream (same method, path, query and end-to-end headers) and relay the answer:
    status, headers and body bytes as they come (no decoding, so content-encoding stays valid).

    A watcher that strips chunks (`strip_usage`) gets the answer uncompressed (accept-encoding: identity);
    `on_unreachable` is called when the upstream cannot be reached (the gateway answers 502 itself)."""
    strips = watcher is not None and getattr(watcher, "strip_usage", False)
    # The raw path: re-encoding the decoded one would change escapes such as %2F.
    target = (request.scope.get("raw_path") or request.url.path.encode()).decode("latin-1")
    query = request.scope.get("query_string", b"")
    url = target + "?" + query.decode("latin-1") if query else target
    headers = request_headers(request.headers.raw, keep_length, frozenset({b"accept-encoding"}) if strips else
                              frozenset()) + (_IDENTITY_ONLY if strips else [])
    upstream_request = client.build_request(request.method, url, content=content, headers=headers)
    try:
        response = await client.send(upstream_request, stream=True)
    except httpx.TransportError as exc:
        log.warning("upstream unreachable: %s", type(exc).__name__)
        if on_unreachable is not None:
            on_unreachable()
        if watcher is not None:
            watcher.finished(502, complete=True)
        return upstream_error(f"the gateway could not reach the upstream server ({type(exc).__name__})")
    if watcher is not None:
        watcher.response_started(response.status_code, response.headers)

    async def relay() -> AsyncIterator[bytes]:
        # Closing the upstream response when the client goes away also closes its connection, which is
        # how vLLM learns to abort the generation.
        complete = False
        try:
            async for chunk in response.aiter_raw():
                if watcher is not None:
                    chunk = watcher.chunk(chunk)
                    if not chunk:
                        continue
                yield chunk
            if watcher is not None and (tail := watcher.flush()):
                yield tail
            complete = True
        finally:
            if watcher is not None:  # before the await below: a cancelled close must not lose the outcome
                watcher.finished(response.status_code, complete)
            await response.aclose()

    relayed = StreamingResponse(relay(), status_code=response.status_code)
    drop = _RESPONSE_DROP | _named_by_connection(response.headers.raw)
    if strips and response.headers.get("content-type", "").startswith("text/event-stream"):
        drop |= {b"content-length"}  # the stream the client gets may be shorter than the upstream's
    relayed.raw_headers = [(k.lower(), v) for k, v in response.headers.raw if k.lower() not in drop]
    relayed.raw_headers += list(extra_headers)
    return relayed
