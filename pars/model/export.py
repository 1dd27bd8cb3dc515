"""Export a checkpoint as a standard Hugging Face sequence-classification directory.

BERT's `*ForSequenceClassification` computes `classifier(dropout(pooler_output))`; with one label and
dropout off at inference that is exactly our `fc(pooler_output)`, so the exported model's logits equal
the ranker's scores and `transformers` pipelines or other serving stacks can load it unchanged.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from transformers import AutoModelForSequenceClassification

from pars.common.errors import PARSError, run_cli
from pars.common.hub import OFFLINE_ENCODER
from pars.model.checkpoint import load_ranker
from pars.model.ranker import PairwiseRanker, load_tokenizer


def to_sequence_classification(ranker: PairwiseRanker):
    """The ranker as `AutoModelForSequenceClassification` with one output (logit = score)."""
    if ranker.pooling != "pooler":
        raise PARSError(f"a ranker pooled by {ranker.pooling!r} has no standard sequence-classification form "
                        "(its head reads the pooler output); serve the checkpoint itself "
                        f"(PREDICTOR_POOLING={ranker.pooling})")
    config = ranker.encoder.config.__class__.from_dict(ranker.encoder.config.to_dict())
    config.num_labels = 1
    config.problem_type = "regression"
    config.id2label, config.label2id = {0: "expected_response_length_score"}, {"expected_response_length_score": 0}
    try:
        model = AutoModelForSequenceClassification.from_config(config)
    except ValueError as exc:
        raise PARSError(f"no sequence-classification head for model type {config.model_type!r}: {exc}") from None
    head = getattr(model, "classifier", None)
    base = getattr(model, model.base_model_prefix, None)
    if not isinstance(head, type(ranker.fc)) or base is None or getattr(base, "pooler", None) is None:
        raise PARSError(
            f"export supports encoders whose classification head is Linear(pooler_output) (BERT family); "
            f"{config.model_type!r} is not one"
        )
    base.load_state_dict(ranker.encoder.state_dict())
    head.load_state_dict(ranker.fc.state_dict())
    return model.eval()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Export a ranker checkpoint (best_model.pt) as a Hugging Face directory (config.json, "
                    "model.safetensors, tokenizer files) loadable with AutoModelForSequenceClassification; "
                    "its single logit equals the ranker's score.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="The ranker's state_dict (best_model.pt).")
    p.add_argument("--model-name", default="bert-base-uncased",
                   help=f"Encoder it was trained with (hub id, local dir or '{OFFLINE_ENCODER}').")
    p.add_argument("--output-dir", required=True, help="Directory to write (created).")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model = to_sequence_classification(load_ranker(args.model_name, args.checkpoint))
    out = Path(args.output_dir)
    model.save_pretrained(out)
    load_tokenizer(args.model_name).save_pretrained(out)
    print(f"Saved {out} (AutoModelForSequenceClassification, 1 output: logit = ranker score)")
    return 0


def cli() -> None:
    """The console script (pyproject.toml's [project.scripts])."""
    run_cli(main)
