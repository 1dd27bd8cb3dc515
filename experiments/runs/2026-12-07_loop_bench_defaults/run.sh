#!/usr/bin/env bash
# The loop on the real vLLM, second run (docs/experiment-log.md, "The loop on the real vLLM, second run"):
# the script's 2,000 recorded and 500 after-reload requests; a fine-tune that can move the ranker (3 epochs at
# 5e-5; the first run's 12 steps at 2e-5 barely did); both pars arms' quantile windows holding one trace, primed
# alike (113aab8); 6 traces instead of 3 (80 prompts each instead of the script's 100, and the 512-token cap of
# the first run instead of 1,024, to fit the session; capped answers count at the cap, as in the first run).
# Committed before the run.
set -euo pipefail
cd "$(dirname "$0")/../../.."
.venv/bin/python -m experiments.loop_bench --start --model-dir /tmp/pars-llama22m \
  --ranker-path /tmp/qs/model/best_model.pt --seen-data /tmp/sg/train_data.json /tmp/sg/val_data.json \
  --max-tokens-cap 512 --num-epochs 3 --learning-rate 5e-5 --num-prompts 80 --seeds 0,1,2,3,4,5 \
  --cycle-arg=--keep-censored --out experiments/runs/2026-12-07_loop_bench_defaults/loop_bench.json
