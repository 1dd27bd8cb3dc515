"""PARS: prompt-aware scheduling with a pairwise response-length ranker.

The stage scripts in data_preprocess/, predictor_train/ and predictor_serving/ are thin
entry points; everything they share lives in this package.
"""

__version__ = "0.1.0"
