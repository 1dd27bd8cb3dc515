"""Evaluate ranker checkpoints on val sets, always beside cheap baselines
(predictor_train/scripts/evaluate_ranker.py).

For every (checkpoint, dataset): Kendall's tau-b and Spearman's rho of score against
answer_length over the rows, and pairwise accuracy on the val pairs file. Several checkpoints
and several datasets give a cross-dataset matrix of tau (does a ranker trained on one source
rank another?). Every distinct prompt is scored once per checkpoint.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pars.common.errors import PARSError, run_cli
from pars.common.hub import OFFLINE_ENCODER
from pars.common.jsonio import write_json_files_atomic
from pars.data.pairs import pair_file_name
from pars.data.readers import load_pairs, load_rows, subsample
from pars.eval.baselines import TfidfRidgeBaseline, prompt_char_lengths, prompt_token_lengths
from pars.eval.rank_metrics import (
    kendall_tau,
    kendall_tau_difference,
    length_cap,
    length_weighted_tau,
    pairwise_accuracy,
    spearman_rho,
)
from pars.model.checkpoint import load_ranker
from pars.model.ranker import POOLINGS, load_tokenizer
from pars.model.ranker_config import RankerConfig, read_ranker_config, resolve
from pars.model.scoring import PromptScorer, resolve_device
from pars.model.truncation import TRUNCATIONS

DEFAULT_OUTPUT = "evaluation.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=(
            "Score val_data.json rows with one or more ranker checkpoints and report Kendall's tau-b, "
            "Spearman's rho and pairwise accuracy beside baselines (prompt length in chars and tokens, "
            "TF-IDF + Ridge). Writes a JSON report, a checkpoint x dataset tau matrix and PNG plots."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", nargs="+", required=True, metavar="PATH",
                   help="Checkpoints (best_model.pt, ...): rows of the matrix, named by their parent dir.")
    p.add_argument("--model-name", nargs="+", default=None, metavar="NAME",
                   help=f"Encoder of the checkpoints: one for all, or one per --checkpoint. Hub id, local "
                        f"directory or '{OFFLINE_ENCODER}'. Default: each checkpoint's ranker_config.json, "
                        "else the original release's bert-base-uncased (the same holds for the next four).")
    p.add_argument("--val-data", nargs="+", required=True, metavar="FILE",
                   help="val_data.json files. Columns of the matrix, named by their parent directory.")
    p.add_argument("--val-pairs", nargs="+", default=None, metavar="FILE",
                   help="Val pairs files, one per --val-data (default: the val_pairs_length_diff_<threshold>"
                        ".json beside each val_data.json; pairwise accuracy is skipped without one).")
    p.add_argument("--threshold", type=float, default=0.2,
                   help="Pair threshold naming the default val pairs file.")
    p.add_argument("--train-data", nargs="+", default=None, metavar="FILE",
                   help="train_data.json for the TF-IDF baseline: one for all datasets or one per --val-data "
                        "(default: train_data.json beside each val_data.json; skipped without one).")
    p.add_argument("--max-length", type=int, default=None, help="Tokens per prompt seen by the ranker (128).")
    p.add_argument("--truncation", nargs="+", default=None, choices=TRUNCATIONS, metavar="{head,middle}",
                   help="How a longer prompt is cut, one for all checkpoints or one per --checkpoint (head).")
    p.add_argument("--pooling", nargs="+", default=None, choices=POOLINGS, metavar="{pooler,mean}",
                   help="What each ranker's fc reads, one for all checkpoints or one per --checkpoint (pooler).")
    p.add_argument("--override-ranker-config", action="store_true",
                   help="Score with the settings given above even where they contradict a checkpoint's "
                        "ranker_config.json (studies of e.g. another truncation); otherwise that is an error.")
    p.add_argument("--batch-size", type=int, default=64, help="Prompts per forward pass.")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
    p.add_argument("--max-rows", type=int, default=None,
                   help="Use a seeded random subset of this many rows per dataset (quick runs).")
    p.add_argument("--max-pairs", type=int, default=None,
                   help="Use a seeded random subset of this many pairs per dataset (default: --max-rows).")
    p.add_argument("--seed", type=int, default=42, help="Seed of the subsets and of the TF-IDF baseline.")
    p.add_argument("--output", default=DEFAULT_OUTPUT,
                   help="JSON report; <stem>_matrix.json and the PNGs are written beside it.")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                   help="Write <stem>_score_vs_length.png and, with several cells, <stem>_matrix.png.")
    return p


# ---- inputs ----

@dataclass
class EvalDataset:
    """One val set as evaluated: its (possibly subsampled) rows and pairs, and where they came from."""

    name: str
    val_data: Path
    val_pairs: Path | None
    train_data: Path | None
    rows: list[dict[str, Any]]
    pairs: list[dict[str, Any]]
    rows_total: int
    pairs_total: int

    def prompts(self) -> list[str]:
        """Distinct prompts of rows and pairs, first-seen order: each is scored once."""
        seen = [r["prompt"] for r in self.rows]
        for p in self.pairs:
            seen += (p["prompt_A"], p["prompt_B"])
        return list(dict.fromkeys(seen))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "val_data": str(self.val_data),
                "val_pairs": str(self.val_pairs) if self.val_pairs else None,
                "train_data": str(self.train_data) if self.train_data else None,
                "rows_total": self.rows_total, "rows": len(self.rows),
                "pairs_total": self.pairs_total, "pairs": len(self.pairs),
                "distinct_prompts": len(self.prompts())}


def short_names(paths: Sequence[str | Path]) -> list[str]:
    """Parent directory names (`runs/sharegpt/best_model.pt` -> `sharegpt`), with as many more
    directories as it takes to tell different directories apart (`lmsys/gpt4`, `alpaca/gpt4`), and
    the file stem for files in one directory (`tr/best_model`, `tr/last_model`)."""
    resolved = [Path(p).resolve() for p in paths]
    dirs = list(dict.fromkeys(p.parent for p in resolved))
    dir_name = {d: _distinct_tail(d, [o for o in dirs if o != d]) for d in dirs}
    per_dir = Counter(p.parent for p in resolved)
    names = [dir_name[p.parent] + (f"/{p.stem}" if per_dir[p.parent] > 1 else "") for p in resolved]
    if len(set(names)) < len(names):  # the same file given twice
        names = [f"{n}#{i + 1}" for i, n in enumerate(names)]
    return names


def suffixed_names(paths: Sequence[str | Path], suffixes: Sequence[str]) -> list[str]:
    """short_names of the distinct checkpoints, each with its suffix: one checkpoint can be given twice, once
    per setting; `#<position>` tells apart what is still the same."""
    distinct = list(dict.fromkeys(str(Path(p).resolve()) for p in paths))
    base = dict(zip(distinct, short_names(distinct), strict=True))
    names = [base[str(Path(p).resolve())] + suffix for p, suffix in zip(paths, suffixes, strict=True)]
    if len(set(names)) < len(names):
        names = [f"{n}#{i + 1}" for i, n in enumerate(names)]
    return names


def checkpoint_names(paths: Sequence[str | Path], truncations: Sequence[str], poolings: Sequence[str]) -> list[str]:
    """short_names, with `+middle` after a checkpoint scored under middle truncation and `+mean` under mean
    pooling: one checkpoint can be given twice, once per setting."""
    return suffixed_names(paths, [("" if t == "head" else f"+{t}") + ("" if pl == "pooler" else f"+{pl}")
                                  for t, pl in zip(truncations, poolings, strict=True)])


def _distinct_tail(directory: Path, others: Sequence[Path]) -> str:
    """The last k parts of a directory, k as small as keeps it apart from the others' last k."""
    for k in range(1, len(directory.parts) + 1):
        tail = directory.parts[-k:]
        if all(o.parts[-k:] != tail for o in others):
            return Path(*tail).as_posix()
    return str(directory)


