"""Export a ranker checkpoint to a directory that a standard library loads with its standard class and that
gives the ranker's scores, or refuse in one line where no standard form scores as the ranker does.

- pooling `pooler`, truncation `head`: a `transformers` sequence-classification directory. BERT's
  `*ForSequenceClassification` computes `classifier(dropout(pooler_output))`; with one label and dropout off
  at inference that is exactly our `fc(pooler_output)`, so its logit is the ranker's score.
- pooling `mean`, truncation `head`: a sentence-transformers directory (the convention for mean-pooled
  encoders): Transformer, mean Pooling, Dense(hidden, 1) without activation; `encode` gives the score.
- truncation `middle`: refused. Both libraries keep the first max_length tokens of a longer prompt; none
  cuts the middle out, so the same weights would score long prompts otherwise, silently.

The settings come from the checkpoint's ranker_config.json (pars/model/ranker_config.py); the export carries
it too, and its tokenizer (sentence-transformers: max_seq_length) cuts at the ranker's max_length, so the
library's plain call truncates where the ranker does. `load_ranker` reads both layouts back.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerBase

from pars.common.errors import PARSError, run_cli
from pars.common.hub import OFFLINE_ENCODER
from pars.model.checkpoint import load_ranker
from pars.model.ranker import POOLINGS, PairwiseRanker, load_tokenizer
from pars.model.ranker_config import RankerConfig, resolve
from pars.model.truncation import TRUNCATIONS

SEQUENCE_CLASSIFICATION = "transformers AutoModelForSequenceClassification"
SENTENCE_TRANSFORMERS = "sentence-transformers"


def to_sequence_classification(ranker: PairwiseRanker):
    """The ranker as `AutoModelForSequenceClassification` with one output (logit = score)."""
    if ranker.pooling != "pooler":
        raise PARSError(f"a ranker pooled by {ranker.pooling!r} has no standard sequence-classification form "
                        "(its head reads the pooler output); export it as sentence-transformers, or serve the "
                        f"checkpoint itself (PREDICTOR_POOLING={ranker.pooling})")
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
            f"export supports pooler-pooled encoders whose classification head is Linear(pooler_output) (BERT "
            f"family); {config.model_type!r} is not one (a ranker of it trained with --pooling mean exports)"
        )
    base.load_state_dict(ranker.encoder.state_dict())
    head.load_state_dict(ranker.fc.state_dict())
    return model.eval()


def _write_json(data: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def save_sentence_transformers(ranker: PairwiseRanker, tokenizer: PreTrainedTokenizerBase, max_length: int,
                               out: Path) -> None:
    """The mean-pooled ranker as a sentence-transformers directory: encoder and tokenizer at the root, then
    mean Pooling and Dense(hidden, 1) with the identity as activation, so `encode` gives (n, 1) scores.

    Written by hand, in the classic layout that sentence-transformers reads from release 3 on (module types
    `sentence_transformers.models.*`, `max_seq_length` in sentence_bert_config.json, Dense weights as
    safetensors), rather than with `SentenceTransformer.save`: release 6 writes module paths that releases 3
    to 5 do not have, and exporting then needs no sentence-transformers at all."""
    from safetensors.torch import save_file

    if ranker.pooling != "mean":
        raise PARSError(f"the sentence-transformers layout is for mean-pooled rankers, not {ranker.pooling!r}")
    hidden = ranker.encoder.config.hidden_size
    ranker.encoder.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _write_json([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                 {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                 {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}],
                out / "modules.json")
    # do_lower_case: the tokenizer lower-cases itself where its model was trained so (as the ranker's did)
    _write_json({"max_seq_length": max_length, "do_lower_case": False}, out / "sentence_bert_config.json")
    _write_json({"word_embedding_dimension": hidden, "pooling_mode_cls_token": False,
                 "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
                 "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
                 "pooling_mode_lasttoken": False, "include_prompt": True}, out / "1_Pooling" / "config.json")
    _write_json({"in_features": hidden, "out_features": 1, "bias": True,
                 "activation_function": "torch.nn.modules.linear.Identity"}, out / "2_Dense" / "config.json")
    fc = {f"linear.{k}": v.detach().to(torch.float32).contiguous().cpu() for k, v in ranker.fc.state_dict().items()}
    save_file(fc, str(out / "2_Dense" / "model.safetensors"))


def how_to_load(layout: str, out: Path) -> str:
    """The few lines of Python that score prompts with the exported directory."""
    if layout == SENTENCE_TRANSFORMERS:
        return ("from sentence_transformers import SentenceTransformer\n"
                f"scores = SentenceTransformer({str(out)!r}).encode(prompts)[:, 0]")
    return ("from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
            f"tokenizer = AutoTokenizer.from_pretrained({str(out)!r})\n"
            f"model = AutoModelForSequenceClassification.from_pretrained({str(out)!r}).eval()\n"
            "scores = model(**tokenizer(prompts, truncation=True, padding=True, return_tensors='pt')).logits[:, 0]")


def check_exportable(config: RankerConfig) -> None:
    if config.truncation != "head":
        raise PARSError(f"a ranker trained with truncation {config.truncation!r} has no standard form: standard "
                        "libraries keep the first max_length tokens of a longer prompt and none cuts out its "
                        "middle; serve the checkpoint itself with the pars service (pars-serve)")


def export(checkpoint: str, out: Path, config: RankerConfig) -> str:
    """Write the layout that fits `config` into `out` (new or empty); returns the layout's name."""
    check_exportable(config)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        # an earlier export of the other layout left there would be loaded instead, or mixed in
        raise PARSError(f"--output-dir {out} exists and is not empty; give a new directory")
    ranker = load_ranker(config.model_name, checkpoint, config.pooling)
    if ranker.num_classes != 1:
        raise PARSError(f"a classification ranker ({ranker.num_classes} length buckets) scores the expected bucket "
                        "under the softmax of its head, which no standard class computes; serve the checkpoint "
                        "itself with the pars service (pars-serve)")
    tokenizer = load_tokenizer(config.model_name)
    tokenizer.model_max_length = config.max_length  # the plain `truncation=True` call then cuts as the ranker
    if config.pooling == "pooler":
        model = to_sequence_classification(ranker)  # before writing anything: a refusal leaves no directory
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        layout = SEQUENCE_CLASSIFICATION
    else:
        save_sentence_transformers(ranker, tokenizer, config.max_length, out)
        layout = SENTENCE_TRANSFORMERS
    config.save(out)
    return layout


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown, except None: those flags say in words where their value comes from."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Export a ranker checkpoint (best_model.pt) as a directory a standard library loads and "
                    "that gives the ranker's scores: pooler-pooled rankers as transformers "
                    "AutoModelForSequenceClassification (logit = score), mean-pooled ones as sentence-transformers "
                    "(encode = score). Rankers trained with --truncation middle are refused. The settings come "
                    "from the checkpoint's ranker_config.json; give one only where it records none.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--checkpoint", required=True,
                   help="The ranker's state_dict (best_model.pt), or an exported directory.")
    p.add_argument("--model-name", default=None,
                   help=f"Encoder it was trained with (hub id, local dir or '{OFFLINE_ENCODER}') (default: the "
                        "checkpoint's, else bert-base-uncased).")
    p.add_argument("--pooling", choices=POOLINGS, default=None,
                   help="How it pools the encoder's output (default: the checkpoint's, else pooler).")
    p.add_argument("--truncation", choices=TRUNCATIONS, default=None,
                   help="How it cuts a longer prompt (default: the checkpoint's, else head).")
    p.add_argument("--max-length", type=int, default=None,
                   help="Tokens it reads (default: the checkpoint's, else 128).")
    p.add_argument("--output-dir", required=True, help="Directory to write (created; must be new or empty).")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    given = {"model_name": args.model_name, "pooling": args.pooling, "truncation": args.truncation,
             "max_length": args.max_length}
    config = resolve(args.checkpoint, given, name=lambda k: "--" + k.replace("_", "-"))
    out = Path(args.output_dir)
    layout = export(args.checkpoint, out, config)
    print(f"Saved {out} ({layout}: {config.pooling} pooling, first {config.max_length} tokens); load it with:\n"
          f"{how_to_load(layout, out)}")
    return 0


def cli() -> None:
    """The console script (pyproject.toml's [project.scripts])."""
    run_cli(main)
