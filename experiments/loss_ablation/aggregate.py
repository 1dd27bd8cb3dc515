"""From runs to cells: each cell's metrics over its seeds, its difference from the reference with the paired
bootstrap interval, its scheduling value and trace screen; and the claims of the paper settled from the intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from experiments.loss_ablation import evaluate, schedule, screen
from experiments.loss_ablation.grid import REFERENCE, Cell

# The paper's claims, each as "cell a beats cell b": the pairwise margin loss against the others (same batches),
# and the δ filter (δ = 0.2 against no filter) in each family.
CLAIMS = (
    ("pairwise margin (in-batch, δ=0.2) beats listwise (listmle)", REFERENCE, Cell("in-batch", "listmle")),
    ("pairwise margin (in-batch, δ=0.2) beats pointwise regression", REFERENCE, Cell("in-batch", "pointwise")),
    ("pairwise margin (in-batch, δ=0.2) beats classification", REFERENCE, Cell("in-batch", "classification")),
    ("δ = 0.2 beats δ = 0, in-batch margin", REFERENCE, Cell("in-batch", "margin", 0.0)),
    ("δ = 0.2 beats δ = 0, margin on pair files", Cell("pair-files", "margin", 0.2), Cell("pair-files", "margin", 0.0)),
)


@dataclass
class RunEval:
    """One finished run, judged: its metrics, its resampled metrics, its recovery and trace taus."""

    seed: int
    summary: dict[str, Any]
    point: dict[str, float]
    draws: dict[str, Any] = field(repr=False)
    recovery: dict[str, Any] | None = None
    trace_taus: dict[str, float] | None = None


def cell_row(cell: Cell, evals: Sequence[RunEval], ref: Sequence[RunEval] | None) -> dict[str, Any]:
    is_ref = cell == REFERENCE
    row: dict[str, Any] = {"cell": cell.name, "spec": cell.spec, "family": cell.family, "loss": cell.loss,
                           "delta": cell.delta, "reference": is_ref, "seeds": [e.seed for e in evals],
                           "metrics": evaluate.seeds_summary([e.point for e in evals]),
                           "steps": [e.summary.get("steps") for e in evals],
                           "train_seconds": [e.summary.get("train_seconds") for e in evals]}
    other = None if is_ref or not ref else ref
    row["minus_reference"] = _difference(evals, other) if other else None
    # the value's own figures use every run of the cell; its difference from the reference, the seeds both have
    mine, theirs, _ = _paired(evals, other) if other else (evals, None, None)
    if all(e.recovery for e in evals):
        row["recovery"] = schedule.cell_value(
            [e.recovery for e in evals],
            ([e.recovery for e in mine], [e.recovery for e in theirs])
            if theirs and all(e.recovery for e in theirs) else None)
    if all(e.trace_taus for e in evals):
        row["trace_tau"] = screen.cell_value(
            [e.trace_taus for e in evals],
            ([e.trace_taus for e in mine], [e.trace_taus for e in theirs])
            if theirs and all(e.trace_taus for e in theirs) else None)
    return row


def _paired(a: Sequence[RunEval], b: Sequence[RunEval]
            ) -> tuple[Sequence[RunEval], Sequence[RunEval], list[int] | None]:
    """The runs of a and of b whose seed both have, and those seeds; all of each and None when they share none (as
    while an ablation is under way), so that a partial grid still reads."""
    common = {e.seed for e in a} & {e.seed for e in b}
    if not common:
        return a, b, None
    return [e for e in a if e.seed in common], [e for e in b if e.seed in common], sorted(common)


def _difference(a: Sequence[RunEval], b: Sequence[RunEval]) -> dict[str, dict[str, Any]]:
    """Cell a − cell b per metric over the seeds both have (all of each when they share none, as while an
    ablation is under way): the paired bootstrap difference, and in how many seeds a's run is above b's."""
    a, b, seeds = _paired(a, b)
    diff = evaluate.difference([e.point for e in a], [e.draws for e in a], [e.point for e in b], [e.draws for e in b])
    above = evaluate.seeds_above({e.seed: e.point for e in a}, {e.seed: e.point for e in b})
    for m, d in diff.items():
        d["seeds_above"] = above[m]
        d["seeds"] = seeds
    return diff


def claims(by_cell: dict[Cell, Sequence[RunEval]]) -> list[dict[str, Any]]:
    """Each claim's difference (a - b) per metric with its paired interval and verdict; a claim whose cells are not
    in this grid (or have no finished run) says so."""
    out = []
    for text, a, b in CLAIMS:
        ea, eb = by_cell.get(a), by_cell.get(b)
        if not ea or not eb:
            missing = ", ".join(c.name for c, e in ((a, ea), (b, eb)) if not e)
            out.append({"claim": text, "a": a.name, "b": b.name, "missing": missing})
            continue
        diff = _difference(ea, eb)
        for m in diff.values():
            m["verdict"] = evaluate.verdict(m["ci95"])
        out.append({"claim": text, "a": a.name, "b": b.name, "seeds": [len(ea), len(eb)], "metrics": diff})
    return out


def unit_result(cells: Sequence[Cell], by_cell: dict[Cell, Sequence[RunEval]]) -> dict[str, Any]:
    """The unit's cells (those with a finished run, in grid order) and its claims."""
    ref = by_cell.get(REFERENCE)
    rows = [cell_row(c, by_cell[c], ref) for c in cells if by_cell.get(c)]
    return {"reference": REFERENCE.name, "cells": rows, "claims": claims(by_cell),
            "missing_cells": [c.name for c in cells if not by_cell.get(c)]}
