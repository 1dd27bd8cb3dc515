"""Stage 2's flags (predictor_train/scripts/train_pairwise_bert.py --help) and their checks: the original
release's flags and defaults first, then ours (time budgets, pairing, batching, the loss).
"""

from __future__ import annotations

import argparse

from pars.common.errors import PARSError
from pars.common.hub import OFFLINE_ENCODER
from pars.model import precision
from pars.model.ranker import POOLINGS
from pars.model.ranker_config import SCORE_SETTINGS, for_training
from pars.model.truncation import TRUNCATIONS
from pars.train.losses import LOSSES, PAIR_LOSSES
from pars.train.state import STATE_FILE

PAIR_WEIGHTINGS = ("none", "length-diff")
SELECT_BY = ("val_accuracy", "val_kendall_tau", "val_length_weighted_tau")

DEFAULT_PROMPT_GROUP_SIZE = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=(
            "Train a BERT-family pairwise ranker on pair files from data_preprocess/: "
            "score = Linear(pooler output), MarginRankingLoss on (score_A, score_B, 2*label-1) "
            "(or, over in-batch rows, the --loss named). "
            "Writes best_model.pt (best val accuracy), last_model.pt and metrics.json. "
            "Runs as is under `torchrun --nproc_per_node=N` (DistributedDataParallel)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--train-file", required=True, help="Train pairs JSON (train_pairs_length_diff_<t>.json).")
    p.add_argument("--val-file", required=True, help="Val pairs JSON (val_pairs_length_diff_<t>.json).")
    p.add_argument("--output-dir", required=True, help="Directory for checkpoints and metrics.json.")
    p.add_argument(
        "--model-name", default=None,
        help=f"Encoder: hub id, local directory, or '{OFFLINE_ENCODER}' for the offline all-MiniLM-L6-v2. "
             "Default, as for the next three: the --resume-from ranker's own (its ranker_config.json), else "
             "the original release's (bert-base-uncased, 128, head, pooler).",
    )
    p.add_argument("--max-length", type=int, default=None, help="Tokens per prompt (longer ones are truncated).")
    p.add_argument("--truncation", choices=TRUNCATIONS, default=None,
                   help="How a prompt over --max-length is cut: head keeps its first tokens (the original "
                        "release); middle keeps its first and last halves, so an instruction after long "
                        "material is seen. Serve the ranker with the same (PREDICTOR_TRUNCATION).")
    p.add_argument("--pooling", choices=POOLINGS, default=None,
                   help="What fc reads: pooler is the encoder's pooler output (CLS when it has none; the "
                        "original release); mean is the mean of the prompt's token states, which "
                        "sentence-transformers encoders were trained to pool. Serve the ranker with the "
                        "same (PREDICTOR_POOLING).")
    p.add_argument("--batch-size", type=int, default=128,
                   help="Pairs per optimizer step (rows with --pairing in-batch), over all ranks together.")
    p.add_argument("--num-epochs", type=int, default=3, help="Passes over the train pairs.")
    p.add_argument("--learning-rate", type=float, default=2e-5, help="AdamW peak learning rate.")
    p.add_argument("--margin", type=float, default=1.0, help="MarginRankingLoss margin.")
    p.add_argument("--warmup-ratio", type=float, default=0.1, help="Share of steps with linear warm-up.")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay.")
    p.add_argument("--optim", choices=("adamw_torch_fused", "adamw_torch"), default="adamw_torch_fused",
                   help="AdamW kernel, named as in transformers' TrainingArguments: the same update either way. "
                        "fused: one kernel over all parameters (CPU and CUDA); adamw_torch: torch's default, "
                        "which on CPU loops over the parameter tensors one by one.")
    p.add_argument("--mixed-precision", choices=precision.CHOICES, default="auto",
                   help="Autocast dtype of the forward pass; weights and optimizer stay float32. auto: fp16 with "
                        "loss scaling on CUDA (the original's AMP); bf16 on a CPU with AMX or AVX512-BF16 "
                        "(about 1.5x faster steps), except with --batching original, which keeps the original's "
                        "float32 on CPU; no elsewhere.")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (per rank).")
    p.add_argument("--seed", type=int, default=42, help="Seed of shuffling, subsampling and init.")
    p.add_argument("--resume-from", default=None, help="Fine-tune: start from this ranker's weights (a state_dict) "
                   "and settings (its ranker_config.json; a flag contradicting them is refused).")
    # Beyond the original: bounds for a time budget, device choice, ranking metrics.
    p.add_argument("--max-steps", type=int, default=None,
                   help="Stop after this many optimizer steps (the schedule is fitted to it).")
    p.add_argument("--max-train-minutes", type=float, default=None,
                   help="Wall-clock budget: stop training once this much time has passed (then validate and save).")
    p.add_argument("--max-train-samples", type=int, default=None, help="Use a seeded random subset of train pairs.")
    p.add_argument("--max-eval-samples", type=int, default=None, help="Use a seeded random subset of val pairs.")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda or cuda:N (under torchrun each rank takes the GPU of its LOCAL_RANK).")
    p.add_argument(
        "--val-data-file", default=None,
        help="val_data.json for Kendall's tau per epoch; by default the one beside --val-file, if any.",
    )
    p.add_argument(
        "--pairing", choices=("pairs", "in-batch"), default="pairs",
        help="pairs: train on --train-file's pairs (the original). in-batch: encode --batch-size prompts of "
             "train_data.json per step and apply the loss to every in-batch pair passing the threshold.",
    )
    p.add_argument("--train-data-file", default=None,
                   help="train_data.json for --pairing in-batch; by default the one beside --train-file.")
    p.add_argument("--similarity-threshold", type=float, default=0.2,
                   help="--pairing in-batch with --loss margin: minimum relative length difference of a pair "
                        "(δ; the pair files' own is stage 1's --similarity-threshold).")
    p.add_argument("--loss", choices=LOSSES, default="margin",
                   help="margin: the original's pairwise margin ranking loss. The others need --pairing in-batch "
                        "(the rows' lengths), use the same batches, and are taken over each batch: listmle, "
                        "the likelihood of the batch's longest-first order (vllm-ltr); pointwise, regression on "
                        "the standardized log length; classification, cross-entropy over --num-buckets length "
                        "buckets of equal train frequency, scored by the expected bucket. Recorded in the "
                        "ranker's config; served alike (pars/train/losses.py).")
    p.add_argument("--num-buckets", type=int, default=10,
                   help="--loss classification: length buckets (the head's outputs; vllm-ltr's class baseline "
                        "uses 10).")
    p.add_argument("--pair-weighting", choices=PAIR_WEIGHTINGS, default="none",
                   help="--pairing in-batch: none weighs every pair alike (the original loss); length-diff "
                        "weighs a pair by the difference of its answer lengths (capped at --pair-weight-cap), "
                        "what misordering it costs a shortest-first scheduler.")
    p.add_argument("--pair-weight-cap", type=float, default=None,
                   help="--pair-weighting length-diff: answer lengths are capped here first, in "
                        "answer_length's units. Default: the 98th percentile of the train rows' lengths, so a "
                        "few very long answers do not outweigh the rest.")
    p.add_argument(
        "--batching", choices=("fast", "original"), default="fast",
        help="fast: tokenize each distinct prompt once up front, pad each batch to its own longest prompt "
             "(A and B prompts together, length-sorted into at most four forward passes). original: the "
             "original release's exact behaviour for --pairing pairs: tokenize each batch as it is drawn, pad "
             "every prompt to --max-length, plain shuffled batches. Same scores and loss either way.",
    )
    p.add_argument(
        "--group-by-length", action=argparse.BooleanOptionalAction, default=None,
        help="Batch items of similar token length together (sorted within windows of 50 batches, batches "
             "shuffled, seeded): far less padding. Default: on for --pairing pairs with --batching fast, "
             "off otherwise (for in-batch it changes which rows meet, so it stays opt-in).",
    )
    p.add_argument(
        "--group-by-prompt", action=argparse.BooleanOptionalAction, default=None,
        help="Keep pairs that share their prompt A in the same batch (groups shuffled, then length-sorted as "
             "above) and encode each distinct prompt of a batch once: ~1.1 encodings per pair instead of 2 on "
             "the preprocess scripts' pair files. Default: on for --pairing pairs with --batching fast.",
    )
    p.add_argument("--prompt-group-size", type=int, default=None,
                   help="With --group-by-prompt: cut a prompt's group into pieces of at most this many pairs, "
                        "placed apart, so a batch mixes more prompts (~1 + 1/N prompts encoded per pair); 0: "
                        "whole groups (fastest, ~1.5 points of val accuracy lost at equal steps). Default: 2, "
                        "which keeps the original's accuracy per step.")
    p.add_argument("--select-by", choices=SELECT_BY, default="val_accuracy",
                   help="Metric that picks best_model.pt.")
    p.add_argument("--save-state", action="store_true",
                   help=f"Write the full training state ({STATE_FILE}: model, optimizer, scheduler, RNG, position) "
                        "to --output-dir at the end of every epoch, atomically, for --resume-state.")
    p.add_argument("--save-every-steps", type=int, default=None,
                   help=f"Also write {STATE_FILE} every N optimizer steps (implies --save-state).")
    p.add_argument("--resume-state", default=None,
                   help=f"Continue an interrupted run from this {STATE_FILE} (same arguments) to the same result; "
                        f"'auto': --output-dir/{STATE_FILE} when it exists, else start afresh.")
    # For tests of the resume path: the process SIGKILLs itself after this optimizer step, mid-epoch.
    p.add_argument("--debug-kill-after-step", type=int, default=None, help=argparse.SUPPRESS)
    return p


