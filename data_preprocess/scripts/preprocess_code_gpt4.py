"""Preprocess the code dataset into PARS pairwise files. See --help."""

import functools

from pars.data.preprocess import main
from pars.errors import run_cli

if __name__ == "__main__":
    run_cli(functools.partial(main, "code"))
