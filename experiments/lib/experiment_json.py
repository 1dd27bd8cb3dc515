"""Reading vllm_e2e.py's JSON reports: the file itself, the rate an experiment ran at a load factor, and which
trace it replayed (experiments of one trace are pooled as one)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_report(path: str | os.PathLike[str]) -> dict:
    """A report as JSON; ValueError "cannot read PATH: why" when it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None


def read_replayable(path: str | os.PathLike[str]) -> dict:
    """A report with runs and the trace's token counts (what the scheduler model replays); ValueError in one
    line otherwise."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        report["trace"]["prompt_tokens"], report["runs"]  # noqa: B018 - fail here, in one line
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        raise ValueError(f"{path} is not a vllm_e2e.py report with runs and trace token counts ({exc!r})") from None
    return report


def rate_of(report: dict, load_factor: float) -> float:
    """The rate an experiment ran at this load factor; SystemExit naming the ones it ran when it did not (or
    when it ran fixed --rates)."""
    by_lf = ((report.get("capacity") or {}).get("load_factors")) or {}
    for rate, lf in by_lf.items():
        if abs(float(lf) - load_factor) < 1e-9:
            return float(rate)
    raise SystemExit(f"{report.get('note', 'an experiment')!r} has no runs at load factor {load_factor:g} "
                     f"(it ran load factors {sorted(by_lf.values()) or 'none: fixed --rates'})")


def trace_key(report: dict, path: Path) -> str:
    """Which trace (val rows drawn) an experiment replayed: vllm_e2e.py's digest of the trace's row ids, with
    its seed; an experiment without one counts as a trace of its own."""
    shas = {r.get("trace_sha") for r in report.get("runs", [])} - {None}
    seed = (report.get("trace") or {}).get("seed")
    if len(shas) == 1:
        return f"seed {seed} ({shas.pop()[:8]})" if seed is not None else shas.pop()[:8]
    return str(path)
