"""Evaluate ranker checkpoints beside cheap baselines. See --help; the code lives in pars/eval/evaluate.py."""

from pars.common.errors import run_cli
from pars.eval.evaluate import main

if __name__ == "__main__":
    run_cli(main)
