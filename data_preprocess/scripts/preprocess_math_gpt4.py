"""Preprocess the math dataset into PARS pairwise files. See --help."""

import functools

from pars.common.errors import run_cli
from pars.data.preprocess import main

if __name__ == "__main__":
    run_cli(functools.partial(main, "math"))
