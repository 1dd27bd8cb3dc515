"""Fast batching (prompts tokenized once, own-length padding, length grouping) against the original's."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from transformers import AutoTokenizer

from pars.common.errors import PARSError
from pars.data.readers import iter_json_list, load_pairs, subsample
from pars.model import precision
from pars.model.checkpoint import read_state_dict
from pars.model.ranker import PairwiseRanker
from pars.train import loop as train
from pars.train.batches import EpochBatches
from pars.train.pairdata import (
    MAX_PASSES,
    SPLIT_MIN_SAVED_TOKENS,
    FastPairCollator,
    PairCollator,
    PairIndex,
    TokenTable,
    split_sorted,
)


def no_dropout_copy(model_dir: Path, dest: Path) -> Path:
    """The tiny encoder with dropout off, so two training runs can be compared weight for weight."""
    shutil.copytree(model_dir, dest)
    config = json.loads((dest / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def batch_loss(model: PairwiseRanker, batch: dict, criterion: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        # the head's outputs (prompts, 1), as the loop reads them
        scores = train.PassScorer(model)(batch["input_ids"], batch["attention_mask"])[batch["restore"]].squeeze(-1)
    return train.pair_loss(scores, batch, criterion, 1.0), scores


def test_fast_and_original_batches_give_the_same_loss(tiny_model_dir, tiny_data):
    pairs = load_pairs(tiny_data / "train_pairs_length_diff_0.2.json")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    torch.manual_seed(5)
    model = PairwiseRanker.from_pretrained(str(tiny_model_dir)).eval()
    criterion = nn.MarginRankingLoss(margin=1.0)
    index = PairIndex.from_pairs(pairs, tokenizer, max_length=128, progress=False)
    sel = [3, 17, 0, 42, 99, 7, 150, 64]
    original = PairCollator(tokenizer, 128)([pairs[i] for i in sel])
    fast = FastPairCollator(index)(sel)
    assert all(ids.shape[1] == 128 for ids in original["input_ids"])  # the original pads to --max-length
    assert sum(m.numel() for m in fast["attention_mask"]) < 0.3 * sum(m.numel() for m in original["attention_mask"])
    distinct = {p[k] for i in sel for p in [pairs[i]] for k in ("prompt_A", "prompt_B")}
    # the same tokens, each distinct prompt's once (a prompt in two of the batch's pairs is encoded once)
    assert sum(m.sum() for m in fast["attention_mask"]) == sum(len(tokenizer(p)["input_ids"]) for p in distinct)
    loss_original, scores_original = batch_loss(model, original, criterion)
    loss_fast, scores_fast = batch_loss(model, fast, criterion)
    assert torch.allclose(scores_fast, scores_original, atol=1e-5)
    assert abs(loss_fast.item() - loss_original.item()) < 1e-5
    # and those are the pair-by-pair scores of the plain forward pass
    enc = tokenizer([pairs[3]["prompt_A"]], return_tensors="pt")
    with torch.no_grad():
        assert model.score(enc["input_ids"], enc["attention_mask"]).item() == pytest.approx(
            scores_fast[0].item(), abs=1e-5)


def test_token_table_stores_each_distinct_prompt_once(tiny_model_dir, tiny_data):
    pairs = load_pairs(tiny_data / "train_pairs_length_diff_0.2.json")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    index = PairIndex.from_pairs(pairs * 10, tokenizer, max_length=128, progress=False)  # 10x the pairs, same prompts
    distinct = {p[k] for p in pairs for k in ("prompt_A", "prompt_B")}
    assert len(index.table) == len(distinct) and len(index) == 10 * len(pairs)
    assert index.table.ids.nbytes == 4 * sum(len(tokenizer(p)["input_ids"]) for p in distinct)
    ids, mask = index.table.pad(np.array([0, 1]))
    want = tokenizer([index_prompt(index, pairs, 0), index_prompt(index, pairs, 1)], padding=True,
                     return_tensors="pt")
    assert torch.equal(ids, want["input_ids"]) and torch.equal(mask, want["attention_mask"])
    left = TokenTable(index.table.ids, index.table.offsets, 0, pad_left=True)
    ids, mask = left.pad(np.array([0, 1]))
    assert (mask[:, -1] == 1).all()


def index_prompt(index: PairIndex, pairs: list[dict], k: int) -> str:
    """The text of table entry k (entries are numbered in order of first appearance, A before B)."""
    seen: list[str] = []
    for p in pairs:
        for key in ("prompt_A", "prompt_B"):
            if p[key] not in seen:
                seen.append(p[key])
    return seen[k]


def test_split_sorted_restores_order_and_cuts_padding():
    lengths = np.array([120, 5, 6, 118, 7, 5, 119, 6])
    restore, passes = split_sorted(lengths)
    assert len(passes) == 2
    order = np.concatenate(passes)
    assert sorted(order.tolist()) == list(range(8)) and (order[restore] == np.arange(8)).all()
    assert max(lengths[passes[0]]) <= 7
    restore, passes = split_sorted(np.array([10, 11, 12]))  # too little to save: one pass
    assert len(passes) == 1


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("world", [1, 3])
def test_epoch_batches_yield_every_item_once(grouped, world):
    n, size = 1009, 16  # 1009 = 63 * 16 + 1: a last batch of one item
    lengths = np.random.default_rng(0).integers(3, 128, n) if grouped else None
    views = [EpochBatches(n, size, seed=7, lengths=lengths, rank=r, world_size=world) for r in range(world)]
    for epoch in (0, 1):
        shards = [v.rank_batches(epoch) for v in views]
        assert len({len(s) for s in shards}) == 1 and len(shards[0]) == len(views[0])  # same steps on every rank
        seen = [i for s in shards for b in s for i in b]
        assert sorted(seen) == list(range(n))  # each item once over all ranks: union is all, shards disjoint
        assert all(b for s in shards for b in s)  # no rank is ever left without items
    assert views[0].rank_batches(0) != views[0].rank_batches(1)  # reshuffled each epoch
    assert views[0].rank_batches(1, start=5) == views[0].rank_batches(1)[5:]  # resume mid-epoch
    if grouped:
        batches = views[0].global_batches(0)
        spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
        assert spread < 10  # similar lengths together (random batches of 16 spread ~110)


def test_epoch_batches_drop_last_for_in_batch():
    batches = EpochBatches(100, 16, seed=1, drop_last=True)
    assert len(batches) == 6 and all(len(b) == 16 for b in batches.global_batches(0))


def test_split_sorted_is_the_cheapest_split():
    rng = np.random.default_rng(3)
    for _ in range(40):
        lengths = rng.integers(3, 129, rng.integers(1, 12))
        restore, passes = split_sorted(lengths)
        assert 1 <= len(passes) <= MAX_PASSES and all(len(p) for p in passes)
        order = np.concatenate(passes)
        assert (order[restore] == np.arange(len(lengths))).all()
        got = sum(len(p) * lengths[p].max() for p in passes) + SPLIT_MIN_SAVED_TOKENS * (len(passes) - 1)
        ordered = np.sort(lengths)
        best = min(  # every way of cutting the sorted lengths into at most MAX_PASSES runs
            sum((b - a) * ordered[b - 1] for a, b in zip((0, *cuts), (*cuts, len(ordered)), strict=True))
            + SPLIT_MIN_SAVED_TOKENS * len(cuts)
            for k in range(MAX_PASSES) for cuts in itertools.combinations(range(1, len(ordered)), k))
        assert got == best


@pytest.mark.parametrize("max_group", [None, 4])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_prompt_grouped_batches_yield_every_pair_once_and_keep_groups_together(with_lengths, world, max_group):
    rng = np.random.default_rng(1)
    groups = np.repeat(rng.permutation(300), rng.integers(1, 15, 300))  # 300 prompts A, 1-14 pairs each
    groups = groups[rng.permutation(len(groups))]  # pairs in any order in the file
    n, size = len(groups), 32
    lengths = rng.integers(3, 128, 300)[groups] if with_lengths else None  # a group's items share its A's length
    views = [EpochBatches(n, size, seed=7, lengths=lengths, rank=r, world_size=world, groups=groups,
                          max_group=max_group) for r in range(world)]
    sizes = np.bincount(groups)
    units = int(sizes.astype(bool).sum() if max_group is None else np.ceil(sizes / max_group).sum())
    for epoch in (0, 1):
        shards = [v.rank_batches(epoch) for v in views]
        assert len({len(s) for s in shards}) == 1 and len(shards[0]) == len(views[0])
        assert sorted(i for s in shards for b in s for i in b) == list(range(n))  # each pair once per epoch
        assert [len(b) for s in zip(*shards, strict=True) for b in s] == [
            k for b in views[0].global_batches(epoch) for k in views[0].shard_sizes(len(b))]
        # a group (or a piece of max_group) is cut only where a batch or a rank's share ends
        pieces = sum(len(set(groups[b].tolist())) for s in shards for b in s)
        assert pieces <= units + len(views[0]) * world
        # pieces are placed apart: a batch mixes more groups than whole groups would give (checked unsorted:
        # with lengths, this epoch of 2 windows sorts a group's pieces, which share a length, back together;
        # 100k pairs make 60 windows and a group's pieces rarely share one)
        if max_group and not with_lengths:
            whole = EpochBatches(n, size, seed=7, lengths=lengths, groups=groups).global_batches(epoch)
            mixed = views[0].global_batches(epoch)
            assert np.mean([len(set(groups[b].tolist())) for b in mixed]) > 1.5 * np.mean(
                [len(set(groups[b].tolist())) for b in whole])
        if with_lengths:  # and the groups of a batch have similar lengths
            spread = np.mean([np.ptp(lengths[b]) for b in views[0].global_batches(epoch)])
            assert spread < 20
    assert views[0].rank_batches(0) != views[0].rank_batches(1)
    assert views[0].rank_batches(1, start=3) == views[0].rank_batches(1)[3:]


def test_a_prompt_shared_in_a_batch_is_encoded_once(tiny_model_dir, tiny_data):
    pairs = load_pairs(tiny_data / "train_pairs_length_diff_0.2.json")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    torch.manual_seed(5)
    model = PairwiseRanker.from_pretrained(str(tiny_model_dir)).eval()
    index = PairIndex.from_pairs(pairs, tokenizer, max_length=128, progress=False)
    groups = index.group_ids()
    shared = np.flatnonzero(groups == groups[0])[:4]  # pairs with the same prompt A
    assert len(shared) >= 3
    sel = [*shared.tolist(), 50, 51]
    fast = FastPairCollator(index)(sel)
    distinct = {p for i in sel for p in (pairs[i]["prompt_A"], pairs[i]["prompt_B"])}
    assert sum(len(m) for m in fast["attention_mask"]) == len(distinct) < 2 * len(sel)
    criterion = nn.MarginRankingLoss(margin=1.0)
    loss_fast, scores_fast = batch_loss(model, fast, criterion)
    loss_orig, scores_orig = batch_loss(model, PairCollator(tokenizer, 128)([pairs[i] for i in sel]), criterion)
    assert torch.allclose(scores_fast, scores_orig, atol=1e-5) and abs(loss_fast.item() - loss_orig.item()) < 1e-5


def test_fast_training_equals_original_training(tiny_model_dir, tiny_data, tmp_path):
    """Same batches (ungrouped, same seed), dropout off: the fast path trains to the original's weights."""
    model_dir = no_dropout_copy(tiny_model_dir, tmp_path / "model")
    common = ["--train-file", str(tiny_data / "train_pairs_length_diff_0.2.json"),
              "--val-file", str(tiny_data / "val_pairs_length_diff_0.2.json"), "--model-name", str(model_dir),
              "--batch-size", "16", "--num-epochs", "1", "--max-steps", "4", "--learning-rate", "1e-3",
              "--device", "cpu"]
    assert train.main([*common, "--output-dir", str(tmp_path / "orig"), "--batching", "original"]) == 0
    # float32 on both sides: this compares the batching; bf16 autocast is tested below
    assert train.main([*common, "--output-dir", str(tmp_path / "fast"), "--no-group-by-length",
                       "--no-group-by-prompt", "--mixed-precision", "no"]) == 0
    orig = read_state_dict(tmp_path / "orig" / "last_model.pt")
    fast = read_state_dict(tmp_path / "fast" / "last_model.pt")
    # fc.bias aside: its gradient is zero but for rounding noise (the loss sees score differences only)
    assert max((orig[k] - fast[k]).abs().max().item() for k in orig if k != "fc.bias") < 1e-4
    m_orig = json.loads((tmp_path / "orig" / "metrics.json").read_text())
    m_fast = json.loads((tmp_path / "fast" / "metrics.json").read_text())
    assert m_orig["batching"] == "original" and m_fast["batching"] == "fast"
    assert m_orig["mixed_precision"] == "no"  # auto keeps the original's float32 on CPU
    assert m_orig["history"][0]["train_loss"] == pytest.approx(m_fast["history"][0]["train_loss"], abs=1e-5)
    t_orig, t_fast = m_orig["throughput"], m_fast["throughput"]
    assert t_orig["pairs"] == t_fast["pairs"] == 64
    # same pairs; a prompt in two pairs of a batch is encoded once, so fast encodes at most the original's tokens
    assert t_fast["prompts_encoded"] <= t_orig["prompts_encoded"] == 128
    assert t_fast["real_tokens"] <= t_orig["real_tokens"]
    assert t_orig["padded_tokens"] == 128 * 128 and t_fast["padded_tokens"] < t_orig["padded_tokens"] / 3