def check_args(args: argparse.Namespace) -> None:
    """Checks the flags; fills the ranker's settings (--resume-from's own, else the original's) where unset."""
    given = {key: getattr(args, key) for key in SCORE_SETTINGS}
    config = for_training(args.resume_from, given, name=lambda key: "--" + key.replace("_", "-"))
    vars(args).update({key: getattr(config, key) for key in SCORE_SETTINGS})
    for name in ("batch_size", "num_epochs", "max_length"):
        if getattr(args, name) < 1:
            raise PARSError(f"--{name.replace('_', '-')} must be >= 1")
    if args.save_every_steps is not None:
        if args.save_every_steps < 1:
            raise PARSError("--save-every-steps must be >= 1")
        args.save_state = True
    if args.batching == "original":
        if args.pairing != "pairs":
            raise PARSError("--batching original reproduces the original release, which has only --pairing pairs")
        if args.group_by_length or args.group_by_prompt:
            raise PARSError("--batching original uses plain shuffled batches; drop --group-by-length/--group-by-prompt")
    if args.prompt_group_size is not None and args.prompt_group_size < 0:
        raise PARSError("--prompt-group-size must be >= 0 (0: whole groups)")
    if args.loss != "margin" and args.pairing != "in-batch":
        raise PARSError(f"--loss {args.loss} is taken over the rows of a batch and needs their answer lengths: "
                        "use it with --pairing in-batch")
    if args.pair_weighting != "none" and args.loss not in PAIR_LOSSES:
        raise PARSError(f"--pair-weighting weighs pairs of the margin loss; --loss {args.loss} has none")
    if args.num_buckets < 2:
        raise PARSError("--num-buckets must be >= 2")
    if args.pair_weighting != "none" and args.pairing != "in-batch":
        raise PARSError("--pair-weighting needs the rows' answer lengths: use it with --pairing in-batch")
    if args.pair_weight_cap is not None and args.pair_weight_cap <= 0:
        raise PARSError("--pair-weight-cap must be > 0")
    if args.group_by_prompt and args.pairing != "pairs":
        raise PARSError("--group-by-prompt groups pairs by their prompt A; --pairing in-batch has no pairs to group")
    fast_pairs = args.pairing == "pairs" and args.batching == "fast"
    if args.group_by_length is None:
        args.group_by_length = fast_pairs
    if args.group_by_prompt is None:
        args.group_by_prompt = fast_pairs
    if args.prompt_group_size is not None and not args.group_by_prompt:
        raise PARSError("--prompt-group-size cuts the groups of --group-by-prompt, which is off here")
    if args.group_by_prompt:
        # pieces of 2: the original's val accuracy per step; whole groups encode fewer tokens but lose ~1.5
        # points at equal steps (benchmarks/results/train_bench_bf16.json, predictor_train/README.md)
        size = DEFAULT_PROMPT_GROUP_SIZE if args.prompt_group_size is None else args.prompt_group_size
        args.prompt_group_size = size or None  # None: whole groups
