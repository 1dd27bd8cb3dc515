"""The loop itself: `python -m pars.retrain.cycle` on the recorded traffic (stage 1 from the records, the
deployed ranker fine-tuned on the older share, judged against it on the most recent share, predictor A
reloaded only when the candidate is better), run as the operator would run it; its stdout and decision.json
kept for the report."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from experiments.lib.paths import ROOT

# The cycle as its console script `pars-retrain` runs it (pars.retrain.cycle:cli), whether or not the module
# runs as `python -m pars.retrain.cycle` (when this was written it had no __main__ block: that ran nothing).
RUNNER = "from pars.retrain.cycle import cli; cli()"


def cycle_argv(args: argparse.Namespace, records: Path, output_dir: Path, predictor_url: str | None) -> list[str]:
    """The cycle's command line: this tool's --val-fraction ... --retrain-seed passed through, then
    --cycle-arg's extras as given."""
    argv = [sys.executable, "-c", RUNNER, "--records", str(records),
            "--deployed", str(Path(args.ranker_path).resolve()), "--output-dir", str(output_dir),
            "--val-fraction", f"{args.val_fraction:g}", "--min-val-prompts", str(args.min_val_prompts),
            "--min-train-prompts", str(args.min_train_prompts), "--num-epochs", str(args.num_epochs),
            "--batch-size", str(args.batch_size), "--learning-rate", f"{args.learning_rate:g}",
            "--device", args.retrain_device, "--seed", str(args.retrain_seed)]
    if predictor_url:
        argv += ["--predictor-url", predictor_url]
    if args.max_train_minutes is not None:
        argv += ["--max-train-minutes", f"{args.max_train_minutes:g}"]
    return argv + list(args.cycle_arg or [])


def run_cycle(argv: list[str], output_dir: Path, stdout_file: Path, stderr_file: Path, timeout_s: float
              ) -> dict[str, Any]:
    """Run the cycle; its stdout is echoed here and kept in `stdout_file` (its progress bars, on stderr, in
    `stderr_file`). Returns its exit status, wall time, stdout and decision.json (None when it wrote none: a
    refusal, e.g. too few records, is a result of this experiment, reported, not a crash of the tool)."""
    stdout_file.parent.mkdir(parents=True, exist_ok=True)
    stderr_file.parent.mkdir(parents=True, exist_ok=True)
    (output_dir / "decision.json").unlink(missing_ok=True)
    started = time.monotonic()
    lines: list[str] = []
    with stderr_file.open("w", encoding="utf-8") as err:
        proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                                stderr=err, text=True, bufsize=1)
        timer = threading.Timer(timeout_s, proc.kill)  # however quiet the cycle is meanwhile
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                print(f"  cycle | {line}", end="", flush=True)
                lines.append(line)
            rc = proc.wait()
        finally:
            timer.cancel()
    if time.monotonic() - started >= timeout_s:
        lines.append(f"[loop_bench: the cycle was killed after {timeout_s:.0f} s (--loop-timeout-s)]\n")
    stdout = "".join(lines)
    stdout_file.write_text(stdout, encoding="utf-8")
    decision_path = output_dir / "decision.json"
    decision = json.loads(decision_path.read_text(encoding="utf-8")) if decision_path.is_file() else None
    tail = [ln for ln in stderr_file.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()][-3:]
    return {"command": shlex.join(["pars-retrain", *argv[3:]]), "returncode": rc,
            "wall_s": round(time.monotonic() - started, 1), "stdout": stdout,
            "stdout_file": str(stdout_file), "stderr_file": str(stderr_file),
            "stderr_tail": tail if rc else [], "decision": decision}


def outcome(cycle: dict[str, Any], id_before: str | None, id_after: str | None) -> dict[str, Any]:
    """What the loop did, told from both sides: the cycle's decision and predictor A's ranker_id before and after.
    `reloaded` only when both agree; a disagreement is flagged."""
    decision = cycle.get("decision") or {}
    said = "reload" in decision
    changed = id_before is not None and id_after is not None and id_before != id_after
    out = {"ranker_id_before": id_before, "ranker_id_after": id_after, "reloaded": said and changed,
           "candidate_better": decision.get("candidate_better"), "action": decision.get("action")}
    if cycle.get("returncode") != 0:
        out["action"] = out["action"] or f"the cycle failed (exit {cycle.get('returncode')}): the deployed ranker kept"
    elif not decision:
        out["action"] = "the cycle exited 0 but wrote no decision.json: the deployed ranker kept"
    if said != changed:
        out["inconsistent"] = (f"decision.json {'has' if said else 'has no'} reload, but predictor A's ranker_id "
                               f"{'changed' if changed else 'did not change'}")
    return out
