"""Plot training curves from a trainer's metrics.json. See --help; the code lives in pars/plots.py."""

from pars.errors import run_cli
from pars.plots import main

if __name__ == "__main__":
    run_cli(main)
