#!/bin/bash
# Paths updated for the issue-29 layout; the script as it ran is in git history (2b6c7f8).
# Run O (written 2026-11-25 04:47 UTC, before the mpnet ranker was screened): the all-mpnet-base-v2 ranker
# live, run M's settings, 3 policies; traces --seed 7..13 in this order, as many as finish before ~06:45 UTC
# (stop rule fixed in advance: a trace is started only if it is before 06:33 UTC).
# Changed at 05:42, before any trace ran: backend onnx (fp32), since onnx-int8 ordered 200 val prompts with tau 0.845 against torch fp32 (fp32 ONNX: 1.0); stop time 06:33 (the run starts after a CI proof).
cd /work/main
for seed in 7 8 9 10 11 12 13; do
  if [ "$(date -u +%H%M)" -ge 0633 ]; then echo "stop before seed $seed $(date -u +%H:%M:%S)" >> /tmp/runO.progress; break; fi
  .venv/bin/python -m experiments.vllm_e2e --start --model-dir /tmp/pars-llama22m --data /tmp/sg/val_data.json \
    --ranker-path runs/sg_mpnet_mean_middle/best_model.pt --ranker-name /tmp/all-mpnet-base-v2 \
    --ranker-pooling mean --ranker-truncation middle \
    --predictor-backend onnx --predictor-threads 1 \
    --onnx-cache-dir /tmp/onnx_cache --predictor-timeout-ms 1000 --no-fcfs-gateway --fairness-windows 1000 \
    --load-factors 2 --num-requests 80 --repeats 3 --client-nice 10 --probe 20 --seed $seed --side-cpus 1 \
    --policies "fcfs,oracle,pars@1000" \
    --out experiments/runs/2026-11-25_runO/vllm_e2e_runO_seed$seed.json > /tmp/runO_seed$seed.log 2>&1
  echo "seed $seed rc $? $(date -u +%H:%M:%S)" >> /tmp/runO.progress
done
