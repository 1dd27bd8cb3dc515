"""Preprocess your own recorded traffic (gateway records, OpenAI Batch API files, request/response logs) into
PARS pairwise files. See --help."""

from pars.common.errors import run_cli
from pars.data.traces import main

if __name__ == "__main__":
    run_cli(main)
