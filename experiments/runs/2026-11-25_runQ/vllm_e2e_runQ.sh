#!/bin/bash
# Paths updated for the issue-29 layout; the script as it ran is in git history (7c28646).
# Run Q (written 2026-11-25 09:50 UTC, before any of its traces ran): the MiniLM mean+middle ranker
# (sg_inbatch_bf16_mean_middle, int8) at two loads on new traces. Two questions:
#  1. load 2, runs M-P's highest rate: more traces for the by-trace pool of this ranker (runs N + P: 15 traces,
#     0.55 [0.46, 0.64]); issue 6's 60 % target is judged on that pool.
#  2. load 1.5, the issue's own highest operating point (1.6 requests/s against a capacity of about 1.05):
#     does the recovery depend on the load? Both loads replay the same arrivals (scaled) in every repeat,
#     interleaved, so the difference is paired by trace.
# Run M's settings otherwise (--side-cpus 1, onnx-int8, W = 1000 s), 2 repeats per trace instead of 3: the
# by-trace pool is limited by the traces drawn, not by repeats of one. New traces --seed 31.. in this order;
# One ranker, so its policy is plain pars@1000. Stop rule fixed in advance: a trace starts only before 11:50 UTC.
cd /work/main
CKPT=runs/sg_inbatch_bf16_mean_middle/best_model.pt
for seed in 31 32 33 34 35 36 37 38 39 40 41 42; do
  if [ "$(date -u +%H%M)" -ge 1150 ]; then echo "stop before seed $seed $(date -u +%H:%M:%S)" >> /tmp/runQ.progress; break; fi
  .venv/bin/python -m experiments.vllm_e2e --start --model-dir /tmp/pars-llama22m --data /tmp/sg/val_data.json \
    --ranker-path $CKPT --ranker-pooling mean --ranker-truncation middle \
    --predictor-backend onnx-int8 --predictor-threads 1 \
    --onnx-cache-dir /tmp/onnx_cache --predictor-timeout-ms 1000 --no-fcfs-gateway --fairness-windows 1000 \
    --load-factors 1.5,2 --num-requests 80 --repeats 2 --client-nice 10 --probe 20 --seed $seed --side-cpus 1 \
    --policies "fcfs,oracle,pars@1000" \
    --out experiments/runs/2026-11-25_runQ/vllm_e2e_runQ_seed$seed.json > /tmp/runQ_seed$seed.log 2>&1
  echo "seed $seed rc $? $(date -u +%H:%M:%S)" >> /tmp/runQ.progress
done