def per_item(values: Sequence[str] | None, count: int, flag: str, of: str) -> list[str] | None:
    """One value for all items or exactly one per item; anything else is a user error."""
    if values is None:
        return None
    if len(values) == 1:
        return list(values) * count
    if len(values) != count:
        raise PARSError(f"{flag}: give one value or one per {of} ({count}), got {len(values)}")
    return list(values)


def checkpoint_configs(args: argparse.Namespace) -> list[RankerConfig]:
    """Each checkpoint's ranker config with the flags given on top (one value for all or one per checkpoint);
    a flag contradicting a checkpoint's recorded setting is an error unless --override-ranker-config."""
    n = len(args.checkpoint)
    given = {"model_name": per_item(args.model_name, n, "--model-name", "--checkpoint"),
             "truncation": per_item(args.truncation, n, "--truncation", "--checkpoint"),
             "pooling": per_item(args.pooling, n, "--pooling", "--checkpoint"),
             "max_length": [args.max_length] * n}
    configs = []
    for i, ckpt in enumerate(args.checkpoint):
        mine = {k: v[i] for k, v in given.items() if v is not None and v[i] is not None}
        if args.override_ranker_config:
            configs.append(replace(read_ranker_config(ckpt), **mine))
        else:
            configs.append(resolve(ckpt, mine, name=lambda k: "--" + k.replace("_", "-")))
    return configs


