"""Stage 2: train the pairwise ranker (predictor_train/scripts/train_pairwise_bert.py).

Same model, loss, optimizer, schedule, clipping, AMP, checkpoint selection and outputs as the original
release; read top to bottom: arguments, data, model, optimizer, loop, outputs. The same code runs on one
process or under torchrun (DistributedDataParallel): `--batch-size` is the global batch of one optimizer
step, split across ranks, so a run means the same on any number of processes.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import resource
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from pars.common.errors import PARSError, run_cli
from pars.common.jsonio import read_json, write_json_atomic
from pars.data.pairs import check_threshold
from pars.data.readers import length_unit_beside, load_pairs, load_rows, subsample
from pars.eval.rank_metrics import kendall_tau, length_cap, length_weighted_tau, pairwise_accuracy
from pars.model import precision
from pars.model.checkpoint import head_outputs, load_state_dict_into, read_state_dict, save_checkpoint
from pars.model.ranker import PairwiseRanker, load_tokenizer
from pars.model.ranker_config import RankerConfig
from pars.model.scoring import PromptScorer
from pars.train import distributed as dist

# the flags live in pars/train/args.py; these names stay importable from here, as before
from pars.train.args import (  # noqa: F401
    DEFAULT_PROMPT_GROUP_SIZE,
    PAIR_WEIGHTINGS,
    SELECT_BY,
    build_parser,
    check_args,
)
from pars.train.batches import EpochBatches, FixedBatches
from pars.train.curves import plot_training_curves
from pars.train.losses import (
    bucket_edges,
    classification_loss,
    in_batch_pairs,
    listmle_loss,
    log_length_stats,
    pair_weights,
    pointwise_loss,
    weighted_margin_loss,
)
from pars.train.pairdata import FastPairCollator, FastRowCollator, ListDataset, PairCollator, PairIndex, RowIndex
from pars.train.state import STATE_FILE, capture_rng, check_signature, load_state, restore_rng, save_state


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


class PassScorer(nn.Module):
    """The head's outputs of several padded forward passes, concatenated, (prompts, outputs): one module call
    per step, as DDP needs (its gradient hooks expect one forward per backward)."""

    def __init__(self, ranker: PairwiseRanker) -> None:
        super().__init__()
        self.ranker = ranker

    def forward(self, input_ids: list[torch.Tensor], attention_mask: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([self.ranker.head(i, m) for i, m in zip(input_ids, attention_mask, strict=True)])


def validate(scorer: PromptScorer, val_pairs, val_rows, batch_size: int, criterion,
             info: dist.DistInfo | None = None) -> dict[str, float]:
    """val_loss and val_accuracy over the val pairs (as the original counts them: mean of per-batch losses,
    score_A > score_B against label), and Kendall's tau over the val rows when given.

    Each distinct prompt is scored once, in length-sorted batches: val pairs reuse every val prompt ~20
    times, so this is the same numbers as encoding pair by pair at a fraction of the cost. Under torchrun
    each rank scores every W-th prompt and the scores are gathered, so every rank computes the same metrics
    over all val pairs, exactly as one process would."""
    info = info or dist.DistInfo()
    scorer.model.eval()
    prompts = {p[k] for p in val_pairs for k in ("prompt_A", "prompt_B")}
    if val_rows is not None:
        prompts.update(r["prompt"] for r in val_rows)
    prompts = sorted(prompts)
    mine = prompts[info.rank :: info.world_size]
    shards = dist.gather_objects(scorer.score_many(mine, batch_size=64, progress=info.is_main))
    table = {p: s for r, shard in enumerate(shards) for p, s in zip(prompts[r :: info.world_size], shard,
                                                                       strict=True)}
    score_a = torch.tensor([table[p["prompt_A"]] for p in val_pairs])
    score_b = torch.tensor([table[p["prompt_B"]] for p in val_pairs])
    labels = torch.tensor([float(p["label"]) for p in val_pairs])
    losses = [criterion(score_a[i : i + batch_size], score_b[i : i + batch_size],
                        2 * labels[i : i + batch_size] - 1).item() for i in range(0, len(val_pairs), batch_size)]
    result = {"val_loss": sum(losses) / len(losses),
              "val_accuracy": pairwise_accuracy(score_a.tolist(), score_b.tolist(), [p["label"] for p in val_pairs])}
    if val_rows is not None:
        scores, lengths = [table[r["prompt"]] for r in val_rows], [r["answer_length"] for r in val_rows]
        result["val_kendall_tau"] = kendall_tau(scores, lengths)
        result["val_length_weighted_tau"] = length_weighted_tau(scores, lengths, cap=length_cap(lengths))
    return result


def find_beside(explicit: str | None, pair_file: str, name: str) -> Path | None:
    if explicit:
        return Path(explicit)
    beside = Path(pair_file).with_name(name)
    return beside if beside.is_file() else None


def pair_loss(scores: torch.Tensor, batch: dict[str, Any], criterion, weight: float):
    """Loss of the step's pairs: scores hold the A prompts, then the B prompts. `weight` = this rank's share
    of the global batch times the world size (1.0 on one process), so that DDP's average of the ranks'
    gradients is exactly the gradient of the global batch's mean loss even when shards differ in size."""
    n = len(batch["labels"])
    return criterion(scores[:n].float(), scores[n:].float(), 2 * batch["labels"] - 1) * weight