def test_bf16_autocast_trains_close_to_float32(tiny_model_dir, tiny_data, tmp_path):
    """bf16 autocast changes the matmuls' rounding only: same batches, weights close to float32's, and the
    mode is recorded. CPU autocast runs bf16 on any x86 CPU (slowly without AMX/AVX512-BF16)."""
    model_dir = no_dropout_copy(tiny_model_dir, tmp_path / "model")
    common = ["--train-file", str(tiny_data / "train_pairs_length_diff_0.2.json"),
              "--val-file", str(tiny_data / "val_pairs_length_diff_0.2.json"), "--model-name", str(model_dir),
              "--batch-size", "16", "--num-epochs", "1", "--max-steps", "4", "--learning-rate", "1e-3",
              "--device", "cpu", "--no-group-by-length", "--no-group-by-prompt"]
    assert train.main([*common, "--output-dir", str(tmp_path / "fp32"), "--mixed-precision", "no"]) == 0
    assert train.main([*common, "--output-dir", str(tmp_path / "bf16"), "--mixed-precision", "bf16"]) == 0
    fp32 = read_state_dict(tmp_path / "fp32" / "last_model.pt")
    bf16 = read_state_dict(tmp_path / "bf16" / "last_model.pt")
    start = PairwiseRanker.from_pretrained(str(model_dir)).state_dict()
    assert all(bf16[k].dtype == torch.float32 for k in bf16)  # the weights stay float32
    encoder = [k for k in fp32 if k.startswith("encoder.")]
    # AdamW's first steps move every weight by about lr whatever its gradient's size, so weights with a
    # near-zero gradient may step either way: compare the whole update, not its largest element, and against
    # a float32 run that saw other batches (another seed)
    assert train.main([*common, "--output-dir", str(tmp_path / "seed7"), "--mixed-precision", "no",
                       "--seed", "7"]) == 0
    other = read_state_dict(tmp_path / "seed7" / "last_model.pt")

    def update(weights: dict) -> torch.Tensor:
        return torch.cat([(weights[k] - start[k]).flatten() for k in encoder])

    cos_bf16 = torch.nn.functional.cosine_similarity(update(fp32), update(bf16), dim=0).item()
    cos_seed = torch.nn.functional.cosine_similarity(update(fp32), update(other), dim=0).item()
    print(f"cos bf16={cos_bf16:.4f} other seed={cos_seed:.4f}")
    assert not torch.equal(update(fp32), update(bf16))  # autocast did run: the rounding differs
    assert cos_bf16 > 0.8 and cos_bf16 > cos_seed + 0.3  # and it trained the way float32 did
    m = json.loads((tmp_path / "bf16" / "metrics.json").read_text())
    assert m["mixed_precision"] == "bf16"
    assert m["history"][0]["train_loss"] == pytest.approx(
        json.loads((tmp_path / "fp32" / "metrics.json").read_text())["history"][0]["train_loss"], abs=0.02)


