"""The PARS gateway: an OpenAI-compatible proxy that sets vLLM's `priority` from the ranker's score.

settings  GATEWAY_* settings, read once
prompts   the text to score in a completions or chat request
body      setting `priority` in a JSON body without touching its other bytes
priority  score -> integer priority with a starvation guard (wall-clock arrival + bounded score term)
scorers   remote (/score_batch, batched) or in-process (the service's batcher) scoring, with fallback
deadline  how long a request waits for its score: the base timeout alone, longer in a burst
health    /gateway/health's verdict: ok, or degraded with a reason
proxy     forwarding a request upstream and relaying the answer, streams included
usage     an answer's token counts and finish reason, read as it is relayed (JSON or SSE)
outcome   what became of a request (RequestOutcome), handed to the recorder and the live quality
record    recording finished requests as JSON lines (GATEWAY_RECORD_DIR), off the request path
live_quality  Kendall's tau of recent scores against the answers' lengths, censoring handled
observability  the gateway's Prometheus metrics
app       the Starlette app factory and its lifespan
cli       the command line (pars-gateway): uvicorn, and --help listing every setting
"""
