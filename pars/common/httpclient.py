"""Connection-pool limits for the project's HTTP clients (the gateway's, the benchmarks' load generators).

uvicorn, which serves both the predictor service and vLLM's OpenAI server, closes a keep-alive connection
after 5 s idle (`--timeout-keep-alive`; vLLM: VLLM_HTTP_TIMEOUT_KEEP_ALIVE). httpx keeps idle pooled
connections for 5 s too, so a request sent on a pooled connection at the moment the server closes it fails
with RemoteProtocolError ("Server disconnected without sending a response") or ReadError: a race that is
rare but real (3 of 150 requests sent 1 s after the last one, with both timeouts at 1 s; one error in
8,200 requests of a 40 s soak). A POST that may have reached the server cannot be retried blindly, so the
pool drops idle connections well before any server would.
"""

from __future__ import annotations

import httpx

KEEPALIVE_EXPIRY_S = 2.0  # below uvicorn's default keep-alive timeout (5 s)


def pool_limits(max_connections: int | None, max_keepalive_connections: int | None,
                keepalive_expiry_s: float = KEEPALIVE_EXPIRY_S) -> httpx.Limits:
    return httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_keepalive_connections,
                        keepalive_expiry=keepalive_expiry_s)
