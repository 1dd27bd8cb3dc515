"""The offline trace screen (experiments/trace_tau.py's approach): each run's Kendall tau on the prompts of the
real-vLLM experiments' recorded traces against the lengths they were served, a number per trace.

Reads vllm_e2e.py reports (the trace's row ids and max_tokens; the prompts looked up in the val rows by id) and
vllm_bench.py reports (each seed's client dataset, JSONL of prompt and output_tokens). A trace replayed by several
reports counts once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.lib.stats import over_traces
from experiments.lib.traces import digest
from pars.eval.rank_metrics import kendall_tau


def _dataset(path: str, report: Path) -> Path:
    """A client dataset named by a report: as written, or beside the report (a run folder moved since)."""
    p = Path(path)
    return p if p.is_file() else report.parent / p.parent.name / p.name


def key(seed: int | None, prompts: Sequence[str]) -> str:
    """A trace's key: its seed and a digest of its prompts, so that one trace replayed by a vllm_e2e.py and a
    vllm_bench.py report (both draw with experiments/lib/traces.build_trace) counts once."""
    return f"seed {seed} ({digest(list(prompts))[:8]})"


def read_trace_reports(paths: Sequence[Path], val_rows: Sequence[dict]) -> dict[str, dict[str, Any]]:
    """{trace key: {"prompts", "served", "file"}}; ValueError in one line for a file that is not such a report or
    names a row --val-data does not have."""
    from experiments.loss_ablation.data import row_ids

    by_id = dict(zip(row_ids(val_rows), (r["prompt"] for r in val_rows), strict=True))
    traces: dict[str, dict[str, Any]] = {}
    for path in paths:
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"--trace-reports {path}: cannot read it ({exc})") from None
        trace = report.get("trace") if isinstance(report, dict) else None
        if isinstance(trace, dict) and "ids" in trace and "max_tokens" in trace:  # vllm_e2e.py
            missing = next((str(i) for i in trace["ids"] if str(i) not in by_id), None)
            if missing is not None:
                raise ValueError(f"--trace-reports {path}: row {missing!r} of its trace is not in --val-data (give "
                                 "the val_data.json the experiments drew from)")
            prompts = [by_id[str(i)] for i in trace["ids"]]
            traces.setdefault(key(trace.get("seed"), prompts), {"prompts": prompts, "file": str(path),
                                                                "served": [int(x) for x in trace["max_tokens"]]})
        elif isinstance(report, dict) and isinstance(report.get("per_seed"), list):  # vllm_bench.py
            for s in report["per_seed"]:
                try:
                    lines = _dataset(s["dataset"], path).read_text(encoding="utf-8").splitlines()
                    rows = [json.loads(x) for x in lines if x.strip()]
                    prompts, served = [r["prompt"] for r in rows], [int(r["output_tokens"]) for r in rows]
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"--trace-reports {path}: seed {s.get('seed')}'s client dataset is not "
                                     f"readable ({exc})") from None
                traces.setdefault(key(s.get("seed"), prompts), {"prompts": prompts, "served": served,
                                                                "file": str(path)})
        else:
            raise ValueError(f"--trace-reports {path}: not a vllm_e2e.py or vllm_bench.py report with its trace")
    return traces


def prompts_of(traces: dict[str, dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(p for t in traces.values() for p in t["prompts"]))


def run_taus(score_of: dict[str, float], traces: dict[str, dict[str, Any]]) -> dict[str, float]:
    """{trace key: Kendall's tau-b of the run's scores of the trace's prompts against the served lengths}."""
    return {k: kendall_tau([score_of[p] for p in t["prompts"]], t["served"]) for k, t in traces.items()}


def cell_value(runs: Sequence[dict[str, float]],
               paired: tuple[Sequence[dict[str, float]], Sequence[dict[str, float]]] | None) -> dict[str, Any]:
    """Mean over traces (t 95 % over traces) of each trace's tau averaged over the seeds; given paired (the cell's
    and the reference's runs of the seeds both have), the paired difference from the reference by trace."""
    keys = list(runs[0])

    def per_trace(rs: Sequence[dict[str, float]]) -> np.ndarray:
        return np.asarray([np.mean([r[k] for r in rs]) for k in keys])

    mine = per_trace(runs)
    out = {**over_traces(mine.tolist()), "per_trace": dict(zip(keys, mine.tolist(), strict=True))}
    if paired is not None:
        out["minus_reference"] = over_traces((per_trace(paired[0]) - per_trace(paired[1])).tolist())
    return out
