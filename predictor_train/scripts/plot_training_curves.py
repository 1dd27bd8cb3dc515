"""Plot training curves from a trainer's metrics.json. See --help; the code lives in pars/train/curves.py."""

from pars.common.errors import run_cli
from pars.train.curves import main

if __name__ == "__main__":
    run_cli(main)
