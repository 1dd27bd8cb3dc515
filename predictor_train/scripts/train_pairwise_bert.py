"""Train the PARS pairwise ranker. See --help; the loop lives in pars/train/loop.py."""

from pars.common.errors import run_cli
from pars.train.loop import main

if __name__ == "__main__":
    run_cli(main)
