"""Export a ranker checkpoint as a Hugging Face sequence-classification directory. See --help."""

from pars.common.errors import run_cli
from pars.model.export import main

if __name__ == "__main__":
    run_cli(main)
