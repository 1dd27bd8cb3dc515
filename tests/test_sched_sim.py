"""experiments/sched_sim.py: the scheduler model behaves like vLLM's priority queue, by hand-checked cases."""

from __future__ import annotations

import pytest

from experiments import sched_sim as sim
from experiments.lib.scheduler import simulate

# One slot, one second per step: A (3 tokens) arrives at 0, B (2) and C (1) at 0.5 while A runs.
ARRIVALS = [0.0, 0.5, 0.5]
TOKENS = [3, 2, 1]


def run(priorities, slots=1):
    return list(simulate(ARRIVALS, TOKENS, [5, 5, 5], priorities, slots, 0.0, 1000.0, 0.0))


def test_fcfs_serves_by_arrival_and_no_preemption():
    # A holds the slot to t=3 (no preemption); ties in priority and arrival go by position: B then C
    assert run([0, 0, 0]) == pytest.approx([3.0, 4.5, 5.5])


def test_lower_priority_is_served_first():
    # oracle: priority = tokens, so C (1) before B (2) once A frees the slot; A itself is never overtaken
    assert run(TOKENS) == pytest.approx([3.0, 5.5, 3.5])


def test_slots_run_in_parallel_and_steps_cost_per_sequence():
    # three slots: all run at once; a step with k running takes k seconds (per_seq 1000 ms)
    lat = run([0, 0, 0], slots=3)
    # t=0..1 A alone (1 s); B, C join at t=1: steps of 3 s; C done at 4, then A and B (2 s) done at 6
    assert lat == pytest.approx([6.0, 5.5, 3.5])


def test_context_cost_grows_with_prompt_and_tokens_made():
    # A alone: its steps attend over 5 prompt tokens, then 5 + 1: 1 s + 100 ms per context token each
    lat = simulate([0.0], [2], [5], [0], 1, 0.0, 1000.0, 0.0, context_ms_per_token=100.0)
    assert list(lat) == pytest.approx([1.5 + 1.6])


def test_gateway_rule_for_pars_windows():
    trace = {"max_tokens": TOKENS, "prompt_tokens": [7, 8, 9]}
    q = [0.9, 0.5, 0.1]
    # W = 0: arrival order, as FCFS; a W larger than the run: by quantile alone
    assert sim.policy_priorities("pars@0", ARRIVALS, trace, q) == [0.0, 500.0, 500.0]
    wide = sim.policy_priorities("pars@1000", ARRIVALS, trace, q)
    assert sorted(range(3), key=wide.__getitem__) == [2, 1, 0]
    assert sim.policy_priorities("oracle", ARRIVALS, trace, q) == TOKENS
    assert sim.policy_priorities("prompt-length", ARRIVALS, trace, q) == [7, 8, 9]


def test_quantiles_against_a_primed_window():
    scores = [3.0, 1.0, 2.0]
    # primed with the same scores: each score's mid-rank among them, then it joins the window
    assert sim.quantiles(scores, scores) == pytest.approx([2.5 / 3, 0.5 / 4, 2.5 / 5])
