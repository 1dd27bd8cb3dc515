"""Train the PARS pairwise ranker. See --help; the loop lives in pars/train.py."""

from pars.errors import run_cli
from pars.train import main

if __name__ == "__main__":
    run_cli(main)
