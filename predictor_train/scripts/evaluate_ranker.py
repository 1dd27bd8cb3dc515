"""Evaluate ranker checkpoints beside cheap baselines. See --help; the code lives in pars/evaluate.py."""

from pars.errors import run_cli
from pars.evaluate import main

if __name__ == "__main__":
    run_cli(main)