def test_mixed_precision_auto_rule(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert precision.resolve("auto", cuda) == "fp16"  # the original's AMP
    assert precision.resolve("auto", cpu, original_batching=True) == "no"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.resolve("auto", cpu) == "bf16"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.resolve("auto", cpu) == "no"
    assert precision.resolve("bf16", cpu) == "bf16" and precision.resolve("no", cuda) == "no"
    with pytest.raises(PARSError, match="fp16 needs a CUDA device"):
        precision.resolve("fp16", cpu)


def test_prompt_group_size_defaults_to_pieces_of_two():
    base = ["--train-file", "t.json", "--val-file", "v.json", "--output-dir", "o"]

    def resolved(*extra: str) -> train.argparse.Namespace:
        args = train.build_parser().parse_args([*base, *extra])
        train.check_args(args)
        return args

    assert resolved().prompt_group_size == 2 and resolved().group_by_prompt
    assert resolved("--prompt-group-size", "0").prompt_group_size is None  # whole groups
    assert resolved("--prompt-group-size", "5").prompt_group_size == 5
    assert resolved("--no-group-by-prompt").prompt_group_size is None
    assert resolved("--pairing", "in-batch").prompt_group_size is None
    with pytest.raises(PARSError, match=">= 0"):
        resolved("--prompt-group-size", "-1")


def test_original_batching_refuses_what_the_original_lacks(tiny_model_dir, tiny_data, tmp_path):
    common = ["--train-file", str(tiny_data / "train_pairs_length_diff_0.2.json"),
              "--val-file", str(tiny_data / "val_pairs_length_diff_0.2.json"), "--output-dir", str(tmp_path),
              "--model-name", str(tiny_model_dir), "--batching", "original"]
    with pytest.raises(PARSError, match="only --pairing pairs"):
        train.main([*common, "--pairing", "in-batch"])
    with pytest.raises(PARSError, match="drop --group-by-length"):
        train.main([*common, "--group-by-length"])
    with pytest.raises(PARSError, match="--group-by-prompt"):
        train.main([*common, "--group-by-prompt"])
    with pytest.raises(PARSError, match="--prompt-group-size cuts"):  # would be silently ignored otherwise
        train.main([*common, "--prompt-group-size", "4"])


def test_streamed_pair_file_reads_as_json_load(tiny_data, tmp_path):
    path = tiny_data / "train_pairs_length_diff_0.2.json"
    want = json.loads(path.read_text())
    for chunk in (1, 7, 4096):  # items and separators cut at every possible place
        assert list(iter_json_list(path, "f", chunk_chars=chunk)) == want
    spaced = tmp_path / "spaced.json"
    spaced.write_text(" [\n" + ",\n ".join(json.dumps(p, indent=1) for p in want[:5]) + "\n ]\n")
    assert list(iter_json_list(spaced, "f", chunk_chars=3)) == want[:5]
    for text, message in (("[]", None), ('[{"a": 1}, {"b": 2}', "not valid JSON"), ('[{"a": 1}] x', "not valid JSON"),
                          ('[{"a": 1} {"b": 2}]', "not valid JSON"), ('{"a": 1}', "must hold a JSON list")):
        (tmp_path / "x.json").write_text(text)
        if message is None:
            assert list(iter_json_list(tmp_path / "x.json", "f")) == []
        else:
            with pytest.raises(PARSError, match=message):
                list(iter_json_list(tmp_path / "x.json", "f", chunk_chars=4))


def test_pair_index_from_file_equals_from_pairs(tiny_model_dir, tiny_data):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    path = tiny_data / "train_pairs_length_diff_0.2.json"
    pairs = load_pairs(path)
    for limit in (None, 50):
        streamed = PairIndex.from_file(path, tokenizer, 128, limit=limit, seed=3, progress=False)
        listed = PairIndex.from_pairs(subsample(pairs, limit, 3), tokenizer, 128, progress=False)
        assert len(streamed) == len(listed) == (limit or len(pairs))
        for k in range(len(listed)):
            for side in ("a", "b"):
                got = streamed.table.pad(np.array([getattr(streamed, side)[k]]))[0]
                assert torch.equal(got, listed.table.pad(np.array([getattr(listed, side)[k]]))[0])
        assert (streamed.labels == listed.labels).all()
    assert len(PairIndex.from_file(path, tokenizer, 128, limit=5, progress=False).table) <= 10  # only used prompts


def test_train_bench_seed_sweep_reports_per_seed_differences(tiny_model_dir, tiny_data, tmp_path):
    from benchmarks import train_bench

    bench = train_bench
    out = tmp_path / "seeds.json"
    assert bench.main(["--data-dir", str(tiny_data), "--model-name", str(tiny_model_dir), "--steps", "2",
                       "--batch-size", "8", "--max-eval-samples", "16", "--modes", "fast", "fast-ungrouped",
                       "--seeds", "1,2", "--work-dir", str(tmp_path / "work"), "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    runs = {(r["mode_name"], r["seed"]): r for r in report["runs"]}
    assert set(runs) == {(m, s) for m in ("fast", "fast-ungrouped") for s in (1, 2)}
    assert runs[("fast", 1)]["group_by_prompt"] and not runs[("fast-ungrouped", 1)]["group_by_length"]
    fast = report["summary"]["fast"]
    assert fast["reference"] == "fast-ungrouped"
    want = [round(runs[("fast", s)]["val_accuracy"] - runs[("fast-ungrouped", s)]["val_accuracy"], 4) for s in (1, 2)]
    assert fast["val_accuracy_minus_reference_per_seed"] == want


def test_train_step_bench_refuses_malformed_pass_variants():
    from benchmarks import train_step_bench

    bench = train_step_bench
    for bad in ("4", "0:64", "four:64", ""):
        with pytest.raises(SystemExit):
            bench.main(["--passes", bad])