def default_val_pairs(val_data: Path, threshold: float) -> Path | None:
    beside = val_data.with_name(pair_file_name("val", threshold))
    return beside if beside.is_file() else None


def default_train_data(val_data: Path) -> Path | None:
    beside = val_data.with_name("train_data.json")
    return beside if beside.is_file() else None


def load_datasets(args: argparse.Namespace, notes: list[str]) -> list[EvalDataset]:
    """Read and check every val set (and its pairs) before any model is loaded."""
    val_paths = [Path(p) for p in args.val_data]
    pair_paths = args.val_pairs
    if pair_paths is not None and len(pair_paths) != len(val_paths):
        raise PARSError(f"--val-pairs: give one file per --val-data ({len(val_paths)}), "
                        f"got {len(pair_paths)}")
    train_paths = per_item(args.train_data, len(val_paths), "--train-data", "--val-data")
    max_pairs = args.max_pairs if args.max_pairs is not None else args.max_rows
    datasets = []
    for i, (name, val_path) in enumerate(zip(short_names(val_paths), val_paths, strict=True)):
        rows = load_rows(val_path, "val data file")
        pairs_path = Path(pair_paths[i]) if pair_paths else default_val_pairs(val_path, args.threshold)
        if pairs_path is None:
            notes.append(f"{name}: no {pair_file_name('val', args.threshold)} beside {val_path}; "
                         "pairwise accuracy skipped")
        pairs = load_pairs(pairs_path, "val pairs file") if pairs_path else []
        train_path = Path(train_paths[i]) if train_paths else default_train_data(val_path)
        if train_path is None:
            notes.append(f"{name}: no train_data.json beside {val_path} (see --train-data); "
                         "TF-IDF baseline skipped")
        elif not train_path.is_file():
            raise PARSError(f"train data file not found: {train_path}")
        datasets.append(EvalDataset(
            name=name, val_data=val_path, val_pairs=pairs_path, train_data=train_path,
            rows=subsample(rows, args.max_rows, args.seed), pairs=subsample(pairs, max_pairs, args.seed),
            rows_total=len(rows), pairs_total=len(pairs)))
    return datasets


