"""The PARS gateway: an OpenAI-compatible proxy in front of `vllm serve --scheduling-policy priority`
that sets each completions/chat request's `priority` from the ranker's score.

    GATEWAY_UPSTREAM_URL=http://127.0.0.1:8000 GATEWAY_PREDICTOR_URL=http://127.0.0.1:8001 \
        uvicorn scripts.pars_gateway:app --host 127.0.0.1 --port 8080

or `python scripts/pars_gateway.py` (binds GATEWAY_HOST:GATEWAY_PORT; `--help` lists every setting).
Settings are read from GATEWAY_* variables when the server starts (pars/gateway/settings.py); with
GATEWAY_SCORER=local the ranker is loaded in-process from the predictor service's PREDICTOR_* variables.
"""

from pars.gateway.app import create_app

app = create_app()

if __name__ == "__main__":
    from pars.gateway.cli import cli

    cli()