def peak_rss_mib() -> float:
    """This process's peak resident memory (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    info, device = dist.setup(args.device)
    try:
        return train(args, info, device)
    finally:
        dist.cleanup()


def train(args: argparse.Namespace, info: dist.DistInfo, device: torch.device) -> int:
    set_seed(args.seed)
    output_dir = Path(args.output_dir)
    say = print if info.is_main else (lambda *a, **k: None)

    # ---- data ----
    if not Path(args.train_file).is_file():
        read_json(args.train_file, "train file")  # one line: not found, a directory, ...
    tokenizer = load_tokenizer(args.model_name)
    index = None
    if args.pairing == "pairs" and args.batching == "fast":
        # streamed: only the distinct prompts' token ids and three small integers per pair stay in memory
        index = PairIndex.from_file(args.train_file, tokenizer, args.max_length, args.max_train_samples,
                                    args.seed, progress=info.is_main, truncation=args.truncation)
        train_items = None
    elif args.pairing == "pairs":
        train_items = load_pairs(args.train_file, "train file")
    else:
        check_threshold(args.similarity_threshold)
        train_data_path = find_beside(args.train_data_file, args.train_file, "train_data.json")
        if train_data_path is None:
            raise PARSError("--pairing in-batch needs --train-data-file (or train_data.json beside --train-file)")
        train_items = load_rows(train_data_path, "train data file")
    if train_items is not None:
        train_items = subsample(train_items, args.max_train_samples, args.seed)
    n_train = len(train_items if index is None else index)
    if n_train < info.world_size:
        raise PARSError(f"{n_train} train items cannot be split over {info.world_size} ranks")
    val_pairs = subsample(load_pairs(args.val_file, "val file"), args.max_eval_samples, args.seed)
    val_data_path = find_beside(args.val_data_file, args.val_file, "val_data.json")
    val_rows = load_rows(val_data_path, "val data file") if val_data_path else None
    if args.select_by != "val_accuracy" and val_rows is None:
        raise PARSError(f"--select-by {args.select_by} needs --val-data-file (or val_data.json beside --val-file)")

    mixed_precision = precision.resolve(args.mixed_precision, device, args.batching == "original")
    use_cuda = device.type == "cuda"
    lengths = groups = None
    if args.batching == "original":  # the pair dicts stay in memory and are tokenized batch by batch
        dataset, collate = ListDataset(train_items), PairCollator(tokenizer, args.max_length, args.truncation)
    else:  # token ids of each distinct prompt once; items are indices into them
        if index is None:
            index = RowIndex(train_items, tokenizer, args.max_length, progress=info.is_main,
                             truncation=args.truncation)
            del train_items
        dataset = ListDataset(range(n_train))
        collate = FastPairCollator(index) if args.pairing == "pairs" else FastRowCollator(index)
        if args.group_by_prompt:
            groups = index.group_ids()
            lengths = index.group_key_lengths() if args.group_by_length else None
        else:
            lengths = index.group_lengths() if args.group_by_length else None
    weight_cap = None
    if args.pair_weighting == "length-diff":
        weight_cap = args.pair_weight_cap or length_cap(index.answer_lengths)
    # the targets' scale, from the train rows: standardized log lengths, or buckets of equal frequency
    log_stats = log_length_stats(index.answer_lengths) if args.loss == "pointwise" else None
    edges = bucket_edges(index.answer_lengths, args.num_buckets) if args.loss == "classification" else None
    batches = EpochBatches(n_train, args.batch_size, args.seed, lengths, drop_last=args.pairing == "in-batch",
                           rank=info.rank, world_size=info.world_size, groups=groups,
                           max_group=args.prompt_group_size)
    loader_rng = torch.Generator()  # the DataLoader draws its worker seed here, never from the global RNG

    def epoch_loader(epoch: int, start: int) -> DataLoader:
        return DataLoader(dataset, batch_sampler=FixedBatches(batches.rank_batches(epoch, start)),
                          num_workers=args.num_workers, collate_fn=collate, pin_memory=use_cuda,
                          generator=loader_rng)

    # ---- model ----
    outputs = args.num_buckets if args.loss == "classification" else 1
    model = PairwiseRanker.from_pretrained(args.model_name, args.pooling, outputs)
    if args.resume_from:
        resumed = read_state_dict(args.resume_from)
        if head_outputs(resumed) != outputs:
            raise PARSError(f"--resume-from {args.resume_from} has a head of {head_outputs(resumed)} output(s); "
                            f"--loss {args.loss} here trains one of {outputs}")
        load_state_dict_into(model, resumed, args.resume_from)
    state = None
    state_path = output_dir / STATE_FILE if args.resume_state == "auto" else args.resume_state
    if state_path is not None and (args.resume_state != "auto" or Path(state_path).is_file()):
        state = load_state(state_path)
        load_state_dict_into(model, state["model"], str(state_path))
    model.to(device)
    scorer = PromptScorer(model, tokenizer, max_length=args.max_length, device=device, truncation=args.truncation)
    passes = PassScorer(model)
    if info.enabled:
        passes = DistributedDataParallel(passes, device_ids=[device.index] if device.type == "cuda" else None)
    if info.rank:  # dropout masks differ across ranks (rank 0 keeps the single-process stream)
        torch.manual_seed(args.seed + info.rank)

    # ---- optimizer and schedule ----
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay,
                                  fused=args.optim == "adamw_torch_fused")
    criterion = nn.MarginRankingLoss(margin=args.margin)
    steps_per_epoch = len(batches)
    total_steps = args.num_epochs * steps_per_epoch
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)
    num_epochs = min(args.num_epochs, math.ceil(total_steps / steps_per_epoch))
    scheduler = get_linear_schedule_with_warmup(
        optimizer, num_warmup_steps=int(args.warmup_ratio * total_steps), num_training_steps=total_steps
    )
    # loss scaling guards fp16's narrow exponent; bf16 has float32's
    scaler = torch.amp.GradScaler("cuda", enabled=mixed_precision == "fp16")
    say(f"device={device} mixed_precision={mixed_precision} ranks={info.world_size} pairing={args.pairing} "
        f"batching={args.batching} "
        f"group_by_length={args.group_by_length} group_by_prompt={args.group_by_prompt} train_items={n_train} "
        f"val_pairs={len(val_pairs)} "
        f"steps={total_steps} epochs={num_epochs} loss={args.loss}" + (f" val_rows={len(val_rows)}" if val_rows else "")
        + (f" pair_weighting={args.pair_weighting} pair_weight_cap={weight_cap:g}" if weight_cap else ""))

    # ---- loop state (everything a resumed run needs beyond the weights) ----
    signature = {"train_items": n_train, "batch_size": args.batch_size, "seed": args.seed, "pairing": args.pairing,
                 "batching": args.batching, "group_by_length": args.group_by_length,
                 "group_by_prompt": args.group_by_prompt, "prompt_group_size": args.prompt_group_size,
                 "total_steps": total_steps,
                 "world_size": info.world_size,
                 # the same weights see other tokens under another cut
                 "max_length": args.max_length, "truncation": args.truncation, "pooling": args.pooling,
                 "pair_weighting": args.pair_weighting, "pair_weight_cap": weight_cap, "loss": args.loss,
                 "num_buckets": outputs}
    best = {"val_accuracy": -1.0, "val_kendall_tau": -math.inf, "val_length_weighted_tau": -math.inf}
    history: list[dict[str, Any]] = []
    # position: epoch, batches of it consumed, optimizer steps in all and at its start; running sums
    pos = {"epoch": 0, "batch": 0, "step": 0, "epoch_start_step": 0, "running_loss": 0.0, "epoch_steps": 0}
    counts = {"pairs": 0, "prompts": 0, "real_tokens": 0, "padded_tokens": 0, "loop_seconds": 0.0,
              "train_seconds": 0.0}
    if state is not None:
        check_signature(state["signature"], signature, state_path)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        best, history, pos, counts = state["best"], state["history"], state["position"], state["counts"]
        restore_rng(state["rng"][info.rank])  # last: everything above may have drawn random numbers
        say(f"Resumed from {state_path}: epoch {pos['epoch'] + 1}, batch {pos['batch']}, step {pos['step']}")
    output_dir.mkdir(parents=True, exist_ok=True)
    if info.is_main:  # beside the checkpoints: what scoring them needs (pars/model/ranker_config.py)
        RankerConfig(model_name=args.model_name, pooling=args.pooling, truncation=args.truncation,
                     max_length=args.max_length, length_unit=length_unit_beside(args.train_file),
                     loss=args.loss).save(output_dir)
    start = time.perf_counter() - counts["train_seconds"]

    def write_state() -> None:
        """Collective (every rank's RNG is gathered), so every rank calls it at the same point."""
        rngs = dist.gather_objects(capture_rng())
        if info.is_main:
            save_state({"signature": signature, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "best": best,
                        "history": history, "position": pos,
                        "counts": {**counts, "train_seconds": time.perf_counter() - start}, "rng": rngs},
                       output_dir / STATE_FILE)
        dist.barrier()

    def out_of_time() -> bool:
        late = args.max_train_minutes is not None and time.perf_counter() - start >= 60 * args.max_train_minutes
        return late if not info.enabled else dist.sum_across_ranks([float(late)], device)[0] > 0  # ranks agree

    # ---- loop ----
    stopped_early = False
    while pos["epoch"] < num_epochs and not stopped_early:
        epoch = pos["epoch"]
        model.train()
        epoch_len = min(steps_per_epoch, total_steps - pos["epoch_start_step"])
        global_sizes = [len(b) for b in batches.global_batches(epoch)][pos["batch"] : epoch_len]
        progress = tqdm(zip(global_sizes, epoch_loader(epoch, pos["batch"]), strict=False),
                        desc=f"Epoch {epoch + 1}/{num_epochs}", total=epoch_len, initial=pos["batch"],
                        disable=not info.is_main)
        tick = time.perf_counter()
        for global_size, batch in progress:
            pos["batch"] += 1
            if args.pairing == "in-batch":
                # pairs span the whole global batch: every rank forms them from all ranks' lengths
                sizes = batches.shard_sizes(global_size)
                all_lengths = dist.gather_with_grad(batch["lengths"].to(device), sizes)
                if args.loss == "margin":
                    i, j, target = in_batch_pairs(all_lengths, args.similarity_threshold)
                    if target.numel() == 0:  # no pair of this batch passes the threshold (same on every rank)
                        continue
            input_ids = [t.to(device, non_blocking=True) for t in batch["input_ids"]]
            attention_mask = [t.to(device, non_blocking=True) for t in batch["attention_mask"]]
            optimizer.zero_grad(set_to_none=True)
            with precision.autocast(precision.DTYPES.get(mixed_precision), device):
                # the loss in float32 whatever the matmuls ran in
                heads = passes(input_ids, attention_mask)[batch["restore"].to(device)].float()
                scores = heads.squeeze(-1) if outputs == 1 else None
                if args.pairing == "pairs":
                    batch["labels"] = batch["labels"].to(device)
                    loss = pair_loss(scores, batch, criterion, len(batch["labels"]) * info.world_size / global_size)
                    n_pairs = len(batch["labels"])
                else:  # each loss over the whole global batch, the same on every rank
                    all_heads = dist.gather_with_grad(heads, sizes)
                    n_rows = len(all_lengths)
                    n_pairs = n_rows * (n_rows - 1) / 2 / info.world_size  # every rank holds all of them
                    if args.loss == "classification":
                        loss = classification_loss(all_heads, all_lengths, edges)
                    elif args.loss == "listmle":
                        loss = listmle_loss(all_heads.squeeze(-1), all_lengths)
                    elif args.loss == "pointwise":
                        loss = pointwise_loss(all_heads.squeeze(-1), all_lengths, *log_stats)
                    else:
                        s = all_heads.squeeze(-1)
                        n_pairs = target.numel() / info.world_size
                        if weight_cap is None:
                            loss = criterion(s[i], s[j], target)
                        else:
                            loss = weighted_margin_loss(s[i], s[j], target, pair_weights(all_lengths, i, j, weight_cap),
                                                        args.margin)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()

            pos["running_loss"] += loss.item()
            pos["epoch_steps"] += 1
            pos["step"] += 1
            counts["pairs"] += n_pairs
            counts["prompts"] += sum(len(t) for t in attention_mask)
            counts["real_tokens"] += int(sum(m.sum() for m in attention_mask))
            counts["padded_tokens"] += sum(m.numel() for m in attention_mask)
            progress.set_postfix(loss=f"{pos['running_loss'] / pos['epoch_steps']:.4f}")
            if args.save_every_steps and pos["step"] % args.save_every_steps == 0:
                counts["loop_seconds"] += time.perf_counter() - tick
                write_state()
                tick = time.perf_counter()
            if args.debug_kill_after_step == pos["step"]:
                os.kill(os.getpid(), signal.SIGKILL)
            if out_of_time():
                stopped_early = True
                break
        counts["loop_seconds"] += time.perf_counter() - tick

        # the mean of the ranks' weighted step losses is the global batch's mean loss
        loss_sum, steps_done = dist.sum_across_ranks([pos["running_loss"], pos["epoch_steps"]], device)
        train_loss = loss_sum / max(steps_done, 1)
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss,
                                  **validate(scorer, val_pairs, val_rows, args.batch_size, criterion, info),
                                  "steps": pos["step"], "elapsed_seconds": round(time.perf_counter() - start, 1)}
        model.train()
        line = f"Epoch {epoch + 1}: train_loss={train_loss:.4f}, val_loss={record['val_loss']:.4f}, " \
               f"val_accuracy={record['val_accuracy']:.4f}"
        if "val_kendall_tau" in record:
            line += f", val_kendall_tau={record['val_kendall_tau']:.4f}, " \
                    f"val_length_weighted_tau={record['val_length_weighted_tau']:.4f}"
        history.append(record)
        say(line)

        metric = args.select_by
        if record[metric] > best.get(metric, -math.inf):  # a state from an older version lacks newer keys
            best = {k: record.get(k, best.get(k)) for k in {*best, metric}}
            if info.is_main:
                save_checkpoint(model, output_dir / "best_model.pt")
        pos = {"epoch": epoch + 1, "batch": 0, "step": pos["step"], "epoch_start_step": pos["step"],
               "running_loss": 0.0, "epoch_steps": 0}
        if args.save_state:
            write_state()
        if stopped_early:
            say(f"Stopping: --max-train-minutes {args.max_train_minutes} reached after {pos['step']} steps")

    # ---- outputs (rank 0): the original's keys first, then ours ----
    peaks = dist.gather_objects(peak_rss_mib())
    totals = dist.sum_across_ranks([counts[k] for k in ("pairs", "prompts", "real_tokens", "padded_tokens")], device)
    if info.is_main:
        save_checkpoint(model, output_dir / "last_model.pt")
        loop_seconds = counts["loop_seconds"]
        metrics = {
            "train_file": args.train_file,
            "val_file": args.val_file,
            "model_name": args.model_name,
            "batch_size": args.batch_size,
            "num_epochs": args.num_epochs,
            "learning_rate": args.learning_rate,
            "margin": args.margin,
            "max_length": args.max_length,
            "truncation": args.truncation,
            "pooling": args.pooling,
            "best_val_accuracy": best["val_accuracy"],
            "history": history,
            "select_by": args.select_by,
            "best_val_kendall_tau": best["val_kendall_tau"] if val_rows is not None else None,
            "best_val_length_weighted_tau": best.get("val_length_weighted_tau") if val_rows is not None else None,
            "val_data_file": str(val_data_path) if val_data_path else None,
            "pairing": args.pairing,
            "pair_weighting": args.pair_weighting,
            "pair_weight_cap": weight_cap,
            "loss": args.loss,
            # the pointwise target's log-length mean and std; the classification buckets' inner edges
            "log_length_stats": list(log_stats) if log_stats else None,
            "num_buckets": outputs if edges else None,
            "bucket_edges": edges,
            "batching": args.batching,
            "group_by_length": args.group_by_length,
            "group_by_prompt": args.group_by_prompt,
            "prompt_group_size": args.prompt_group_size,
            "optim": args.optim,
            "mixed_precision": mixed_precision,
            "train_items": n_train,
            "val_pairs": len(val_pairs),
            "steps": pos["step"],
            "device": str(device),
            "world_size": info.world_size,
            "train_seconds": round(time.perf_counter() - start, 1),
            "seed": args.seed,
            # training loop only (no validation, no start-up), summed over ranks
            "throughput": {
                "loop_seconds": round(loop_seconds, 2),
                "pairs": int(totals[0]),
                "prompts_encoded": int(totals[1]),
                "real_tokens": int(totals[2]),
                "padded_tokens": int(totals[3]),
                "pairs_per_second": round(totals[0] / loop_seconds, 3) if loop_seconds else None,
                "prompts_per_second": round(totals[1] / loop_seconds, 3) if loop_seconds else None,
            },
            "peak_rss_mib": peaks,  # one per rank
            "resumed_from_state": str(state_path) if state is not None else None,
        }
        write_json_atomic(metrics, output_dir / "metrics.json")
        curves = plot_training_curves(output_dir / "metrics.json", output_dir / "training_curves.png")
        print(f"Saved best checkpoint to {output_dir / 'best_model.pt'}")
        print(f"Saved last checkpoint to {output_dir / 'last_model.pt'}")
        print(f"Saved metrics to {output_dir / 'metrics.json'} and training curves to {curves}")
    dist.barrier()
    return 0


def cli() -> None:
    """The console script (pyproject.toml's [project.scripts])."""
    run_cli(main)