def check_args(args: argparse.Namespace) -> None:
    for flag in ("max_length", "batch_size", "max_rows", "max_pairs"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise PARSError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if not 0.0 <= args.threshold < 1.0:
        raise PARSError(f"--threshold must be in [0, 1), got {args.threshold}")
    for path in args.checkpoint:
        if not Path(path).is_file():
            raise PARSError(f"checkpoint not found: {path}")
    if Path(args.output).is_dir():
        raise PARSError(f"--output must be a file path, {args.output} is a directory")


# ---- metrics ----

def length_weighted(lengths: Sequence[float]) -> Callable[[Sequence[float], Sequence[float]], float]:
    cap = length_cap(lengths)
    return lambda scores, ys: length_weighted_tau(scores, ys, cap=cap)


def metrics_for(score_of: dict[str, float], ds: EvalDataset) -> dict[str, Any]:
    """Tau, length-weighted tau and rho over the rows, pairwise accuracy over the pairs (None without a pairs
    file)."""
    scores = [score_of[r["prompt"]] for r in ds.rows]
    lengths = [r["answer_length"] for r in ds.rows]
    accuracy = None
    if ds.pairs:
        accuracy = pairwise_accuracy([score_of[p["prompt_A"]] for p in ds.pairs],
                                     [score_of[p["prompt_B"]] for p in ds.pairs],
                                     [p["label"] for p in ds.pairs])
    return {"kendall_tau": kendall_tau(scores, lengths), "spearman_rho": spearman_rho(scores, lengths),
            "length_weighted_tau": length_weighted(lengths)(scores, lengths),
            "length_weighted_cap": length_cap(lengths),
            "pairwise_accuracy": accuracy, "rows": len(ds.rows), "pairs": len(ds.pairs)}


def timed_scores(score: Callable[[list[str]], list[float]], ds: EvalDataset
                 ) -> tuple[dict[str, Any], dict[str, float]]:
    """Score the dataset's distinct prompts once, then all metrics from that table."""
    prompts = ds.prompts()
    start = time.perf_counter()
    score_of = dict(zip(prompts, score(prompts), strict=True))
    seconds = time.perf_counter() - start
    metrics = {**metrics_for(score_of, ds), "prompts_scored": len(prompts), "seconds": round(seconds, 3),
               "prompts_per_second": round(len(prompts) / seconds, 1) if seconds > 0 else None}
    return metrics, score_of


@dataclass
class FittedTfidf:
    model: TfidfRidgeBaseline
    fit_seconds: float
    train_rows: int
    train_prompts: frozenset[str]  # to report how many val rows the baseline saw verbatim


class TfidfCache:
    """One fitted TF-IDF baseline per train file, shared by datasets that name the same file."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.fitted: dict[Path, FittedTfidf] = {}

    def get(self, train_path: Path) -> FittedTfidf:
        key = train_path.resolve()
        if key not in self.fitted:
            rows = load_rows(train_path, "train data file")
            prompts = [r["prompt"] for r in rows]
            start = time.perf_counter()
            model = TfidfRidgeBaseline(seed=self.seed).fit(prompts, [r["answer_length"] for r in rows])
            self.fitted[key] = FittedTfidf(model, round(time.perf_counter() - start, 3), len(rows),
                                           frozenset(prompts))
        return self.fitted[key]


def evaluate_baselines(ds: EvalDataset, tokenizer, tfidf: TfidfCache
                       ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, float]]]:
    """Every baseline on the same rows and pairs the checkpoints see: metrics, and scores per prompt."""
    results, tables = {}, {}
    results["prompt_chars"], tables["prompt_chars"] = timed_scores(prompt_char_lengths, ds)
    results["prompt_tokens"], tables["prompt_tokens"] = timed_scores(
        lambda ps: prompt_token_lengths(ps, tokenizer), ds)
    if ds.train_data is not None:
        fitted = tfidf.get(ds.train_data)
        metrics, tables["tfidf_ridge"] = timed_scores(fitted.model.score, ds)
        results["tfidf_ridge"] = {
            **metrics, "fit_seconds": fitted.fit_seconds,
            "train_data": str(ds.train_data), "train_rows": fitted.train_rows,
            "val_rows_with_prompt_in_train": sum(r["prompt"] in fitted.train_prompts for r in ds.rows),
        }
    return results, tables


def versus_baselines(score_of: dict[str, float], baseline_tables: dict[str, dict[str, float]],
                     ds: EvalDataset, seed: int, weighted: bool = False) -> dict[str, dict[str, float]]:
    """The checkpoint's tau (or length-weighted tau) minus each baseline's on the same rows, with a paired
    bootstrap 95 % interval."""
    lengths = [r["answer_length"] for r in ds.rows]
    ours = [score_of[r["prompt"]] for r in ds.rows]
    metric = length_weighted(lengths) if weighted else None
    return {name: kendall_tau_difference(ours, [table[r["prompt"]] for r in ds.rows], lengths, seed=seed,
                                         metric=metric)
            for name, table in baseline_tables.items()}


def evaluate_checkpoint(scorer: PromptScorer, ds: EvalDataset, batch_size: int
                        ) -> tuple[dict[str, Any], dict[str, float]]:
    """Metrics of one checkpoint on one dataset, and its score per distinct prompt."""
    return timed_scores(lambda ps: scorer.score_many(ps, batch_size=batch_size, progress=True), ds)


def build_matrix(results: dict[str, dict[str, Any]], checkpoints: Sequence[str],
                 datasets: Sequence[str]) -> dict[str, Any]:
    """Checkpoint x dataset tau (and pairwise accuracy), baselines per dataset alongside."""
    def grid(metric: str) -> list[list[float | None]]:
        return [[results[d]["models"][c][metric] for d in datasets] for c in checkpoints]

    baseline_names = dict.fromkeys(b for d in datasets for b in results[d]["baselines"])
    return {
        "metric": "kendall_tau", "rows": list(checkpoints), "cols": list(datasets),
        "values": grid("kendall_tau"), "pairwise_accuracy": grid("pairwise_accuracy"),
        "baselines": {b: [results[d]["baselines"].get(b, {}).get("kendall_tau") for d in datasets]
                      for b in baseline_names},
    }


# ---- report ----

def fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def format_table(results: dict[str, dict[str, Any]], datasets: Sequence[EvalDataset]) -> str:
    """One block per dataset: checkpoints first, then baselines, same columns."""
    lines = []
    for ds in datasets:
        res = results[ds.name]
        entries = [(n, "checkpoint", m) for n, m in res["models"].items()]
        entries += [(n, "baseline", m) for n, m in res["baselines"].items()]
        width = max(len(n) for n, _, _ in entries) + 13
        lines.append(f"Dataset {ds.name} ({ds.val_data}): {len(ds.rows)} rows, {len(ds.pairs)} pairs")
        lines.append(f"  {'scorer':<{width}} {'kendall_tau':>11} {'weighted_tau':>12} {'spearman_rho':>12} "
                     f"{'pair_acc':>8} {'seconds':>8}")
        for name, kind, m in entries:
            label = f"{name} ({kind})"
            lines.append(f"  {label:<{width}} {fmt(m['kendall_tau']):>11} {fmt(m['length_weighted_tau']):>12} "
                         f"{fmt(m['spearman_rho']):>12} {fmt(m['pairwise_accuracy']):>8} {m['seconds']:>8.2f}")
        for name, m in res["models"].items():
            for base, d in m.get("tau_minus_baseline", {}).items():
                lines.append(f"  tau({name}) - tau({base}) = {d['difference']:+.4f}  "
                             f"(paired bootstrap 95% CI {fmt(d['ci95_low'])} .. {fmt(d['ci95_high'])})")
        first = next(iter(res["models"]), None)
        for name, m in res["models"].items():
            if (d := m.get("tau_minus_first_checkpoint")) is not None:
                lines.append(f"  tau({name}) - tau({first}) = {d['difference']:+.4f}  "
                             f"(paired bootstrap 95% CI {fmt(d['ci95_low'])} .. {fmt(d['ci95_high'])})")
            if (d := m.get("length_weighted_tau_minus_first_checkpoint")) is not None:
                lines.append(f"  weighted_tau({name}) - weighted_tau({first}) = {d['difference']:+.4f}  "
                             f"(paired bootstrap 95% CI {fmt(d['ci95_low'])} .. {fmt(d['ci95_high'])})")
        lines.append("")
    return "\n".join(lines)


def format_matrix(matrix: dict[str, Any]) -> str:
    width = max(len(n) for n in [*matrix["rows"], *matrix["baselines"], "checkpoint"]) + 2
    cols = [max(len(c), 8) for c in matrix["cols"]]
    lines = ["Kendall's tau, checkpoint (rows) x dataset (columns):",
             " " * width + " ".join(f"{c:>{w}}" for c, w in zip(matrix["cols"], cols, strict=True))]
    table = list(zip(matrix["rows"], matrix["values"], strict=True)) + list(matrix["baselines"].items())
    for i, (name, values) in enumerate(table):
        if i == len(matrix["rows"]):
            lines.append("baselines:")
        cells = " ".join(f"{fmt(v):>{w}}" for v, w in zip(values, cols, strict=True))
        lines.append(f"{name:<{width}}{cells}")
    return "\n".join(lines) + "\n"


def json_ready(value: Any) -> Any:
    """NaN is not JSON: undefined metrics (e.g. tau of constant scores) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def output_paths(output: Path, several_cells: bool) -> dict[str, Path | None]:
    stem = output.with_suffix("") if output.suffix == ".json" else output
    return {"matrix_json": stem.with_name(f"{stem.name}_matrix.json") if several_cells else None,
            "matrix_png": stem.with_name(f"{stem.name}_matrix.png") if several_cells else None,
            "score_vs_length_png": stem.with_name(f"{stem.name}_score_vs_length.png")}


def write_plots(paths: dict[str, Path | None], matrix: dict[str, Any], score_of: dict[str, float],
                title: str, ds: EvalDataset) -> dict[str, str]:
    """Score vs length for one (checkpoint, dataset); the heatmap when there is more than one cell."""
    from pars.eval.plots import plot_matrix, plot_score_vs_length  # matplotlib only when plotting

    written = {}
    written["score_vs_length"] = str(plot_score_vs_length(
        [score_of[r["prompt"]] for r in ds.rows], [r["answer_length"] for r in ds.rows],
        paths["score_vs_length_png"], title))
    if paths["matrix_png"] is not None:
        written["matrix"] = str(plot_matrix(matrix["values"], matrix["rows"], matrix["cols"],
                                            paths["matrix_png"]))
    return written


# ---- main ----

def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    configs = checkpoint_configs(args)
    device = resolve_device(args.device)
    started = time.perf_counter()
    notes: list[str] = []
    datasets = load_datasets(args, notes)
    ckpt_names = checkpoint_names(args.checkpoint, [c.truncation for c in configs], [c.pooling for c in configs])
    for note in notes:
        print(f"note: {note}")

    # Baselines do not depend on the checkpoint: once per dataset. Token counts use the first
    # checkpoint's tokenizer (WordPiece vocabularies of one family count nearly alike).
    tokenizer = load_tokenizer(configs[0].model_name)
    tfidf = TfidfCache(args.seed)
    results: dict[str, dict[str, Any]] = {}
    baseline_tables: dict[str, dict[str, dict[str, float]]] = {}
    for ds in datasets:
        baselines, baseline_tables[ds.name] = evaluate_baselines(ds, tokenizer, tfidf)
        results[ds.name] = {"rows": len(ds.rows), "pairs": len(ds.pairs), "models": {}, "baselines": baselines}

    load_seconds = {}
    first_by_dataset: dict[str, dict[str, float]] = {}  # the first checkpoint's scores: the others against it
    for ckpt, ckpt_name, c in zip(args.checkpoint, ckpt_names, configs, strict=True):
        start = time.perf_counter()
        scorer = PromptScorer(load_ranker(c.model_name, ckpt, c.pooling), load_tokenizer(c.model_name),
                              max_length=c.max_length, device=device, truncation=c.truncation)
        load_seconds[ckpt_name] = round(time.perf_counter() - start, 3)
        for ds in datasets:
            print(f"Scoring {ds.name} ({len(ds.prompts())} prompts) with {ckpt_name} on {device}")
            metrics, score_of = evaluate_checkpoint(scorer, ds, args.batch_size)
            metrics["tau_minus_baseline"] = versus_baselines(score_of, baseline_tables[ds.name], ds, args.seed)
            if ds.name in first_by_dataset:
                first = {ckpt_names[0]: first_by_dataset[ds.name]}
                metrics["tau_minus_first_checkpoint"] = versus_baselines(score_of, first, ds, args.seed)[ckpt_names[0]]
                metrics["length_weighted_tau_minus_first_checkpoint"] = versus_baselines(
                    score_of, first, ds, args.seed, weighted=True)[ckpt_names[0]]
            else:
                first_by_dataset[ds.name] = score_of
            results[ds.name]["models"][ckpt_name] = metrics
        del scorer

    matrix = build_matrix(results, ckpt_names, [ds.name for ds in datasets])
    print()
    print(format_table(results, datasets))
    several_cells = len(ckpt_names) * len(datasets) > 1
    if several_cells:
        print(format_matrix(matrix))

    output = Path(args.output)
    paths = output_paths(output, several_cells)
    plots = {}
    if args.plots:
        tau = results[datasets[0].name]["models"][ckpt_names[0]]["kendall_tau"]
        plots = write_plots(paths, matrix, first_by_dataset[datasets[0].name],
                            f"{ckpt_names[0]} on {datasets[0].name} (tau={fmt(tau, 3)})", datasets[0])
    report = {
        "inputs": {
            "checkpoints": [{"name": n, "path": str(p), "model_name": c.model_name, "truncation": c.truncation,
                             "pooling": c.pooling, "max_length": c.max_length, "config_source": c.source}
                            for n, p, c in zip(ckpt_names, args.checkpoint, configs, strict=True)],
            "datasets": [ds.describe() for ds in datasets],
            "threshold": args.threshold, "max_length": configs[0].max_length, "batch_size": args.batch_size,
            "device": str(device), "max_rows": args.max_rows,
            "max_pairs": args.max_pairs if args.max_pairs is not None else args.max_rows, "seed": args.seed,
            "token_baseline_tokenizer": configs[0].model_name,
        },
        "results": results,
        "matrix": matrix,
        "plots": plots,
        "notes": notes,
        "timing": {"total_seconds": round(time.perf_counter() - started, 3),
                   "checkpoint_load_seconds": load_seconds},
    }
    files: dict[Path, Any] = {output: json_ready(report)}
    if paths["matrix_json"] is not None:
        files[paths["matrix_json"]] = json_ready(matrix)
    try:
        write_json_files_atomic(files)
    except OSError as exc:
        raise PARSError(f"cannot write {output}: {exc.strerror or exc}") from None
    for path in [*files, *plots.values()]:
        print(f"Saved {path}")
    return 0


def cli() -> None:
    """The console script (pyproject.toml's [project.scripts])."""
    run_cli(main)
