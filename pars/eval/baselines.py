"""Cheap baselines that score prompts like the ranker does (higher = longer expected answer).

A learned predictor is only worth its cost if it beats these; the evaluator always reports
them beside every checkpoint, on the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import Ridge
from transformers import PreTrainedTokenizerBase

from pars.common.errors import PARSError


def prompt_char_lengths(prompts: Sequence[str]) -> list[float]:
    """Prompt length in characters: the cheapest possible signal."""
    return [float(len(p)) for p in prompts]


def prompt_token_lengths(prompts: Sequence[str], tokenizer: PreTrainedTokenizerBase) -> list[float]:
    """Prompt length in tokens, untruncated: the ranker's max_length must not cap the baseline."""
    if not prompts:
        return []
    # verbose=False: no "sequence longer than the model maximum" warning, we never feed these to a model.
    ids = tokenizer(list(prompts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    return [float(len(x)) for x in ids]


class TfidfRidgeBaseline:
    """TF-IDF (word 1-2 grams, sublinear tf) + Ridge on log1p(answer_length).

    A learned but cheap model: it tells whether the ranker learned more than which words go with
    long answers. Deterministic: the vectorizer has no randomness and Ridge is given a seed for
    the solvers that use one.
    """

    def __init__(self, min_df: int = 2, max_features: int | None = 200_000, alpha: float = 1.0,
                 seed: int = 42) -> None:
        self.min_df = min_df
        self.max_features = max_features
        self.alpha = alpha
        self.seed = seed
        self.vectorizer: TfidfVectorizer | None = None
        self.model: Ridge | None = None

    def _vectorizer(self, min_df: int) -> TfidfVectorizer:
        return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=min_df,
                               max_features=self.max_features, dtype=np.float32)

    def fit(self, prompts: Sequence[str], lengths: Sequence[float]) -> TfidfRidgeBaseline:
        """Fit on train rows; min_df falls back to 1 when a small train set leaves no term."""
        if len(prompts) != len(lengths):
            raise PARSError(f"TF-IDF baseline: {len(prompts)} prompts but {len(lengths)} lengths")
        if len(prompts) < 2:
            raise PARSError("TF-IDF baseline needs at least 2 train rows")
        target = np.log1p(np.maximum(np.asarray(lengths, dtype=np.float64), 0.0))
        features = None
        for min_df in dict.fromkeys((self.min_df, 1)):
            self.vectorizer = self._vectorizer(min_df)
            try:
                features = self.vectorizer.fit_transform(list(prompts))
                break
            except ValueError:  # "empty vocabulary": every term is rarer than min_df (or prompts have none)
                continue
        if features is None:
            raise PARSError("TF-IDF baseline: the train prompts contain no words")
        self.model = Ridge(alpha=self.alpha, random_state=self.seed).fit(features, target)
        return self

    def score(self, prompts: Sequence[str]) -> list[float]:
        """Predicted log1p(answer length) per prompt."""
        if self.vectorizer is None or self.model is None:
            raise RuntimeError("TfidfRidgeBaseline.score called before fit")
        if not prompts:
            return []
        return [float(s) for s in self.model.predict(self.vectorizer.transform(list(prompts)))]

