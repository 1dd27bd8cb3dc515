"""The training runs: one per unit x cell x seed, each a subprocess of predictor_train/scripts/train_pairwise_bert.py
in its own folder (<work>/runs/<unit>/<cell>/seed<k>/), with its log and run.json (its arguments and what it cost).

A run is finished when its metrics.json is there and its run.json holds the same signature (arguments, data,
threads): a rerun of the ablation skips it, so an interrupted ablation resumes where it stopped; a run whose
signature changed is trained again, its derived files (scores, bootstrap, scheduling) removed first.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.lib.paths import ROOT
from experiments.loss_ablation.grid import Cell, TrainSettings, trainer_argv
from pars.common.jsonio import read_json, write_json_atomic

TRAIN_SCRIPT = ROOT / "predictor_train" / "scripts" / "train_pairwise_bert.py"
RUN_JSON = "run.json"
DERIVED = ("metrics.json", RUN_JSON, "scores_*.json", "boot_*.json", "sched_*.json", "screen_*.json")
# What a run costs beyond its budget before one has finished (start-up, tokenizing, validation, saving, scoring):
# the ETA's first guess, replaced by the runs' own mean once one has run.
OVERHEAD_GUESS_S = 60.0


@dataclass
class Run:
    unit: str
    cell: Cell
    seed: int
    dir: Path
    argv: list[str]
    signature: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.unit} | {self.cell.name} | seed {self.seed}"

    def finished(self) -> bool:
        if not (self.dir / "metrics.json").is_file() or not (self.dir / RUN_JSON).is_file():
            return False
        try:
            return read_json(self.dir / RUN_JSON, RUN_JSON).get("signature") == self.signature
        except Exception:  # a half-written or foreign run.json: train again
            return False

    def metrics(self) -> dict[str, Any]:
        return read_json(self.dir / "metrics.json", "metrics.json")

    def summary(self) -> dict[str, Any]:
        """What the run did, from its metrics.json and run.json: steps, seconds, the precision it ran in."""
        m = self.metrics()
        info = read_json(self.dir / RUN_JSON, RUN_JSON) if (self.dir / RUN_JSON).is_file() else {}
        return {"unit": self.unit, "cell": self.cell.name, "seed": self.seed, "dir": str(self.dir),
                "args": self.argv, "steps": m.get("steps"), "epochs": len(m.get("history") or []),
                "train_seconds": m.get("train_seconds"), "wall_s": info.get("wall_s"),
                "mixed_precision": m.get("mixed_precision"), "train_items": m.get("train_items"),
                "pairs_seen": (m.get("throughput") or {}).get("pairs"),
                "prompts_encoded": (m.get("throughput") or {}).get("prompts_encoded"),
                "best_val_accuracy": m.get("best_val_accuracy"),
                "last_val_accuracy": ((m.get("history") or [{}])[-1]).get("val_accuracy")}


def plan(units: dict[str, Path], cells: Sequence[Cell], seeds: Sequence[int], runs_dir: Path, settings: TrainSettings,
         data_fingerprints: dict[str, str], threads: int) -> list[Run]:
    """Every run, seed first (an interrupted ablation has every cell at the first seeds), then unit, then cell."""
    out = []
    for seed in seeds:
        for unit, unit_dir in units.items():
            for cell in cells:
                d = runs_dir / unit / cell.slug / f"seed{seed}"
                argv = trainer_argv(cell, unit_dir, d, seed, settings)
                out.append(Run(unit, cell, seed, d, argv, {"argv": argv, "data": data_fingerprints[unit],
                                                           "threads": threads}))
    return out


def thread_env(threads: int) -> dict[str, str]:
    """The trainer's CPU threads, fixed: torch's intra-op pool reads OMP_NUM_THREADS."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}


def launch(argv: Sequence[str], env: dict[str, str], log_path: Path) -> int:
    """One training run, its stdout and stderr into log_path; its exit status. (Tests replace this.)"""
    with log_path.open("w", encoding="utf-8") as log:
        return subprocess.run([sys.executable, str(TRAIN_SCRIPT), *argv], cwd=ROOT, env={**os.environ, **env},
                              stdout=log, stderr=subprocess.STDOUT, check=False).returncode


def last_line(path: Path) -> str:
    try:
        lines = [x.strip() for x in path.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
                 .splitlines() if x.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def clear_derived(d: Path) -> None:
    for pattern in DERIVED:
        for f in d.glob(pattern):
            f.unlink()


def hms(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, m = divmod(seconds // 60, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {seconds % 60:02d} s"


def execute(runs: Sequence[Run], threads: int, budget_minutes: float,
            after: Callable[[Run], None] | None = None, say: Callable[[str], None] = print) -> dict[str, int]:
    """Train every run not finished, in order, printing progress with an ETA; `after(run)` once each is trained
    (the scoring). A trainer that fails stops the ablation (SystemExit naming its log); what finished stays."""
    todo = [r for r in runs if not r.finished()]
    say(f"runs: {len(runs)} in the grid, {len(runs) - len(todo)} finished already, {len(todo)} to train "
        f"(budget {budget_minutes:g} min each, {threads} threads); first guess "
        f"{hms(len(todo) * (60 * budget_minutes + OVERHEAD_GUESS_S))}")
    env = thread_env(threads)
    walls: list[float] = []
    for k, run in enumerate(todo, start=1):
        run.dir.mkdir(parents=True, exist_ok=True)
        clear_derived(run.dir)
        log = run.dir / "train.log"
        started = time.monotonic()
        say(f"[{k}/{len(todo)}] {run.label}: training")
        code = launch(run.argv, env, log)
        wall = time.monotonic() - started
        write_json_atomic({"signature": run.signature, "returncode": code, "wall_s": round(wall, 1),
                           "log": str(log), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, run.dir / RUN_JSON)
        if code != 0 or not (run.dir / "metrics.json").is_file():
            raise SystemExit(f"{run.label}: the trainer exited {code}; see {log}: {last_line(log)}")
        if after is not None:
            after(run)
        walls.append(time.monotonic() - started)
        m = run.summary()
        left = len(todo) - k
        say(f"[{k}/{len(todo)}] {run.label}: {m['steps']} steps in {m['train_seconds']} s, run + scoring "
            f"{walls[-1]:.0f} s; {left} left, ETA {hms(left * sum(walls) / len(walls))}")
    return {"trained": len(todo), "skipped": len(runs) - len(todo)}
