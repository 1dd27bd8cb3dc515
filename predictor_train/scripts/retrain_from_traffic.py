"""Recorded traffic -> a fine-tuned candidate -> judged against the deployed ranker -> reloaded when better.
See --help; the code lives in pars/retrain/cycle.py."""

from pars.common.errors import run_cli
from pars.retrain.cycle import main

if __name__ == "__main__":
    run_cli(main)
