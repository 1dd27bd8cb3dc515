"""Stage 2: train the pairwise ranker (predictor_train/scripts/train_pairwise_bert.py).

Same model, loss, optimizer, schedule, clipping, AMP and outputs as the original release;
read top to bottom: arguments, data, model, optimizer, loop, outputs.
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup
from transformers.trainer_pt_utils import LengthGroupedSampler

from pars.errors import PARSError
from pars.hub import OFFLINE_ENCODER
from pars.jsonio import write_json_atomic
from pars.metrics import kendall_tau, pairwise_accuracy
from pars.model import PairwiseRanker, load_state_dict_into, load_tokenizer, read_state_dict, save_checkpoint
from pars.pairdata import (
    ListDataset,
    PairCollator,
    RowCollator,
    in_batch_pairs,
    load_pairs,
    load_rows,
    subsample,
)
from pars.pairs import check_threshold
from pars.plots import plot_training_curves
from pars.scoring import PromptScorer, resolve_device


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=(
            "Train a BERT-family pairwise ranker on pair files from data_preprocess/: "
            "score = Linear(pooler output), MarginRankingLoss on (score_A, score_B, 2*label-1). "
            "Writes best_model.pt (best val accuracy), last_model.pt and metrics.json."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--train-file", required=True, help="Train pairs JSON (train_pairs_length_diff_<t>.json).")
    p.add_argument("--val-file", required=True, help="Val pairs JSON (val_pairs_length_diff_<t>.json).")
    p.add_argument("--output-dir", required=True, help="Directory for checkpoints and metrics.json.")
    p.add_argument(
        "--model-name", default="bert-base-uncased",
        help=f"Encoder: hub id, local directory, or '{OFFLINE_ENCODER}' for the offline all-MiniLM-L6-v2.",
    )
    p.add_argument("--max-length", type=int, default=128, help="Tokens per prompt (longer ones are truncated).")
    p.add_argument("--batch-size", type=int, default=128, help="Pairs per step.")
    p.add_argument("--num-epochs", type=int, default=3, help="Passes over the train pairs.")
    p.add_argument("--learning-rate", type=float, default=2e-5, help="AdamW peak learning rate.")
    p.add_argument("--margin", type=float, default=1.0, help="MarginRankingLoss margin.")
    p.add_argument("--warmup-ratio", type=float, default=0.1, help="Share of steps with linear warm-up.")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay.")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers.")
    p.add_argument("--seed", type=int, default=42, help="Seed of shuffling, subsampling and init.")
    p.add_argument("--resume-from", default=None, help="Start from this checkpoint's weights (a state_dict).")
    # Beyond the original: bounds for a time budget, device choice, ranking metrics.
    p.add_argument("--max-steps", type=int, default=None,
                   help="Stop after this many optimizer steps (the schedule is fitted to it).")
    p.add_argument("--max-train-minutes", type=float, default=None,
                   help="Wall-clock budget: stop training once this much time has passed (then validate and save).")
    p.add_argument("--max-train-samples", type=int, default=None, help="Use a seeded random subset of train pairs.")
    p.add_argument("--max-eval-samples", type=int, default=None, help="Use a seeded random subset of val pairs.")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
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
                   help="--pairing in-batch: minimum relative length difference of a pair.")
    p.add_argument(
        "--group-by-length", action="store_true",
        help="Batch items of similar token length together (shuffled in mega-batches, as transformers' "
             "LengthGroupedSampler): far less padding on CPU.",
    )
    p.add_argument("--select-by", choices=("val_accuracy", "val_kendall_tau"), default="val_accuracy",
                   help="Metric that picks best_model.pt.")
    return p


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def validate(scorer: PromptScorer, val_pairs, val_rows, batch_size: int, criterion) -> dict[str, float]:
    """val_loss and val_accuracy over the val pairs (as the original counts them: mean of per-batch losses,
    score_A > score_B against label), and Kendall's tau over the val rows when given.

    Each distinct prompt is scored once, in length-sorted batches: val pairs reuse every val prompt ~20
    times, so this is the same numbers as encoding pair by pair at a fraction of the cost."""
    scorer.model.eval()
    prompts = {p[k] for p in val_pairs for k in ("prompt_A", "prompt_B")}
    if val_rows is not None:
        prompts.update(r["prompt"] for r in val_rows)
    prompts = sorted(prompts)
    table = dict(zip(prompts, scorer.score_many(prompts, batch_size=64, progress=True), strict=True))
    score_a = torch.tensor([table[p["prompt_A"]] for p in val_pairs])
    score_b = torch.tensor([table[p["prompt_B"]] for p in val_pairs])
    labels = torch.tensor([float(p["label"]) for p in val_pairs])
    losses = [criterion(score_a[i : i + batch_size], score_b[i : i + batch_size],
                        2 * labels[i : i + batch_size] - 1).item() for i in range(0, len(val_pairs), batch_size)]
    result = {"val_loss": sum(losses) / len(losses),
              "val_accuracy": pairwise_accuracy(score_a.tolist(), score_b.tolist(), [p["label"] for p in val_pairs])}
    if val_rows is not None:
        result["val_kendall_tau"] = kendall_tau([table[r["prompt"]] for r in val_rows],
                                                [r["answer_length"] for r in val_rows])
    return result


def find_beside(explicit: str | None, pair_file: str, name: str) -> Path | None:
    if explicit:
        return Path(explicit)
    beside = Path(pair_file).with_name(name)
    return beside if beside.is_file() else None


def token_lengths(tokenizer, items, max_length: int) -> list[int]:
    """Tokens per item (a pair counts both prompts), for length-grouped batching."""
    def count(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]

    if "prompt" in items[0]:
        return count([r["prompt"] for r in items])
    return [a + b for a, b in zip(count([p["prompt_A"] for p in items]), count([p["prompt_B"] for p in items]),
                                  strict=True)]


def pair_scores(model, batch, pairing: str, threshold: float):
    """(score_A, score_B, target) of the step's pairs, target +1 where A is longer."""
    if pairing == "pairs":
        labels = batch.pop("labels")
        score_a, score_b = model(**batch)
        return score_a, score_b, 2 * labels - 1
    scores = model.score(batch["input_ids"], batch["attention_mask"])
    i, j, target = in_batch_pairs(batch["lengths"], threshold)
    return scores[i], scores[j], target


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("batch_size", "num_epochs", "max_length"):
        if getattr(args, name) < 1:
            raise PARSError(f"--{name.replace('_', '-')} must be >= 1")
    set_seed(args.seed)
    output_dir = Path(args.output_dir)

    # ---- data ----
    if args.pairing == "pairs":
        train_items = load_pairs(args.train_file, "train file")
    else:
        check_threshold(args.similarity_threshold)
        train_data_path = find_beside(args.train_data_file, args.train_file, "train_data.json")
        if train_data_path is None:
            raise PARSError("--pairing in-batch needs --train-data-file (or train_data.json beside --train-file)")
        train_items = load_rows(train_data_path, "train data file")
    train_items = subsample(train_items, args.max_train_samples, args.seed)
    val_pairs = subsample(load_pairs(args.val_file, "val file"), args.max_eval_samples, args.seed)
    val_data_path = find_beside(args.val_data_file, args.val_file, "val_data.json")
    val_rows = load_rows(val_data_path, "val data file") if val_data_path else None
    if args.select_by == "val_kendall_tau" and val_rows is None:
        raise PARSError("--select-by val_kendall_tau needs --val-data-file (or val_data.json beside --val-file)")

    device = resolve_device(args.device)
    use_amp = device.type == "cuda"
    tokenizer = load_tokenizer(args.model_name)
    if args.pairing == "pairs":
        train_collate = PairCollator(tokenizer, args.max_length)
    else:
        train_collate = RowCollator(tokenizer, args.max_length)
    generator = torch.Generator().manual_seed(args.seed)
    sampler = None
    if args.group_by_length:
        sampler = LengthGroupedSampler(args.batch_size, lengths=token_lengths(tokenizer, train_items, args.max_length),
                                       generator=generator)
    train_loader = DataLoader(ListDataset(train_items), batch_size=args.batch_size, shuffle=sampler is None,
                              sampler=sampler, num_workers=args.num_workers, collate_fn=train_collate,
                              generator=generator, pin_memory=use_amp,
                              drop_last=args.pairing == "in-batch" and len(train_items) > args.batch_size)

    # ---- model ----
    model = PairwiseRanker.from_pretrained(args.model_name)
    if args.resume_from:
        load_state_dict_into(model, read_state_dict(args.resume_from), args.resume_from)
    model.to(device)
    scorer = PromptScorer(model, tokenizer, max_length=args.max_length, device=device)

    # ---- optimizer and schedule ----
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    criterion = nn.MarginRankingLoss(margin=args.margin)
    total_steps = args.num_epochs * len(train_loader)
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)
    num_epochs = min(args.num_epochs, math.ceil(total_steps / len(train_loader)))
    scheduler = get_linear_schedule_with_warmup(
        optimizer, num_warmup_steps=int(args.warmup_ratio * total_steps), num_training_steps=total_steps
    )
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    print(f"device={device} amp={use_amp} pairing={args.pairing} train_items={len(train_items)} "
          f"val_pairs={len(val_pairs)} "
          f"steps={total_steps} epochs={num_epochs}" + (f" val_rows={len(val_rows)}" if val_rows else ""))

    # ---- loop ----
    output_dir.mkdir(parents=True, exist_ok=True)
    best = {"val_accuracy": -1.0, "val_kendall_tau": -math.inf}
    history: list[dict[str, Any]] = []
    step = 0
    start = time.perf_counter()

    def out_of_time() -> bool:
        return args.max_train_minutes is not None and time.perf_counter() - start >= 60 * args.max_train_minutes
    for epoch in range(num_epochs):
        model.train()
        running_loss, epoch_steps = 0.0, 0
        epoch_len = min(len(train_loader), total_steps - step)
        progress = tqdm(itertools.islice(train_loader, epoch_len), desc=f"Epoch {epoch + 1}/{num_epochs}",
                        total=epoch_len)
        for batch in progress:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, enabled=use_amp):
                score_a, score_b, target = pair_scores(model, batch, args.pairing, args.similarity_threshold)
                loss = criterion(score_a.float(), score_b.float(), target)
            if target.numel() == 0:  # in-batch: no pair of this batch passes the threshold
                continue
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()

            running_loss += loss.item()
            epoch_steps += 1
            step += 1
            progress.set_postfix(loss=f"{running_loss / epoch_steps:.4f}")
            if out_of_time():
                break

        train_loss = running_loss / max(epoch_steps, 1)
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss,
                                  **validate(scorer, val_pairs, val_rows, args.batch_size, criterion),
                                  "steps": step, "elapsed_seconds": round(time.perf_counter() - start, 1)}
        model.train()
        line = f"Epoch {epoch + 1}: train_loss={train_loss:.4f}, val_loss={record['val_loss']:.4f}, " \
               f"val_accuracy={record['val_accuracy']:.4f}"
        if "val_kendall_tau" in record:
            line += f", val_kendall_tau={record['val_kendall_tau']:.4f}"
        history.append(record)
        print(line)

        metric = args.select_by
        if record[metric] > best[metric]:
            best = {k: record.get(k, best[k]) for k in best}
            save_checkpoint(model, output_dir / "best_model.pt")
        if out_of_time():
            print(f"Stopping: --max-train-minutes {args.max_train_minutes} reached after {step} steps")
            break

    save_checkpoint(model, output_dir / "last_model.pt")

    # ---- outputs: the original's keys first, then ours ----
    metrics = {
        "train_file": args.train_file,
        "val_file": args.val_file,
        "model_name": args.model_name,
        "batch_size": args.batch_size,
        "num_epochs": args.num_epochs,
        "learning_rate": args.learning_rate,
        "margin": args.margin,
        "max_length": args.max_length,
        "best_val_accuracy": best["val_accuracy"],
        "history": history,
        "select_by": args.select_by,
        "best_val_kendall_tau": best["val_kendall_tau"] if val_rows is not None else None,
        "val_data_file": str(val_data_path) if val_data_path else None,
        "pairing": args.pairing,
        "group_by_length": args.group_by_length,
        "train_items": len(train_items),
        "val_pairs": len(val_pairs),
        "steps": step,
        "device": str(device),
        "train_seconds": round(time.perf_counter() - start, 1),
        "seed": args.seed,
    }
    write_json_atomic(metrics, output_dir / "metrics.json")
    curves = plot_training_curves(output_dir / "metrics.json", output_dir / "training_curves.png")
    print(f"Saved best checkpoint to {output_dir / 'best_model.pt'}")
    print(f"Saved last checkpoint to {output_dir / 'last_model.pt'}")
    print(f"Saved metrics to {output_dir / 'metrics.json'} and training curves to {curves}")
    return 0
