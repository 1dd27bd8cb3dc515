"""Evaluation: ranking metrics, cheap baselines, the evaluation run and its figures."""
