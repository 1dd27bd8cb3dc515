"""Forwarding one request to the upstream and relaying its answer as it arrives (SSE included)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable

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


def _named_by_connection(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """Headers the sender declared hop-by-hop in its own `Connection` header."""
    return {name.strip().lower() for k, v in headers if k.lower() == b"connection" for name in v.split(b",")}


def request_headers(raw: list[tuple[bytes, bytes]], keep_length: bool) -> list[tuple[bytes, bytes]]:
    drop = _REQUEST_DROP | _named_by_connection(raw)
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
                  keep_length: bool, extra_headers: list[tuple[bytes, bytes]] = ()) -> Response:
    """Send the request upstream (same method, path, query and end-to-end headers) and relay the answer:
    status, headers and body bytes as they come (no decoding, so content-encoding stays valid)."""
    # The raw path: re-encoding the decoded one would change escapes such as %2F.
    target = (request.scope.get("raw_path") or request.url.path.encode()).decode("latin-1")
    query = request.scope.get("query_string", b"")
    url = target + "?" + query.decode("latin-1") if query else target
    upstream_request = client.build_request(request.method, url, content=content,
                                            headers=request_headers(request.headers.raw, keep_length))
    try:
        response = await client.send(upstream_request, stream=True)
    except httpx.TransportError as exc:
        log.warning("upstream unreachable: %s", type(exc).__name__)
        return upstream_error(f"the gateway could not reach the upstream server ({type(exc).__name__})")

    async def relay() -> AsyncIterator[bytes]:
        # Closing the upstream response when the client goes away also closes its connection, which is
        # how vLLM learns to abort the generation.
        try:
            async for chunk in response.aiter_raw():
                yield chunk
        finally:
            await response.aclose()

    relayed = StreamingResponse(relay(), status_code=response.status_code)
    drop = _RESPONSE_DROP | _named_by_connection(response.headers.raw)
    relayed.raw_headers = [(k.lower(), v) for k, v in response.headers.raw if k.lower() not in drop]
    relayed.raw_headers += list(extra_headers)
    return relayed
