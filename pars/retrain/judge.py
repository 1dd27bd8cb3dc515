"""Whether a candidate ranker orders held-out traffic better than the deployed one: both score the same prompts,
and the difference of Kendall's tau (and of the length-weighted tau) against the recorded lengths gets a paired
bootstrap 95 % interval. Better means the interval excludes zero on the candidate's side."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pars.eval.rank_metrics import kendall_tau, kendall_tau_difference, length_cap, length_weighted_tau
from pars.model.scoring import PromptScorer


@dataclass(frozen=True)
class Verdict:
    prompts: int
    deployed: dict[str, float]  # kendall_tau, length_weighted_tau
    candidate: dict[str, float]
    tau_difference: dict[str, float]  # difference, ci95_low, ci95_high (candidate - deployed)
    weighted_difference: dict[str, float]

    @property
    def better(self) -> bool:
        low = self.tau_difference["ci95_low"]
        return low == low and low > 0  # NaN (too few rows for an interval) is never better

    def to_dict(self) -> dict[str, Any]:
        return {"prompts": self.prompts, "deployed": self.deployed, "candidate": self.candidate,
                "tau_difference": self.tau_difference, "length_weighted_tau_difference": self.weighted_difference,
                "candidate_better": self.better}

    def table(self) -> str:
        def row(name: str, m: dict[str, float]) -> str:
            return f"{name:<10} {m['kendall_tau']:>8.4f} {m['length_weighted_tau']:>14.4f}"

        def diff(d: dict[str, float]) -> str:
            return f"{d['difference']:+.4f} [{d['ci95_low']:+.4f}, {d['ci95_high']:+.4f}]"

        return "\n".join([
            f"held-out traffic: {self.prompts} prompts (the most recent)",
            f"{'ranker':<10} {'tau':>8} {'weighted tau':>14}",
            row("deployed", self.deployed), row("candidate", self.candidate),
            f"candidate - deployed: tau {diff(self.tau_difference)}, weighted {diff(self.weighted_difference)}",
        ])


def judge(deployed: PromptScorer, candidate: PromptScorer, prompts: Sequence[str], lengths: Sequence[float],
          seed: int = 0, batch_size: int = 64) -> Verdict:
    old = deployed.score_many(prompts, batch_size=batch_size, progress=True)
    new = candidate.score_many(prompts, batch_size=batch_size, progress=True)
    cap = length_cap(lengths)

    def weighted(scores: Sequence[float], y: Sequence[float]) -> float:
        return length_weighted_tau(scores, y, cap)

    def metrics(scores: Sequence[float]) -> dict[str, float]:
        return {"kendall_tau": kendall_tau(scores, lengths), "length_weighted_tau": weighted(scores, lengths)}

    return Verdict(prompts=len(prompts), deployed=metrics(old), candidate=metrics(new),
                   tau_difference=kendall_tau_difference(new, old, lengths, seed=seed),
                   weighted_difference=kendall_tau_difference(new, old, lengths, seed=seed, metric=weighted))
