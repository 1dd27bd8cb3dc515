"""One command for the loop: recorded traffic + the deployed ranker -> stage 1 from the records (split by time,
so the held-out share is the most recent traffic) -> fine-tune the deployed ranker on the rest (its own settings,
--resume-from) -> judge the candidate against the deployed ranker on the held-out traffic -> reload the
service only when the candidate is better by an interval that excludes zero. Every step's output stays in
--output-dir (data/, candidate/, decision.json), and the table is printed either way.

    pars-retrain --records /var/lib/pars/records --deployed runs/ranker/best_model.pt \\
        --output-dir runs/retrain-2026-12-07 --predictor-url http://127.0.0.1:8001
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from pars.common.errors import PARSError, run_cli
from pars.common.jsonio import write_json_atomic
from pars.data import traces
from pars.data.readers import load_rows
from pars.model.scoring import PromptScorer, resolve_device
from pars.retrain.judge import judge
from pars.train import loop as train


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--records", nargs="+", required=True, metavar="PATH",
                   help="Recorded traffic: the gateway's GATEWAY_RECORD_DIR (or its *.jsonl files), or any input "
                        "preprocess_trace.py reads.")
    p.add_argument("--deployed", required=True, help="The ranker the service runs now (best_model.pt with its "
                   "ranker_config.json): the start of fine-tuning and the one to beat.")
    p.add_argument("--output-dir", required=True, help="Where data/, candidate/ and decision.json go.")
    p.add_argument("--predictor-url", default=None, help="The predictor service to reload when the candidate is "
                   "better (POST /admin/reload); unset: judge and report only.")
    p.add_argument("--api-key", default=os.environ.get("PREDICTOR_API_KEY"),
                   help="The service's PREDICTOR_API_KEY (default: that environment variable).")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="The most recent share of the distinct prompts, held out to judge on.")
    p.add_argument("--keep-censored", action="store_true",
                   help="Keep answers cut at max_tokens (finish_reason length) at their recorded length: for traffic "
                        "whose max_tokens is the intended length (benchmarks with ignore_eos); left out otherwise, "
                        "their true length being unknown.")
    p.add_argument("--min-val-prompts", type=int, default=200,
                   help="Fewer held-out prompts than this: too few to judge, refused.")
    p.add_argument("--min-train-prompts", type=int, default=500,
                   help="Fewer training prompts than this: too few to fine-tune on, refused.")
    p.add_argument("--num-epochs", type=int, default=1, help="Fine-tuning epochs.")
    p.add_argument("--batch-size", type=int, default=64, help="Fine-tuning batch (in-batch pairs).")
    p.add_argument("--learning-rate", type=float, default=2e-5, help="Fine-tuning peak learning rate.")
    p.add_argument("--max-train-minutes", type=float, default=None, help="Bound on the fine-tuning time.")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
    p.add_argument("--seed", type=int, default=42, help="Seed of the data split, training and bootstrap.")
    return p


def build_dataset(args: argparse.Namespace, data_dir: Path) -> None:
    """Stage 1 from the records, split by time: val_data.json is the most recent traffic."""
    traces.main(["--records", *args.records, "--output-dir", str(data_dir), "--split", "time",
                 "--val-fraction", str(args.val_fraction), "--seed", str(args.seed),
                 *(["--keep-censored"] if args.keep_censored else [])])


def fine_tune(args: argparse.Namespace, data_dir: Path, out: Path) -> Path:
    """The deployed ranker fine-tuned on the older traffic: in-batch pairs of train_data.json, its own settings."""
    train.main(["--train-file", str(data_dir / "train_pairs_length_diff_0.2.json"),
                "--val-file", str(data_dir / "val_pairs_length_diff_0.2.json"), "--output-dir", str(out),
                "--resume-from", args.deployed, "--pairing", "in-batch", "--group-by-length",
                "--batch-size", str(args.batch_size), "--num-epochs", str(args.num_epochs),
                "--learning-rate", str(args.learning_rate), "--device", args.device, "--seed", str(args.seed),
                *(["--max-train-minutes", str(args.max_train_minutes)] if args.max_train_minutes else [])])
    return out / "best_model.pt"


def reload(url: str, checkpoint: Path, api_key: str | None) -> dict[str, Any]:
    """POST /admin/reload: the service loads and warms the candidate beside the deployed ranker, then swaps."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.post(url.rstrip("/") + "/admin/reload", json={"model_path": str(checkpoint.resolve())},
                              headers=headers, timeout=600)
    except httpx.HTTPError as exc:
        raise PARSError(f"cannot reach the predictor at {url} to reload: {exc}") from None
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    if response.status_code != 200:
        raise PARSError(f"the predictor refused the reload ({response.status_code}): "
                        f"{body.get('message', response.text[:200])}; the deployed ranker keeps serving")
    return body


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not Path(args.deployed).is_file():
        raise PARSError(f"--deployed {args.deployed}: no such checkpoint")
    out = Path(args.output_dir)
    data_dir = out / "data"
    print(f"== 1/4 stage 1 from the records -> {data_dir}")
    build_dataset(args, data_dir)
    train_rows = load_rows(data_dir / "train_data.json", "train data")
    val_rows = load_rows(data_dir / "val_data.json", "val data")
    if len(val_rows) < args.min_val_prompts or len(train_rows) < args.min_train_prompts:
        raise PARSError(f"too few records to judge: {len(train_rows)} training and {len(val_rows)} held-out "
                        f"prompts (at least {args.min_train_prompts} and {args.min_val_prompts}); record longer")
    print(f"== 2/4 fine-tune the deployed ranker on {len(train_rows)} older prompts -> {out / 'candidate'}")
    candidate = fine_tune(args, data_dir, out / "candidate")
    print(f"== 3/4 judge on the {len(val_rows)} most recent prompts")
    device = resolve_device(args.device)
    verdict = judge(PromptScorer.from_checkpoint(args.deployed, device), PromptScorer.from_checkpoint(
        str(candidate), device), [r["prompt"] for r in val_rows], [r["answer_length"] for r in val_rows],
        seed=args.seed)
    print(verdict.table())
    decision: dict[str, Any] = {"deployed": str(args.deployed), "candidate": str(candidate), **verdict.to_dict()}
    if not verdict.better:
        decision["action"] = "kept the deployed ranker (the candidate is not better by an interval excluding 0)"
    elif args.predictor_url is None:
        decision["action"] = "candidate better; no --predictor-url, so not reloaded"
    else:
        print(f"== 4/4 reload {args.predictor_url} with the candidate")
        decision["reload"] = reload(args.predictor_url, candidate, args.api_key)
        decision["action"] = f"reloaded {args.predictor_url} with the candidate"
    write_json_atomic(decision, out / "decision.json")
    print(f"{decision['action']}; wrote {out / 'decision.json'}")
    return 0


def cli() -> None:
    """The console script (pyproject.toml's [project.scripts])."""
    run_cli(main)


if __name__ == "__main__":
    cli()
