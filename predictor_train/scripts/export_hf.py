"""Export a ranker checkpoint as a directory a standard library loads (transformers sequence-classification
for pooler-pooled rankers, sentence-transformers for mean-pooled ones), or refuse in one line. See --help."""

from pars.common.errors import run_cli
from pars.model.export import main

if __name__ == "__main__":
    run_cli(main)
