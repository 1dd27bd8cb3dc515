"""The gateway's command line (`pars-gateway`, `python predictor_serving/scripts/pars_gateway.py`): uvicorn on
GATEWAY_HOST:GATEWAY_PORT (or --host/--port), every GATEWAY_* setting listed by --help."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence

from pydantic import ValidationError

from pars.common.errors import PARSError, run_cli
from pars.common.settings_help import settings_epilog
from pars.gateway.settings import GatewaySettings

DESCRIPTION = (
    "The PARS gateway: an OpenAI-compatible proxy in front of `vllm serve --scheduling-policy priority` that "
    "sets each completions/chat request's `priority` from the ranker's score, with a starvation guard; "
    "everything else passes through. Its own endpoints: GET /gateway/health, /gateway/metrics. With "
    "GATEWAY_SCORER=local the ranker runs in this process, configured by the predictor's PREDICTOR_* settings "
    "(pars-serve --help)."
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pars-gateway",
        description=textwrap.fill(DESCRIPTION, width=100),
        epilog=settings_epilog(GatewaySettings, "GATEWAY_",
                               "e.g. GATEWAY_UPSTREAM_URL=http://127.0.0.1:8000 "
                               "GATEWAY_PREDICTOR_URL=http://127.0.0.1:8001 pars-gateway   "
                               "(clients then use http://127.0.0.1:8080/v1)"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=None, help="bind address (default: GATEWAY_HOST)")
    p.add_argument("--port", type=int, default=None, help="port (default: GATEWAY_PORT)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = GatewaySettings()
    except ValidationError as exc:
        err = exc.errors()[0]
        raise PARSError(f"bad setting GATEWAY_{str(err['loc'][0]).upper()}: {err['msg']}") from None
    import uvicorn

    from pars.gateway.app import create_app

    uvicorn.run(create_app(settings), host=args.host or settings.host, port=args.port or settings.port)
    return 0


def cli() -> None:
    run_cli(main)
