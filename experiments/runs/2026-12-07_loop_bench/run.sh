#!/usr/bin/env bash
# The loop on the real vLLM, first run (docs/experiment-log.md, "The loop on the real vLLM, first run").
# Script committed before the run (393cb19); sizes reduced from its defaults to fit the session.
set -euo pipefail
cd "$(dirname "$0")/../../.."
.venv/bin/python -m experiments.loop_bench --start --model-dir /tmp/pars-llama22m \
  --ranker-path /tmp/qs/model/best_model.pt --seen-data /tmp/sg/train_data.json /tmp/sg/val_data.json \
  --record-requests 1000 --after-requests 250 --num-prompts 60 --seeds 0,1,2 --max-tokens-cap 512 \
  --min-val-prompts 150 --min-train-prompts 500 --cycle-arg=--keep-censored
